// Rotary position embedding (Llama family), exact at any absolute position, with the RoPE scalings of
// context-extended checkpoints (config.json "rope_scaling": linear, dynamic, llama3, yarn, longrope) and a separate base for
// sliding-window layers (gemma3's rope_local_base_freq).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "models/io/config.h"

namespace sinkflow {

// Rotates the first n_rot dims of each head (Hugging Face "rotate_half" convention: the rotated dims are
// split in two halves [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]); the rest pass through.
// Angles are pos * inv_freq computed in double precision and reduced mod 2*pi before cos/sin, so a key
// at position 2^40 is rotated as exactly as one at position 4. inv_freq itself is rounded to float32 as
// Hugging Face computes it, so logits match its implementation.
//
// Scalings (transformers' modeling_rope_utils.py): linear divides every frequency by `factor`; llama3 divides the
// low frequencies (wavelength > original context / low_freq_factor) and blends the middle ones; yarn blends
// interpolated and extrapolated frequencies over a ramp of dims and scales q and k (scale_qk) by its attention
// factor; dynamic (NTK) raises the base for a sequence longer than max_position_embeddings (seq_len argument).
// A rotation never carries the attention factor, so that a rotation by -p undoes one by p exactly: the decoder
// scales q and k once, before they are rotated or cached.
class Rope {
 public:
  // Plain RoPE of base `theta` on every layer.
  Rope(int64_t n_rot, int64_t d_head, double theta);
  // The model's RoPE: its scaling on full-attention layers, and on sliding-window layers the local base when the
  // config has one (gemma3: no scaling there, as transformers' rotary_emb_local).
  explicit Rope(const ModelConfig& config);

  int64_t n_rot() const { return n_rot_; }
  int64_t d_head() const { return d_head_; }
  // True when some layers rotate with other frequencies than layer 0's.
  bool per_layer() const { return !local_layers_.empty(); }

  // The float32-rounded frequencies of `layer` ([n_rot / 2]); seq_len > max_position_embeddings rescales a
  // dynamic (NTK) RoPE as transformers does for a sequence of that length, and seq_len > the original context
  // selects longrope's long factors (0: not beyond).
  std::vector<double> inv_freq(int64_t layer = 0, int64_t seq_len = 0) const;
  // yarn's and longrope's attention factor (1 for the other types).
  double attention_factor() const { return attention_factor_; }
  // x [..., d_head] with its first n_rot dims times attention_factor() (x itself when the factor is 1).
  at::Tensor scale_qk(const at::Tensor& x) const;

  // cos and sin tables of `layer`, each [positions.size(), n_rot / 2], float32 on `device`.
  std::pair<at::Tensor, at::Tensor> tables(const std::vector<int64_t>& positions, at::Device device,
                                           int64_t layer = 0, int64_t seq_len = 0) const;

  // x: [..., T, d_head] with T == cos.size(0); returns the rotated tensor (same dtype as x).
  at::Tensor apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

  // Convenience: rotate x ([..., T, d_head]) to `positions` with the frequencies of `layer`.
  at::Tensor rotate(const at::Tensor& x, const std::vector<int64_t>& positions, int64_t layer = 0) const;
  // x: [n_layer, ..., T, d_head] (the cache's buffers): each layer rotated with its own frequencies.
  at::Tensor rotate_layers(const at::Tensor& x, const std::vector<int64_t>& positions) const;

 private:
  const std::vector<double>& freqs(int64_t layer) const;

  int64_t n_rot_;
  int64_t d_head_;
  std::vector<double> inv_freq_;        // [n_rot / 2], float32-rounded values held in double
  std::vector<double> local_inv_freq_;  // sliding-window layers' (when local_layers_ is not empty)
  std::vector<uint8_t> local_layers_;   // per layer: 1 = local frequencies; empty = every layer the same
  double attention_factor_ = 1.0;
  double theta_ = 10000.0;              // dynamic: the base it rescales
  double dynamic_factor_ = 0.0;         // dynamic: rope_scaling.factor (0 = not dynamic)
  int64_t dynamic_max_ = 0;             // dynamic: the length beyond which it rescales
  std::vector<double> long_inv_freq_;   // longrope: the frequencies beyond long_from_ (empty: not longrope)
  int64_t long_from_ = 0;               // longrope: original_max_position_embeddings
};

}  // namespace sinkflow
