// The two shapes of node body, as oneTBB nodes wrapped for the graph's bookkeeping:
//
//   Stage<In<A, B>, Out<X, Y>>  one handler per input port, `void(const A&, Emitter<X, Y>&)`; runs with the
//                               node's concurrency (1 = serial: one body at a time across all its inputs).
//                               One input: a multifunction_node (a function_node for a sink, Out<>);
//                               several: an indexer_node in front of it. Inputs queue (they never reject).
//   Source<Out<X>>             `bool produce(Emitter<X>&)`, called repeatedly while the source's gate has
//                               room; returns false when exhausted. Stops when the run's stop flag is set.
//
// Emitter::put<I>(msg) sends on output I (index into Out<...>), accounting the message to its receivers.
// Bodies must send through the Emitter (never directly to a TBB port) so that queue depths and
// backpressure stay exact. A body that throws fails the node: the graph is cancelled and the run throws
// "node '<name>' (<kind>): <what()>".
//
// A kind uses them as members of its NodeInstance, constructed with the instance (ports are exposed in
// the order of the kind's declaration):
//
//   class ScaleNode : public NodeInstance {
//    public:
//     ScaleNode(const NodeContext& context, ScaleConfig config)
//         : NodeInstance(context), config_(std::move(config)),
//           stage_(*this, [this](const int64_t& v, Emitter<int64_t>& out) { out.put<0>(v * config_.factor); }) {}
//    private:
//     ScaleConfig config_;
//     Stage<In<int64_t>, Out<int64_t>> stage_;
//   };
#pragma once

#include <oneapi/tbb/flow_graph.h>

#include <functional>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "nodes/node_kind.h"

namespace sinkflow {

template <class... Ts>
struct In {};
template <class... Ts>
struct Out {};

template <class... Outs>
class Emitter {
 public:
  using Ports = typename tbb::flow::multifunction_node<tbb::flow::continue_msg, std::tuple<Outs...>>::output_ports_type;

  Emitter(NodeRuntime& runtime, Ports& ports) : runtime_(runtime), ports_(ports) {}

  // Sends `msg` on output I. Receivers always accept (their inputs queue).
  template <size_t I>
  void put(const std::tuple_element_t<I, std::tuple<Outs...>>& msg) {
    for (const Destination& d : runtime_.destinations[I]) d.node->arrive();
    std::get<I>(ports_).try_put(msg);
  }

 private:
  NodeRuntime& runtime_;
  Ports& ports_;
};

// A sink's emitter: nothing to send.
template <>
class Emitter<> {};

template <class Ins, class Outs>
class Stage;

template <class... Ins, class... Outs>
class Stage<In<Ins...>, Out<Outs...>> {
  static_assert(sizeof...(Ins) >= 1, "a Stage has at least one input (a node without inputs is a Source)");
  static constexpr bool kSink = sizeof...(Outs) == 0;
  static constexpr bool kMulti = sizeof...(Ins) > 1;

  using Input = std::conditional_t<kMulti, typename tbb::flow::indexer_node<Ins...>::output_type,
                                   std::tuple_element_t<0, std::tuple<Ins...>>>;
  using Body = std::conditional_t<kSink, tbb::flow::function_node<Input, tbb::flow::continue_msg>,
                                  tbb::flow::multifunction_node<Input, std::tuple<Outs...>>>;
  struct NoIndexer {
    explicit NoIndexer(tbb::flow::graph&) {}
  };
  using Indexer = std::conditional_t<kMulti, tbb::flow::indexer_node<Ins...>, NoIndexer>;

 public:
  using Handlers = std::tuple<std::function<void(const Ins&, Emitter<Outs...>&)>...>;

  explicit Stage(NodeInstance& self, std::function<void(const Ins&, Emitter<Outs...>&)>... handlers)
      : runtime_(self.runtime()),
        handlers_(std::move(handlers)...),
        indexer_(self.context().graph),
        body_(make_body(self.context())) {
    if constexpr (kMulti) {
      tbb::flow::make_edge(indexer_, body_);
      expose_inputs(self, std::index_sequence_for<Ins...>{});
    } else {
      self.expose_input<Input>(0, body_);
    }
    if constexpr (!kSink) expose_outputs(self, std::index_sequence_for<Outs...>{});
  }

