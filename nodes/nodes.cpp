#include "nodes/nodes.h"

#include "nodes/embedding.h"
#include "nodes/chat_out.h"
#include "nodes/eviction.h"
#include "nodes/index_insert.h"
#include "nodes/metrics.h"
#include "nodes/model_step.h"
#include "nodes/re_inject.h"
#include "nodes/retrieve.h"
#include "nodes/text_out.h"
#include "nodes/token_source.h"

namespace sinkflow {

void register_builtin_nodes(Registry& registry) {
  // One line per kind, in data-flow order.
  registry.add(token_source_kind());
  registry.add(model_step_kind());
  registry.add(eviction_kind());
  registry.add(embedding_kind());
  registry.add(index_insert_kind());
  registry.add(retrieve_kind());
  registry.add(re_inject_kind());
  registry.add(text_out_kind());
  registry.add(chat_out_kind());
  registry.add(metrics_kind());
}

}  // namespace sinkflow
