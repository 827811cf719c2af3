// Products of several rows (prefill, `sinkflow ppl`) with narrow weights on AMX tiles, through oneDNN's matmul.
//
// AMX multiplies bfloat16 numbers ~6x faster than AVX-512 multiplies float32 ones on one core (oneDNN 2.6:
// ~950 vs ~150 GFLOP/s for [256, 576] x [576, 1536]), but a bfloat16 keeps 8 bits of mantissa. The products here
// keep float32 accuracy by splitting each float32 into two bfloat16 (v = hi + lo, hi = bf16(v), lo = bf16(v - hi):
// 16 bits together) and multiplying the terms that matter in one matmul over a 3x longer inner dimension:
//   x W^T ~ x_hi W_hi^T + x_lo W_hi^T + x_hi W_lo^T    (int8 blocks: W = q * scale is not exact in bfloat16)
//   x W^T ~ x_hi W^T    + x_lo W^T                     (bfloat16 weights: W is exact)
// accumulated in float32 by the tiles. The dropped terms are ~2^-17 of the product: relative error ~4e-6 on
// random data, against ~4e-3 for products of plain bfloat16 inputs. Measured on [256, 576] x [576, 1536]: 1.6 ms,
// 281 float32-equivalent GFLOP/s, vs 2.9 ms for OpenBLAS's float32 GEMM on the widened matrix (one thread).
#pragma once

#include <ATen/ATen.h>

namespace sinkflow {

// Whether amx_linear runs here: sinkflow was built with oneDNN and oneDNN runs AMX bfloat16 tiles on this CPU
// (DNNL_MAX_CPU_ISA=AVX512_CORE in the environment turns it off).
bool amx_available();

// Rows from which amx_linear is used by linear_rows: fewer rows go through the widened matrix.
constexpr int64_t kAmxMinRows = 16;

// y [M, N] float32 = x [M, K] float32 times W^T + b, W [N, K] bfloat16 or int8 with its float16 block scales
// (quant.h), b float32 [N] or undefined. x and W contiguous. Requires amx_available(). Threads: oneDNN's, which
// follow LibTorch's intra-op setting (OpenMP).
at::Tensor amx_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scales, const at::Tensor& b);

}  // namespace sinkflow
