#include "models/nn/tiled_attention.h"

#include <ATen/core/grad_mode.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>

#include "models/nn/gemv.h"

// GCC 12's AVX-512 intrinsics initialise their "undefined" vectors with themselves (as in gemv.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace sinkflow {

namespace {

#define SF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

constexpr int64_t kTileRows = 32;   // query rows per task, for each of the KV head's query heads
constexpr int64_t kBlockKeys = 64;  // keys per block: [64, G * 32] scores stay in L1
constexpr int kMaxRows = 6;         // rows per register tile of the two products
constexpr int kMaxVectors = 4;      // 16-float vectors per register tile row
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool have_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("fma");
  return yes;
}

// e^x for 16 floats: 2^n e^r, |r| <= ln(2) / 2, e^r by its Taylor polynomial of degree 6 (relative error below
// 2e-7); x below -104 (-inf included) gives 0.
SF_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2 in two parts (Cody-Waite)
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (const float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// S[r, c] = scale * K[r, :] . Qt[:, c] for R keys (rows ld_k apart) and NV vectors of 16 columns; Qt is [d, ld_q].
template <int R, int NV>
SF_AVX512 void score_tile(const float* k, int64_t ld_k, const float* qt, int64_t ld_q, float* s, int64_t ld_s,
                          int64_t d, float scale) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t i = 0; i < d; ++i) {
    __m512 qv[NV];
    for (int c = 0; c < NV; ++c) qv[c] = _mm512_loadu_ps(qt + i * ld_q + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512 kb = _mm512_set1_ps(k[r * ld_k + i]);
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_fmadd_ps(kb, qv[c], acc[r][c]);
    }
  }
  const __m512 sv = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(s + r * ld_s + 16 * c, _mm512_mul_ps(acc[r][c], sv));
}

// O[c, :] += sum_r P[r, c] V[r, :] for R columns c of P (rows of O, ld_o apart) and NV vectors of 16 values of a
// row of V, over `rows` keys.
template <int R, int NV>
SF_AVX512 void value_tile(const float* v, int64_t ld_v, const float* p, int64_t ld_p, int64_t rows, float* o,
                          int64_t ld_o) {
  __m512 acc[R][NV];
  for (int c = 0; c < R; ++c)
    for (int w = 0; w < NV; ++w) acc[c][w] = _mm512_loadu_ps(o + c * ld_o + 16 * w);
  for (int64_t r = 0; r < rows; ++r) {
    __m512 vv[NV];
    for (int w = 0; w < NV; ++w) vv[w] = _mm512_loadu_ps(v + r * ld_v + 16 * w);
    for (int c = 0; c < R; ++c) {
      const __m512 pb = _mm512_set1_ps(p[r * ld_p + c]);
      for (int w = 0; w < NV; ++w) acc[c][w] = _mm512_fmadd_ps(pb, vv[w], acc[c][w]);
    }
  }
  for (int c = 0; c < R; ++c)
    for (int w = 0; w < NV; ++w) _mm512_storeu_ps(o + c * ld_o + 16 * w, acc[c][w]);
}

using ScoreFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, float);
using ValueFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t);

template <int R>
constexpr std::array<ScoreFn, kMaxVectors> kScoreRow = {&score_tile<R, 1>, &score_tile<R, 2>, &score_tile<R, 3>,
                                                        &score_tile<R, 4>};
template <int R>
constexpr std::array<ValueFn, kMaxVectors> kValueRow = {&value_tile<R, 1>, &value_tile<R, 2>, &value_tile<R, 3>,
                                                        &value_tile<R, 4>};
// [rows - 1][vectors - 1]
constexpr std::array<std::array<ScoreFn, kMaxVectors>, kMaxRows> kScore = {
    kScoreRow<1>, kScoreRow<2>, kScoreRow<3>, kScoreRow<4>, kScoreRow<5>, kScoreRow<6>};
constexpr std::array<std::array<ValueFn, kMaxVectors>, kMaxRows> kValue = {
    kValueRow<1>, kValueRow<2>, kValueRow<3>, kValueRow<4>, kValueRow<5>, kValueRow<6>};

struct Operands {
  const float* q;
  const void *k, *v;  // float32, or bfloat16 when `narrow`
  bool narrow;
  int64_t q_head, q_row, k_head, k_row, v_head, v_row;  // strides, in floats
  int64_t h, g, dh;
  float scale;
  float* out;  // [T, H * dh]
};

// Per thread: the tile's queries transposed [dh, cols], a block's scores [kBlockKeys, cols], the output rows
// [cols, dh], the running max and sum per column, the block's mask [kBlockKeys, tq].
struct Buffers {
  std::vector<float> qt, s, o, m, l, corr, bias, kw, vw;  // kw, vw: a block of a bfloat16 cache, widened
};

