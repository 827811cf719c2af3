#include "nodes/run_context.h"

namespace sinkflow {

bool RunContext::set_failure(std::string node, std::string kind, std::exception_ptr error) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (failure_) return false;
  failure_ = Failure{std::move(node), std::move(kind), std::move(error)};
  failed_.store(true, std::memory_order_release);
  return true;
}

std::optional<RunContext::Failure> RunContext::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

}  // namespace sinkflow
