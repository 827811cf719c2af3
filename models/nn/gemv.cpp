#include "models/nn/gemv.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

// GCC 12's AVX-512 intrinsics initialise their "undefined" vectors with themselves (__Y = __Y), which
// -Wmaybe-uninitialized reports wherever they are inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace sinkflow {

namespace {

constexpr int64_t kRows = 4;  // rows per block: they share each load of x

// Software prefetch, kAhead blocks of rows ahead of the one being read: with blocks of 4 rows the kernels read
// 4-8 short streams at once, which the hardware prefetcher does not follow (int8 decode: 29 -> 16 ms per token
// on the SmolLM2-135M shape; distances 1-8 measured alike).
constexpr int64_t kAhead = 2;
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
inline void prefetch_span(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) prefetch(c + off);
}

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float half_to_float(uint16_t v) { return static_cast<float>(c10::Half(v, c10::Half::from_bits())); }

// Rows [n0, n1) of y = W x (rows ld apart), portable C++.
template <class T>
void gemv_rows_generic(const T* w, const float* x, float* y, int64_t n0, int64_t n1, int64_t k, int64_t ld) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* row = w + n * ld;
    float s = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      if constexpr (sizeof(T) == 2) {
        s += bf16_to_float(row[j]) * x[j];
      } else {
        s += row[j] * x[j];
      }
    }
    y[n] = s;
  }
}

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}

// 8 floats from 8 bfloat16 values.
__attribute__((target("avx2,fma"))) inline __m256 load_bf16(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* p) { return load_bf16(p); }

template <class T>
__attribute__((target("avx2,fma"))) void gemv_rows_avx2(const T* w, const float* x, float* y, int64_t n0, int64_t n1,
                                                        int64_t k, int64_t ld) {
  // 16 columns of 4 rows per iteration (8 accumulators): enough loads in flight to keep the memory busy.
  const int64_t k16 = k - k % 16;
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) {
    const T* r0 = w + n * ld;
    const T* r1 = r0 + ld;
    const T* r2 = r1 + ld;
    const T* r3 = r2 + ld;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
    for (int64_t j = 0; j < k16; j += 16) {
      for (int64_t i = 0; i < kRows; ++i) prefetch(r0 + (kAhead * kRows + i) * ld + j);
      const __m256 xa = _mm256_loadu_ps(x + j), xb = _mm256_loadu_ps(x + j + 8);
      a0 = _mm256_fmadd_ps(load8(r0 + j), xa, a0);
      a1 = _mm256_fmadd_ps(load8(r1 + j), xa, a1);
      a2 = _mm256_fmadd_ps(load8(r2 + j), xa, a2);
      a3 = _mm256_fmadd_ps(load8(r3 + j), xa, a3);
      b0 = _mm256_fmadd_ps(load8(r0 + j + 8), xb, b0);
      b1 = _mm256_fmadd_ps(load8(r1 + j + 8), xb, b1);
      b2 = _mm256_fmadd_ps(load8(r2 + j + 8), xb, b2);
      b3 = _mm256_fmadd_ps(load8(r3 + j + 8), xb, b3);
    }
    float s[kRows] = {hsum(_mm256_add_ps(a0, b0)), hsum(_mm256_add_ps(a1, b1)), hsum(_mm256_add_ps(a2, b2)),
                      hsum(_mm256_add_ps(a3, b3))};
    const T* rows[kRows] = {r0, r1, r2, r3};
    for (int64_t i = 0; i < kRows; ++i) {
      for (int64_t j = k16; j < k; ++j) {
        if constexpr (sizeof(T) == 2) {
          s[i] += bf16_to_float(rows[i][j]) * x[j];
        } else {
          s[i] += rows[i][j] * x[j];
        }
      }
      y[n + i] = s[i];
    }
  }
  gemv_rows_generic(w, x, y, n, n1, k, ld);
}

__attribute__((target("avx2,fma"))) void gemv_t_avx2(const float* v, int64_t ld, const float* p, float* out,
                                                     int64_t rows, int64_t cols) {
  int64_t c = 0;
  for (; c + 32 <= cols; c += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
      const __m256 pr = _mm256_set1_ps(p[r]);
      const float* row = v + r * ld + c;
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row), pr, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + 8), pr, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + 16), pr, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(row + 24), pr, a3);
    }
    _mm256_storeu_ps(out + c, a0);
    _mm256_storeu_ps(out + c + 8, a1);
    _mm256_storeu_ps(out + c + 16, a2);
    _mm256_storeu_ps(out + c + 24, a3);
  }
  for (; c < cols; ++c) {
    float s = 0.f;
    for (int64_t r = 0; r < rows; ++r) s += p[r] * v[r * ld + c];
    out[c] = s;
  }
}