// Rows [t0, t0 + nt) of the query heads of KV head j. Columns: query head i of the group, row tt -> i * tq + tt,
// tq = nt rounded up to 16 (the padding columns are zero queries whose results are dropped).
SF_AVX512 void attend_tile(const Operands& a, const VisibleKeys& keys, int64_t j, int64_t t0, int64_t nt) {
  const int64_t tq = (nt + 15) / 16 * 16, cols = a.g * tq, nvec = cols / 16, dh = a.dh;
  thread_local Buffers b;
  b.qt.assign(static_cast<size_t>(dh * cols), 0.0f);
  b.s.resize(static_cast<size_t>(kBlockKeys * cols));
  b.o.assign(static_cast<size_t>(cols * dh), 0.0f);
  b.m.assign(static_cast<size_t>(cols), kNegInf);
  b.l.assign(static_cast<size_t>(cols), 0.0f);
  b.corr.resize(static_cast<size_t>(cols));
  b.bias.resize(static_cast<size_t>(kBlockKeys * tq));
  for (int64_t i = 0; i < a.g; ++i)
    for (int64_t tt = 0; tt < nt; ++tt) {
      const float* src = a.q + (j * a.g + i) * a.q_head + (t0 + tt) * a.q_row;
      for (int64_t d = 0; d < dh; ++d) b.qt[d * cols + i * tq + tt] = src[d];
    }
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0;
  for (int64_t t = t0; t < t0 + nt; ++t) {
    lo = std::min(lo, keys.lo[t]);
    hi = std::max(hi, keys.hi[t]);
  }
  if (a.narrow) {
    b.kw.resize(static_cast<size_t>(kBlockKeys * dh));
    b.vw.resize(static_cast<size_t>(kBlockKeys * dh));
  }
  const int64_t groups = (nvec + kMaxVectors - 1) / kMaxVectors;
  for (int64_t s0 = lo; s0 < hi; s0 += kBlockKeys) {
    const int64_t nb = std::min(kBlockKeys, hi - s0), s1 = s0 + nb;
    bool full = true, empty = true;
    for (int64_t t = t0; t < t0 + nt; ++t) {
      full = full && keys.whole[t] && keys.lo[t] <= s0 && s1 <= keys.hi[t];
      empty = empty && (s1 <= keys.lo[t] || keys.hi[t] <= s0);
    }
    if (empty) continue;
    // The block's keys and values (rows ld_k / ld_v apart), widened first from a bfloat16 cache.
    const float *kb, *vb;
    int64_t ld_k = a.k_row, ld_v = a.v_row;
    if (a.narrow) {
      widen_bf16_rows(static_cast<const uint16_t*>(a.k) + j * a.k_head + s0 * a.k_row, a.k_row, nb, dh, b.kw.data());
      widen_bf16_rows(static_cast<const uint16_t*>(a.v) + j * a.v_head + s0 * a.v_row, a.v_row, nb, dh, b.vw.data());
      kb = b.kw.data();
      vb = b.vw.data();
      ld_k = ld_v = dh;
    } else {
      kb = static_cast<const float*>(a.k) + j * a.k_head + s0 * a.k_row;
      vb = static_cast<const float*>(a.v) + j * a.v_head + s0 * a.v_row;
    }
    // Scores of the block, in column groups of up to kMaxVectors vectors.
    for (int64_t r0 = 0; r0 < nb; r0 += kMaxRows) {
      const int64_t rows = std::min<int64_t>(kMaxRows, nb - r0);
      for (int64_t gi = 0; gi < groups; ++gi) {
        const int64_t v0 = nvec * gi / groups, v1 = nvec * (gi + 1) / groups;
        kScore[rows - 1][v1 - v0 - 1](kb + r0 * ld_k, ld_k, b.qt.data() + 16 * v0, cols,
                                      b.s.data() + r0 * cols + 16 * v0, cols, dh, a.scale);
      }
    }
    if (!full) {
      // What each row adds to the block's scores: -inf outside its keys, its mask inside (0 for a whole row).
      for (int64_t r = 0; r < nb; ++r) {
        float* bias = b.bias.data() + r * tq;
        const int64_t s = s0 + r;
        for (int64_t tt = 0; tt < tq; ++tt) {
          const int64_t t = t0 + tt;
          if (tt >= nt) {
            bias[tt] = 0.0f;
          } else if (s < keys.lo[t] || s >= keys.hi[t]) {
            bias[tt] = kNegInf;
          } else {
            bias[tt] = keys.whole[t] ? 0.0f : keys.mask[t * keys.mask_ld + s];
          }
        }
        float* srow = b.s.data() + r * cols;
        for (int64_t i = 0; i < a.g; ++i)
          for (int64_t w = 0; w < tq; w += 16)
            _mm512_storeu_ps(srow + i * tq + w,
                             _mm512_add_ps(_mm512_loadu_ps(srow + i * tq + w), _mm512_loadu_ps(bias + w)));
      }
    }
    // Running softmax, 16 columns at a time: the block's probabilities against the new running max replace its
    // scores; the sums and outputs so far are scaled by e^(old max - new max).
    for (int64_t c = 0; c < cols; c += 16) {
      const __m512 m_old = _mm512_loadu_ps(b.m.data() + c);
      __m512 mx = m_old;
      for (int64_t r = 0; r < nb; ++r) mx = _mm512_max_ps(mx, _mm512_loadu_ps(b.s.data() + r * cols + c));
      // A column that has seen no key yet keeps -inf: measure against 0 there (its probabilities are all 0).
      const __m512 ref = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(mx, _mm512_set1_ps(kNegInf), _CMP_EQ_OQ), mx,
                                              _mm512_setzero_ps());
      const __m512 corr = exp16(_mm512_sub_ps(m_old, ref));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t r = 0; r < nb; ++r) {
        float* sp = b.s.data() + r * cols + c;
        const __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(sp), ref));
        _mm512_storeu_ps(sp, p);
        sum = _mm512_add_ps(sum, p);
      }
      _mm512_storeu_ps(b.l.data() + c, _mm512_fmadd_ps(_mm512_loadu_ps(b.l.data() + c), corr, sum));
      _mm512_storeu_ps(b.m.data() + c, mx);
      _mm512_storeu_ps(b.corr.data() + c, corr);
    }
    for (int64_t c = 0; c < cols; ++c) {
      const __m512 cv = _mm512_set1_ps(b.corr[c]);
      float* o = b.o.data() + c * dh;
      for (int64_t w = 0; w < dh; w += 16) _mm512_storeu_ps(o + w, _mm512_mul_ps(_mm512_loadu_ps(o + w), cv));
    }
    // Outputs += probabilities x values.
    for (int64_t c0 = 0; c0 < cols; c0 += kMaxRows) {
      const int64_t rows = std::min<int64_t>(kMaxRows, cols - c0);
      for (int64_t w0 = 0; w0 < dh / 16; w0 += kMaxVectors) {
        const int64_t nv = std::min<int64_t>(kMaxVectors, dh / 16 - w0);
        kValue[rows - 1][nv - 1](vb + 16 * w0, ld_v, b.s.data() + c0, cols, nb,
                                 b.o.data() + c0 * dh + 16 * w0, dh);
      }
    }
  }
  const int64_t out_row = a.h * dh;
  for (int64_t i = 0; i < a.g; ++i)
    for (int64_t tt = 0; tt < nt; ++tt) {
      const int64_t c = i * tq + tt;
      const __m512 inv = _mm512_set1_ps(1.0f / b.l[c]);  // no key seen: 0 * inf = NaN, as softmax gives
      const float* o = b.o.data() + c * dh;
      float* dst = a.out + (t0 + tt) * out_row + (j * a.g + i) * dh;
      for (int64_t w = 0; w < dh; w += 16) _mm512_storeu_ps(dst + w, _mm512_mul_ps(_mm512_loadu_ps(o + w), inv));
    }
}

