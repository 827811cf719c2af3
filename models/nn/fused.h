// The small ops of a layer (RMSNorm, the gated MLP's activation, residual adds) in one pass each over float32
// rows, without LibTorch's per-op cost. A one-token decode step of a 30-layer model ran ~40 LibTorch ops a layer
// besides its matrix products; at ~3 us each that is 3-4 ms a token, a fifth of an int8 step of the SmolLM2-135M
// shape. Each function takes its fast path for float32 CPU tensors outside autograd and returns the general
// LibTorch expression otherwise, so training and other devices see no change.
#pragma once

#include <ATen/ATen.h>

namespace sinkflow {

// RMSNorm over the last dimension, computed in float32: w * (x / rms(x)), or (1 + w) * (x / rms(x)) (plus_one:
// Gemma), rms(x) = sqrt(mean(x^2) + eps); cast back to x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one);

// act(gate) * up with act SiLU (SwiGLU) or tanh-approximated GELU (GeGLU), written over `gate` when it may be.
at::Tensor gated_activation(at::Tensor gate, const at::Tensor& up, bool gelu);

// a + b, written over `b` (a fresh tensor the caller owns) outside autograd.
at::Tensor add_into(const at::Tensor& a, at::Tensor b);

}  // namespace sinkflow