// Blocks [b0, q8_blocks(k)) of an int8 row times x, portable C++.
inline float q8_row_from(const int8_t* row, const uint16_t* row_scales, const float* x, int64_t b0, int64_t k) {
  float s = 0.f;
  for (int64_t b = b0; b < q8_blocks(k); ++b) {
    float part = 0.f;
    for (int64_t j = b * kQ8Block; j < std::min(k, (b + 1) * kQ8Block); ++j) part += static_cast<float>(row[j]) * x[j];
    s += part * half_to_float(row_scales[b]);
  }
  return s;
}

// Rows [n0, n1) of y = W x for int8 blocks with float16 scales, portable C++.
void gemv_q8_rows_generic(const int8_t* q, const uint16_t* scales, const float* x, float* y, int64_t n0, int64_t n1,
                          int64_t k) {
  for (int64_t n = n0; n < n1; ++n) y[n] = q8_row_from(q + n * k, scales + n * q8_blocks(k), x, 0, k);
}

// The last, partial block of an int8 row (k not a multiple of kQ8Block), or 0.
inline float q8_tail(const int8_t* row, const uint16_t* row_scales, const float* x, int64_t k) {
  return q8_row_from(row, row_scales, x, k / kQ8Block, k);
}

// 8 floats from 8 int8 values.
__attribute__((target("avx2,fma"))) inline __m256 load_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// One row's block of 32: acc += scale * (q . x), the block's four products summed in two chains.
__attribute__((target("avx2,fma"))) inline void q8_block(const int8_t* r, float scale, __m256 x0, __m256 x1, __m256 x2,
                                                         __m256 x3, __m256& acc) {
  __m256 s0 = _mm256_mul_ps(load_i8(r), x0);
  __m256 s1 = _mm256_mul_ps(load_i8(r + 8), x1);
  s0 = _mm256_fmadd_ps(load_i8(r + 16), x2, s0);
  s1 = _mm256_fmadd_ps(load_i8(r + 24), x3, s1);
  acc = _mm256_fmadd_ps(_mm256_add_ps(s0, s1), _mm256_set1_ps(scale), acc);
}

__attribute__((target("avx2,fma,f16c"))) void gemv_q8_rows_avx2(const int8_t* q, const uint16_t* scales, const float* x,
                                                                float* y, int64_t n0, int64_t n1, int64_t k) {
  const int64_t nb = q8_blocks(k), full = k / kQ8Block;
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) {
    const int8_t* r0 = q + n * k;
    const uint16_t* s0 = scales + n * nb;
    prefetch_span(s0 + kAhead * kRows * nb, kRows * nb * 2);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t b = 0; b < full; ++b) {
      const float* xb = x + b * kQ8Block;
      const __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8), x2 = _mm256_loadu_ps(xb + 16),
                   x3 = _mm256_loadu_ps(xb + 24);
      const int8_t* r = r0 + b * kQ8Block;
      for (int64_t i = 0; i < kRows; ++i) prefetch(r + (kAhead * kRows + i) * k);
      q8_block(r, _cvtsh_ss(s0[b]), x0, x1, x2, x3, a0);
      q8_block(r + k, _cvtsh_ss(s0[nb + b]), x0, x1, x2, x3, a1);
      q8_block(r + 2 * k, _cvtsh_ss(s0[2 * nb + b]), x0, x1, x2, x3, a2);
      q8_block(r + 3 * k, _cvtsh_ss(s0[3 * nb + b]), x0, x1, x2, x3, a3);
    }
    const __m256 acc[kRows] = {a0, a1, a2, a3};
    for (int64_t i = 0; i < kRows; ++i) y[n + i] = hsum(acc[i]) + q8_tail(r0 + i * k, s0 + i * nb, x, k);
  }
  gemv_q8_rows_generic(q, scales, x, y, n, n1, k);
}

// AVX-512 versions of the narrow-weight kernels: twice the weights per widening instruction.
#define SF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

SF_AVX512 inline __m512 load_i8x16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// 32 int8 values times their block's float16 scale, stored as float32.
SF_AVX512 inline void dequantize_block_avx512(const int8_t* q, uint16_t scale, float* out) {
  const __m512 s = _mm512_set1_ps(_cvtsh_ss(scale));
  _mm512_storeu_ps(out, _mm512_mul_ps(load_i8x16(q), s));
  _mm512_storeu_ps(out + 16, _mm512_mul_ps(load_i8x16(q + 16), s));
}

// One row's block of 32: acc += scale * (q . x).
SF_AVX512 inline void q8_block16(const int8_t* r, float scale, __m512 x0, __m512 x1, __m512& acc) {
  const __m512 s = _mm512_fmadd_ps(load_i8x16(r + 16), x1, _mm512_mul_ps(load_i8x16(r), x0));
  acc = _mm512_fmadd_ps(s, _mm512_set1_ps(scale), acc);
}

