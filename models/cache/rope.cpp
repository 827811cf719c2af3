#include "models/cache/rope.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace sinkflow {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

float f32(double v) { return static_cast<float>(v); }

// transformers' default frequencies: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), in float32.
std::vector<float> plain_freqs(int64_t n_rot, double theta) {
  std::vector<float> out(static_cast<size_t>(n_rot / 2));
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(n_rot);
    out[i] = 1.0f / f32(std::pow(theta, static_cast<double>(exponent)));
  }
  return out;
}

// _compute_llama3_parameters: low frequencies divided by factor, the middle band blended, high ones kept.
void llama3(std::vector<float>& inv, const RopeScaling& r) {
  const double old_context = static_cast<double>(r.original_max_positions);
  // In float32 step by step as torch evaluates it (a scalar divided by a tensor is reciprocal times scalar).
  const float low_wavelen = f32(old_context / r.low_freq_factor), high_wavelen = f32(old_context / r.high_freq_factor);
  const float factor = f32(r.factor);
  for (float& f : inv) {
    const float wavelen = (1.0f / f) * f32(kTwoPi);
    const float scaled = wavelen > low_wavelen ? f / factor : f;
    if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
      const float smooth = ((1.0f / wavelen) * f32(old_context) - f32(r.low_freq_factor)) /
                           f32(r.high_freq_factor - r.low_freq_factor);
      f = (1.0f - smooth) * scaled / factor + smooth * scaled;
    } else {
      f = scaled;
    }
  }
}

double yarn_mscale(double scale, double mscale) { return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

// _compute_yarn_parameters: interpolated (f / factor) and extrapolated (f) frequencies blended over a linear ramp
// between the dims that turn beta_fast and beta_slow times over the original context; returns the attention factor.
double yarn(std::vector<float>& inv, const RopeScaling& r, int64_t n_rot, double theta, int64_t max_positions) {
  double factor = r.factor;
  int64_t original = max_positions;
  if (r.original_max_positions > 0) {  // DeepSeek-V3, Qwen3: the ratio of the two contexts is the factor
    original = r.original_max_positions;
    factor = static_cast<double>(max_positions) / static_cast<double>(original);
  }
  double attention = r.attention_factor;
  if (attention <= 0.0) {
    attention = r.mscale > 0.0 && r.mscale_all_dim > 0.0
                    ? yarn_mscale(factor, r.mscale) / yarn_mscale(factor, r.mscale_all_dim)
                    : yarn_mscale(factor, 1.0);
  }
  const double dim = static_cast<double>(n_rot);
  auto correction_dim = [&](double rotations) {
    return dim * std::log(static_cast<double>(original) / (rotations * kTwoPi)) / (2.0 * std::log(theta));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1.0);
  if (low == high) high += 0.001;
  for (size_t i = 0; i < inv.size(); ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(n_rot);
    const float pos_freq = f32(std::pow(theta, static_cast<double>(exponent)));  // base ** (2i / dim)
    const float extrapolation = 1.0f / pos_freq;
    const float interpolation = 1.0f / (f32(factor) * pos_freq);
    const float ramp = std::clamp(f32((static_cast<double>(i) - low) / (high - low)), 0.0f, 1.0f);
    const float keep = 1.0f - ramp;  // inv_freq_extrapolation_factor
    inv[i] = interpolation * (1.0f - keep) + extrapolation * keep;
  }
  return attention;
}

std::vector<double> widen(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// _compute_longrope_parameters: 1 / (ext_factors * base ** (arange(0, dim, 2) / dim)), in float32.
std::vector<float> longrope_freqs(int64_t n_rot, double theta, const std::vector<double>& factors) {
  std::vector<float> out(static_cast<size_t>(n_rot / 2));
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(n_rot);
    out[i] = 1.0f / (f32(factors[i]) * f32(std::pow(theta, static_cast<double>(exponent))));
  }
  return out;
}

}  // namespace

Rope::Rope(int64_t n_rot, int64_t d_head, double theta) : n_rot_(n_rot), d_head_(d_head), theta_(theta) {
  if (n_rot <= 0 || n_rot % 2 != 0 || n_rot > d_head) {
    throw std::invalid_argument("rope: rotated dims must be even and in (0, d_head=" + std::to_string(d_head) +
                                "], found " + std::to_string(n_rot));
  }
  inv_freq_ = widen(plain_freqs(n_rot, theta));
}

