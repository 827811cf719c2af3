#include "models/cache/rope.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace sinkflow {

Rope::Rope(int64_t n_rot, int64_t d_head, double theta) : n_rot_(n_rot), d_head_(d_head) {
  if (n_rot <= 0 || n_rot % 2 != 0 || n_rot > d_head) {
    throw std::invalid_argument("rope: rotated dims must be even and in (0, d_head=" + std::to_string(d_head) +
                                "], found " + std::to_string(n_rot));
  }
  inv_freq_.resize(n_rot / 2);
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    // Hugging Face: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), in float32.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(n_rot);
    inv_freq_[i] = static_cast<double>(1.0f / static_cast<float>(std::pow(theta, static_cast<double>(exponent))));
  }
}

std::pair<at::Tensor, at::Tensor> Rope::tables(const std::vector<int64_t>& positions, at::Device device) const {
  const int64_t t = static_cast<int64_t>(positions.size());
  const int64_t h = n_rot_ / 2;
  at::Tensor cos = at::empty({t, h}, at::kFloat);
  at::Tensor sin = at::empty({t, h}, at::kFloat);
  float* c = cos.data_ptr<float>();
  float* s = sin.data_ptr<float>();
  constexpr double two_pi = 6.283185307179586476925286766559;
  for (int64_t j = 0; j < t; ++j) {
    const double p = static_cast<double>(positions[j]);
    for (int64_t i = 0; i < h; ++i) {
      const double angle = std::fmod(p * inv_freq_[i], two_pi);
      c[j * h + i] = static_cast<float>(std::cos(angle));
      s[j * h + i] = static_cast<float>(std::sin(angle));
    }
  }
  if (device.is_cpu()) return {cos, sin};
  return {cos.to(device), sin.to(device)};
}

at::Tensor Rope::apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  const int64_t h = n_rot_ / 2;
  const at::Tensor c = cos.to(x.scalar_type());
  const at::Tensor s = sin.to(x.scalar_type());
  at::Tensor x1 = x.narrow(-1, 0, h);
  at::Tensor x2 = x.narrow(-1, h, h);
  at::Tensor out1 = x1 * c - x2 * s;
  at::Tensor out2 = x2 * c + x1 * s;
  if (n_rot_ == d_head_) return at::cat({out1, out2}, -1);
  return at::cat({out1, out2, x.narrow(-1, n_rot_, d_head_ - n_rot_)}, -1);
}

at::Tensor Rope::rotate(const at::Tensor& x, const std::vector<int64_t>& positions) const {
  auto [c, s] = tables(positions, x.device());
  return apply(x, c, s);
}

}  // namespace sinkflow