SF_AVX512 void gemv_q8_rows_avx512(const int8_t* q, const uint16_t* scales, const float* x, float* y, int64_t n0,
                                   int64_t n1, int64_t k) {
  const int64_t nb = q8_blocks(k), full = k / kQ8Block;
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) {
    const int8_t* r0 = q + n * k;
    const uint16_t* s0 = scales + n * nb;
    prefetch_span(s0 + kAhead * kRows * nb, kRows * nb * 2);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int64_t b = 0; b < full; ++b) {
      const __m512 x0 = _mm512_loadu_ps(x + b * kQ8Block), x1 = _mm512_loadu_ps(x + b * kQ8Block + 16);
      const int8_t* r = r0 + b * kQ8Block;
      for (int64_t i = 0; i < kRows; ++i) prefetch(r + (kAhead * kRows + i) * k);
      q8_block16(r, _cvtsh_ss(s0[b]), x0, x1, a0);
      q8_block16(r + k, _cvtsh_ss(s0[nb + b]), x0, x1, a1);
      q8_block16(r + 2 * k, _cvtsh_ss(s0[2 * nb + b]), x0, x1, a2);
      q8_block16(r + 3 * k, _cvtsh_ss(s0[3 * nb + b]), x0, x1, a3);
    }
    const __m512 acc[kRows] = {a0, a1, a2, a3};
    for (int64_t i = 0; i < kRows; ++i) y[n + i] = _mm512_reduce_add_ps(acc[i]) + q8_tail(r0 + i * k, s0 + i * nb, x, k);
  }
  gemv_q8_rows_generic(q, scales, x, y, n, n1, k);
}

// int8 rows with AVX-512 VNNI: x stands as three unsigned byte planes per block of 32 (|x| / s_b = H + M/256 +
// L/65536 with s_b = max_b |x| / 255: 24 bits, an element's error at most s_b / 131072, float32's own order) and its
// signs move onto the weights (negated where x < 0, a masked subtract; quantize_q8 never stores -128). vpdpbusd then
// multiplies 64 weights by a plane in one instruction, where widening them to float32 takes eight: the float kernel
// above is bound by its widening (13 GB/s in L2 and in memory alike), this one by the memory.
struct Q8Planes {
  std::vector<uint8_t> h, m, l;    // planes, k64 bytes each (whole 64-weight chunks)
  std::vector<__mmask64> negative;  // per chunk: x < 0
  std::vector<float> scale;         // per block: s_b / 65536
};

#define SF_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

// 16 elements of a block as planes: t = |x| * inv in [0, 255] = H + M / 256 + L / 65536 (each step exact in float32:
// t minus its integer part, times 256).
SF_VNNI inline void planes16(__m512 v, __m512 inv, uint8_t* h, uint8_t* m, uint8_t* l) {
  const __m512 top = _mm512_set1_ps(255.f), step = _mm512_set1_ps(256.f);
  const __m512 t = _mm512_min_ps(_mm512_mul_ps(_mm512_abs_ps(v), inv), top);
  const __m512 hf = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_mul_ps(_mm512_sub_ps(t, hf), step);
  const __m512 mf = _mm512_roundscale_ps(r, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 lf = _mm512_min_ps(
      _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(r, mf), step), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
      top);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(h), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(hf)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(m), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(mf)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(l), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(lf)));
}

// x[0, k64) as planes, signs and per-block scales (k64 a multiple of 64); false when x holds an infinity or a NaN
// (the widening kernel then carries them into y as float32 arithmetic does). A block whose largest |x| is below
// 255 / FLT_MAX (~1e-36) stands as zeros: its products are under float32's normal range.
SF_VNNI bool make_q8_planes(const float* x, int64_t k64, Q8Planes& p) {
  const auto bytes = static_cast<size_t>(k64);
  p.h.resize(bytes);
  p.m.resize(bytes);
  p.l.resize(bytes);
  p.negative.resize(bytes / 64);
  p.scale.resize(bytes / kQ8Block);
  const __m512 infinity = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __mmask16 unfinished = 0;
  for (int64_t c = 0; c < k64 / 64; ++c) {
    __mmask64 negative = 0;
    for (int64_t half = 0; half < 2; ++half) {
      const int64_t at = c * 64 + half * kQ8Block;
      const __m512 v0 = _mm512_loadu_ps(x + at), v1 = _mm512_loadu_ps(x + at + 16);
      const __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
      unfinished |= _mm512_cmp_ps_mask(a0, infinity, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(a1, infinity, _CMP_NLT_UQ);
      const float top = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
      const float ratio = top > 0.f ? 255.f / top : 0.f;
      const __m512 inv = _mm512_set1_ps(std::isfinite(ratio) ? ratio : 0.f);
      planes16(v0, inv, &p.h[at], &p.m[at], &p.l[at]);
      planes16(v1, inv, &p.h[at + 16], &p.m[at + 16], &p.l[at + 16]);
      const __mmask64 lanes = static_cast<__mmask64>(_mm512_cmp_ps_mask(v0, _mm512_setzero_ps(), _CMP_LT_OQ)) |
                              static_cast<__mmask64>(_mm512_cmp_ps_mask(v1, _mm512_setzero_ps(), _CMP_LT_OQ)) << 16;
      negative |= lanes << (half * kQ8Block);
      p.scale[static_cast<size_t>(at / kQ8Block)] = top / 255.f / 65536.f;
    }
    p.negative[static_cast<size_t>(c)] = negative;
  }
  return unfinished == 0;
}

// One row's chunk of 64 weights (two blocks; `scale` holds, lanes 0-7 and 8-15, each block's weight scale times
// x's): acc += the dequantized chunk times x's.
SF_VNNI inline void q8_chunk_vnni(const int8_t* r, __m512i h, __m512i m, __m512i l, __mmask64 neg, __m512 scale,
                                  __m512& acc) {
  const __m512i w = _mm512_loadu_si512(r);
  const __m512i ws = _mm512_mask_sub_epi8(w, neg, _mm512_setzero_si512(), w);
  // 256 H.w + M.w in int32 (at most 2^25 a lane), then L.w in float32 beside it.
  const __m512i dh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), h, ws);
  const __m512 hm = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_slli_epi32(dh, 8), m, ws));
  const __m512i dl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), l, ws);
  const __m512 sum = _mm512_fmadd_ps(hm, _mm512_set1_ps(256.f), _mm512_cvtepi32_ps(dl));
  acc = _mm512_fmadd_ps(sum, scale, acc);
}