Rope::Rope(const ModelConfig& c) : Rope(c.n_rot(), c.d_head, c.rope_theta) {
  const RopeScaling& r = c.rope_scaling;
  std::vector<float> inv = plain_freqs(n_rot_, c.rope_theta);
  if (r.type == "linear") {
    for (float& f : inv) f /= f32(r.factor);
  } else if (r.type == "llama3") {
    llama3(inv, r);
  } else if (r.type == "yarn") {
    attention_factor_ = yarn(inv, r, n_rot_, c.rope_theta, c.max_positions);
  } else if (r.type == "dynamic") {
    dynamic_factor_ = r.factor;
    dynamic_max_ = r.original_max_positions > 0 ? r.original_max_positions : c.max_positions;
  } else if (r.type == "longrope") {
    // Short factors up to the original context, long ones beyond; the attention factor from the ratio of the two
    // contexts (Phi-3: max_position_embeddings over original_max_position_embeddings) unless the config gives it.
    if (static_cast<int64_t>(r.short_factor.size()) != n_rot_ / 2 || static_cast<int64_t>(r.long_factor.size()) != n_rot_ / 2)
      throw std::invalid_argument("rope: longrope needs n_rot / 2 = " + std::to_string(n_rot_ / 2) + " short and long factors");
    inv = longrope_freqs(n_rot_, c.rope_theta, r.short_factor);
    long_inv_freq_ = widen(longrope_freqs(n_rot_, c.rope_theta, r.long_factor));
    long_from_ = r.original_max_positions > 0 ? r.original_max_positions : c.max_positions;
    const double factor = r.original_max_positions > 0
                              ? static_cast<double>(c.max_positions) / static_cast<double>(r.original_max_positions)
                              : r.factor;
    attention_factor_ = r.attention_factor > 0.0 ? r.attention_factor
                        : factor <= 1.0        ? 1.0
                                               : std::sqrt(1.0 + std::log(factor) / std::log(static_cast<double>(long_from_)));
  } else if (!r.type.empty()) {
    throw std::invalid_argument("rope: rope_scaling type '" + r.type + "' is not supported");
  }
  inv_freq_ = widen(inv);
  if (c.rope_local_theta > 0.0 && !c.sliding_layers.empty()) {
    local_inv_freq_ = widen(plain_freqs(n_rot_, c.rope_local_theta));
    local_layers_ = c.sliding_layers;
  }
}

const std::vector<double>& Rope::freqs(int64_t layer) const {
  const bool local = layer >= 0 && layer < static_cast<int64_t>(local_layers_.size()) && local_layers_[layer];
  return local ? local_inv_freq_ : inv_freq_;
}

std::vector<double> Rope::inv_freq(int64_t layer, int64_t seq_len) const {
  const bool local = layer >= 0 && layer < static_cast<int64_t>(local_layers_.size()) && local_layers_[layer];
  if (!long_inv_freq_.empty() && !local && seq_len > long_from_) return long_inv_freq_;
  if (dynamic_factor_ <= 0.0 || local || seq_len <= dynamic_max_) return freqs(layer);
  // _compute_dynamic_ntk_parameters: base * ((factor * seq_len / max) - (factor - 1)) ** (dim / (dim - 2)).
  const double dim = static_cast<double>(n_rot_);
  const double ratio = dynamic_factor_ * static_cast<double>(seq_len) / static_cast<double>(dynamic_max_) -
                       (dynamic_factor_ - 1.0);
  const double base = theta_ * std::pow(ratio, dim / (dim - 2.0));
  return widen(plain_freqs(n_rot_, base));
}

at::Tensor Rope::scale_qk(const at::Tensor& x) const {
  if (attention_factor_ == 1.0) return x;
  if (n_rot_ == d_head_) return x * attention_factor_;
  return at::cat({x.narrow(-1, 0, n_rot_) * attention_factor_, x.narrow(-1, n_rot_, d_head_ - n_rot_)}, -1);
}

