// What a node kind is to the graph: a descriptor (name, ports, parameters, factory) in a Registry,
// and, once built, a NodeInstance that owns its oneTBB nodes and exposes them as type-erased ports.
//
// Adding a node kind (see nodes/stage.h for the bodies):
//   nodes/<kind>.h    its config struct (in-class defaults, one comment per field, from_params, validate)
//                     and `NodeKind <kind>_kind();`
//   nodes/<kind>.cpp  the NodeInstance subclass (a Stage<> or Source<>, whose body calls models/), and
//                     `<kind>_kind()` returning make_node_kind<Node, Config>(name, doc, inputs, outputs)
//   nodes/nodes.cpp   one line in register_builtin_nodes: `registry.add(<kind>_kind());`
//   tests/            its test
#pragma once

#include <oneapi/tbb/flow_graph.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <typeindex>
#include <typeinfo>
#include <vector>

#include "nodes/param_map.h"
#include "nodes/profiler.h"
#include "nodes/run_context.h"

namespace sinkflow {

// ------------------------------------------------------------------------------------------ message types

// The name of a message type in messages ("TokenBlock", "int64", "string"): the demangled C++ name
// without "sinkflow::". Specialize MessageTypeName<T> for a shorter name.
std::string demangled_type_name(const std::type_info& type);
template <class T>
struct MessageTypeName {
  static std::string get() { return demangled_type_name(typeid(T)); }
};
template <> struct MessageTypeName<std::string> { static std::string get() { return "string"; } };
template <> struct MessageTypeName<int64_t> { static std::string get() { return "int64"; } };
template <> struct MessageTypeName<double> { static std::string get() { return "double"; } };
template <> struct MessageTypeName<bool> { static std::string get() { return "bool"; } };

// ------------------------------------------------------------------------------------- port declarations

enum class PortRole {
  data,           // an ordinary input
  step_boundary,  // applied between two steps of the node (model-step's staged injections): a cycle
                  // through the graph is legal only if it enters such a port
};

struct PortDecl {
  std::string name;
  std::type_index type = std::type_index(typeid(void));
  std::string type_name;  // for messages: "TokenBlock"
  bool boundary = false;  // inputs only: PortRole::step_boundary
};

template <class T>
PortDecl in_port(std::string name, PortRole role = PortRole::data) {
  return {std::move(name), std::type_index(typeid(T)), MessageTypeName<T>::get(), role == PortRole::step_boundary};
}
template <class T>
PortDecl out_port(std::string name) {
  return {std::move(name), std::type_index(typeid(T)), MessageTypeName<T>::get(), false};
}

// A built node's input: a tbb::flow::receiver<T> for the declared T, behind a void*.
struct InPort {
  PortDecl decl;
  void* receiver = nullptr;  // tbb::flow::receiver<T>*, T = decl.type
};

// A built node's output. connect(in) makes the TBB edge; the builder calls it only when in.decl.type
// equals decl.type (checked again inside, std::logic_error otherwise).
struct OutPort {
  PortDecl decl;
  std::function<void(const InPort&)> connect;
};

// ------------------------------------------------------------------------------ run-time bookkeeping

// Admission control of one source (backpressure): counts the messages caused by this source that are
// queued or running anywhere downstream, and parks the source while that count is >= limit. A
// downstream completion that brings the count below the limit wakes it. Every queue downstream of a
// source is thereby bounded by its limit (plus what one body emits in one call).
class SourceGate {
 public:
  explicit SourceGate(int64_t limit) : limit_(limit) {}
  int64_t limit() const { return limit_; }
  int64_t in_flight() const { return in_flight_.load(); }
  void set_wake(std::function<void()> wake) { wake_ = std::move(wake); }

  // A message caused by this source was sent to a node.
  void add() noexcept { in_flight_.fetch_add(1); }
  // A node downstream finished one message; wakes the source if it was parked and there is room now.
  void release() noexcept {
    if (in_flight_.fetch_sub(1) - 1 < limit_ && parked_.load() && parked_.exchange(false)) wake_();
  }
  // Called by the source after each production step: true = produce again now; false = parked, and
  // wake() will be called by the release() that makes room (exactly one of the two happens).
  bool may_continue() noexcept {
    if (in_flight_.load() < limit_) return true;
    parked_.store(true);
    return in_flight_.load() < limit_ && parked_.exchange(false);
  }

