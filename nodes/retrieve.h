// retrieve  in: query: Query, indexed: int64 (the EvictedBatch step index-insert has stored)  out: hits: Retrieval
// The one place that retrieves. Embeds the query text and selects chunks from the memory resource's store
// (top-k, MMR or farthest-point). Queries come from model-step: trigger `turn` (each user turn; query = the
// turn) and `always` (every N tokens; query = recent text). A sync query (a turn that waits for its context)
// is held until index-insert reports on `indexed` that every span evicted before it is stored, then answered
// even without hits; other queries are answered at once, and only when something was found. Serial (it holds
// the waiting queries). Counts RunCounters::retrievals. Reads the store while index-insert writes it.
#pragma once

#include <cstdint>
#include <string>

#include "models/memory/chunk_store.h"
#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct RetrieveConfig {
  std::string memory;     // memory resource (required)
  SelectOptions select;   // select: {k: 2, mode: topk | mmr | farthest, mmr_lambda, candidates, min_score}
  bool load_kv = false;   // always fetch the chunks' stored K/V (a query from a kv-injecting model-step asks anyway)
  ParamOrigin origin;

  static RetrieveConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

NodeKind retrieve_kind();

}  // namespace sinkflow
