#include "graph/graph.h"

#include <oneapi/tbb/flow_graph.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

#include "graph/validate.h"
#include "nodes/resources.h"

namespace sinkflow {

namespace {
std::string what_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown exception";
  }
}
}  // namespace

struct Pipeline::State {
  PipelineSpec spec;
  RunOptions options;
  ResolvedPipeline resolved;                   // its kinds point into `kinds`
  std::vector<std::unique_ptr<NodeKind>> kinds;  // copies: the registry need not outlive the pipeline
  RunContext run;
  Resources resources;  // built before the nodes, destroyed after them
  std::unique_ptr<Profiler> profiler;
  // Destruction runs bottom-up: instances (their TBB nodes) before the runtimes and the graph.
  std::unique_ptr<tbb::flow::graph> graph;
  std::vector<std::string> wheres;  // "node 'x'" per node, referenced by NodeContext
  std::vector<std::unique_ptr<SourceGate>> gates;
  std::vector<std::unique_ptr<NodeRuntime>> runtimes;
  std::vector<std::unique_ptr<NodeInstance>> instances;

  std::atomic<bool> started{false};
  std::atomic<bool> ended{false};
  double wall_s = 0;

  State(PipelineSpec s, const Registry& registry, RunOptions o) : spec(std::move(s)), options(o) {
    if (options.default_max_in_flight < 1)
      throw std::invalid_argument("RunOptions::default_max_in_flight: expected >= 1, found " +
                                  std::to_string(options.default_max_in_flight));
    resolved = validate_pipeline(spec, registry);
    for (const NodeKind*& kind : resolved.kinds) {
      auto same = std::find_if(kinds.begin(), kinds.end(), [&](const auto& k) { return k->name == kind->name; });
      if (same == kinds.end()) same = kinds.insert(kinds.end(), std::make_unique<NodeKind>(*kind));
      kind = same->get();
    }
    build_resources();
    if (options.profile) profiler = std::make_unique<Profiler>();
    graph = std::make_unique<tbb::flow::graph>();
    const size_t n = spec.nodes.size();
    wheres.reserve(n);  // NodeContext keeps references into it

    // Bookkeeping first, so that it is complete before any body can run.
    for (size_t i = 0; i < n; ++i) {
      const NodeSpec& node = spec.nodes[i];
      const NodeKind& kind = *resolved.kinds[i];
      wheres.push_back("node '" + node.name + "'");
      runtimes.push_back(std::make_unique<NodeRuntime>(node.name, kind.name, static_cast<uint32_t>(i), *graph, run,
                                                       profiler.get()));
      runtimes[i]->destinations.resize(kind.outputs.size());
      runtimes[i]->fail_at = node.fail_at;
      if (kind.is_source()) {
        gates.push_back(std::make_unique<SourceGate>(node.max_in_flight > 0 ? node.max_in_flight
                                                                            : options.default_max_in_flight));
        runtimes[i]->gate = gates.back().get();
      }
    }
    for (const ResolvedEdge& e : resolved.edges)
      runtimes[e.from_node]->destinations[e.from_port].push_back({runtimes[e.to_node].get(), e.to_port});
    for (size_t s = 0; s < n; ++s) {
      if (!runtimes[s]->gate) continue;
      std::vector<bool> seen(n, false);
      std::vector<size_t> todo{s};
      seen[s] = true;
      while (!todo.empty()) {
        const size_t u = todo.back();
        todo.pop_back();
        for (const ResolvedEdge& e : resolved.edges) {
          if (e.from_node != u || seen[e.to_node]) continue;
          seen[e.to_node] = true;
          runtimes[e.to_node]->upstream.push_back(runtimes[s]->gate);
          todo.push_back(e.to_node);
        }
      }
    }

    // Nodes.
    for (size_t i = 0; i < n; ++i) {
      const NodeSpec& node = spec.nodes[i];
      const NodeKind& kind = *resolved.kinds[i];
      NodeContext context{*graph, run, resources, *runtimes[i], kind, node.name, node.params, wheres[i],
                          node.concurrency};
      const std::string head = spec.where(node.line) + ": node '" + node.name + "' (" + kind.name + "): ";
      try {
        instances.push_back(kind.build(context));
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(head + e.what());
      } catch (const std::logic_error&) {
        throw;
      } catch (const std::exception& e) {
        throw std::runtime_error(head + e.what());
      }
      if (!instances.back()) throw std::logic_error("node kind '" + kind.name + "': build returned nothing");
      for (const auto& in : instances.back()->inputs())
        if (!in.receiver)
          throw std::logic_error("node kind '" + kind.name + "' did not expose its input port '" + in.decl.name + "'");
      for (const auto& out : instances.back()->outputs())
        if (!out.connect)
          throw std::logic_error("node kind '" + kind.name + "' did not expose its output port '" + out.decl.name + "'");
    }

    // Edges.
    for (const ResolvedEdge& e : resolved.edges)
      instances[e.from_node]->outputs()[e.from_port].connect(instances[e.to_node]->inputs()[e.to_port]);

    spdlog::info("pipeline '{}': {} nodes, {} edges, profiling {}", spec.name, n, spec.edges.size(),
                 options.profile ? "on" : "off");
  }

