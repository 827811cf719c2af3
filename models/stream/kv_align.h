// KV-Align: learned realignment of cached keys and values for models with learned absolute positions
// (GPT-2 family), after evictions moved the cached tokens to lower in-cache indices.
//
// In such a model a token's K/V depend on the position it was computed at and on the tokens it could see.
// When the window slides, the exact answer is to recompute the window (the `recompute` policy, O(cache) model
// work per step); keeping the stale K/V (`window`, `sink`) is cheap and wrong. Two small networks (one for
// keys, one for values, shared by all layers and heads) map a cached head vector to what recomputation would
// give:
//
//   y = x + sd[g] * MLP( (x - mu[g]) / sd[g], E_from[from], E_to[to], E_group[g] )
//
// with x the vector as originally computed at in-cache index `from`, `to` its in-cache index now and g the
// (layer, head) group; mu/sd are per-group statistics of the training vectors. The output layer starts at zero,
// so an untrained network is the identity (the stale cache). The first layer needs no network: its K/V are a
// function of the token and its position alone, recomputed exactly (exact_first_layer).
//
// No compounding: the cache keeps every token's originally computed K/V; each realignment starts from the
// originals with the total shift (from -> to), never from an earlier realignment, so errors do not accumulate
// however long the stream. With block eviction (evict_block B) the window shifts once every B steps and the
// networks run once per block: the per-token cost is (cache / B) small-MLP evaluations per layer and head.
// A token that has not moved (from == to) keeps its original K/V bit for bit.
//
// On disk (saved next to the model, by default MODEL/kv-align/): kv_align.json (the configuration and training
// report) and model.safetensors (tensors "key.*" and "value.*").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/io/config.h"

namespace sinkflow {

class Decoder;

struct KvAlignConfig {
  int64_t n_layer = 0;
  int64_t n_kv_head = 0;
  int64_t d_head = 0;
  int64_t max_positions = 0;  // size of the position tables (the model's learned positions)
  int64_t embed_dim = 16;     // each of the position and group embeddings
  int64_t hidden = 128;       // two hidden layers of this width
  std::string model_type;     // of the model it was trained for (informational, checked on load)
  // The first layer's K/V depend only on the token and its position: recompute them exactly (cheaper than the
  // networks: one LayerNorm and one projection per token) and run the networks on layers 1.. only.
  bool exact_first_layer = true;

  int64_t groups() const { return n_layer * n_kv_head; }
  // The shape fields taken from `model` (the others keep their defaults).
  static KvAlignConfig for_model(const ModelConfig& model);
  // Throws std::invalid_argument naming `where` and the field.
  void validate(const std::string& where) const;
};

class KvAlign {
 public:
  explicit KvAlign(const KvAlignConfig& config);  // untrained: the identity
  ~KvAlign();
  KvAlign(const KvAlign&) = delete;
  KvAlign& operator=(const KvAlign&) = delete;

  const KvAlignConfig& config() const { return config_; }

  // Realigns original K/V: k, v [n_layer, n_kv_head, n, d_head] of `tokens` computed at in-cache indices `from`
  // (n values), to the in-cache indices `to`. Returns {k', v'} of the same shape, device and dtype. Entries
  // with from == to are returned unchanged. `model` computes the first layer exactly (exact_first_layer; it
  // must then be given). Throws std::invalid_argument on shapes or indices out of range.
  std::pair<at::Tensor, at::Tensor> realign(const at::Tensor& k, const at::Tensor& v, const std::vector<int64_t>& tokens,
                                            const std::vector<int64_t>& from, const std::vector<int64_t>& to,
                                            const Decoder* model) const;

  // Throws std::invalid_argument when this network does not fit `model` (layers, heads, head size, positions).
  void check_model(const ModelConfig& model, const std::string& where) const;

  // dir/kv_align.json + dir/model.safetensors (float32). `report` is stored in kv_align.json under "training".
  void save(const std::string& dir, const std::string& report_json = "{}") const;
  // Reads a folder written by save(); every field and tensor is validated (the message names the file, the
  // field or tensor, what was expected and what was found).
  static std::shared_ptr<KvAlign> load(const std::string& dir);
  // Where a model's networks live by default: MODEL/kv-align (train-kv-align writes there).
  static std::string default_dir(const std::string& model_dir);
  // load(dir), or load(default_dir(model_dir)) when dir is empty.
  static std::shared_ptr<KvAlign> load_for(const std::string& model_dir, const std::string& dir = "");

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  KvAlignConfig config_;
  std::unique_ptr<Impl> impl_;
};

// ---- training ----------------------------------------------------------------------------------------------

struct KvAlignTrainOptions {
  std::vector<int64_t> caches = {32, 64, 128, 256};  // cache sizes (sinks + window) the pairs are drawn from
  int64_t n_sink = 4;
  int64_t windows = 400;        // base windows of text (each also run at `shifts` shifted offsets)
  int64_t shifts = 4;
  int64_t samples_per_pair = 48;  // tokens sampled from each (window, shifted window) pair
  double heldout_fraction = 0.1;  // the last part of the text gives the held-out pairs
  int64_t steps = 3000;
  int64_t batch = 2048;         // vectors per step (for each of keys and values)
  double lr = 2e-3;
  int64_t embed_dim = 16;
  int64_t hidden = 128;
  bool exact_first_layer = true;
  uint64_t seed = 1234;
  std::function<void(int64_t step, int64_t steps, double loss)> on_step;  // progress (optional)
  std::function<void(int64_t done, int64_t total)> on_pairs;               // pair generation progress (optional)
};

struct KvAlignTrainReport {
  int64_t train_vectors = 0, heldout_vectors = 0;
  // Held-out mean squared error in units of each group's variance (the loss), for keys and values of the
  // layers the networks serve: of the stale vectors (no realignment) and after realignment.
  double heldout_stale_key = 0, heldout_stale_value = 0;
  double heldout_key = 0, heldout_value = 0;
  double final_loss = 0;
  double seconds_pairs = 0, seconds_train = 0;
  std::string to_json() const;
};

// Trains the key and value networks of `model` (GPT-2 family) on `ids` (a token stream; its first n_sink tokens
// are the sinks of every window, as in a stream): pairs of (K/V computed over a window, K/V of the same token
// after the window slid by s tokens) from exact forwards. Throws std::invalid_argument when the text is too
// short for the largest cache or the model has no learned positions.
std::shared_ptr<KvAlign> train_kv_align(const Decoder& model, const std::vector<int64_t>& ids,
                                        const KvAlignTrainOptions& options, KvAlignTrainReport* report);

}  // namespace sinkflow