 private:
  const int64_t limit_;
  std::atomic<int64_t> in_flight_{0};
  std::atomic<bool> parked_{false};
  std::function<void()> wake_;
};

class NodeRuntime;
struct Destination {
  NodeRuntime* node = nullptr;
  size_t port = 0;
};

// The builder's record of one node during a run: identity, wiring (who receives each output, which
// sources gate it), and counters. Node bodies run through run_body()/run_source(), which count
// executions, time them when profiling, turn an exception into a graph-wide failure, and do the
// backpressure accounting.
class NodeRuntime {
 public:
  NodeRuntime(std::string name, std::string kind, uint32_t index, tbb::flow::graph& graph, RunContext& run,
              Profiler* profiler)
      : name(std::move(name)), kind(std::move(kind)), index(index), graph(graph), run(run), profiler(profiler) {}

  const std::string name;   // node name from the pipeline
  const std::string kind;   // node kind
  const uint32_t index;     // position in the pipeline's node list
  tbb::flow::graph& graph;
  RunContext& run;
  Profiler* const profiler;  // nullptr = profiling off
  int64_t fail_at = 0;       // tests (NodeSpec::fail_at): the fail_at-th body run throws instead; 0 = never

  // Wiring, set by the builder before the run.
  std::vector<std::vector<Destination>> destinations;  // per output port: who receives its messages
  std::vector<SourceGate*> upstream;                   // gates of the sources whose messages reach this node
  SourceGate* gate = nullptr;                          // sources only: its own gate

  // A message was sent to this node (called by the sender, before the TBB put).
  void arrive() noexcept {
    const int64_t n = in_flight_.fetch_add(1, std::memory_order_relaxed) + 1;
    int64_t m = max_in_flight_.load(std::memory_order_relaxed);
    while (n > m && !max_in_flight_.compare_exchange_weak(m, n, std::memory_order_relaxed)) {
    }
    for (SourceGate* g : upstream) g->add();
  }

  // Runs a body for one message that arrived; always accounts for its completion.
  template <class F>
  void run_body(F&& body) noexcept {
    execute(body);
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
    for (SourceGate* g : upstream) g->release();
  }
  // Runs one production step of a source (no arrival to account for).
  template <class F>
  void run_source(F&& body) noexcept {
    execute(body);
  }

  int64_t executions() const { return executions_.load(); }
  // The most messages ever queued or running at this node at once.
  int64_t max_queue() const { return max_in_flight_.load(); }

 private:
  template <class F>
  void execute(F& body) noexcept {
    if (run.failed()) return;  // the graph is being cancelled: drain without work
    const int32_t depth = static_cast<int32_t>(in_flight_.load(std::memory_order_relaxed));
    const int64_t n = executions_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (fail_at > 0 && n == fail_at) {
      fail(std::make_exception_ptr(
          std::runtime_error("fail_at: injected failure at message " + std::to_string(n))));
      return;
    }
    if (profiler) {
      const int64_t t0 = profiler->now_ns();
      invoke(body);
      profiler->record(index, t0, profiler->now_ns(), depth);
    } else {
      invoke(body);
    }
  }
  template <class F>
  void invoke(F& body) noexcept {
    try {
      body();
    } catch (...) {
      fail(std::current_exception());
    }
  }
  // Records the failure in the RunContext (first one wins) and cancels the graph.
  void fail(std::exception_ptr error) noexcept;

  std::atomic<int64_t> executions_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> max_in_flight_{0};
};

// ------------------------------------------------------------------------------------ kinds and instances

struct NodeKind;
class Resources;  // nodes/resources.h

// Everything a factory gets to build one node.
struct NodeContext {
  tbb::flow::graph& graph;
  RunContext& run;
  const Resources& resources;  // built before any node: the models and memories nodes name
  NodeRuntime& runtime;
  const NodeKind& kind;
  const std::string& name;    // node name
  const ParamMap& params;     // its parameters (overrides applied)
  const std::string& where;   // "node 'model'", for from_params
  int concurrency = 1;        // 1 = serial, 0 = unlimited
};

// A built node: owns its TBB nodes (members of the subclass) and exposes them as the ports its kind
// declares. Lives until the pipeline is destroyed; finish() runs once after the run.
class NodeInstance {
 public:
  explicit NodeInstance(const NodeContext& context);
  virtual ~NodeInstance() = default;
  NodeInstance(const NodeInstance&) = delete;
  NodeInstance& operator=(const NodeInstance&) = delete;

  // Called once after wait_for_all, in topological order (also after a stop or a failure): flush
  // files, close the memory store. An exception here is reported as a failure of this node.
  virtual void finish() {}

  const NodeContext& context() const { return context_; }
  const std::string& name() const { return context_.name; }
  NodeRuntime& runtime() const { return context_.runtime; }
  const std::vector<InPort>& inputs() const { return inputs_; }
  const std::vector<OutPort>& outputs() const { return outputs_; }

