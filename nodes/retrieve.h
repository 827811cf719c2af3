// retrieve  in: query: Query  out: hits: Retrieval
// Embeds the query text and selects chunks from the shared store (top-k, MMR or farthest-point). The queries
// come from model-step: trigger `turn` (each user turn; query = the turn) and `always` (every N tokens;
// query = recent text). Counts RunCounters::retrievals. Reads the store while index-insert writes it.
#pragma once

#include <cstdint>
#include <string>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"
#include "nodes/resources.h"

namespace sinkflow {

struct RetrieveConfig {
  MemoryParams memory_params;   // memory_dir, embedder, embed_dim, embedder_model, reset
  int64_t k = 2;                // chunks per query, >= 0
  std::string select = "topk";  // topk | mmr | farthest
  double mmr_lambda = 0.5;      // mmr: relevance weight, [0, 1]
  int64_t candidates = 20;      // nearest chunks considered, >= 0
  double min_score = -1.0;      // drop chunks less similar than this, [-1, 1]
  bool load_kv = false;         // fetch the chunks' stored K/V (kv re-injection)
  int64_t fail_at = 0;          // tests: throw at this message (1-based); 0 = never
  ParamOrigin origin;

  static RetrieveConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

NodeKind retrieve_kind();

}  // namespace sinkflow