SF_AVX512 void softmax_rows_avx512(float* s, int64_t rows, int64_t n, int64_t ld, float scale, const float* add) {
  const __m512 sv = _mm512_set1_ps(scale);
  const auto lanes = [n](int64_t i) {
    return i + 16 <= n ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
  };
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * ld;
    __m512 mx = _mm512_set1_ps(kNegInf);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = lanes(i);
      __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + i), sv);
      if (add) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, add + i));
      _mm512_mask_storeu_ps(row + i, m, x);
      mx = _mm512_mask_max_ps(mx, m, mx, x);
    }
    const float top = _mm512_reduce_max_ps(mx);
    const __m512 ref = _mm512_set1_ps(top == kNegInf ? 0.0f : top);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = lanes(i);
      const __m512 p = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + i), ref)));
      _mm512_mask_storeu_ps(row + i, m, p);
      sum = _mm512_add_ps(sum, p);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = lanes(i);
      _mm512_mask_storeu_ps(row + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + i), inv));
    }
  }
}

}  // namespace

void softmax_scaled_rows(float* s, int64_t rows, int64_t n, int64_t ld, float scale, const float* add) {
  if (have_avx512()) {
    softmax_rows_avx512(s, rows, n, ld, scale, add);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * ld;
    float mx = kNegInf;
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, row[i] = row[i] * scale + (add ? add[i] : 0.0f));
    const float ref = mx == kNegInf ? 0.0f : mx;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum += row[i] = std::exp(row[i] - ref);
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) row[i] *= inv;
  }
}

