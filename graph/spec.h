// A pipeline as data: nodes (name, kind, parameters) and edges between named ports. Made from YAML by
// graph/yaml_spec.h or in code; checked by graph/validate.h; built and run by graph/graph.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nodes/param_map.h"

namespace sinkflow {

struct NodeSpec {
  std::string name;       // unique in the pipeline; letters, digits, '_' and '-'
  std::string kind;       // a registered node kind ("model-step")
  ParamMap params;        // the kind's parameters (config overrides applied)
  int concurrency = 1;    // bodies running at once: 1 = serial, 0 = unlimited; <= 1024
  int max_in_flight = 0;  // sources only: messages caused by this source queued or running downstream
                          // at most (the backpressure bound), <= 2^16; 0 = RunOptions::default_max_in_flight
  int64_t fail_at = 0;    // tests: the runner makes the node's n-th body run (1-based) throw; 0 = never
  int line = 0;           // line of the node's entry in source_file; 0 = built in code

  // Compares content (name, kind, params, concurrency, max_in_flight), not where it was written.
  bool operator==(const NodeSpec& o) const {
    return name == o.name && kind == o.kind && params == o.params && concurrency == o.concurrency &&
           max_in_flight == o.max_in_flight && fail_at == o.fail_at;
  }
};

struct EdgeSpec {
  std::string from_node;
  std::string from_port;  // empty: the node's only output
  std::string to_node;
  std::string to_port;    // empty: the node's only input
  int line = 0;           // 0 = built in code

  // "src.out -> sink.in" as written (a missing port is left out).
  std::string text() const {
    auto end = [](const std::string& n, const std::string& p) { return p.empty() ? n : n + "." + p; };
    return end(from_node, from_port) + " -> " + end(to_node, to_port);
  }
  bool operator==(const EdgeSpec& o) const {
    return from_node == o.from_node && from_port == o.from_port && to_node == o.to_node && to_port == o.to_port;
  }
};

// A resource declared once under `resources:` (models: or memories:) and named by nodes; its parameters are
// read by nodes/resources.h (ModelResourceConfig, MemoryResourceConfig).
struct ResourceSpec {
  std::string name;  // the key: letters, digits, '_' and '-'
  ParamMap params;   // {path: ..., device: ...} or {dir: ..., embedder: {...}}
  int line = 0;      // 0 = built in code
  bool operator==(const ResourceSpec& o) const { return name == o.name && params == o.params; }
};

struct PipelineSpec {
  std::string name;
  std::string source_file;      // the YAML file it came from; empty = built in code
  std::vector<ResourceSpec> models;    // resources.models, in file order
  std::vector<ResourceSpec> memories;  // resources.memories, in file order
  std::vector<NodeSpec> nodes;  // in file order
  std::vector<EdgeSpec> edges;

  const NodeSpec* find_node(const std::string& node_name) const {
    for (const auto& n : nodes)
      if (n.name == node_name) return &n;
    return nullptr;
  }
  NodeSpec* find_node(const std::string& node_name) {
    for (auto& n : nodes)
      if (n.name == node_name) return &n;
    return nullptr;
  }
  // "pipelines/stream.yaml:12" (or "pipeline 'stream'" when built in code): the prefix of messages.
  std::string where(int line) const {
    if (source_file.empty()) return "pipeline '" + name + "'";
    return line > 0 ? source_file + ":" + std::to_string(line) : source_file;
  }

  // Same name, nodes and edges (in order); source_file and lines are ignored.
  bool operator==(const PipelineSpec& o) const {
    return name == o.name && models == o.models && memories == o.memories && nodes == o.nodes && edges == o.edges;
  }
};

}  // namespace sinkflow
