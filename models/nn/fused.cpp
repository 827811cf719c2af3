#include "models/nn/fused.h"

#include <ATen/core/grad_mode.h>

#include <cmath>

namespace sinkflow {

namespace {

bool plain(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
         !(at::GradMode::is_enabled() && t.requires_grad());
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one) {
  if (!plain(x) || !plain(w) || w.dim() != 1 || x.dim() == 0 || x.size(-1) != w.size(0)) {
    at::Tensor xf = x.to(at::kFloat);
    xf = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
    if (plus_one) return (xf * (w.to(at::kFloat) + 1.0)).to(x.scalar_type());
    return w * xf.to(x.scalar_type());
  }
  const int64_t d = x.size(-1), rows = x.numel() / std::max<int64_t>(d, 1);
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float add = plus_one ? 1.f : 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    float* orow = op + r * d;
    // Sixteen partial sums: a vectorizable reduction, close to LibTorch's own order.
    float part[16] = {};
    int64_t j = 0;
    for (; j + 16 <= d; j += 16)
      for (int i = 0; i < 16; ++i) part[i] += xr[j + i] * xr[j + i];
    float ss = 0.f;
    for (; j < d; ++j) ss += xr[j] * xr[j];
    for (float p : part) ss += p;
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(d) + static_cast<float>(eps));
    for (j = 0; j < d; ++j) orow[j] = (xr[j] * inv) * (wp[j] + add);
  }
  return out;
}

at::Tensor gated_activation(at::Tensor gate, const at::Tensor& up, bool gelu) {
  if (!plain(gate) || !plain(up) || gate.sizes() != up.sizes()) return (gelu ? at::gelu(gate, "tanh") : at::silu(gate)) * up;
  (gelu ? at::gelu_(gate, "tanh") : at::silu_(gate)).mul_(up);
  return gate;
}

at::Tensor add_into(const at::Tensor& a, at::Tensor b) {
  if (!plain(a) || !plain(b) || a.sizes() != b.sizes()) return a + b;
  return b.add_(a);
}

}  // namespace sinkflow