SF_VNNI void gemv_q8_rows_vnni(const int8_t* q, const uint16_t* scales, const Q8Planes& p, const float* x, float* y,
                               int64_t n0, int64_t n1, int64_t k) {
  const int64_t nb = q8_blocks(k), chunks = k / 64;
  // Lanes 0-7 from element 2j of 8 block scales, lanes 8-15 from element 2j + 1: chunk j of a group of 4.
  const __m512i spread[4] = {_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                             _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2),
                             _mm512_set_epi32(5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4),
                             _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6)};
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) {
    const int8_t* r0 = q + n * k;
    const uint16_t* s0 = scales + n * nb;
    prefetch_span(s0 + kAhead * kRows * nb, kRows * nb * 2);
    __m512 acc[kRows] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    // Groups of 4 chunks = 8 blocks: their weight scales times x's, for each row, in one vector.
    for (int64_t c0 = 0; c0 < chunks; c0 += 4) {
      const int64_t group = std::min<int64_t>(4, chunks - c0);
      const auto lanes = static_cast<__mmask8>((1u << (2 * group)) - 1);
      const __m256 xs = _mm256_maskz_loadu_ps(lanes, p.scale.data() + 2 * c0);
      __m512 sc[kRows];
      for (int64_t i = 0; i < kRows; ++i)
        sc[i] = _mm512_castps256_ps512(
            _mm256_mul_ps(_mm256_cvtph_ps(_mm_maskz_loadu_epi16(lanes, s0 + i * nb + 2 * c0)), xs));
      for (int64_t j = 0; j < group; ++j) {
        const int64_t c = c0 + j;
        const __m512i h = _mm512_loadu_si512(p.h.data() + c * 64), m = _mm512_loadu_si512(p.m.data() + c * 64),
                      l = _mm512_loadu_si512(p.l.data() + c * 64);
        const __mmask64 neg = p.negative[static_cast<size_t>(c)];
        const int8_t* r = r0 + c * 64;
        for (int64_t i = 0; i < kRows; ++i) prefetch(r + (kAhead * kRows + i) * k);
        for (int64_t i = 0; i < kRows; ++i)
          q8_chunk_vnni(r + i * k, h, m, l, neg, _mm512_permutexvar_ps(spread[j], sc[i]), acc[i]);
      }
    }
    // The blocks after the last whole chunk (k % 64 weights) in float32.
    for (int64_t i = 0; i < kRows; ++i)
      y[n + i] = _mm512_reduce_add_ps(acc[i]) + q8_row_from(r0 + i * k, s0 + i * nb, x, chunks * 2, k);
  }
  gemv_q8_rows_generic(q, scales, x, y, n, n1, k);
}