 private:
  static size_t concurrency(const NodeContext& context) {
    if (context.concurrency == 0) return tbb::flow::unlimited;
    return static_cast<size_t>(context.concurrency);
  }

  Body make_body(const NodeContext& context) {
    if constexpr (kSink) {
      return Body(context.graph, concurrency(context), [this](const Input& msg) {
        Emitter<> out;
        runtime_.run_body([&] { dispatch(msg, out); });
        return tbb::flow::continue_msg();
      });
    } else {
      return Body(context.graph, concurrency(context),
                  [this](const Input& msg, typename Body::output_ports_type& ports) {
                    Emitter<Outs...> out(runtime_, ports);
                    runtime_.run_body([&] { dispatch(msg, out); });
                  });
    }
  }

  template <class E>
  void dispatch(const Input& msg, E& out) {
    if constexpr (kMulti) {
      dispatch_tagged(msg, out, std::index_sequence_for<Ins...>{});
    } else {
      std::get<0>(handlers_)(msg, out);
    }
  }
  template <class E, size_t... Is>
  void dispatch_tagged(const Input& msg, E& out, std::index_sequence<Is...>) {
    const size_t tag = msg.tag();
    (void)((tag == Is ? (std::get<Is>(handlers_)(
                             tbb::flow::cast_to<std::tuple_element_t<Is, std::tuple<Ins...>>>(msg), out),
                         true)
                      : false) ||
           ...);
  }

  template <size_t... Is>
  void expose_inputs(NodeInstance& self, std::index_sequence<Is...>) {
    (self.expose_input<std::tuple_element_t<Is, std::tuple<Ins...>>>(Is, tbb::flow::input_port<Is>(indexer_)), ...);
  }
  template <size_t... Is>
  void expose_outputs(NodeInstance& self, std::index_sequence<Is...>) {
    (self.expose_output<std::tuple_element_t<Is, std::tuple<Outs...>>>(Is, tbb::flow::output_port<Is>(body_)), ...);
  }

  NodeRuntime& runtime_;
  Handlers handlers_;
  Indexer indexer_;
  Body body_;
};

template <class Outs>
class Source;

template <class... Outs>
class Source<Out<Outs...>> {
  static_assert(sizeof...(Outs) >= 1, "a Source has at least one output");
  using Body = tbb::flow::multifunction_node<tbb::flow::continue_msg, std::tuple<Outs...>>;

 public:
  // One production step: emits any number of messages; returns false when the source is exhausted.
  // Must return promptly (check context().run.stop_requested() if it may wait for input).
  using Produce = std::function<bool(Emitter<Outs...>&)>;

  Source(NodeInstance& self, Produce produce)
      : runtime_(self.runtime()),
        produce_(std::move(produce)),
        body_(self.context().graph, 1, [this](const tbb::flow::continue_msg&, typename Body::output_ports_type& ports) {
          step(ports);
        }) {
    if (!runtime_.gate) throw std::logic_error("Source: node '" + runtime_.name + "' has no gate (not built as a source)");
    runtime_.gate->set_wake([this] { body_.try_put(tbb::flow::continue_msg()); });
    self.set_activation([this] { body_.try_put(tbb::flow::continue_msg()); });
    expose_outputs(self, std::index_sequence_for<Outs...>{});
  }

 private:
  void step(typename Body::output_ports_type& ports) {
    const RunContext& run = runtime_.run;
    if (run.stop_requested() || run.failed()) return;  // done: no further trigger
    bool more = false;
    runtime_.run_source([&] {
      Emitter<Outs...> out(runtime_, ports);
      more = produce_(out);
    });
    if (more && !run.failed() && runtime_.gate->may_continue()) body_.try_put(tbb::flow::continue_msg());
  }

  template <size_t... Is>
  void expose_outputs(NodeInstance& self, std::index_sequence<Is...>) {
    (self.expose_output<std::tuple_element_t<Is, std::tuple<Outs...>>>(Is, tbb::flow::output_port<Is>(body_)), ...);
  }

  NodeRuntime& runtime_;
  Produce produce_;
  Body body_;
};

}  // namespace sinkflow
