// The streaming KV cache: per-layer preallocated K/V with three named regions
//
//   slot:  0 .. n_sink-1 | n_sink .. n_sink+n_memory-1 | n_recent slots (ring buffer)
//          sinks         | memory (re-injected chunks)  | recent window
//
// and explicit per-slot token ids and absolute positions. It changes only through plan-then-apply:
// plan_step() is pure and says which slots leave and where the new tokens go; apply() is the only
// mutator of the layout (the decoder's forward then fills the new slots' K/V, nothing else).
//
// Positions (StreamingLLM semantics: a key at in-cache index i is seen at position i, the query at the
// number of cached tokens). scheme `fast`: window keys stay rotated at their absolute position and the query
// is rotated at its absolute position: the window is contiguous in the text, so its distances to the query
// are the same as in cache space. Only sink and memory keys are seen at a virtual position (placed just
// before the oldest window token) and are re-rotated from their stored un-rotated keys when the window
// slides: O(n_sink + n_memory) per step. scheme `naive`: every key is rotated to its in-cache index at every
// step, as the reference implementation does (O(cache) per step): the test oracle.
// For learned absolute positions (GPT-2 family) nothing is rotated: the new tokens' input position is their
// in-cache index and cached K/V keep the positions they were computed at ("none").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/io/config.h"

namespace sinkflow {

class Rope;

enum class PositionScheme { fast, naive };

struct CacheConfig {
  int64_t n_sink = 4;        // attention-sink slots (the stream's first tokens), >= 0
  int64_t n_memory = 0;      // memory-region slots between sinks and window, >= 0 (0 = plain StreamingLLM)
  int64_t n_recent = 1020;   // recent-window slots (ring buffer), > 0
  int64_t evict_block = 1;   // tokens evicted at once when the window overflows, in [1, n_recent]
  bool evict_kv = false;     // copy evicted K/V out with each span (kv re-injection, clustering)
  bool allow_evict = true;   // false: a full cache is an error (the dense policy)
  bool keep_originals = false;  // KV-Align: also keep each token's K/V as first computed (learned positions only)
  PositionScheme scheme = PositionScheme::fast;  // RoPE models only
  // Element type of the cached keys and values: Undefined = the model's dtype; float32, bfloat16 or float16.
  // bfloat16 halves what a decode step reads from the cache (llama.cpp keeps float16 by default); attention still
  // computes in the model's dtype, and keys kept for re-rotation or KV-Align stay in it.
  at::ScalarType kv_dtype = at::ScalarType::Undefined;

  int64_t capacity() const { return n_sink + n_memory + n_recent; }
  // The sizes alone: FieldError (a std::invalid_argument) naming `where` ("" = none), the field and the
  // violated constraint.
  void validate(const std::string& where) const;
  // Also against the model (max positions, learned positions); std::invalid_argument.
  void validate(const ModelConfig& model, const std::string& where) const;
};

// Tokens that left the recent window, oldest first.
struct EvictedSpan {
  std::vector<int64_t> tokens;
  std::vector<int64_t> positions;  // absolute positions in the stream
  at::Tensor kv;                   // [n_layer, 2, n_kv_head, n_tok, d_head], keys un-rotated; undefined unless evict_kv
};

// One step's layout change, computed by plan_step() without touching the cache.
struct StepPlan {
  std::vector<int64_t> tokens;       // the new tokens
  std::vector<int64_t> positions;    // their absolute positions
  std::vector<int64_t> write_slots;  // the slot each new token takes
  std::vector<int64_t> evict_slots;  // recent-window slots that leave, oldest first
};

// Writing a chunk's K/V into the memory region (kv re-injection, cluster centroids).
struct MemoryWrite {
  int64_t chunk_id = -1;             // caller's id for the group of slots (-1: none)
  std::vector<int64_t> slots;        // memory slots to fill, ascending
  std::vector<int64_t> tokens;       // token id per slot (-1 for pseudo-tokens)
  std::vector<int64_t> positions;    // original absolute position per slot (informational)
  at::Tensor kv;                     // [n_layer, 2, n_kv_head, n_tok, d_head], keys un-rotated
};

class KvCache {
 public:
  // rope: the model's rotary embedding (nullptr for learned absolute positions); must outlive the cache.
  KvCache(const ModelConfig& model, const CacheConfig& config, const Rope* rope, at::Device device,
          at::ScalarType dtype);

  const CacheConfig& config() const { return config_; }
  int64_t capacity() const { return config_.capacity(); }
  int64_t n_layer() const { return n_layer_; }
  at::ScalarType kv_dtype() const { return k_.scalar_type(); }
  bool uses_rope() const { return rope_ != nullptr; }

  // Occupied slots in each region and in all.
  int64_t n_sink_used() const { return n_sink_used_; }
  int64_t n_memory_used() const;
  int64_t n_recent_used() const { return ring_count_; }
  int64_t n_cached() const { return n_sink_used_ + n_memory_used() + ring_count_; }
  // Absolute position the next stream token gets.
  int64_t next_position() const { return next_pos_; }
  // Slots [0, extent) hold every occupied slot; attention only looks at those.
  int64_t extent() const;