VisibleKeys visible_from_mask(const at::Tensor& mask, int64_t t, int64_t e) {
  VisibleKeys out;
  out.lo.assign(static_cast<size_t>(t), 0);
  out.hi.assign(static_cast<size_t>(t), e);
  out.whole.assign(static_cast<size_t>(t), 1);
  if (!mask.defined()) return out;
  if (mask.dim() != 2 || mask.size(0) != t || mask.size(1) != e || mask.scalar_type() != at::kFloat ||
      !mask.device().is_cpu() || mask.stride(1) != 1)
    throw std::invalid_argument("visible_from_mask: expected a float32 CPU mask [" + std::to_string(t) + ", " +
                                std::to_string(e) + "] with contiguous rows, got " + c10::str(mask.sizes()));
  out.mask = mask.data_ptr<float>();
  out.mask_ld = mask.stride(0);
  for (int64_t r = 0; r < t; ++r) {
    const float* m = out.mask + r * out.mask_ld;
    int64_t lo = 0, hi = e;
    while (lo < e && m[lo] == kNegInf) ++lo;
    while (hi > lo && m[hi - 1] == kNegInf) --hi;
    out.lo[r] = lo;
    out.hi[r] = hi;
    out.whole[r] = std::all_of(m + lo, m + hi, [](float x) { return x == 0.0f; });
  }
  return out;
}

VisibleKeys visible_causal(int64_t t, int64_t window) {
  VisibleKeys out;
  out.whole.assign(static_cast<size_t>(t), 1);
  for (int64_t i = 0; i < t; ++i) {
    out.lo.push_back(window > 0 ? std::max<int64_t>(0, i - window + 1) : 0);
    out.hi.push_back(i + 1);
  }
  return out;
}

bool tiled_attention_ok(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  static const bool off = [] {
    const char* env = std::getenv("SINKFLOW_TILED_ATTENTION");
    return env != nullptr && std::string(env) == "0";
  }();
  if (off || !have_avx512()) return false;
  if (q.dim() != 3 || k.dim() != 3 || v.dim() != 3) return false;
  for (const at::Tensor* x : {&q, &k, &v}) {
    if (!x->device().is_cpu() || x->stride(2) != 1) return false;
    if (at::GradMode::is_enabled() && x->requires_grad()) return false;
  }
  const bool kv_ok = (k.scalar_type() == at::kFloat || k.scalar_type() == at::kBFloat16) &&
                     v.scalar_type() == k.scalar_type();
  if (q.scalar_type() != at::kFloat || !kv_ok) return false;
  const int64_t dh = q.size(2);
  return dh % 16 == 0 && k.size(2) == dh && v.size(2) == dh && k.size(0) == v.size(0) && k.size(1) == v.size(1) &&
         q.size(0) % k.size(0) == 0;
}

at::Tensor tiled_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const VisibleKeys& keys,
                           double scale) {
  if (!tiled_attention_ok(q, k, v))
    throw std::invalid_argument("tiled_attention: expected float32 CPU q [H, T, dh], float32 or bfloat16 k and v "
                                "[KV, E, dh] (dh a multiple of 16) on an AVX-512 CPU");
  const int64_t h = q.size(0), t = q.size(1), dh = q.size(2), kv = k.size(0), e = k.size(1);
  if (static_cast<int64_t>(keys.lo.size()) != t || static_cast<int64_t>(keys.hi.size()) != t ||
      static_cast<int64_t>(keys.whole.size()) != t)
    throw std::invalid_argument("tiled_attention: the visible keys describe " + std::to_string(keys.lo.size()) +
                                " rows, the queries have " + std::to_string(t));
  for (int64_t i = 0; i < t; ++i)
    if (keys.lo[i] < 0 || keys.hi[i] > e || (!keys.whole[i] && keys.mask == nullptr))
      throw std::invalid_argument("tiled_attention: row " + std::to_string(i) + "'s keys are outside [0, " +
                                  std::to_string(e) + ") or need a mask");
  at::Tensor out = at::empty({t, h * dh}, q.options());
  const Operands a{q.data_ptr<float>(), k.data_ptr(),  v.data_ptr(),  k.scalar_type() == at::kBFloat16,
                   q.stride(0),         q.stride(1),   k.stride(0),   k.stride(1),
                   v.stride(0),         v.stride(1),   h,             h / kv,
                   dh,                  static_cast<float>(scale),    out.data_ptr<float>()};
  const int64_t tiles = (t + kTileRows - 1) / kTileRows;
  parallel_each(kv * tiles, [&](int64_t task) {
    const int64_t j = task / tiles, t0 = task % tiles * kTileRows;
    attend_tile(a, keys, j, t0, std::min(kTileRows, t - t0));
  });
  return out;
}

}  // namespace sinkflow
