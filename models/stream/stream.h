// A stream through one sequence's KV cache under a named policy: the bare decode loop that model-step
// runs and that `sinkflow ppl`, `generate` and the benchmarks drive.
//   dense      no eviction; an error once the cache (<= the model's max positions) is full
//   window     recent window only (no sinks)
//   sink       StreamingLLM: n_sink attention sinks + memory region + recent window
//   recompute  sliding window with re-computation: every step rebuilds the cached tokens' K/V from
//              scratch at in-cache positions 0..L-1 (exact, slow: the paper's speed baseline)
//   kv-align   (GPT-2 family) sinks + window whose K/V are realigned by learned networks after each
//              eviction, always from the originally computed K/V (models/kv_align.h)
//   cluster    sinks + window, and the memory region holds n_memory centroids of the evicted K/V, clustered
//              online per layer and KV head (models/cluster.h); any family
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/io/names.h"
#include "models/nn/decoder.h"
#include "models/cache/kv_cache.h"

namespace sinkflow {

enum class Policy { dense, window, sink, recompute, kv_align, cluster };
inline constexpr NameTable<Policy, 6> kPolicyNames{{{{Policy::dense, "dense"},
                                                     {Policy::window, "window"},
                                                     {Policy::sink, "sink"},
                                                     {Policy::recompute, "recompute"},
                                                     {Policy::kv_align, "kv-align"},
                                                     {Policy::cluster, "cluster"}}}};

Policy parse_policy(const std::string& name);  // throws std::invalid_argument listing the policies
const char* policy_name(Policy policy);

class KvAlign;
class ClusterMemory;

struct StreamConfig {
  Policy policy = Policy::sink;
  std::shared_ptr<const KvAlign> kv_align;  // the networks of the kv-align policy
  uint64_t cluster_seed = 0;                // the cluster policy's k-means++ seed
  CacheConfig cache;           // n_sink is forced to 0 for window and dense; dense never evicts
  int64_t prefill_block = 256; // tokens per forward when feeding text, > 0 (capped at n_recent)
  // The cache configuration the policy actually uses.
  CacheConfig resolved_cache() const;
  void validate(const ModelConfig& model, const std::string& where) const;
};

// A chunk of earlier text to place in the memory region.
struct MemoryChunk {
  int64_t chunk_id = -1;        // caller's id (the chunk store's), >= 0
  std::vector<int64_t> tokens;  // its token ids
  at::Tensor kv;                // kv mode: [n_layer, 2, n_kv_head, n_tok, d_head], keys un-rotated
};

enum class InjectMode { text, kv };
inline constexpr NameTable<InjectMode, 2> kInjectModeNames{{{{InjectMode::text, "text"}, {InjectMode::kv, "kv"}}}};
InjectMode parse_inject_mode(const std::string& name);  // "text" | "kv"

class StreamSession {
 public:
  StreamSession(std::shared_ptr<const Decoder> decoder, const StreamConfig& config, int64_t start_position = 0);
  ~StreamSession();

  // Feeds `tokens` in blocks of at most prefill_block. Returns float32 logits of the last token [1, vocab],
  // or of every token [T, vocab] when all_logits. Spans that left the window are appended to `evicted`.
  // hidden_out (optional) receives the final hidden states of the rows returned.
  at::Tensor feed(const std::vector<int64_t>& tokens, std::vector<EvictedSpan>* evicted = nullptr,
                  bool all_logits = false, at::Tensor* hidden_out = nullptr);

  // Writes `chunk` into free memory slots. text: its K/V are computed by the model over the sinks followed
  // by the chunk (so the chunk sees the sinks and itself, at the positions it then keeps relative to them);
  // kv: its stored K/V are restored (RoPE keys are re-rotated to their new place, nothing is recomputed).
  // Throws std::invalid_argument when the chunk does not fit the free memory slots.
  void inject(const MemoryChunk& chunk, InjectMode mode);
  // Frees the memory slots of `chunk_id`; returns how many.
  int64_t release(int64_t chunk_id) { return cache_->release_memory(chunk_id); }

  // The session's whole state (its cache and counters) as named CPU tensors, and back into a session built with
  // the same decoder and StreamConfig (to resume a conversation exactly). Only the policies whose state is the
  // cache alone can be saved: dense, window and sink; std::invalid_argument naming the policy for the others, and
  // as KvCache::restore_state for a tensor that does not fit.
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  void restore_state(const std::map<std::string, at::Tensor>& tensors, const std::string& where);

  const Decoder& decoder() const { return *decoder_; }
  const StreamConfig& config() const { return config_; }
  KvCache& cache() { return *cache_; }
  const KvCache& cache() const { return *cache_; }
  int64_t position() const { return cache_->next_position(); }
  int64_t tokens_evicted() const { return tokens_evicted_; }

 private:
  at::Tensor step(const std::vector<int64_t>& tokens, std::vector<EvictedSpan>* evicted, bool all_logits,
                  at::Tensor* hidden_out);

  std::shared_ptr<const Decoder> decoder_;
  StreamConfig config_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<KvCache> scratch_;  // recompute: rebuilt every step
  std::unique_ptr<KvCache> inject_scratch_;  // text injection: sinks + one chunk
  std::unique_ptr<ClusterMemory> cluster_;   // cluster policy
  int64_t tokens_evicted_ = 0;
};

}  // namespace sinkflow