std::pair<at::Tensor, at::Tensor> Rope::tables(const std::vector<int64_t>& positions, at::Device device,
                                               int64_t layer, int64_t seq_len) const {
  const bool by_length = dynamic_factor_ > 0.0 || !long_inv_freq_.empty();
  const std::vector<double> scaled = by_length ? inv_freq(layer, seq_len) : std::vector<double>{};
  const std::vector<double>& inv = by_length ? scaled : freqs(layer);
  const int64_t t = static_cast<int64_t>(positions.size());
  const int64_t h = n_rot_ / 2;
  at::Tensor cos = at::empty({t, h}, at::kFloat);
  at::Tensor sin = at::empty({t, h}, at::kFloat);
  float* c = cos.data_ptr<float>();
  float* s = sin.data_ptr<float>();
  for (int64_t j = 0; j < t; ++j) {
    const double p = static_cast<double>(positions[j]);
    for (int64_t i = 0; i < h; ++i) {
      const double angle = std::fmod(p * inv[i], kTwoPi);
      c[j * h + i] = static_cast<float>(std::cos(angle));
      s[j * h + i] = static_cast<float>(std::sin(angle));
    }
  }
  if (device.is_cpu()) return {cos, sin};
  return {cos.to(device), sin.to(device)};
}

at::Tensor Rope::apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  const int64_t h = n_rot_ / 2;
  // float32 on the CPU outside autograd: one pass instead of ten LibTorch ops (a decode step runs two a layer).
  const auto plain = [](const at::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
           !(at::GradMode::is_enabled() && t.requires_grad());
  };
  if (plain(x) && plain(cos) && plain(sin) && x.dim() >= 2 && x.size(-1) == d_head_ && cos.dim() == 2 &&
      cos.size(0) == x.size(-2) && cos.size(1) == h && sin.sizes() == cos.sizes()) {
    const int64_t t = x.size(-2), rows = x.numel() / d_head_;
    at::Tensor out = at::empty_like(x);
    const float* xp = x.data_ptr<float>();
    const float* cp = cos.data_ptr<float>();
    const float* sp = sin.data_ptr<float>();
    float* op = out.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xp + r * d_head_;
      const float* c = cp + (r % t) * h;
      const float* sn = sp + (r % t) * h;
      float* o = op + r * d_head_;
      for (int64_t j = 0; j < h; ++j) {
        o[j] = xr[j] * c[j] - xr[h + j] * sn[j];
        o[h + j] = xr[h + j] * c[j] + xr[j] * sn[j];
      }
      for (int64_t j = n_rot_; j < d_head_; ++j) o[j] = xr[j];
    }
    return out;
  }
  const at::Tensor c = cos.to(x.scalar_type());
  const at::Tensor s = sin.to(x.scalar_type());
  at::Tensor x1 = x.narrow(-1, 0, h);
  at::Tensor x2 = x.narrow(-1, h, h);
  at::Tensor out1 = x1 * c - x2 * s;
  at::Tensor out2 = x2 * c + x1 * s;
  if (n_rot_ == d_head_) return at::cat({out1, out2}, -1);
  return at::cat({out1, out2, x.narrow(-1, n_rot_, d_head_ - n_rot_)}, -1);
}

at::Tensor Rope::rotate(const at::Tensor& x, const std::vector<int64_t>& positions, int64_t layer) const {
  auto [c, s] = tables(positions, x.device(), layer);
  return apply(x, c, s);
}

at::Tensor Rope::rotate_layers(const at::Tensor& x, const std::vector<int64_t>& positions) const {
  if (!per_layer()) return rotate(x, positions);
  std::vector<at::Tensor> out;
  out.reserve(static_cast<size_t>(x.size(0)));
  auto [gc, gs] = tables(positions, x.device(), -1);
  auto [lc, ls] = tables(positions, x.device(), static_cast<int64_t>(
      std::find(local_layers_.begin(), local_layers_.end(), 1) - local_layers_.begin()));
  for (int64_t l = 0; l < x.size(0); ++l) {
    const bool local = l < static_cast<int64_t>(local_layers_.size()) && local_layers_[l];
    out.push_back(apply(x[l], local ? lc : gc, local ? ls : gs));
  }
  return at::stack(out, 0);
}

}  // namespace sinkflow