// bfloat16 rows: each 32-bit lane of a load holds an even element (low half) and an odd one (high half); shifting
// or masking makes them float32 in place, multiplied by x's even and odd elements (xe, xo: x split once per call).
SF_AVX512 void gemv_bf16_rows_avx512(const uint16_t* w, const float* xe, const float* xo, const float* x, float* y,
                                     int64_t n0, int64_t n1, int64_t k) {
  const int64_t k32 = k - k % 32;
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) {
    const uint16_t* r0 = w + n * k;
    __m512 a[kRows] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    __m512 b[kRows] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t j = 0; j < k32; j += 32) {
      const __m512 e = _mm512_loadu_ps(xe + j / 2), o = _mm512_loadu_ps(xo + j / 2);
      for (int64_t i = 0; i < kRows; ++i) prefetch(r0 + (kAhead * kRows + i) * k + j);
      for (int64_t i = 0; i < kRows; ++i) {
        const __m512i v = _mm512_loadu_si512(r0 + i * k + j);
        a[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), e, a[i]);
        b[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, high)), o, b[i]);
      }
    }
    for (int64_t i = 0; i < kRows; ++i) {
      float s = _mm512_reduce_add_ps(_mm512_add_ps(a[i], b[i]));
      for (int64_t j = k32; j < k; ++j) s += bf16_to_float(r0[i * k + j]) * x[j];
      y[n + i] = s;
    }
  }
  gemv_rows_generic(w, x, y, n, n1, k, k);
}

// A cached row of C * 16 values as C float32 vectors. float32 rows load as they are. bfloat16 rows (the upper
// halves of float32s) load 32 values at a time and widen without a lane crossing: a shift gives the even values,
// a mask the odd ones. The vectors then hold the row's values in the order `arranged` puts a query in: for each
// 32 values, the 16 even then the 16 odd.
template <int C>
SF_AVX512 inline void load_row(const float* row, __m512 (&out)[C]) {
  for (int c = 0; c < C; ++c) out[c] = _mm512_loadu_ps(row + c * 16);
}
template <int C>
SF_AVX512 inline void load_row(const uint16_t* row, __m512 (&out)[C]) {
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int c = 0; c < C; c += 2) {
    const __m512i w = _mm512_loadu_si512(row + c * 16);
    out[c] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    out[c + 1] = _mm512_castsi512_ps(_mm512_and_si512(w, high));
  }
}

// Index j of a row as load_row<T> holds it: position arranged_index<T>(j) of its vectors.
template <class T>
inline int64_t arranged_index(int64_t j) {
  if constexpr (sizeof(T) == 2) {
    const int64_t base = j / 32 * 32, i = j % 32;
    return base + (i % 2) * 16 + i / 2;
  } else {
    return j;
  }
}

// Cached rows read ahead of the kernels below: whole rows, about kCacheAheadBytes on (a head's rows are one stream,
// but the hardware prefetcher alone falls behind a kernel that spends this long on each row). Attention over a
// 4,096-row cache of 30 layers, bfloat16: 512 B ahead 9.8-11.9 ms, 1 KB 6.9-10.3 ms, 4 KB 4.7-5.7 ms (one core
// streams the same bytes in 6.0-7.5 ms; tools/BENCHMARKS.md, session 14).
constexpr int64_t kCacheAheadBytes = 4096;
constexpr int64_t cache_ahead_rows(int64_t row_bytes) { return std::max<int64_t>(4, kCacheAheadBytes / row_bytes); }

// The sums of four vectors' lanes, in order: 8 shuffles and 5 additions for four rows' scores (a reduction of each
// vector on its own takes 4 and 4).
SF_AVX512 inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 y = _mm256_add_ps(_mm512_castps512_ps256(u),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
}

// G queries (G <= 4) against rows of C * 16 values (float32 or bfloat16): each row loaded once, the queries held
// in registers (in load_row's order), four rows' scores reduced together.
template <class T, int G, int C>
SF_AVX512 void scores_rows_avx512(const T* k, int64_t ld, const float* q, int64_t stride_q, float* s,
                                  int64_t stride_s, int64_t rows) {
  alignas(64) float arranged[G][C * 16];
  for (int i = 0; i < G; ++i)
    for (int64_t j = 0; j < C * 16; ++j) arranged[i][arranged_index<T>(j)] = q[i * stride_q + j];
  __m512 qv[G][C];
  for (int i = 0; i < G; ++i)
    for (int c = 0; c < C; ++c) qv[i][c] = _mm512_load_ps(&arranged[i][c * 16]);
  constexpr int64_t row_bytes = C * 16 * static_cast<int64_t>(sizeof(T));
  const int64_t ahead = cache_ahead_rows(row_bytes) * ld;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    __m512 acc[G][4];
    for (int64_t u = 0; u < 4; ++u) {
      const T* row = k + (r + u) * ld;
      prefetch_span(row + ahead, row_bytes);
      __m512 kv[C];
      load_row<C>(row, kv);
      for (int i = 0; i < G; ++i) {
        acc[i][u] = _mm512_mul_ps(kv[0], qv[i][0]);
        for (int c = 1; c < C; ++c) acc[i][u] = _mm512_fmadd_ps(kv[c], qv[i][c], acc[i][u]);
      }
    }
    for (int i = 0; i < G; ++i) _mm_storeu_ps(s + i * stride_s + r, sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
  }
  for (; r < rows; ++r) {
    __m512 kv[C];
    load_row<C>(k + r * ld, kv);
    for (int i = 0; i < G; ++i) {
      __m512 acc = _mm512_mul_ps(kv[0], qv[i][0]);
      for (int c = 1; c < C; ++c) acc = _mm512_fmadd_ps(kv[c], qv[i][c], acc);
      s[i * stride_s + r] = _mm512_reduce_add_ps(acc);
    }
  }
}

