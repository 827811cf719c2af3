#include "models/nn/gemv.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace sinkflow {

namespace {

constexpr int64_t kRows = 4;  // rows per block: they share each load of x

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

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

bool have_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

template <class T>
void gemv(const T* w, const float* x, float* y, int64_t n, int64_t k, int64_t ld) {
  const bool fast = have_avx2_fma();
  // Blocks of rows: about 64 KB of weights each, so that a thread's share streams without stalls.
  const int64_t grain = std::max<int64_t>(kRows, (65536 / static_cast<int64_t>(sizeof(T)) / std::max<int64_t>(k, 1)) / kRows * kRows);
  at::parallel_for(0, n, grain, [&](int64_t n0, int64_t n1) {
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
void gemv_bf16(const uint16_t* w, const float* x, float* y, int64_t n, int64_t k) { gemv(w, x, y, n, k, k); }

void gemv_t_f32(const float* v, int64_t ld, const float* p, float* out, int64_t rows, int64_t cols) {
  if (have_avx2_fma()) {
    gemv_t_avx2(v, ld, p, out, rows, cols);
    return;
  }
  for (int64_t c = 0; c < cols; ++c) out[c] = 0.f;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c] += p[r] * v[r * ld + c];
}

const char* gemv_kernel_name() { return have_avx2_fma() ? "avx2+fma" : "generic"; }

}  // namespace sinkflow