  bool slot_used(int64_t slot) const { return used_[slot] != 0; }
  int64_t slot_token(int64_t slot) const { return slot_token_[slot]; }
  int64_t slot_position(int64_t slot) const { return slot_pos_[slot]; }  // -1 = empty
  int64_t slot_chunk(int64_t slot) const { return slot_chunk_[slot]; }  // memory slots: chunk id, else -1
  // Token ids in in-cache order (sinks, memory, window oldest first).
  std::vector<int64_t> cached_tokens() const;
  // Slots in in-cache order (sinks, memory, window oldest first).
  std::vector<int64_t> ordered_slots() const;

  // Starts a fresh stream at absolute position `start_position`; keeps the buffers.
  void reset(int64_t start_position = 0);

  // Applies a plan from plan_step(): evicts, places the new tokens, re-rotates sink and memory keys if the
  // window slid. Returns what left (empty span when nothing did).
  EvictedSpan apply(const StepPlan& plan);
  // Fills memory slots (kv mode). The slots must be free memory slots.
  void apply(const MemoryWrite& write);
  // Frees every memory slot holding `chunk_id`; returns how many.
  int64_t release_memory(int64_t chunk_id);
  std::vector<int64_t> free_memory_slots() const;

  // ---- used by the decoder's forward for the step just applied --------------------------------------
  // Input position of each new token: absolute (RoPE, fast) or in-cache index (naive, and learned positions).
  std::vector<int64_t> input_positions(const StepPlan& plan) const;
  // Additive mask [T, extent] (0 visible, -inf hidden) for the new tokens, or an undefined tensor when
  // every slot in [0, extent) is visible to every new token. window > 0 (sliding-window layers): a key is also
  // hidden when it lies `window` or more positions before the query, distances counted as StreamingLLM sees them
  // (in-cache positions), so a dense cache gives exactly transformers' sliding-window mask.
  at::Tensor attention_mask(const StepPlan& plan, int64_t window = 0) const;
  // Stores the new tokens' K/V of one layer. k_raw is un-rotated, k_rot rotated at input_positions():
  // both [n_kv_head, T, d_head]; v likewise.
  void store(int64_t layer, const StepPlan& plan, const at::Tensor& k_raw, const at::Tensor& k_rot,
             const at::Tensor& v);
  // K and V the new tokens attend to: [n_kv_head, extent, d_head] each (for `naive`, keys rotated to their
  // in-cache index on the fly).
  std::pair<at::Tensor, at::Tensor> layer_kv(int64_t layer) const;

  // KV-Align (keep_originals): the slots whose K/V were computed at another in-cache index than the one they
  // have now get fn(original k, original v, tokens, from, to) as their K/V: k, v [n_layer, n_kv_head, n, d_head]
  // as first computed at in-cache indices `from`, `to` their indices now; fn returns {k', v'} of that shape. Always from
  // the originals, so realignments never compound. Returns how many slots were realigned.
  using RealignFn = std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor& k, const at::Tensor& v,
                                                                    const std::vector<int64_t>& tokens,
                                                                    const std::vector<int64_t>& from,
                                                                    const std::vector<int64_t>& to)>;
  int64_t realign(const RealignFn& fn);

  // The whole state as named CPU tensors (K/V buffers, per-slot tables, and "scalars": n_sink_used, ring_start,
  // ring_count, next_pos), to save a conversation. restore_state() takes them back into a cache built with the same
  // model and CacheConfig; std::invalid_argument naming `where` and the tensor when one is missing or has another
  // shape or dtype, or when a value is out of range (nothing is changed then).
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  void restore_state(const std::map<std::string, at::Tensor>& tensors, const std::string& where);

  // Whole buffers, [n_layer, n_kv_head, capacity, d_head] (tests, KV-Align, clustering).
  const at::Tensor& keys() const { return k_; }
  const at::Tensor& values() const { return v_; }

 private:
  friend StepPlan plan_step(const KvCache& cache, const std::vector<int64_t>& tokens);

  int64_t recent_begin() const { return config_.n_sink + config_.n_memory; }
  int64_t ring_slot(int64_t k) const;  // slot of the k-th oldest window token
  std::vector<int64_t> in_cache_index() const;  // slot -> in-cache index (-1 empty)
  void refresh_virtual_positions();

  ModelConfig model_;
  CacheConfig config_;
  const Rope* rope_;
  int64_t n_layer_;
  at::ScalarType compute_dtype_;  // the model's: what evicted K/V and re-rotated keys are computed in
  at::Tensor k_;      // [n_layer, n_kv_head, capacity, d_head]; rotated (fast) or un-rotated (naive)
  at::Tensor v_;      // [n_layer, n_kv_head, capacity, d_head]
  at::Tensor k_raw_;  // [n_layer, n_kv_head, n_sink + n_memory, d_head], un-rotated (RoPE, fast)
  at::Tensor k_orig_, v_orig_;  // keep_originals: K/V as first computed, [n_layer, n_kv_head, capacity, d_head]
  std::vector<int64_t> orig_index_, aligned_index_;  // keep_originals: in-cache index computed at / aligned to
  std::vector<int64_t> slot_token_, slot_pos_, slot_chunk_, rot_pos_;
  std::vector<uint8_t> used_;  // slot occupied
  int64_t n_sink_used_ = 0;
  int64_t ring_start_ = 0;
  int64_t ring_count_ = 0;
  int64_t next_pos_ = 0;
};

// Pure: what one step of `tokens` does to the cache. Throws std::invalid_argument when the tokens do not
// fit (more than n_recent at once, or a full cache that may not evict).
StepPlan plan_step(const KvCache& cache, const std::vector<int64_t>& tokens);

}  // namespace sinkflow
