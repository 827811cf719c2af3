// model-step  in: tokens: TokenBlock, inject: Retrieval (step boundary), indexed: int64 (step boundary)
//             out: step: StepResult, evicted: EvictedBatch, query: Query
// Owns the sequence's StreamSession: the only writer of the KV cache. Prefills each block (the session
// evicts inside feed() and hands back the spans, which leave as EvictedBatch copies); after a user turn (or
// the end of an answered input) decodes up to max_new_tokens with the Sampler, one StepResult per token.
// Retrieval triggers: `turn` sends the turn's text as a Query before feeding the turn; `always` sends the
// recent text every retrieve_every tokens. A Retrieval arriving on `inject` is applied (MemoryRegion::inject)
// by its own body run: bodies are serial, so that is always between two steps, never inside one.
// sync: true (evaluation) makes a turn wait for its context instead: model-step flushes the chunker tail and
// parks the turn (later blocks queue behind it; no thread is blocked) until index-insert reports on `indexed`
// that every evicted span sent so far is stored; then it retrieves from the shared store, injects, and feeds
// the turn (deterministic).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"
#include "nodes/resources.h"

namespace sinkflow {

struct ModelStepConfig {
  std::string model;                // model folder (required)
  std::string device = "cpu";       // cpu | cuda | cuda:N | mps
  std::string dtype = "auto";       // auto | float32 | float16 | bfloat16
  int64_t threads = 1;              // LibTorch intra-op threads (1 leaves a core to the memory path); 0 = default
  std::string policy = "sink";      // dense | window | sink | recompute | kv-align | cluster
  std::string kv_align;             // kv-align networks folder ("" = MODEL/kv-align)
  int64_t n_sink = 4;               // attention-sink slots, >= 0
  int64_t n_memory = 0;             // memory-region slots for re-injected chunks, >= 0
  int64_t n_recent = 252;           // recent-window slots, >= 1
  int64_t evict_block = 1;          // tokens evicted at once, in [1, n_recent]
  int64_t prefill_block = 256;      // tokens per forward when prefilling, >= 1
  int64_t max_new_tokens = 32;      // tokens generated per turn, >= 0
  bool stop_at_newline = false;     // end an answer at its first newline (cloze questions)
  double temperature = 0.0;         // 0 = greedy
  int64_t top_k = 0;                // sampling: keep the k most likely tokens, 0 = all
  double top_p = 1.0;               // sampling: nucleus, (0, 1]
  int64_t seed = 0;                 // sampling seed, >= 0
  bool memory = true;               // send evicted spans and queries to the memory path (false = memory off)
  std::string retrieve = "turn";    // retrieval trigger: none | turn | always
  int64_t retrieve_every = 128;     // always: tokens between two queries, >= 1
  int64_t query_tokens = 64;        // always: recent tokens that make the query text, >= 1
  bool sync = false;                // turn: wait for the memory path and retrieve before feeding the turn
  int64_t retrieve_k = 2;           // sync: chunks retrieved, >= 0
  std::string select = "topk";      // sync: topk | mmr | farthest
  double mmr_lambda = 0.5;          // sync, mmr: relevance weight, [0, 1]
  std::string inject = "text";      // re-injection: text (prefill the chunk) | kv (restore its stored K/V)
  std::string replace = "score";    // memory region replacement: score | lru
  bool show_retrieval = false;      // print each re-injected chunk (score, position, text) to stderr
  MemoryParams memory_params;       // sync: the store to retrieve from (memory_dir, embedder, ...)
  int64_t fail_at = 0;              // tests: throw at this message (1-based); 0 = never
  ParamOrigin origin;

  static ModelStepConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

// What model-step did in a run (for `sinkflow bench pipeline` and tests).
struct ModelStepStats {
  int64_t prefill_tokens = 0;       // tokens fed from TokenBlocks
  double ingest_wall_s = 0;         // from the first block to the end of the last prefill
  double prefill_busy_s = 0;        // time inside feed() for TokenBlocks
  int64_t decode_tokens = 0;        // tokens generated
  double decode_s = 0;              // time in decode loops
  int64_t injected_chunks = 0;      // chunks written into the memory region
  int64_t tokens_evicted = 0;
  std::vector<int64_t> generated;   // every generated token id, in order
};

// The stats of a built model-step node; std::invalid_argument if `node` is not one.
ModelStepStats model_step_stats(const NodeInstance& node);

NodeKind model_step_kind();

}  // namespace sinkflow
