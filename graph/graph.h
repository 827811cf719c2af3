// Builds a oneTBB flow graph from a PipelineSpec and runs it to completion.
//
//   Registry registry;
//   register_builtin_nodes(registry);
//   RunSpec spec = load_run_spec("configs/tiny.yaml", {"model.n_sink=4"});
//   Pipeline pipeline(spec.pipeline, registry, {.profile = true});
//   pipeline.run();                      // throws NodeError naming the node that failed
//   std::puts(pipeline.summary().to_json().c_str());
//
// Build order: validate (graph/validate.h), make every node, wire the bookkeeping, make every edge;
// run() then activates the sources (only now that all edges exist), waits for the graph to drain, and
// calls each node's finish() in topological order.
//
// Backpressure: each source has a bound (NodeSpec::max_in_flight, else RunOptions::default_max_in_flight)
// on the messages it has caused that are queued or running anywhere downstream; the source is parked
// while the bound is reached and woken by the completion that makes room. No queue in the graph grows
// past the bound of the sources feeding it (plus what one body emits in a single call).
//
// Errors: an exception in a node body records the node, cancels the graph (sources stop, queued work is
// dropped) and run() throws NodeError "node '<name>' (<kind>): <what()>" once the graph is idle.
// Stop: request_stop() (async-signal-safe, for SIGINT) makes sources stop producing; what is in flight
// drains, finish() hooks run and run() returns normally with summary().stopped set.
#pragma once

#include <chrono>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "graph/run_summary.h"
#include "graph/spec.h"
#include "graph/trace.h"
#include "nodes/node_kind.h"

namespace sinkflow {

struct RunOptions {
  bool profile = false;            // record every body for profile_table() timings and write_chrome_trace()
  int default_max_in_flight = 64;  // bound of sources whose NodeSpec::max_in_flight is 0; >= 1
};

// A node body or finish() hook threw. what() = "node '<node>' (<kind>): <cause's what()>"
// ("node '<node>' (<kind>) finish: ..." for a hook).
class NodeError : public std::runtime_error {
 public:
  NodeError(std::string node, std::string kind, std::exception_ptr cause, const std::string& message)
      : std::runtime_error(message), node_(std::move(node)), kind_(std::move(kind)), cause_(std::move(cause)) {}
  const std::string& node() const { return node_; }
  const std::string& kind() const { return kind_; }
  std::exception_ptr cause() const { return cause_; }  // rethrow to get the original type

 private:
  std::string node_;
  std::string kind_;
  std::exception_ptr cause_;
};

class Pipeline {
 public:
  // Validates `spec` (std::invalid_argument naming file:line and field) and builds the graph. A node whose
  // construction throws is named: "<file>:<line>: node 'x' (kind): <what()>" (same exception type for
  // std::invalid_argument, std::runtime_error otherwise). `registry` is only read here: the kinds used are
  // copied, so it need not outlive the pipeline.
  Pipeline(PipelineSpec spec, const Registry& registry, RunOptions options = {});
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  const PipelineSpec& spec() const;
  RunContext& context();             // counters, stop flag
  const Resources& resources() const;  // the models and memories built before the nodes
  void request_stop() noexcept;      // context().request_stop(): async-signal-safe

  // Runs to completion (see the top of this file). Once per Pipeline (std::logic_error otherwise).
  void run();
  // As run(), but if the run has not ended after `deadline` it is stopped and cancelled, and this throws
  // std::runtime_error("pipeline '<name>' did not finish within <ms> ms..."). If it does not even end
  // then (a body blocked for good), the run is abandoned on its thread (and leaked) so that the caller,
  // typically a test, fails instead of hanging.
  void run_for(std::chrono::milliseconds deadline);

  // After the run.
  RunSummary summary() const;
  std::vector<NodeProfile> profile_table() const;     // executions and max_queue always; times when profiling
  std::string chrome_trace_json() const;               // std::logic_error unless RunOptions::profile
  void write_chrome_trace(const std::string& path) const;  // std::runtime_error if the file cannot be written

  // The built node named `name` (dynamic_cast it to the kind's class); std::invalid_argument if none.
  NodeInstance& node(const std::string& name) const;
  std::vector<std::string> topological_order() const;  // node names, producers first

 private:
  struct State;
  std::shared_ptr<State> state_;  // shared with the thread of run_for, which may outlive *this
};

// While alive, SIGINT and SIGTERM call run.request_stop() (sources stop, the rest drains, finish() hooks
// run); the handler resets itself, so a second signal gets the default action and ends the process.
// The previous handlers are restored on destruction. One at a time per process.
class StopOnSignal {
 public:
  explicit StopOnSignal(RunContext& run);
  ~StopOnSignal();
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;

 private:
  struct Saved;
  std::unique_ptr<Saved> saved_;
};

// "kind  inputs -> outputs  doc" and the parameters of every registered kind, for `sinkflow kinds`.
std::string describe_kinds(const Registry& registry);

}  // namespace sinkflow