// out_i = sum_r p_i[r] V[r, :] for G probability rows (G <= 4) over rows of C * 16 values, each row loaded once;
// each output value sums its rows in order.
template <class T, int G, int C>
SF_AVX512 void values_rows_avx512(const T* v, int64_t ld, const float* p, int64_t stride_p, float* out,
                                  int64_t stride_o, int64_t rows) {
  __m512 acc[G][C];
  for (int i = 0; i < G; ++i)
    for (int c = 0; c < C; ++c) acc[i][c] = _mm512_setzero_ps();
  constexpr int64_t row_bytes = C * 16 * static_cast<int64_t>(sizeof(T));
  const int64_t ahead = cache_ahead_rows(row_bytes) * ld;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = v + r * ld;
    prefetch_span(row + ahead, row_bytes);
    __m512 vv[C];
    load_row<C>(row, vv);
    for (int i = 0; i < G; ++i) {
      const __m512 pr = _mm512_set1_ps(p[i * stride_p + r]);
      for (int c = 0; c < C; ++c) acc[i][c] = _mm512_fmadd_ps(vv[c], pr, acc[i][c]);
    }
  }
  alignas(64) float arranged[C * 16];
  for (int i = 0; i < G; ++i) {
    for (int c = 0; c < C; ++c) _mm512_store_ps(&arranged[c * 16], acc[i][c]);
    for (int64_t j = 0; j < C * 16; ++j) out[i * stride_o + j] = arranged[arranged_index<T>(j)];
  }
}

// The kernel for G queries and d = C * 16 (d_head 64, 128 or 256), or nullptr.
template <template <int, int> class Pick>
auto pick_grouped(int64_t g, int64_t d) -> std::remove_const_t<decltype(Pick<1, 4>::fn)> {
  const int64_t c = d / 16;
  if (d % 16 != 0 || g < 1 || g > 4 || (c != 4 && c != 8 && c != 16)) return nullptr;
  switch (g * 100 + c) {
    case 104: return Pick<1, 4>::fn;
    case 108: return Pick<1, 8>::fn;
    case 116: return Pick<1, 16>::fn;
    case 204: return Pick<2, 4>::fn;
    case 208: return Pick<2, 8>::fn;
    case 216: return Pick<2, 16>::fn;
    case 304: return Pick<3, 4>::fn;
    case 308: return Pick<3, 8>::fn;
    case 316: return Pick<3, 16>::fn;
    case 404: return Pick<4, 4>::fn;
    case 408: return Pick<4, 8>::fn;
    default: return Pick<4, 16>::fn;
  }
}
template <class T>
struct ScoresKernel {
  template <int G, int C>
  struct Of {
    static constexpr auto fn = &scores_rows_avx512<T, G, C>;
  };
};
template <class T>
struct ValuesKernel {
  template <int G, int C>
  struct Of {
    static constexpr auto fn = &values_rows_avx512<T, G, C>;
  };
};

bool have_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

bool have_avx512() {
  static const bool yes = have_avx2_fma() && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return yes;
}

bool have_vnni() {
  static const bool yes = have_avx512() && __builtin_cpu_supports("avx512vnni");
  return yes;
}

// SINKFLOW_Q8_KERNEL=widening keeps int8 products on the widening kernel (side-by-side measurements).
bool q8_widening_chosen() {
  static const bool yes = [] {
    const char* v = std::getenv("SINKFLOW_Q8_KERNEL");
    return v != nullptr && std::string(v) == "widening";
  }();
  return yes;
}

// Rows [0, n) split across LibTorch's intra-op threads in blocks of about 64 KB of weights (`row_bytes` each), so
// that a thread's share streams without stalls; rows(n0, n1) computes a block.
template <class Rows>
void parallel_rows(int64_t n, int64_t row_bytes, const Rows& rows) {
  const int64_t grain = std::max<int64_t>(kRows, 65536 / std::max<int64_t>(row_bytes, 1) / kRows * kRows);
  at::parallel_for(0, n, grain, rows);
}

template <class T>
void gemv(const T* w, const float* x, float* y, int64_t n, int64_t k, int64_t ld) {
  const bool fast = have_avx2_fma();
  parallel_rows(n, k * static_cast<int64_t>(sizeof(T)), [&](int64_t n0, int64_t n1) {
    if (fast) {
      gemv_rows_avx2(w, x, y, n0, n1, k, ld);
    } else {
      gemv_rows_generic(w, x, y, n0, n1, k, ld);
    }
  });
}

}  // namespace

