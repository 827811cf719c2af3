#include "nodes/nodes.h"

namespace sinkflow {

void register_builtin_nodes(Registry& registry) {
  // One line per kind, in data-flow order, e.g.
  //   registry.add(token_source_kind());
  (void)registry;
}

}  // namespace sinkflow
