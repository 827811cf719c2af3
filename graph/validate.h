// Checks a PipelineSpec against the registry before anything is built, and resolves names to indices.
#pragma once

#include <cstddef>
#include <vector>

#include "graph/spec.h"
#include "nodes/node_kind.h"

namespace sinkflow {

struct ResolvedEdge {
  size_t from_node = 0;  // index into PipelineSpec::nodes
  size_t from_port = 0;  // index into the kind's outputs
  size_t to_node = 0;
  size_t to_port = 0;    // index into the kind's inputs
  bool boundary = false; // enters a step-boundary port
};

struct ResolvedPipeline {
  std::vector<const NodeKind*> kinds;  // per node
  std::vector<ResolvedEdge> edges;     // per edge, same order as the spec
  std::vector<size_t> topo_order;      // node indices, producers first (boundary edges ignored),
                                       // ties in file order
};

// Throws std::invalid_argument at the first problem, naming file:line and the field:
// a bad name, a duplicate node name, an unknown kind (lists the known ones), a bad concurrency or
// max_in_flight, a parameter the kind rejects (unknown, missing, wrong type, out of range), an edge
// endpoint that names no node (dangling), an unknown or ambiguous port, ports of different message
// types (both named), a duplicate edge, and a cycle that enters no step-boundary input port.
// Resources are checked too (their parameters, without loading anything).
ResolvedPipeline validate_pipeline(const PipelineSpec& spec, const Registry& registry);

// "resource 'models.lm'": how messages name a resource (ParamOrigin subject).
std::string resource_subject(const std::string& section, const std::string& name);

}  // namespace sinkflow
