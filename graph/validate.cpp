#include "graph/validate.h"

#include <algorithm>
#include <functional>
#include <map>
#include <queue>
#include <stdexcept>

#include "models/io/limits.h"
#include "nodes/resources.h"

namespace sinkflow {

namespace {

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string port_names(const std::vector<PortDecl>& ports) {
  std::vector<std::string> names;
  for (const auto& p : ports) names.push_back(p.name);
  return names.empty() ? std::string("none") : join(names, ", ");
}

// The port of `node` named `port` (or its only port when `port` is empty), on the side `side`.
size_t resolve_port(const PipelineSpec& spec, const EdgeSpec& edge, const NodeSpec& node, const NodeKind& kind,
                    const std::string& port, bool output) {
  const auto& ports = output ? kind.outputs : kind.inputs;
  const char* side = output ? "output" : "input";
  const std::string head = spec.where(edge.line) + ": edge '" + edge.text() + "': node '" + node.name + "' (" +
                           kind.name + ") ";
  if (port.empty()) {
    if (ports.size() == 1) return 0;
    throw std::invalid_argument(head + "has " + std::to_string(ports.size()) + " " + side + " ports (" +
                                port_names(ports) + "); name one as " + node.name + ".PORT");
  }
  for (size_t i = 0; i < ports.size(); ++i)
    if (ports[i].name == port) return i;
  throw std::invalid_argument(head + "has no " + side + " port '" + port + "'; its " + side + " ports: " +
                              port_names(ports));
}

}  // namespace

std::string resource_subject(const std::string& section, const std::string& name) {
  return "resource '" + section + "." + name + "'";
}

ResolvedPipeline validate_pipeline(const PipelineSpec& spec, const Registry& registry) {
  ResolvedPipeline out;
  std::map<std::string, size_t> index;

  // Resources: parameters only (nothing is loaded here).
  for (const ResourceSpec& r : spec.models)
    ModelResourceConfig::from_params(r.params, resource_subject("models", r.name)).validate();
  for (const ResourceSpec& r : spec.memories) {
    const MemoryResourceConfig c = MemoryResourceConfig::from_params(r.params, resource_subject("memories", r.name));
    c.validate();
    if (c.embedder.kind == EmbedderKind::lm &&
        std::none_of(spec.models.begin(), spec.models.end(), [&](const ResourceSpec& m) { return m.name == c.embedder.model; })) {
      std::vector<std::string> names;
      for (const ResourceSpec& m : spec.models) names.push_back(m.name);
      c.embedder.origin.fail("model", "a model resource (declared under resources.models: " +
                                          (names.empty() ? std::string("none") : join(names, ", ")) + ")",
                             "'" + c.embedder.model + "'");
    }
  }

  // Nodes: names, kinds, node-level settings, parameters.
  for (size_t i = 0; i < spec.nodes.size(); ++i) {
    const NodeSpec& node = spec.nodes[i];
    const std::string where = spec.where(node.line);
    if (node.name.empty()) throw std::invalid_argument(where + ": node without a name");
    auto [it, inserted] = index.emplace(node.name, i);
    if (!inserted) {
      const NodeSpec& first = spec.nodes[it->second];
      throw std::invalid_argument(where + ": duplicate node name '" + node.name + "' (first defined at " +
                                  spec.where(first.line) + ")");
    }
    const NodeKind* kind = registry.find(node.kind);
    if (!kind) {
      throw std::invalid_argument(where + ": node '" + node.name + "' has unknown kind '" + node.kind +
                                  "'; known kinds: " + join(registry.names(), ", "));
    }
    out.kinds.push_back(kind);
    const std::string subject = "node '" + node.name + "' (" + kind->name + ")";
    if (node.concurrency < 0 || node.concurrency > kMaxThreads)
      throw std::invalid_argument(where + ": " + subject + " 'concurrency': expected 1 (serial), N in (1, " +
                                  std::to_string(kMaxThreads) + "] or 0 (unlimited), found " +
                                  std::to_string(node.concurrency));
    if ((kind->serial_only || kind->is_source()) && node.concurrency != 1)
      throw std::invalid_argument(where + ": " + subject + " 'concurrency': expected 1 (" +
                                  (kind->is_source() ? "sources run serially" : "this kind is serial only") +
                                  "), found " + std::to_string(node.concurrency));
    if (node.fail_at < 0 || node.fail_at > kMaxCount)
      throw std::invalid_argument(where + ": " + subject + " 'fail_at': expected an integer in [0, " +
                                  std::to_string(kMaxCount) + "] (0 = never), found " + std::to_string(node.fail_at));
    if (node.max_in_flight < 0 || node.max_in_flight > kMaxInFlight || (node.max_in_flight > 0 && !kind->is_source()))
      throw std::invalid_argument(where + ": " + subject + " 'max_in_flight': expected " +
                                  (kind->is_source() ? "an integer in [1, " + std::to_string(kMaxInFlight) + "] (0 = default)"
                                                     : std::string("nothing (sources only)")) +
                                  ", found " + std::to_string(node.max_in_flight));
    kind->check(node.params, "node '" + node.name + "'");
  }

  // Edges: endpoints, ports, types, duplicates.
  for (const EdgeSpec& edge : spec.edges) {
    const std::string where = spec.where(edge.line);
    for (const std::string* n : {&edge.from_node, &edge.to_node}) {
      if (!index.count(*n)) {
        std::vector<std::string> names;
        for (const auto& node : spec.nodes) names.push_back(node.name);
        throw std::invalid_argument(where + ": edge '" + edge.text() + "': no node named '" + *n +
                                    "'; nodes: " + (names.empty() ? std::string("none") : join(names, ", ")));
      }
    }
    ResolvedEdge r;
    r.from_node = index.at(edge.from_node);
    r.to_node = index.at(edge.to_node);
    const NodeKind& from_kind = *out.kinds[r.from_node];
    const NodeKind& to_kind = *out.kinds[r.to_node];
    r.from_port = resolve_port(spec, edge, spec.nodes[r.from_node], from_kind, edge.from_port, true);
    r.to_port = resolve_port(spec, edge, spec.nodes[r.to_node], to_kind, edge.to_port, false);
    const PortDecl& from = from_kind.outputs[r.from_port];
    const PortDecl& to = to_kind.inputs[r.to_port];
    r.boundary = to.boundary;
    if (from.type != to.type)
      throw std::invalid_argument(where + ": edge '" + edge.text() + "' connects output '" + edge.from_node + "." +
                                  from.name + "' of type " + from.type_name + " to input '" + edge.to_node + "." +
                                  to.name + "' of type " + to.type_name + "; the types must be equal");
    for (size_t j = 0; j < out.edges.size(); ++j) {
      const ResolvedEdge& o = out.edges[j];
      if (o.from_node == r.from_node && o.from_port == r.from_port && o.to_node == r.to_node && o.to_port == r.to_port)
        throw std::invalid_argument(where + ": edge '" + edge.text() + "' repeats the edge at " +
                                    spec.where(spec.edges[j].line));
    }
    out.edges.push_back(r);
  }

  // A node with input ports and no edge into any of them would never run: refused now rather than found idle
  // (or waited on) at run time. The message names the outputs that could feed it.
  for (size_t u = 0; u < spec.nodes.size(); ++u) {
    const NodeKind& kind = *out.kinds[u];
    if (kind.inputs.empty()) continue;
    bool fed = false;
    for (const ResolvedEdge& e : out.edges) fed = fed || e.to_node == u;
    if (fed) continue;
    std::vector<std::string> inputs, feeders;
    for (const PortDecl& in : kind.inputs) {
      inputs.push_back("'" + in.name + "' (" + in.type_name + ")");
      for (size_t v = 0; v < spec.nodes.size(); ++v)
        for (const PortDecl& o : out.kinds[v]->outputs)
          if (v != u && o.type == in.type)
            feeders.push_back("'" + spec.nodes[v].name + "." + o.name + " -> " + spec.nodes[u].name + "." + in.name + "'");
    }
    throw std::invalid_argument(spec.where(spec.nodes[u].line) + ": node '" + spec.nodes[u].name + "' (" +
                                spec.nodes[u].kind + ") receives nothing: no edge enters its input" +
                                (inputs.size() > 1 ? "s " : " ") + join(inputs, ", ") +
                                (feeders.empty() ? std::string() : "; connect e.g. " + join(feeders, " or ")));
  }

  // Cycles: without the edges into step-boundary ports the graph must be acyclic.
  const size_t n = spec.nodes.size();
  std::vector<std::vector<size_t>> succ(n);  // edge indices leaving each node
  for (size_t e = 0; e < out.edges.size(); ++e)
    if (!out.edges[e].boundary) succ[out.edges[e].from_node].push_back(e);
  std::vector<int> color(n, 0);  // 0 new, 1 on the DFS path, 2 done
  std::vector<size_t> path;      // the DFS path, node indices
  std::function<void(size_t)> visit = [&](size_t u) {
    color[u] = 1;
    path.push_back(u);
    for (size_t e : succ[u]) {
      const size_t v = out.edges[e].to_node;
      if (color[v] == 1) {
        std::vector<std::string> names;
        for (auto it = std::find(path.begin(), path.end(), v); it != path.end(); ++it) names.push_back(spec.nodes[*it].name);
        names.push_back(spec.nodes[v].name);
        throw std::invalid_argument(spec.where(spec.edges[e].line) + ": edge '" + spec.edges[e].text() +
                                    "' closes the cycle " + join(names, " -> ") +
                                    ", which enters no step-boundary input port (only a cycle through such a "
                                    "port, e.g. model-step's staged injections, is allowed)");
      }
      if (color[v] == 0) visit(v);
    }
    path.pop_back();
    color[u] = 2;
  };
  for (size_t u = 0; u < n; ++u)
    if (color[u] == 0) visit(u);

  // Topological order (Kahn), ties in file order.
  std::vector<size_t> indegree(n, 0);
  for (const auto& e : out.edges)
    if (!e.boundary) ++indegree[e.to_node];
  std::priority_queue<size_t, std::vector<size_t>, std::greater<>> ready;
  for (size_t u = 0; u < n; ++u)
    if (indegree[u] == 0) ready.push(u);
  while (!ready.empty()) {
    const size_t u = ready.top();
    ready.pop();
    out.topo_order.push_back(u);
    for (size_t e : succ[u])
      if (--indegree[out.edges[e].to_node] == 0) ready.push(out.edges[e].to_node);
  }
  return out;
}

}  // namespace sinkflow
