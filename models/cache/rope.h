// Rotary position embedding (Llama family), exact at any absolute position.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace sinkflow {

// Rotates the first n_rot dims of each head (Hugging Face "rotate_half" convention: the rotated dims are
// split in two halves [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]); the rest pass through.
// Angles are pos * inv_freq computed in double precision and reduced mod 2*pi before cos/sin, so a key
// at position 2^40 is rotated as exactly as one at position 4. inv_freq itself is rounded to float32 as
// Hugging Face computes it, so logits match its implementation.
class Rope {
 public:
  Rope(int64_t n_rot, int64_t d_head, double theta);

  int64_t n_rot() const { return n_rot_; }
  int64_t d_head() const { return d_head_; }

  // cos and sin tables, each [positions.size(), n_rot / 2], float32 on `device`.
  std::pair<at::Tensor, at::Tensor> tables(const std::vector<int64_t>& positions, at::Device device) const;

  // x: [..., T, d_head] with T == cos.size(0); returns the rotated tensor (same dtype as x).
  at::Tensor apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

  // Convenience: rotate x ([..., T, d_head]) to `positions`.
  at::Tensor rotate(const at::Tensor& x, const std::vector<int64_t>& positions) const;

 private:
  int64_t n_rot_;
  int64_t d_head_;
  std::vector<double> inv_freq_;  // [n_rot / 2], float32-rounded values held in double
};

}  // namespace sinkflow