  // Starts a source; the runner calls it once every edge exists. No-op for other nodes.
  void activate() {
    if (activation_) activation_();
  }

  // For kinds: expose a TBB node as declared input/output `index`; throws std::logic_error if the
  // declared type is not T.
  template <class T>
  void expose_input(size_t index, tbb::flow::receiver<T>& receiver) {
    check_port(inputs_, index, std::type_index(typeid(T)), "input");
    inputs_[index].receiver = static_cast<void*>(&receiver);
  }
  template <class T>
  void expose_output(size_t index, tbb::flow::sender<T>& sender) {
    check_port(outputs_, index, std::type_index(typeid(T)), "output");
    outputs_[index].connect = [&sender, decl = outputs_[index].decl](const InPort& in) {
      if (in.decl.type != decl.type || !in.receiver)
        throw std::logic_error("connect: output '" + decl.name + "' (" + decl.type_name + ") cannot feed input '" +
                               in.decl.name + "' (" + in.decl.type_name + ")");
      tbb::flow::make_edge(sender, *static_cast<tbb::flow::receiver<T>*>(in.receiver));
    };
  }
  void set_activation(std::function<void()> start) { activation_ = std::move(start); }

 private:
  template <class Port>
  void check_port(const std::vector<Port>& ports, size_t index, std::type_index type, const char* what) const {
    if (index >= ports.size() || ports[index].decl.type != type)
      port_mismatch(what, index, index < ports.size() ? ports[index].decl.type_name : std::string());
  }
  [[noreturn]] void port_mismatch(const char* what, size_t index, const std::string& declared) const;

  NodeContext context_;
  std::vector<InPort> inputs_;
  std::vector<OutPort> outputs_;
  std::function<void()> activation_;
};

// A node kind's descriptor.
struct NodeKind {
  std::string name;                // "model-step"
  std::string doc;                 // one line for `sinkflow kinds`
  std::vector<PortDecl> inputs;    // none: a source (gated by the node's max_in_flight)
  std::vector<PortDecl> outputs;
  bool serial_only = false;        // the node's state allows no concurrent bodies (concurrency must be 1)
  // Parses and validates parameters without building anything; throws std::invalid_argument.
  std::function<void(const ParamMap& params, const std::string& where)> check;
  // The parameters with their types and defaults.
  std::function<std::vector<ParamInfo>()> params;
  // Builds the node (its TBB nodes, exposed as the declared ports).
  std::function<std::unique_ptr<NodeInstance>(NodeContext&)> build;

  bool is_source() const { return inputs.empty(); }
};

// A descriptor from a config type (from_params + validate) and a factory
// `make(NodeContext&, Config) -> std::unique_ptr<NodeInstance>`.
template <class Config, class Make>
NodeKind make_node_kind(std::string name, std::string doc, std::vector<PortDecl> inputs,
                        std::vector<PortDecl> outputs, Make make) {
  NodeKind kind;
  kind.name = std::move(name);
  kind.doc = std::move(doc);
  kind.inputs = std::move(inputs);
  kind.outputs = std::move(outputs);
  kind.check = [](const ParamMap& params, const std::string& where) {
    Config::from_params(params, where).validate();
  };
  kind.params = [] { return describe_params<Config>(); };
  kind.build = [make](NodeContext& context) -> std::unique_ptr<NodeInstance> {
    Config config = Config::from_params(context.params, context.where);
    config.validate();
    return make(context, std::move(config));
  };
  return kind;
}
// The common case: Node has a constructor Node(const NodeContext&, Config).
template <class Node, class Config>
NodeKind make_node_kind(std::string name, std::string doc, std::vector<PortDecl> inputs,
                        std::vector<PortDecl> outputs) {
  return make_node_kind<Config>(std::move(name), std::move(doc), std::move(inputs), std::move(outputs),
                                [](const NodeContext& context, Config config) -> std::unique_ptr<NodeInstance> {
                                  return std::make_unique<Node>(context, std::move(config));
                                });
}

// Node kinds by name. Registration is explicit (register_builtin_nodes in nodes/nodes.h), never by
// static initializers: a static library drops objects nothing refers to.
class Registry {
 public:
  // Throws std::logic_error on a duplicate name or an incomplete descriptor.
  void add(NodeKind kind);
  const NodeKind* find(std::string_view name) const;  // nullptr when unknown
  std::vector<std::string> names() const;             // sorted

 private:
  std::map<std::string, NodeKind, std::less<>> kinds_;
};

}  // namespace sinkflow