void gemv_f32(const float* w, const float* x, float* y, int64_t n, int64_t k) { gemv(w, x, y, n, k, k); }
void gemv_f32_ld(const float* w, int64_t ld, const float* x, float* y, int64_t n, int64_t k) {
  gemv(w, x, y, n, k, ld);
}
void gemv_bf16(const uint16_t* w, const float* x, float* y, int64_t n, int64_t k) {
  if (!have_avx512()) {
    gemv(w, x, y, n, k, k);
    return;
  }
  // x's even and odd elements, for the kernel's in-place widening (a buffer per calling thread, reused).
  thread_local std::vector<float> split;
  const int64_t half = k / 2;
  split.resize(static_cast<size_t>(2 * half));
  float* xe = split.data();
  float* xo = xe + half;
  for (int64_t j = 0; j < half; ++j) {
    xe[j] = x[2 * j];
    xo[j] = x[2 * j + 1];
  }
  parallel_rows(n, 2 * k, [&](int64_t n0, int64_t n1) { gemv_bf16_rows_avx512(w, xe, xo, x, y, n0, n1, k); });
}

void gemv_q8(const int8_t* q, const uint16_t* scales, const float* x, float* y, int64_t n, int64_t k,
             Q8Kernel kernel) {
  if (kernel == Q8Kernel::automatic && have_vnni() && k >= 64 && !q8_widening_chosen()) {
    // x as byte planes, made once per call in a buffer of the calling thread (named through a reference: a lambda
    // naming a thread_local directly would read another thread's).
    thread_local Q8Planes buffer;
    Q8Planes& planes = buffer;
    if (make_q8_planes(x, k / 64 * 64, planes)) {
      parallel_rows(n, k, [&](int64_t n0, int64_t n1) { gemv_q8_rows_vnni(q, scales, planes, x, y, n0, n1, k); });
      return;
    }
  }
  const bool wide = have_avx512();
  const bool fast = have_avx2_fma() && __builtin_cpu_supports("f16c");
  parallel_rows(n, k, [&](int64_t n0, int64_t n1) {
    if (wide) {
      gemv_q8_rows_avx512(q, scales, x, y, n0, n1, k);
    } else if (fast) {
      gemv_q8_rows_avx2(q, scales, x, y, n0, n1, k);
    } else {
      gemv_q8_rows_generic(q, scales, x, y, n0, n1, k);
    }
  });
}

void dequantize_q8_rows(const int8_t* q, const uint16_t* scales, float* out, int64_t n, int64_t k) {
  const bool wide = have_avx512();
  const int64_t nb = q8_blocks(k), full = k / kQ8Block;
  parallel_rows(n, k, [&](int64_t n0, int64_t n1) {
    for (int64_t r = n0; r < n1; ++r) {
      const int8_t* row = q + r * k;
      const uint16_t* s = scales + r * nb;
      float* o = out + r * k;
      int64_t b = 0;
      if (wide) {
        for (; b < full; ++b) dequantize_block_avx512(row + b * kQ8Block, s[b], o + b * kQ8Block);
      }
      for (int64_t j = b * kQ8Block; j < k; ++j) o[j] = static_cast<float>(row[j]) * half_to_float(s[j / kQ8Block]);
    }
  });
}

namespace {

SF_AVX512 void widen_bf16_rows_avx512(const uint16_t* src, int64_t ld, int64_t rows, int64_t d, float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = src + r * ld;
    float* out = dst + r * d;
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
      const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i)));
      _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
    for (; i < d; ++i) out[i] = bf16_to_float(in[i]);
  }
}

}  // namespace

void widen_bf16_rows(const uint16_t* src, int64_t ld, int64_t rows, int64_t d, float* dst) {
  if (have_avx512()) {
    widen_bf16_rows_avx512(src, ld, rows, d, dst);
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < d; ++i) dst[r * d + i] = bf16_to_float(src[r * ld + i]);
}

void parallel_each(int64_t n, const std::function<void(int64_t)>& body) {
  at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) body(i);
  });
}

namespace {

// Queries i < g in groups of up to four through the grouped kernel `Pick` for head size d where one fits
// (grouped(kernel, first, count)), one at a time otherwise (single(i)).
template <template <int, int> class Pick, class Grouped, class Single>
void in_groups(int64_t g, int64_t d, const Grouped& grouped, const Single& single) {
  for (int64_t i0 = 0; i0 < g; i0 += 4) {
    const int64_t n = std::min<int64_t>(4, g - i0);
    const auto kernel = have_avx512() ? pick_grouped<Pick>(n, d) : nullptr;
    if (kernel) {
      grouped(kernel, i0);
    } else {
      for (int64_t i = i0; i < i0 + n; ++i) single(i);
    }
  }
}

}  // namespace