  // Every declared resource, models first (an lm embedder names one). Parameters were checked by
  // validate_pipeline and their messages carry their own file:line; a failure to load or open names the
  // resource's line.
  void build_resources() {
    auto build = [&](const ResourceSpec& r, const char* section, const auto& add) {
      const std::string head = spec.where(r.line) + ": " + resource_subject(section, r.name) + ": ";
      try {
        add();
      } catch (const std::logic_error& e) {
        if (!dynamic_cast<const std::invalid_argument*>(&e)) throw;
        throw std::invalid_argument(head + e.what());
      } catch (const std::exception& e) {
        throw std::runtime_error(head + e.what());
      }
    };
    for (const ResourceSpec& r : spec.models) {
      const ModelResourceConfig config = ModelResourceConfig::from_params(r.params, resource_subject("models", r.name));
      build(r, "models", [&] { resources.add_model(r.name, config); });
    }
    for (const ResourceSpec& r : spec.memories) {
      const MemoryResourceConfig config =
          MemoryResourceConfig::from_params(r.params, resource_subject("memories", r.name));
      build(r, "memories", [&] { resources.add_memory(r.name, config); });
    }
  }

  void execute() {
    if (started.exchange(true)) throw std::logic_error("Pipeline '" + spec.name + "' was already run; build another");
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i : resolved.topo_order)
      if (resolved.kinds[i]->is_source()) instances[i]->activate();
    graph->wait_for_all();

    // finish() hooks, producers first; the first failure of a hook is reported unless a body failed.
    std::exception_ptr finish_error;
    size_t finish_node = 0;
    for (size_t i : resolved.topo_order) {
      try {
        instances[i]->finish();
      } catch (...) {
        spdlog::error("node '{}' ({}) finish: {}", spec.nodes[i].name, resolved.kinds[i]->name,
                      what_of(std::current_exception()));
        if (!finish_error) {
          finish_error = std::current_exception();
          finish_node = i;
        }
      }
    }
    wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ended = true;

    if (auto failure = run.failure()) {
      throw NodeError(failure->node, failure->kind, failure->error,
                      "node '" + failure->node + "' (" + failure->kind + "): " + what_of(failure->error));
    }
    if (finish_error) {
      const std::string& name = spec.nodes[finish_node].name;
      const std::string& kind = resolved.kinds[finish_node]->name;
      throw NodeError(name, kind, finish_error, "node '" + name + "' (" + kind + ") finish: " + what_of(finish_error));
    }
    spdlog::info("pipeline '{}': {} in {:.3f} s", spec.name, run.stop_requested() ? "stopped" : "done", wall_s);
  }

  std::vector<TraceNode> trace_nodes() const {
    std::vector<TraceNode> out;
    for (const auto& r : runtimes) out.push_back({r->name, r->kind, r->executions(), r->max_queue()});
    return out;
  }
};

Pipeline::Pipeline(PipelineSpec spec, const Registry& registry, RunOptions options)
    : state_(std::make_shared<State>(std::move(spec), registry, options)) {}

Pipeline::~Pipeline() = default;

const PipelineSpec& Pipeline::spec() const { return state_->spec; }
RunContext& Pipeline::context() { return state_->run; }
const Resources& Pipeline::resources() const { return state_->resources; }
void Pipeline::request_stop() noexcept { state_->run.request_stop(); }

void Pipeline::run() { state_->execute(); }

