// model-step  in: tokens: TokenBlock, inject: Retrieval (step boundary), indexed: int64 (index-insert's progress)
//             out: step: StepResult, evicted: EvictedBatch, query: Query
// Owns the sequence's StreamSession: the only writer of the KV cache. Prefills each block (the session
// evicts inside feed() and hands back the spans, which leave as EvictedBatch copies); after a user turn (or
// the end of an answered input) decodes up to max_new_tokens with the Sampler, one StepResult per token; a
// reply ends at a stop id, a stop string (not part of the reply) or the limit.
// Retrieval (retrieval.trigger): `turn` sends the turn's text as a Query before feeding the turn; `always`
// sends the recent text every retrieval.every tokens. model-step never retrieves itself: the retrieve node does.
// A Retrieval arriving on `inject` is applied by its own body run: bodies are serial, so that is always between
// two steps, never inside one. Placement `region` writes the chunks into the cache's memory region
// (MemoryRegion::inject); `prompt` feeds their text into the stream right before the turn, and those tokens are
// never sent to the memory path again when they are evicted. retrieval.sync (evaluation, chat, and always with
// placement prompt) makes a turn wait for its context: model-step flushes the chunker tail, sends a sync Query
// that names the last EvictedBatch, and parks the turn (later blocks queue behind it; no thread is blocked) until
// the answer arrives on `inject` (retrieve waits for index-insert first); then it places it and feeds the turn.
// Chat (chat.template not "none"): TokenBlocks carry messages (role, text) that model-step writes through the
// chat template (models/text/chat_turns.h); commands (reset, stats, memory) are answered in order; every reply
// ends with a TurnReport. checkpoint: after each reply the whole state (cache, chat, sampler, memory region) is
// written atomically to that file, once index-insert reports (on `indexed`) that everything evicted before it is
// stored; a model-step whose checkpoint file exists starts from it (a resumed conversation).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/cache/kv_cache.h"
#include "models/memory/memory_path.h"
#include "models/nn/sampler.h"
#include "models/stream/stream.h"
#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct ModelStepConfig {
  std::string model;                // model resource (required)
  int64_t threads = 1;              // LibTorch intra-op threads (1 leaves a core to the memory path); 0 = default; <= 1024
  Policy policy = Policy::sink;     // dense | window | sink | recompute | kv-align | cluster
  std::string kv_align;             // kv-align networks folder ("" = MODEL/kv-align)
  CacheConfig cache;                // cache: {n_sink: 4, n_memory: 0, n_recent: 252, evict_block: 1}
  int64_t prefill_block = 256;      // tokens per forward when prefilling, [1, 2^24] (capped at n_recent)
  int64_t max_new_tokens = 32;      // tokens generated per turn, [0, 2^40]
  bool stop_at_newline = false;     // end an answer at its first newline (cloze questions)
  SamplerConfig sampler;            // sampler: {temperature: 0 (greedy), top_k: 0, top_p: 1.0, min_p: 0,
                                    //   repetition_penalty: 1, repeat_last_n: 64, seed: 0, model_defaults: false}
  bool sampler_model_defaults = false;  // sampler.model_defaults: the folder's generation_config.json sampling
                                        // (do_sample, temperature, top_k, top_p, min_p, repetition_penalty) first
  bool memory = true;               // send evicted spans and queries to the memory path (false = memory off)
  RetrievalOptions retrieval;       // retrieval: {trigger: turn, every: 128, query_tokens: 64, sync: false,
                                    //             inject: text, replace: score}
  bool show_retrieval = false;      // print each re-injected chunk (score, position, text) to stderr
  std::vector<std::string> stop;    // stop strings: a reply ends where one appears (it is not part of the reply)
  std::string chat_template = "none";  // chat.template: none (blocks are tokens) | auto (the model folder's own
                                       // template, else "plain") | a built-in format (chatml, llama3, ...)
  std::string system;               // chat.system: a system message before the first turn ("" = none)
  std::string checkpoint;           // "" = none; else the state file of a resumable conversation
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
  std::vector<int64_t> injected_ids;  // their chunk ids, in the order written
  std::vector<int64_t> injected_at;   // the stream position (tokens fed so far) when each was written
  int64_t tokens_evicted = 0;
  std::vector<int64_t> generated;   // every generated token id, in order
  int64_t turns = 0;                // user turns answered
  int64_t unindexed_tokens = 0;     // tokens fed that never go to the memory path (placement prompt's text)
  std::vector<std::pair<int64_t, int64_t>> unindexed_ranges;  // their stream positions, [begin, end)
  std::vector<float> first_logits;  // the logits the last reply's first token was chosen from
  bool resumed = false;             // started from a checkpoint
  int64_t snapshots = 0;            // checkpoints written
};

// The stats of a built model-step node; std::invalid_argument if `node` is not one.
ModelStepStats model_step_stats(const NodeInstance& node);
// The decoder a built model-step node runs (its model resource's); std::invalid_argument if `node` is not one.
std::shared_ptr<const Decoder> model_step_decoder(const NodeInstance& node);

NodeKind model_step_kind();

}  // namespace sinkflow