void attend_scores_f32(const float* k, int64_t ld, const float* q, float* scores, int64_t g, int64_t stride_q,
                       int64_t stride_s, int64_t rows, int64_t d) {
  in_groups<ScoresKernel<float>::Of>(
      g, d, [&](auto kernel, int64_t i0) { kernel(k, ld, q + i0 * stride_q, stride_q, scores + i0 * stride_s, stride_s, rows); },
      [&](int64_t i) { gemv_f32_ld(k, ld, q + i * stride_q, scores + i * stride_s, rows, d); });
}

void attend_values_f32(const float* v, int64_t ld, const float* p, float* out, int64_t g, int64_t stride_p,
                       int64_t stride_o, int64_t rows, int64_t d) {
  in_groups<ValuesKernel<float>::Of>(
      g, d, [&](auto kernel, int64_t i0) { kernel(v, ld, p + i0 * stride_p, stride_p, out + i0 * stride_o, stride_o, rows); },
      [&](int64_t i) { gemv_t_f32(v, ld, p + i * stride_p, out + i * stride_o, rows, d); });
}

namespace {

constexpr int64_t kWidenRows = 64;

// Rows [0, rows) of a bfloat16 cache head widened to float32 kWidenRows at a time into a buffer of the calling
// thread: body(block, first row, count), for head sizes and CPUs without a fused kernel.
template <class Body>
void in_widened_blocks(const uint16_t* head, int64_t ld, int64_t rows, int64_t d, const Body& body) {
  thread_local std::vector<float> buffer;
  std::vector<float>& buf = buffer;
  buf.resize(static_cast<size_t>(kWidenRows * d));
  for (int64_t c0 = 0; c0 < rows; c0 += kWidenRows) {
    const int64_t n = std::min(kWidenRows, rows - c0);
    widen_bf16_rows(head + c0 * ld, ld, n, d, buf.data());
    body(buf.data(), c0, n);
  }
}

}  // namespace

void attend_scores_bf16(const uint16_t* k, int64_t ld, const float* q, float* scores, int64_t g, int64_t stride_q,
                        int64_t stride_s, int64_t rows, int64_t d) {
  in_groups<ScoresKernel<uint16_t>::Of>(
      g, d, [&](auto kernel, int64_t i0) { kernel(k, ld, q + i0 * stride_q, stride_q, scores + i0 * stride_s, stride_s, rows); },
      [&](int64_t i) {
        in_widened_blocks(k, ld, rows, d, [&](const float* block, int64_t c0, int64_t n) {
          gemv_f32_ld(block, d, q + i * stride_q, scores + i * stride_s + c0, n, d);
        });
      });
}

void attend_values_bf16(const uint16_t* v, int64_t ld, const float* p, float* out, int64_t g, int64_t stride_p,
                        int64_t stride_o, int64_t rows, int64_t d) {
  in_groups<ValuesKernel<uint16_t>::Of>(
      g, d, [&](auto kernel, int64_t i0) { kernel(v, ld, p + i0 * stride_p, stride_p, out + i0 * stride_o, stride_o, rows); },
      [&](int64_t i) {
        // Each block's weighted sum, added up.
        std::vector<float> part(static_cast<size_t>(d));
        float* o = out + i * stride_o;
        std::fill(o, o + d, 0.0f);
        in_widened_blocks(v, ld, rows, d, [&](const float* block, int64_t c0, int64_t n) {
          gemv_t_f32(block, d, p + i * stride_p + c0, part.data(), n, d);
          for (int64_t c = 0; c < d; ++c) o[c] += part[static_cast<size_t>(c)];
        });
      });
}

void gemv_t_f32(const float* v, int64_t ld, const float* p, float* out, int64_t rows, int64_t cols) {
  if (have_avx2_fma()) {
    gemv_t_avx2(v, ld, p, out, rows, cols);
    return;
  }
  for (int64_t c = 0; c < cols; ++c) out[c] = 0.f;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c] += p[r] * v[r * ld + c];
}

namespace {

SF_AVX512 double stream_sum_avx512(const float* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
  }
  double s = 0;
  for (const __m512 a : {a0, a1, a2, a3}) {
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, a);
    for (float v : lanes) s += v;
  }
  for (; i < n; ++i) s += p[i];
  return s;
}

__attribute__((target("avx2,fma"))) double stream_sum_avx2(const float* p, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  double s = 0;
  for (const __m256 a : {a0, a1, a2, a3}) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, a);
    for (float v : lanes) s += v;
  }
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace

double stream_sum(const float* p, int64_t n) {
  if (have_avx512()) return stream_sum_avx512(p, n);
  if (have_avx2_fma()) return stream_sum_avx2(p, n);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += p[i];
  return s;
}

const char* gemv_kernel_name() {
  if (have_vnni() && !q8_widening_chosen()) return "avx512 (bfloat16) + avx512-vnni (int8) + avx2+fma (float32)";
  if (have_avx512()) return "avx512 (bfloat16, int8) + avx2+fma (float32)";
  return have_avx2_fma() ? "avx2+fma" : "generic";
}

}  // namespace sinkflow
