// What every node of one run shares: the stop flag (SIGINT), the first failure and the run counters that
// make the RunSummary. Models and memories are resources (nodes/resources.h), built before the nodes.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <typeindex>

namespace sinkflow {

// Bumped by nodes (relaxed increments are enough); read once the run is over.
struct RunCounters {
  std::atomic<int64_t> tokens_in{0};       // tokens the model read (stream, prompts, injected text)
  std::atomic<int64_t> tokens_out{0};      // tokens the model generated
  std::atomic<int64_t> evictions{0};       // eviction plans applied to a KV cache
  std::atomic<int64_t> chunks_indexed{0};  // chunks added to the memory index
  std::atomic<int64_t> retrievals{0};      // retrieval queries answered
};

class RunContext {
 public:
  struct Failure {
    std::string node;            // node name
    std::string kind;            // node kind
    std::exception_ptr error;    // what the body threw
  };

  // Asks sources to stop producing; what is in flight drains and finish() hooks run.
  // Async-signal-safe (a lock-free atomic store): the launcher calls it from its SIGINT handler.
  // `signal`: the signal that asked (SIGINT, SIGTERM), 0 for a request from code.
  void request_stop(int signal = 0) noexcept {
    if (signal != 0) signal_.store(signal, std::memory_order_relaxed);
    stop_.store(true, std::memory_order_relaxed);
  }
  bool stop_requested() const noexcept { return stop_.load(std::memory_order_relaxed); }
  int stop_signal() const noexcept { return signal_.load(std::memory_order_relaxed); }

  // True once a node body has thrown; sources stop and the graph is being cancelled.
  bool failed() const noexcept { return failed_.load(std::memory_order_acquire); }
  // Records a failure; only the first one is kept. Returns true if this one was the first.
  bool set_failure(std::string node, std::string kind, std::exception_ptr error);
  std::optional<Failure> failure() const;

  RunCounters counters;

  // Output for a person (generated text on a terminal, shown retrievals): a node calls before_output() before
  // it first writes such output; the launcher's hook (set before the run) ends its progress line there, so that
  // the bar never draws over the answer. The hook runs once, on the first caller's thread.
  void set_before_output(std::function<void()> hook) { before_output_hook_ = std::move(hook); }
  void before_output() {
    std::call_once(before_output_once_, [this] {
      if (before_output_hook_) before_output_hook_();
    });
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> signal_{0};
  std::atomic<bool> failed_{false};
  mutable std::mutex mutex_;
  std::optional<Failure> failure_;
  std::function<void()> before_output_hook_;
  std::once_flag before_output_once_;
};

}  // namespace sinkflow
