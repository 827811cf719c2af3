#include "models/nn/amx.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <cstring>
#include <map>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "models/nn/gemv.h"

#ifdef SINKFLOW_HAVE_DNNL
#include <immintrin.h>

#include <oneapi/dnnl/dnnl.hpp>

// GCC 12's AVX-512 intrinsics initialise their "undefined" vectors with themselves (as in gemv.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace sinkflow {

#ifdef SINKFLOW_HAVE_DNNL

namespace {

// Round to nearest even, as AVX512_BF16's conversions do (the values here are finite).
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline void split1(float v, uint16_t* hi, uint16_t* lo) {
  *hi = to_bf16(v);
  *lo = to_bf16(v - from_bf16(*hi));
}

#define SF_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,f16c")))

// hi and lo of 16 floats.
SF_BF16 inline void split16(__m512 v, uint16_t* hi, uint16_t* lo) {
  const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  const __m256i l = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_sub_ps(v, hf)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi), h);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo), l);
}

// hi and lo of a float32 row of k values.
SF_BF16 void split_row(const float* v, int64_t k, uint16_t* hi, uint16_t* lo) {
  int64_t j = 0;
  for (; j + 16 <= k; j += 16) split16(_mm512_loadu_ps(v + j), hi + j, lo + j);
  for (; j < k; ++j) split1(v[j], hi + j, lo + j);
}

// hi and lo of an int8 row of k values in blocks of kQ8Block with float16 scales.
SF_BF16 void split_q8_row(const int8_t* q, const uint16_t* scales, int64_t k, uint16_t* hi, uint16_t* lo) {
  const int64_t full = k / kQ8Block;
  for (int64_t b = 0; b < full; ++b) {
    const __m512 s = _mm512_set1_ps(_cvtsh_ss(scales[b]));
    for (int64_t h = 0; h < kQ8Block; h += 16) {
      const int64_t j = b * kQ8Block + h;
      const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + j))));
      split16(_mm512_mul_ps(v, s), hi + j, lo + j);
    }
  }
  for (int64_t j = full * kQ8Block; j < k; ++j)
    split1(static_cast<float>(q[j]) * static_cast<float>(c10::Half(scales[j / kQ8Block], c10::Half::from_bits())),
           hi + j, lo + j);
}

// A matmul for one shape and its descriptor (which gives the memory layouts its arguments take).
struct Matmul {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
};

// Per calling thread: oneDNN's engine and stream, the matmuls by shape, and the bfloat16 buffers.
struct Context {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, Matmul> matmuls;  // (M, K', Nc, ldd)
  std::vector<uint16_t> src, weights;

  // src [M, K'] bfloat16 rows, W [K', Nc] stored as Nc rows of K' bfloat16, dst [M, Nc] float32 rows ldd apart.
  const Matmul& matmul(int64_t m, int64_t k3, int64_t nc, int64_t ldd) {
    const auto key = std::make_tuple(m, k3, nc, ldd);
    auto it = matmuls.find(key);
    if (it != matmuls.end()) return it->second;
    using md = dnnl::memory::desc;
    using dt = dnnl::memory::data_type;
    const md src_md({m, k3}, dt::bf16, {k3, 1});
    const md w_md({k3, nc}, dt::bf16, {1, k3});
    const md dst_md({m, nc}, dt::f32, {ldd, 1});
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, w_md, dst_md), engine);
    dnnl::matmul primitive(pd);
    return matmuls.emplace(key, Matmul{std::move(pd), std::move(primitive)}).first->second;
  }
};

// Rows of the weight buffer per matmul: about 2 MiB of bfloat16 (the core's L2 here), so that a block is still
// cached between its widening and its product, and x (which oneDNN packs again for every block) is packed few
// times. The seven products of a SmolLM2-135M layer on 512 rows took 14.0 ms with 1 MiB blocks, 11.6 with 2 and
// 11.9 with 4 (best of 15, alternated 3 times); on 64 rows, 2.6-2.9 with 1 or 2 MiB.
int64_t block_rows(int64_t n, int64_t k3) {
  const int64_t rows = std::max<int64_t>(16, (int64_t{2} << 20) / (2 * k3) / 16 * 16);
  return std::min(rows, n);
}

}  // namespace

