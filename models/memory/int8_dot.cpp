#include "models/memory/int8_dot.h"

#include <immintrin.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace sinkflow {

namespace {

int32_t dot_portable(const int8_t* x, const int8_t* y, size_t n) {
  int32_t s = 0;
  for (size_t i = 0; i < n; ++i) s += int32_t(x[i]) * int32_t(y[i]);
  return s;
}

#define SF_AVX512BW __attribute__((target("avx512f,avx512bw,avx512vl")))
#define SF_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

SF_AVX512BW inline __m512i load16(const int8_t* p) {
  return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

SF_AVX512BW inline __m512i load16_masked(const int8_t* p, __mmask32 m) {
  return _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, p));
}

// _mm512_reduce_add_epi32 without GCC 12's false -Wuninitialized (its upper-half extract takes an undefined
// source).
SF_AVX512BW inline int32_t reduce_add(__m512i v) {
  const __m256i h =
      _mm256_add_epi32(_mm512_maskz_extracti64x4_epi64(0xFF, v, 0), _mm512_maskz_extracti64x4_epi64(0xFF, v, 1));
  __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  q = _mm_add_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(1, 0, 3, 2)));
  q = _mm_add_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(q);
}

SF_AVX512BW inline __m512i madd_add(__m512i acc, __m512i a, __m512i b) {
  return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
}

SF_AVX512VNNI inline __m512i dpwssd(__m512i acc, __m512i a, __m512i b) { return _mm512_dpwssd_epi32(acc, a, b); }

// Both AVX-512 kernels widen 32 codes to int16 (exact) and add products pairwise into 16 int32 lanes: a pair is at
// most 2 * 128 * 128 = 32,768 and no lane wraps for n < 131,072, so the lanes' total is the portable loop's sum.
// Two accumulators per 64 codes (vpdpwssd's latency); the last < 32 codes come through a masked load (the bytes
// past n are neither read nor faulted on).
#define SF_INT8_DOT_BODY(ACCUMULATE)                                                                           \
  __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();                                            \
  size_t i = 0;                                                                                                \
  for (; i + 64 <= n; i += 64) {                                                                               \
    a0 = ACCUMULATE(a0, load16(x + i), load16(y + i));                                                        \
    a1 = ACCUMULATE(a1, load16(x + i + 32), load16(y + i + 32));                                              \
  }                                                                                                            \
  if (i + 32 <= n) {                                                                                           \
    a0 = ACCUMULATE(a0, load16(x + i), load16(y + i));                                                        \
    i += 32;                                                                                                   \
  }                                                                                                            \
  if (i < n) {                                                                                                 \
    const __mmask32 m = (__mmask32(1) << (n - i)) - 1;                                                         \
    a1 = ACCUMULATE(a1, load16_masked(x + i, m), load16_masked(y + i, m));                                    \
  }                                                                                                            \
  return reduce_add(_mm512_add_epi32(a0, a1));

SF_AVX512BW int32_t dot_avx512bw(const int8_t* x, const int8_t* y, size_t n) { SF_INT8_DOT_BODY(madd_add) }

SF_AVX512VNNI int32_t dot_avx512vnni(const int8_t* x, const int8_t* y, size_t n) { SF_INT8_DOT_BODY(dpwssd) }

#undef SF_INT8_DOT_BODY

Int8DotFn dot_fn(Int8DotKernel kernel) {
  switch (kernel) {
    case Int8DotKernel::avx512vnni: return dot_avx512vnni;
    case Int8DotKernel::avx512bw: return dot_avx512bw;
    case Int8DotKernel::portable: break;
  }
  return dot_portable;
}

struct KernelName {
  Int8DotKernel kernel;
  const char* name;
};
// The one table of names, read both ways.
constexpr KernelName kKernelNames[] = {
    {Int8DotKernel::portable, "portable"},
    {Int8DotKernel::avx512bw, "avx512bw"},
    {Int8DotKernel::avx512vnni, "avx512vnni"},
};

Int8DotKernel choose_best() {
  if (const char* v = std::getenv("SINKFLOW_INT8_DOT")) {
    for (const auto& [k, name] : kKernelNames)
      if (std::string(v) == name && int8_dot_supported(k)) return k;
  }
  if (int8_dot_supported(Int8DotKernel::avx512vnni)) return Int8DotKernel::avx512vnni;
  if (int8_dot_supported(Int8DotKernel::avx512bw)) return Int8DotKernel::avx512bw;
  return Int8DotKernel::portable;
}

}  // namespace

const char* int8_dot_kernel_name(Int8DotKernel kernel) {
  for (const auto& [k, name] : kKernelNames)
    if (k == kernel) return name;
  return "portable";
}

bool int8_dot_supported(Int8DotKernel kernel) {
  static const bool bw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl");
  static const bool vnni = bw && __builtin_cpu_supports("avx512vnni");
  switch (kernel) {
    case Int8DotKernel::avx512vnni: return vnni;
    case Int8DotKernel::avx512bw: return bw;
    case Int8DotKernel::portable: break;
  }
  return true;
}

Int8DotKernel int8_dot_best() {
  static const Int8DotKernel best = choose_best();
  return best;
}

Int8DotFn int8_dot_fn(Int8DotKernel kernel) {
  if (!int8_dot_supported(kernel))
    throw std::invalid_argument(std::string("int8_dot: kernel ") + int8_dot_kernel_name(kernel) +
                                " is not supported by this CPU");
  return dot_fn(kernel);
}

int32_t int8_dot(Int8DotKernel kernel, const int8_t* x, const int8_t* y, size_t n) {
  return int8_dot_fn(kernel)(x, y, n);
}

int32_t int8_dot(const int8_t* x, const int8_t* y, size_t n) {
  static const Int8DotFn best = dot_fn(int8_dot_best());
  return best(x, y, n);
}

}  // namespace sinkflow
