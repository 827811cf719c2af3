// The built-in node kinds. Reading nodes/ top to bottom reads the data flow:
//   token-source -> model-step -> eviction -> embedding -> index-insert
//   retrieve -> re-inject -> (model-step's staged injections);  text-out, metrics
#pragma once

#include "nodes/node_kind.h"

namespace sinkflow {

// Adds every built-in kind to `registry`, one line per kind (see nodes/node_kind.h for how a kind is added).
void register_builtin_nodes(Registry& registry);

}  // namespace sinkflow
