#include "nodes/node_kind.h"

#include <cxxabi.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

namespace sinkflow {

std::string demangled_type_name(const std::type_info& type) {
  int status = 0;
  char* raw = abi::__cxa_demangle(type.name(), nullptr, nullptr, &status);
  std::string name = status == 0 && raw ? raw : type.name();
  std::free(raw);
  const std::string ns = "sinkflow::";
  for (size_t pos; (pos = name.find(ns)) != std::string::npos;) name.erase(pos, ns.size());
  return name;
}

void NodeRuntime::fail(std::exception_ptr error) noexcept {
  if (!run.set_failure(name, kind, error)) return;
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    spdlog::error("node '{}' ({}) failed: {}; cancelling the graph", name, kind, e.what());
  } catch (...) {
    spdlog::error("node '{}' ({}) failed with a non-standard exception; cancelling the graph", name, kind);
  }
  graph.cancel();
}

NodeInstance::NodeInstance(const NodeContext& context) : context_(context) {
  for (const auto& decl : context.kind.inputs) inputs_.push_back(InPort{decl, nullptr});
  for (const auto& decl : context.kind.outputs) outputs_.push_back(OutPort{decl, nullptr});
}

void NodeInstance::port_mismatch(const char* what, size_t index, const std::string& declared) const {
  throw std::logic_error("node kind '" + context_.kind.name + "': " + what + " port " + std::to_string(index) +
                         (declared.empty() ? std::string(" is not declared")
                                           : " is declared as " + declared + " but exposed with another type"));
}

void Registry::add(NodeKind kind) {
  if (kind.name.empty() || !kind.check || !kind.params || !kind.build)
    throw std::logic_error("Registry::add: node kind '" + kind.name + "' lacks a name, check, params or build");
  if (kind.is_source() && kind.outputs.empty())
    throw std::logic_error("Registry::add: node kind '" + kind.name + "' has neither inputs nor outputs");
  const std::string name = kind.name;
  if (!kinds_.emplace(name, std::move(kind)).second)
    throw std::logic_error("Registry::add: node kind '" + name + "' is registered twice");
}

const NodeKind* Registry::find(std::string_view name) const {
  auto it = kinds_.find(name);
  return it == kinds_.end() ? nullptr : &it->second;
}

std::vector<std::string> Registry::names() const {
  std::vector<std::string> out;
  for (const auto& [name, kind] : kinds_) out.push_back(name);
  return out;
}

}  // namespace sinkflow
