// Matrix-vector products for one-token decode steps: y = W x with W [N, K] row-major, each weight read once.
// OpenBLAS runs a one-row nn::Linear as a GEMM that first copies (packs) the whole weight; these kernels stream W
// near the memory bandwidth instead: float32 with AVX2 + FMA, bfloat16 and int8 (widened in registers) with
// AVX-512, each with software prefetch and checked at run time, plain C++ otherwise. Activations stay float32
// (int8 with VNNI: 24-bit planes, see gemv_q8): results equal a float32 dot product over the stored weights up to
// summation order.
#pragma once

#include <cstdint>
#include <functional>

namespace sinkflow {

// y[n] = sum_k W[n, k] x[k] for n in [0, N). W: N x K floats, rows contiguous (row stride K). Rows are split
// across LibTorch's intra-op threads (at::parallel_for) when more than one is configured.
void gemv_f32(const float* w, const float* x, float* y, int64_t n, int64_t k);

// As gemv_f32 with rows `ld` floats apart (ld >= k): a block of a larger buffer (a KV cache layer).
void gemv_f32_ld(const float* w, int64_t ld, const float* x, float* y, int64_t n, int64_t k);

// The transposed product out[c] = sum_r p[r] V[r, c] for c in [0, cols), V's rows `ld` floats apart: attention's
// probability-weighted sum of cached values. One thread.
void gemv_t_f32(const float* v, int64_t ld, const float* p, float* out, int64_t rows, int64_t cols);

// Grouped-query attention over one KV head: the scores of `g` queries against the same cached rows, and their
// probability-weighted sums of the same cached values, reading the rows once for all g (the per-query kernels
// above read them g times). scores_i[r] = K[r, :] . q_i and out_i[c] = sum_r p_i[r] V[r, c], for i < g, with
// K and V rows `ld` floats apart and d values each; q_i, p_i, scores_i, out_i `stride` floats apart. One thread.
void attend_scores_f32(const float* k, int64_t ld, const float* q, float* scores, int64_t g, int64_t stride_q,
                       int64_t stride_s, int64_t rows, int64_t d);
void attend_values_f32(const float* v, int64_t ld, const float* p, float* out, int64_t g, int64_t stride_p,
                       int64_t stride_o, int64_t rows, int64_t d);
// The same over a bfloat16 cache (CacheConfig::kv_dtype), widened in registers as it is read (head sizes 64, 128
// and 256 on AVX-512; otherwise in blocks of rows widened into L1): equal to the float32 kernels over the widened
// rows up to summation order.
void attend_scores_bf16(const uint16_t* k, int64_t ld, const float* q, float* scores, int64_t g, int64_t stride_q,
                        int64_t stride_s, int64_t rows, int64_t d);
void attend_values_bf16(const uint16_t* v, int64_t ld, const float* p, float* out, int64_t g, int64_t stride_p,
                        int64_t stride_o, int64_t rows, int64_t d);

// The same with bfloat16 weights (the upper 16 bits of a float32), accumulated in float32.
void gemv_bf16(const uint16_t* w, const float* x, float* y, int64_t n, int64_t k);

// int8 weights in blocks of kQ8Block along each row, one float16 scale per block (llama.cpp's q8_0 numbers, with
// values and scales in two arrays): W[n, j] = q[n, j] * scale[n, j / kQ8Block], `scales` holding
// q8_blocks(k) float16 values per row. The result is the float32 product over the dequantized weights: the
// `widening` kernel turns weights into float32 in registers; the VNNI one (the default on AVX-512 VNNI CPUs) writes
// x once per call as three byte planes per block (24 bits of the block's largest |x|: an element's error is at most
// 2^-25 of it) and multiplies them by the int8 weights directly, 1.4x the widening kernel's throughput here.
// SINKFLOW_Q8_KERNEL=widening in the environment makes `automatic` take the widening kernel (for side-by-side
// measurements).
constexpr int64_t kQ8Block = 32;
inline int64_t q8_blocks(int64_t k) { return (k + kQ8Block - 1) / kQ8Block; }
enum class Q8Kernel { automatic, widening };
void gemv_q8(const int8_t* q, const uint16_t* scales, const float* x, float* y, int64_t n, int64_t k,
             Q8Kernel kernel = Q8Kernel::automatic);

// out[n, j] = q[n, j] * scale[n, j / kQ8Block] as float32, rows split across threads: widening an int8 matrix in
// one pass for products of several rows (prefill).
void dequantize_q8_rows(const int8_t* q, const uint16_t* scales, float* out, int64_t n, int64_t k);

// dst[r, i] = src[r * ld + i] widened from bfloat16 to float32, for r < rows and i < d (dst rows d apart): blocks
// of a bfloat16 KV cache for the float32 attention kernels.
void widen_bf16_rows(const uint16_t* src, int64_t ld, int64_t rows, int64_t d, float* dst);

// Runs body(i) for every i in [0, n), split across LibTorch's intra-op threads (one thread: in order, in the
// caller). Kernels called inside run on the thread they are called from.
void parallel_each(int64_t n, const std::function<void(int64_t)>& body);

// The sum of n floats read at the widest vector width this CPU has (AVX-512, AVX2 or plain C++), several sums in
// flight: what one core's memory bandwidth is when a kernel only streams (the floor of `bench latency`).
double stream_sum(const float* p, int64_t n);

// What gemv_* run on this CPU: AVX-512 (bfloat16; int8 with VNNI or widening), AVX2 + FMA, or generic C++
// (checked at run time).
const char* gemv_kernel_name();

}  // namespace sinkflow