bool amx_available() {
  static const bool yes = [] {
    if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512bw")) return false;
    try {
      return dnnl::get_effective_cpu_isa() == dnnl::cpu_isa::avx512_core_amx;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return yes;
}

at::Tensor amx_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scales, const at::Tensor& b) {
  if (!amx_available()) throw std::logic_error("amx_linear: AMX is not available on this CPU");
  const bool q8 = w.scalar_type() == at::kChar;
  if (x.dim() != 2 || x.scalar_type() != at::kFloat || !x.is_contiguous() || w.dim() != 2 || !w.is_contiguous() ||
      x.size(1) != w.size(1) || !(q8 || w.scalar_type() == at::kBFloat16) || (q8 && !w_scales.is_contiguous()))
    throw std::invalid_argument("amx_linear: expected float32 x [M, K] and a contiguous bfloat16 or int8 W [N, K]");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  const int64_t terms = q8 ? 3 : 2;  // segments of the inner dimension (see amx.h)
  const int64_t k3 = terms * k;
  // oneDNN's OpenMP threads follow this thread's OpenMP setting: LibTorch's intra-op count, which LibTorch itself
  // only applies to a thread at its first parallel op (a pipeline's worker threads may not have run one yet).
  at::internal::lazy_init_num_threads();
  thread_local Context ctx;
  // x as [x_hi | x_lo | x_hi] (int8) or [x_hi | x_lo] (bfloat16).
  ctx.src.resize(static_cast<size_t>(m * k3));
  const float* xp = x.data_ptr<float>();
  for (int64_t r = 0; r < m; ++r) {
    uint16_t* row = ctx.src.data() + r * k3;
    split_row(xp + r * k, k, row, row + k);
    if (q8) std::memcpy(row + 2 * k, row, static_cast<size_t>(k) * 2);
  }
  at::Tensor y = at::empty({m, n}, x.options());
  float* yp = y.data_ptr<float>();
  const int64_t nc = block_rows(n, k3);
  ctx.weights.resize(static_cast<size_t>(nc * k3));
  const uint16_t* scales = q8 ? reinterpret_cast<const uint16_t*>(w_scales.data_ptr<at::Half>()) : nullptr;
  const int64_t nb = q8_blocks(k);
  for (int64_t n0 = 0; n0 < n; n0 += nc) {
    const int64_t rows = std::min(nc, n - n0);
    // W's rows as [W_hi | W_hi | W_lo] (int8) or [W | W] (bfloat16).
    for (int64_t r = 0; r < rows; ++r) {
      uint16_t* row = ctx.weights.data() + r * k3;
      if (q8) {
        split_q8_row(w.data_ptr<int8_t>() + (n0 + r) * k, scales + (n0 + r) * nb, k, row, row + 2 * k);
        std::memcpy(row + k, row, static_cast<size_t>(k) * 2);
      } else {
        const uint16_t* wr = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()) + (n0 + r) * k;
        std::memcpy(row, wr, static_cast<size_t>(k) * 2);
        std::memcpy(row + k, wr, static_cast<size_t>(k) * 2);
      }
    }
    const Matmul& mm = ctx.matmul(m, k3, rows, n);
    dnnl::memory src(mm.pd.src_desc(), ctx.engine, ctx.src.data());
    dnnl::memory wm(mm.pd.weights_desc(), ctx.engine, ctx.weights.data());
    dnnl::memory dm(mm.pd.dst_desc(), ctx.engine, yp + n0);
    mm.primitive.execute(ctx.stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, dm}});
  }
  ctx.stream.wait();
  if (b.defined()) y.add_(b.to(at::kFloat));
  return y;
}

#else  // built without oneDNN

bool amx_available() { return false; }

at::Tensor amx_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw std::logic_error("amx_linear: sinkflow was built without oneDNN");
}

#endif

}  // namespace sinkflow
