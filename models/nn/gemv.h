// Matrix-vector products for one-token decode steps: y = W x with W [N, K] row-major, each weight read once.
// On this project's machines OpenBLAS picks a generic SSE3 kernel (PRESCOTT: the virtual CPU's model is
// unknown to it) and runs a one-row nn::Linear as a GEMM that first copies the whole weight; these kernels stream
// W at the memory bandwidth with AVX2 + FMA when the CPU has them (checked at run time), and fall back to plain
// C++ otherwise. Results equal a float32 dot product up to summation order.
#pragma once

#include <cstdint>

namespace sinkflow {

// y[n] = sum_k W[n, k] x[k] for n in [0, N). W: N x K floats, rows contiguous (row stride K). Rows are split
// across LibTorch's intra-op threads (at::parallel_for) when more than one is configured.
void gemv_f32(const float* w, const float* x, float* y, int64_t n, int64_t k);

// As gemv_f32 with rows `ld` floats apart (ld >= k): a block of a larger buffer (a KV cache layer).
void gemv_f32_ld(const float* w, int64_t ld, const float* x, float* y, int64_t n, int64_t k);

// The transposed product out[c] = sum_r p[r] V[r, c] for c in [0, cols), V's rows `ld` floats apart: attention's
// probability-weighted sum of cached values. One thread.
void gemv_t_f32(const float* v, int64_t ld, const float* p, float* out, int64_t rows, int64_t cols);

// The same with bfloat16 weights (the upper 16 bits of a float32), accumulated in float32.
void gemv_bf16(const uint16_t* w, const float* x, float* y, int64_t n, int64_t k);

// "avx2+fma" or "generic": what gemv_* run on this CPU.
const char* gemv_kernel_name();

}  // namespace sinkflow
