// Upper limits on sizes read from files, YAML and flags, checked before anything is allocated: a value past one is
// an error naming the field, the value and the limit (README: "Limits"). Real models sit far below each.
#pragma once

#include <cstdint>
#include <string>

namespace sinkflow {

constexpr int64_t kMaxVocab = int64_t{1} << 24;           // vocab_size (Llama-3: 128,256; Gemma: 262,144)
constexpr int64_t kMaxWidth = int64_t{1} << 16;           // hidden_size, head_dim (Llama-3.1-405B: 16,384)
constexpr int64_t kMaxFeedForward = int64_t{1} << 20;     // intermediate_size (405B: 53,248)
constexpr int64_t kMaxLayers = 1024;                      // num_hidden_layers (405B: 126)
constexpr int64_t kMaxHeads = 1024;                       // num_attention_heads, num_key_value_heads
constexpr int64_t kMaxPositions = int64_t{1} << 24;       // max_position_embeddings (1M-context models: 2^20)
constexpr int64_t kMaxCacheTokens = int64_t{1} << 24;     // each region of a KV cache (n_sink, n_memory, n_recent);
                                                          // also prefill_block, a source's block, query_tokens
// Node parameters (YAML, --set). Seeds and ids (sampler.seed, a source's seq) size nothing and have no limit.
constexpr int64_t kMaxThreads = 1024;                     // model-step threads, a node's concurrency
constexpr int64_t kMaxRetrieved = 4096;                   // chunks one query returns or re-injects (select.k, max_chunks)
constexpr int64_t kMaxCandidates = int64_t{1} << 20;      // select.candidates
constexpr int64_t kMaxInFlight = int64_t{1} << 16;        // a source's max_in_flight (blocks)
constexpr int64_t kMaxCount = int64_t{1} << 40;           // counts that size nothing: max_new_tokens, retrieval.every,
                                                          // flush_every, max_age, fail_at

// This machine's physical memory in bytes (0 when unknown).
int64_t physical_memory_bytes();

// "1.5 GiB"
std::string gib_text(double bytes);

}  // namespace sinkflow