void Pipeline::run_for(std::chrono::milliseconds deadline) {
  struct Completion {
    std::mutex mutex;
    std::condition_variable cv;
    bool finished = false;
    std::exception_ptr error;
  };
  auto state = state_;
  auto done = std::make_shared<Completion>();
  if (state->started.load()) throw std::logic_error("Pipeline '" + state->spec.name + "' was already run; build another");
  std::thread worker([state, done] {
    std::exception_ptr error;
    try {
      state->execute();
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(done->mutex);
    done->error = error;
    done->finished = true;
    done->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(done->mutex);
  if (done->cv.wait_for(lock, deadline, [&] { return done->finished; })) {
    lock.unlock();
    worker.join();
    if (done->error) std::rethrow_exception(done->error);
    return;
  }
  const std::string message =
      "pipeline '" + state->spec.name + "' did not finish within " + std::to_string(deadline.count()) + " ms";
  spdlog::error("{}; stopping and cancelling it", message);
  state->run.request_stop();
  state->graph->cancel();
  const bool ended = done->cv.wait_for(lock, std::chrono::seconds(5), [&] { return done->finished; });
  lock.unlock();
  if (ended) {
    worker.join();
    throw std::runtime_error(message + "; it was stopped and cancelled");
  }
  worker.detach();  // keeps `state` alive on its own
  throw std::runtime_error(message + " and did not end when cancelled (a node body is blocked); abandoned");
}

RunSummary Pipeline::summary() const {
  RunSummary s = make_run_summary(state_->spec.name, state_->run.counters, state_->wall_s, state_->run.stop_requested());
  s.signal = state_->run.stop_signal();
  return s;
}

std::vector<NodeProfile> Pipeline::profile_table() const {
  std::vector<ProfileEvent> events;
  if (state_->profiler && state_->ended) events = state_->profiler->events();
  return make_profile_table(state_->trace_nodes(), events);
}

std::string Pipeline::chrome_trace_json() const {
  if (!state_->profiler)
    throw std::logic_error("pipeline '" + state_->spec.name + "': profiling is off (RunOptions::profile)");
  std::vector<ProfileEvent> events;
  if (state_->ended) events = state_->profiler->events();
  return sinkflow::chrome_trace_json(state_->spec.name, state_->trace_nodes(), state_->resolved.topo_order, events);
}

void Pipeline::write_chrome_trace(const std::string& path) const {
  const std::string json = chrome_trace_json();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("cannot write trace file '" + path + "'");
  out << json;
  if (!out) throw std::runtime_error("cannot write trace file '" + path + "'");
}

NodeInstance& Pipeline::node(const std::string& name) const {
  for (size_t i = 0; i < state_->spec.nodes.size(); ++i)
    if (state_->spec.nodes[i].name == name) return *state_->instances[i];
  throw std::invalid_argument("pipeline '" + state_->spec.name + "' has no node '" + name + "'");
}

std::vector<std::string> Pipeline::topological_order() const {
  std::vector<std::string> out;
  for (size_t i : state_->resolved.topo_order) out.push_back(state_->spec.nodes[i].name);
  return out;
}

namespace {
std::atomic<RunContext*> signal_target{nullptr};
extern "C" void stop_on_signal(int signal) {
  if (RunContext* run = signal_target.load()) run->request_stop(signal);
}
}  // namespace

struct StopOnSignal::Saved {
  struct sigaction interrupt {};
  struct sigaction terminate {};
};

StopOnSignal::StopOnSignal(RunContext& run) : saved_(std::make_unique<Saved>()) {
  RunContext* expected = nullptr;
  if (!signal_target.compare_exchange_strong(expected, &run))
    throw std::logic_error("StopOnSignal: another one is active");
  struct sigaction action {};
  action.sa_handler = stop_on_signal;
  sigemptyset(&action.sa_mask);
  // SA_RESETHAND: a second Ctrl-C kills at once. Sources blocked on input wake on their own (InputStream polls).
  action.sa_flags = SA_RESETHAND | SA_RESTART;
  sigaction(SIGINT, &action, &saved_->interrupt);
  sigaction(SIGTERM, &action, &saved_->terminate);
}

StopOnSignal::~StopOnSignal() {
  sigaction(SIGINT, &saved_->interrupt, nullptr);
  sigaction(SIGTERM, &saved_->terminate, nullptr);
  signal_target.store(nullptr);
}

std::string describe_kinds(const Registry& registry) {
  std::string out;
  auto ports = [](const std::vector<PortDecl>& list) {
    std::string s;
    for (size_t i = 0; i < list.size(); ++i)
      s += (i ? ", " : "") + list[i].name + ": " + list[i].type_name + (list[i].boundary ? " (step boundary)" : "");
    return s.empty() ? std::string("-") : s;
  };
  for (const auto& name : registry.names()) {
    const NodeKind& k = *registry.find(name);
    out += name + "  [" + ports(k.inputs) + "] -> [" + ports(k.outputs) + "]" + (k.serial_only ? "  serial" : "") +
           "\n    " + k.doc + "\n";
    for (const auto& p : k.params()) out += "    " + p.name + ": " + p.type + " = " + p.default_value + "\n";
  }
  return out;
}

}  // namespace sinkflow
