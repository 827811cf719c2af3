// The decode-step kernels (models/nn/gemv.h) and the paths that use them (linear_rows, attend for one query)
// equal LibTorch's own ops: every shape class (row tails, column tails, strided rows, bfloat16 weights), and
// attention over a strided cache with masked slots.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <filesystem>
#include <limits>
#include <tuple>

#include "models/cache/rope.h"
#include "models/nn/amx.h"
#include "models/nn/decoder.h"
#include "models/nn/fused.h"
#include "models/lab/make_model.h"
#include "models/nn/gemv.h"
#include "models/nn/quant.h"
#include "models/nn/tiled_attention.h"
#include "models/nn/runtime.h"
#include "models/stream/stream.h"
#include "tests/test_util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;

namespace {

// max |a - b| / (max |b| + 1e-6).
double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return test::max_abs_diff(a, b) / (b.abs().max().item<double>() + 1e-6);
}

}  // namespace

TEST_CASE("gemv_f32 and gemv_bf16 equal a float64 matrix-vector product on every shape class", "[kernels]") {
  at::manual_seed(3);
  INFO("kernel " << gemv_kernel_name());
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 7}, {4, 8}, {5, 9}, {64, 576}, {67, 1000}, {1536, 576}}) {
    const at::Tensor w = at::randn({n, k});
    const at::Tensor x = at::randn({k});
    at::Tensor y = at::empty({n});
    gemv_f32(w.data_ptr<float>(), x.data_ptr<float>(), y.data_ptr<float>(), n, k);
    const at::Tensor ref = at::mv(w.to(at::kDouble), x.to(at::kDouble));
    INFO(n << "x" << k);
    CHECK(rel_err(y.to(at::kDouble), ref) < 1e-5);
    // bfloat16 weights: the same as the float64 product of the rounded weights.
    const at::Tensor wb = w.to(at::kBFloat16).contiguous();
    gemv_bf16(reinterpret_cast<const uint16_t*>(wb.data_ptr<at::BFloat16>()), x.data_ptr<float>(), y.data_ptr<float>(), n, k);
    CHECK(rel_err(y.to(at::kDouble), at::mv(wb.to(at::kDouble), x.to(at::kDouble))) < 1e-5);
    // Rows of a wider buffer (ld > k), as a KV cache layer's keys.
    const at::Tensor wide = at::randn({n, k + 5});
    gemv_f32_ld(wide.data_ptr<float>(), k + 5, x.data_ptr<float>(), y.data_ptr<float>(), n, k);
    CHECK(rel_err(y.to(at::kDouble), at::mv(wide.narrow(1, 0, k).to(at::kDouble), x.to(at::kDouble))) < 1e-5);
  }
}

TEST_CASE("quantize_q8 rounds each block of a row against its float16 scale", "[kernels]") {
  at::manual_seed(8);
  for (const int64_t k : {1, 7, 32, 33, 576, 1000}) {
    at::Tensor w = at::randn({5, k}) * 0.05;
    w[2].zero_();  // a zero row: zero scales, zero values
    const Q8Matrix q = quantize_q8(w);
    INFO("k " << k);
    REQUIRE(q.values.sizes() == w.sizes());
    REQUIRE(q.values.scalar_type() == at::kChar);
    REQUIRE(q.scales.sizes() == at::IntArrayRef({5, q8_blocks(k)}));
    REQUIRE(q.scales.scalar_type() == at::kHalf);
    CHECK(q.values.abs().max().item<int>() <= 127);
    // Each block's largest weight maps to +-127 (up to the scale's float16 rounding) ...
    CHECK(q.values[0].abs().max().item<int>() >= 126);
    // ... and every weight is within half its block's scale.
    const at::Tensor back = dequantize_q8(q.values, q.scales);
    const at::Tensor half_scale = q.scales.to(at::kFloat).repeat_interleave(kQ8Block, 1).narrow(1, 0, k) * 0.5;
    CHECK(((back - w).abs() - half_scale).max().item<double>() <= 1e-7);
    CHECK(back[2].abs().max().item<double>() == 0.0);
    // The one-pass widening (dequantize_q8_rows) is exactly values x scales.
    const at::Tensor by_hand = q.values.to(at::kFloat) * q.scales.to(at::kFloat).repeat_interleave(kQ8Block, 1).narrow(1, 0, k);
    CHECK(at::equal(back, by_hand));
    CHECK(at::equal(dequantize_q8(q.values.narrow(0, 1, 3), q.scales.narrow(0, 1, 3)), by_hand.narrow(0, 1, 3)));
    CHECK(q.scales[2].to(at::kFloat).abs().max().item<double>() == 0.0);
  }
  REQUIRE_THROWS_WITH(quantize_q8(at::zeros({4})), Catch::Contains("expected a 2-D floating-point matrix, found 1-D"));
}

TEST_CASE("gemv_q8 equals the float64 product of the dequantized matrix on every shape class", "[kernels]") {
  at::manual_seed(9);
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 7}, {4, 32}, {5, 33}, {64, 576}, {67, 1000}, {1536, 576}}) {
    const Q8Matrix q = quantize_q8(at::randn({n, k}));
    const at::Tensor x = at::randn({k});
    at::Tensor y = at::empty({n});
    const at::Tensor ref = at::mv(dequantize_q8(q.values, q.scales, at::kDouble), x.to(at::kDouble));
    for (const Q8Kernel kernel : {Q8Kernel::automatic, Q8Kernel::widening}) {
      gemv_q8(q.values.data_ptr<int8_t>(), reinterpret_cast<const uint16_t*>(q.scales.data_ptr<at::Half>()),
              x.data_ptr<float>(), y.data_ptr<float>(), n, k, kernel);
      INFO(n << "x" << k << " kernel " << gemv_kernel_name() << (kernel == Q8Kernel::widening ? " (widening)" : ""));
      CHECK(rel_err(y.to(at::kDouble), ref) < 1e-5);
    }
  }
}

TEST_CASE("gemv_q8 keeps float32 accuracy on activations with outliers, zero blocks and negative signs", "[kernels]") {
  // x's byte planes are scaled per block of 32: a block holding one huge element and tiny ones, a block of zeros,
  // a block of equal negative values and a block at float32's large end must all come out as float32 products.
  at::manual_seed(12);
  const int64_t n = 40, k = 256;
  const Q8Matrix q = quantize_q8(at::randn({n, k}));
  at::Tensor x = at::randn({k}) * 1e-3;
  x[3] = 2.5e3;
  x.narrow(0, 32, 32).zero_();
  x.narrow(0, 64, 32).fill_(-0.75);
  x.narrow(0, 96, 32).mul_(1e30);
  x.narrow(0, 192, 64).neg_();
  at::Tensor y = at::empty({n});
  gemv_q8(q.values.data_ptr<int8_t>(), reinterpret_cast<const uint16_t*>(q.scales.data_ptr<at::Half>()),
          x.data_ptr<float>(), y.data_ptr<float>(), n, k);
  const at::Tensor w = dequantize_q8(q.values, q.scales, at::kDouble);
  const at::Tensor ref = at::mv(w, x.to(at::kDouble));
  INFO("kernel " << gemv_kernel_name());
  CHECK(rel_err(y.to(at::kDouble), ref) < 1e-6);
  // Each block's share on its own (the huge block would hide the others' errors in the sum above).
  for (int64_t b = 0; b < k / kQ8Block; ++b) {
    at::Tensor xb = at::zeros({k});
    xb.narrow(0, b * kQ8Block, kQ8Block).copy_(x.narrow(0, b * kQ8Block, kQ8Block));
    gemv_q8(q.values.data_ptr<int8_t>(), reinterpret_cast<const uint16_t*>(q.scales.data_ptr<at::Half>()),
            xb.data_ptr<float>(), y.data_ptr<float>(), n, k);
    const at::Tensor rb = at::mv(w, xb.to(at::kDouble));
    INFO("block " << b);
    CHECK(test::max_abs_diff(y.to(at::kDouble), rb) <= 1e-6 * (rb.abs().max().item<double>() + 1e-30));
  }
  // A NaN or an infinity in x reaches y as in float32 arithmetic (NaN times a zero weight included), and a block
  // below float32's normal range does not make NaN out of its zeros.
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    at::Tensor xb = x.clone();
    xb[70] = bad;
    gemv_q8(q.values.data_ptr<int8_t>(), reinterpret_cast<const uint16_t*>(q.scales.data_ptr<at::Half>()),
            xb.data_ptr<float>(), y.data_ptr<float>(), n, k);
    const at::Tensor expected = at::mv(w.to(at::kFloat), xb);
    INFO("x[70] = " << bad);
    CHECK(at::equal(at::isnan(y), at::isnan(expected)));
    CHECK(at::equal(at::isinf(y), at::isinf(expected)));
  }
  at::Tensor tiny = x.clone();
  tiny.narrow(0, 32, 32).fill_(1e-40f);
  gemv_q8(q.values.data_ptr<int8_t>(), reinterpret_cast<const uint16_t*>(q.scales.data_ptr<at::Half>()),
          tiny.data_ptr<float>(), y.data_ptr<float>(), n, k);
  CHECK(at::isfinite(y).all().item<bool>());
  CHECK(rel_err(y.to(at::kDouble), at::mv(w, tiny.to(at::kDouble))) < 1e-6);
}

TEST_CASE("gemv_t_f32 equals the transposed product, strided rows and column tails included", "[kernels]") {
  at::manual_seed(4);
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {5, 31}, {256, 64}, {300, 70}}) {
    const at::Tensor v = at::randn({rows, cols + 3});
    const at::Tensor p = at::rand({rows});
    at::Tensor out = at::empty({cols});
    gemv_t_f32(v.data_ptr<float>(), cols + 3, p.data_ptr<float>(), out.data_ptr<float>(), rows, cols);
    const at::Tensor ref = at::mv(v.narrow(1, 0, cols).t().to(at::kDouble), p.to(at::kDouble));
    INFO(rows << "x" << cols);
    CHECK(rel_err(out.to(at::kDouble), ref) < 1e-5);
  }
}

TEST_CASE("linear_rows equals at::linear for one row and hands other shapes to it", "[kernels]") {
  c10::InferenceMode guard;
  at::manual_seed(5);
  const at::Tensor w = at::randn({37, 29}), b = at::randn({37});
  for (const at::Tensor& x : {at::randn({1, 29}), at::randn({29}), at::randn({4, 29})}) {
    const at::Tensor ref = at::linear(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble));
    CHECK(linear_rows(x, w, b).sizes() == ref.sizes());
    CHECK(rel_err(linear_rows(x, w, b).to(at::kDouble), ref) < 1e-5);
    CHECK(rel_err(linear_rows(x, w).to(at::kDouble), at::linear(x.to(at::kDouble), w.to(at::kDouble))) < 1e-5);
  }
  // bfloat16 weights with float32 activations: the rounded weights, accumulated in float32.
  const at::Tensor wb = w.to(at::kBFloat16);
  const at::Tensor x = at::randn({1, 29});
  CHECK(rel_err(linear_rows(x, wb).to(at::kDouble), at::linear(x.to(at::kDouble), wb.to(at::kDouble))) < 1e-5);
  // int8 blocks: the dequantized matrix, for one row (gemv_q8) and for several (widened).
  const Q8Matrix q = quantize_q8(w);
  const at::Tensor wq = dequantize_q8(q.values, q.scales, at::kDouble);
  for (const at::Tensor& xi : {at::randn({1, 29}), at::randn({3, 29})}) {
    const at::Tensor ref = at::linear(xi.to(at::kDouble), wq, b.to(at::kDouble));
    CHECK(linear_rows(xi, q.values, b, q.scales).sizes() == ref.sizes());
    CHECK(rel_err(linear_rows(xi, q.values, b, q.scales).to(at::kDouble), ref) < 1e-5);
  }
  REQUIRE_THROWS_WITH(linear_rows(x, q.values), Catch::Contains("an int8 matrix needs its float16 block scales"));
}

TEST_CASE("linear_rows_t (GPT-2's Conv1D) equals addmm for one row and for several", "[kernels]") {
  c10::InferenceMode guard;
  at::manual_seed(7);
  const at::Tensor w = at::randn({29, 70}), b = at::randn({70});
  for (const at::Tensor& x : {at::randn({1, 29}), at::randn({3, 29})}) {
    const at::Tensor ref = at::addmm(b.to(at::kDouble), x.to(at::kDouble), w.to(at::kDouble));
    CHECK(linear_rows_t(x, w, b).sizes() == ref.sizes());
    CHECK(rel_err(linear_rows_t(x, w, b).to(at::kDouble), ref) < 1e-5);
  }
}

TEST_CASE("attention of one query over a strided cache with masked slots equals the reference", "[kernels]") {
  c10::InferenceMode guard;
  at::manual_seed(6);
  const int threads_before = at::get_num_threads();
  // Shapes with one and two KV heads (3 and 6 query heads each: the grouped kernels take up to 4), on one thread
  // and on more threads than KV heads (each head's rows are then split across threads, for e large enough); head
  // sizes with a grouped kernel (64, 128, 256 on AVX-512) and without (16).
  for (const auto& [kv, e, threads, dh] : std::vector<std::tuple<int64_t, int64_t, int, int64_t>>{
           {2, 37, 1, 16}, {2, 37, 4, 16}, {1, 300, 1, 16}, {1, 300, 2, 16}, {2, 700, 2, 16}, {2, 700, 5, 16},
           {1, 1000, 3, 16}, {2, 37, 1, 64}, {2, 700, 2, 64}, {1, 300, 1, 128}, {1, 1000, 3, 256}}) {
    const int64_t h = 6, cap = e + 13;
    at::set_num_threads(threads);
    // Keys and values are the first e slots of a [KV, cap, dh] buffer, as KvCache::layer_kv returns them.
    const at::Tensor kbuf = at::randn({kv, cap, dh}), vbuf = at::randn({kv, cap, dh});
    const at::Tensor k = kbuf.narrow(1, 0, e), v = vbuf.narrow(1, 0, e);
    const at::Tensor q = at::randn({h, 1, dh});
    at::Tensor mask = at::zeros({1, e});
    mask[0][3] = -std::numeric_limits<float>::infinity();
    mask[0][20] = -std::numeric_limits<float>::infinity();
    const double scale = 0.25;
    // The reference in float64: query heads grouped per KV head (repeat_kv).
    const at::Tensor kr = k.repeat_interleave(h / kv, 0).to(at::kDouble),
                     vr = v.repeat_interleave(h / kv, 0).to(at::kDouble);
    for (const bool masked : {false, true}) {
      at::Tensor s = at::bmm(q.to(at::kDouble), kr.transpose(1, 2)) * scale;  // [H, 1, E]
      if (masked) s = s + mask.to(at::kDouble);
      const at::Tensor ref = at::bmm(at::softmax(s, -1), vr).reshape({1, h * dh});
      const at::Tensor out = attend(q, k, v, masked ? mask : at::Tensor(), scale);
      INFO("kv " << kv << " e " << e << " threads " << threads << " dh " << dh << " masked " << masked);
      CHECK(out.sizes() == ref.sizes());
      CHECK(rel_err(out.to(at::kDouble), ref) < 1e-5);
      // A bfloat16 cache (widened in registers, or in blocks): as float32 keys and values that hold the rounded
      // values.
      const at::Tensor kb = kbuf.to(at::kBFloat16).narrow(1, 0, e), vb = vbuf.to(at::kBFloat16).narrow(1, 0, e);
      const at::Tensor out_b = attend(q, kb, vb, masked ? mask : at::Tensor(), scale);
      const at::Tensor ref_b = attend(q, kb.to(at::kFloat), vb.to(at::kFloat), masked ? mask : at::Tensor(), scale);
      CHECK(rel_err(out_b.to(at::kDouble), ref_b.to(at::kDouble)) < 1e-6);
    }
  }
  at::set_num_threads(threads_before);
}

TEST_CASE("attention of many queries in tiles equals a float64 reference for every mask class", "[kernels]") {
  c10::InferenceMode guard;
  at::manual_seed(16);
  if (!tiled_attention_ok(at::zeros({2, 2, 16}), at::zeros({1, 2, 16}), at::zeros({1, 2, 16}))) {
    WARN("no AVX-512 here: the tiled attention kernel is not run (attend takes the general path)");
    return;
  }
  const float inf = std::numeric_limits<float>::infinity();
  const int threads_before = at::get_num_threads();
  // (H, KV, T, E, dh, threads): one to four query heads per KV head, tiles and key blocks with tails, head sizes
  // 16-256, on one thread and on more.
  for (const auto& [h, kv, t, e, dh, threads] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int>>{
           {2, 2, 2, 2, 16, 1}, {6, 2, 37, 37, 64, 1}, {9, 3, 70, 200, 64, 2}, {8, 2, 33, 97, 128, 1},
           {4, 1, 17, 130, 256, 3}, {4, 2, 5, 300, 80, 1}, {3, 3, 64, 64, 32, 2}}) {
    at::set_num_threads(threads);
    // Keys and values: the first e slots of a [KV, cap, dh] buffer, as KvCache::layer_kv returns them; queries as
    // the model passes them (a transposed view).
    const int64_t cap = e + 11;
    const at::Tensor kbuf = at::randn({kv, cap, dh}), vbuf = at::randn({kv, cap, dh});
    const at::Tensor k = kbuf.narrow(1, 0, e), v = vbuf.narrow(1, 0, e);
    const at::Tensor q = at::randn({t, h, dh}).transpose(0, 1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
    // Masks: none; causal at the end of the cache (the new rows are the last t slots); causal within a window;
    // causal with holes (slots no row sees, and slots some rows do not) and a finite bias.
    const int64_t first = e - t;
    at::Tensor causal = at::zeros({t, e});
    for (int64_t i = 0; i < t; ++i)
      for (int64_t s = first + i + 1; s < e; ++s) causal[i][s] = -inf;
    at::Tensor window = causal.clone();
    for (int64_t i = 0; i < t; ++i)
      for (int64_t s = 0; s < e; ++s)
        if (first + i - s >= 7) window[i][s] = -inf;
    at::Tensor holes = causal.clone();
    for (int64_t s = 4; s < first; s += 5) holes.select(1, s).fill_(-inf);
    for (int64_t i = 1; i < t; i += 3) holes[i][(first + i) / 2] = -inf;  // each row keeps its own slot
    holes.select(1, 1).add_(0.5);
    const at::Tensor kr = k.repeat_interleave(h / kv, 0).to(at::kDouble),
                     vr = v.repeat_interleave(h / kv, 0).to(at::kDouble);
    for (const auto& [name, mask] : std::vector<std::pair<std::string, at::Tensor>>{
             {"none", at::Tensor()}, {"causal", causal}, {"window", window}, {"holes", holes}}) {
      at::Tensor s = at::bmm(q.to(at::kDouble), kr.transpose(1, 2)) * scale;  // [H, T, E]
      if (mask.defined()) s = s + mask.to(at::kDouble);
      const at::Tensor ref = at::bmm(at::softmax(s, -1), vr).transpose(0, 1).reshape({t, h * dh});
      const at::Tensor out = tiled_attention(q, k, v, visible_from_mask(mask, t, e), scale);
      INFO("h " << h << " kv " << kv << " t " << t << " e " << e << " dh " << dh << " threads " << threads << " mask "
                << name);
      CHECK(out.sizes() == ref.sizes());
      CHECK(rel_err(out.to(at::kDouble), ref) < 1e-5);
      // attend (the model's path) takes the tiled kernel for these and gives the same.
      CHECK(test::max_abs_diff(attend(q, k, v, mask, scale), out) == 0.0);
      // A bfloat16 cache: the same as float32 keys and values that hold the rounded values.
      const at::Tensor kb = kbuf.to(at::kBFloat16).narrow(1, 0, e), vb = vbuf.to(at::kBFloat16).narrow(1, 0, e);
      CHECK(test::max_abs_diff(tiled_attention(q, kb, vb, visible_from_mask(mask, t, e), scale),
                               tiled_attention(q, kb.to(at::kFloat), vb.to(at::kFloat),
                                               visible_from_mask(mask, t, e), scale)) == 0.0);
    }
    // A fresh causal sequence (attend_causal, the full forward): the same as the causal mask over e = t keys.
    const at::Tensor kc = kbuf.narrow(1, 0, t), vc = vbuf.narrow(1, 0, t);
    at::Tensor sc = at::bmm(q.to(at::kDouble), kc.repeat_interleave(h / kv, 0).to(at::kDouble).transpose(1, 2)) * scale;
    sc = sc.masked_fill(at::ones({t, t}, at::kBool).triu(1), -inf);
    const at::Tensor ref_c =
        at::bmm(at::softmax(sc, -1), vc.repeat_interleave(h / kv, 0).to(at::kDouble)).transpose(0, 1).reshape({t, h * dh});
    const at::Tensor out_c = attend_causal(q.unsqueeze(0), kc.unsqueeze(0), vc.unsqueeze(0), scale, 0, 0.0);
    CHECK(rel_err(out_c[0].to(at::kDouble), ref_c) < 1e-5);
  }
  at::set_num_threads(threads_before);
  // A row that sees no key gives NaN, as the softmax of all -inf does; the other rows are unaffected.
  const at::Tensor q = at::randn({2, 3, 16}), k = at::randn({1, 4, 16}), v = at::randn({1, 4, 16});
  at::Tensor mask = at::zeros({3, 4});
  mask[1].fill_(-inf);
  const at::Tensor out = tiled_attention(q, k, v, visible_from_mask(mask, 3, 4), 0.25);
  CHECK(at::isnan(out[1]).all().item<bool>());
  CHECK(at::isfinite(out[0]).all().item<bool>());
  CHECK(at::isfinite(out[2]).all().item<bool>());
  // Wrong shapes are refused, naming what was expected.
  CHECK_THROWS_WITH(visible_from_mask(at::zeros({2, 4}), 3, 4), Catch::Contains("expected a float32 CPU mask [3, 4]"));
}

TEST_CASE("a decode step's scaled softmax equals LibTorch's for every row length", "[kernels]") {
  at::manual_seed(17);
  const float inf = std::numeric_limits<float>::infinity();
  for (const int64_t n : {1, 2, 15, 16, 17, 33, 64, 257}) {
    const int64_t rows = 3, ld = n + 5;
    const at::Tensor s = at::randn({rows, ld}) * 4;
    at::Tensor add = at::zeros({n});
    if (n > 2) add[1] = -inf;
    if (n > 16) add[n - 1] = -inf;
    for (const bool masked : {false, true}) {
      at::Tensor out = s.clone();
      softmax_scaled_rows(out.data_ptr<float>(), rows, n, ld, 0.37f, masked ? add.data_ptr<float>() : nullptr);
      at::Tensor x = s.narrow(1, 0, n).to(at::kDouble) * 0.37f;
      if (masked) x = x + add.to(at::kDouble);
      INFO("n " << n << " masked " << masked);
      CHECK(rel_err(out.narrow(1, 0, n).to(at::kDouble), at::softmax(x, -1)) < 1e-6);
      CHECK(test::max_abs_diff(out.narrow(1, n, ld - n), s.narrow(1, n, ld - n)) == 0.0);  // beyond n: untouched
    }
  }
}

namespace {

// The matrices a narrowed model keeps narrow, and how (GPT-2's Conv1D weights are stored [in, out] and narrowed
// as their transpose; its learned positions stay float32).
bool narrowed(const std::string& name, const at::Tensor& p) { return p.dim() == 2 && name.find("wpe") == std::string::npos; }
bool conv1d(const std::string& name) {
  return name.find(".attn.c_") != std::string::npos || name.find(".mlp.c_") != std::string::npos;
}

}  // namespace

TEST_CASE("bfloat16 and int8 matrices with float32 compute equal float32 compute over the rounded weights", "[kernels]") {
  c10::InferenceMode guard;
  for (const std::string preset : {"tiny-llama", "tiny-gpt2"}) {
    INFO(preset);
    const std::filesystem::path dir = test::temp_dir("kernels_narrow_" + preset);
    MakeModelOptions o;
    o.config = shape_preset(preset);
    o.seed = 9;
    make_model(dir.string(), o);
    auto bf = load_decoder(dir.string(), at::kCPU, at::kBFloat16);
    CHECK(bf->dtype() == at::kFloat);
    CHECK(bf->weight_dtype() == at::kBFloat16);
    // The reference: float32 weights rounded to bfloat16 and back.
    auto ref = load_decoder(dir.string(), at::kCPU, at::kFloat);
    for (auto& [name, p] : ref->named_parameters())
      if (narrowed(name, p)) p.copy_(p.to(at::kBFloat16).to(at::kFloat));
    const std::vector<int64_t> tokens = test::random_tokens(24, o.config.vocab_size, 3);
    const at::Tensor ids = at::tensor(tokens).unsqueeze(0);
    const at::Tensor full_ref = ref->forward_full(ids)[0];
    CHECK(rel_err(bf->forward_full(ids)[0], full_ref) < 1e-4);
    // One token at a time (the matrix-vector kernels) equals the full forward.
    StreamConfig sc;
    sc.policy = Policy::dense;
    sc.cache.n_recent = 24;
    StreamSession s(bf, sc);
    const at::Tensor steps = s.feed(tokens, nullptr, true);
    CHECK(rel_err(steps, full_ref) < 1e-4);
    // int8 matrices: float32 compute over the dequantized weights, one step at a time as in one forward.
    auto q8 = load_decoder(dir.string(), at::kCPU, parse_dtype("int8", at::kCPU));
    CHECK(q8->dtype() == at::kFloat);
    CHECK(q8->weight_dtype() == at::kChar);
    auto qref = load_decoder(dir.string(), at::kCPU, at::kFloat);
    for (auto& [name, p] : qref->named_parameters()) {
      if (!narrowed(name, p)) continue;
      const at::Tensor rows = conv1d(name) ? p.t() : p;
      const Q8Matrix q = quantize_q8(rows);
      const at::Tensor back = dequantize_q8(q.values, q.scales);
      p.copy_(conv1d(name) ? back.t() : back);
    }
    const at::Tensor q_full_ref = qref->forward_full(ids)[0];
    CHECK(rel_err(q8->forward_full(ids)[0], q_full_ref) < 1e-4);
    StreamSession sq(q8, sc);
    CHECK(rel_err(sq.feed(tokens, nullptr, true), q_full_ref) < 1e-4);
    // ... and close to float32 itself (random weights: a loose bound, the PPL figures are in tools/BENCHMARKS.md).
    CHECK(rel_err(q_full_ref, ref->forward_full(ids)[0]) < 0.2);
    REQUIRE_THROWS_WITH(load_decoder(dir.string(), at::Device(at::kCUDA), at::kChar),
                        Catch::Contains("dtype int8 runs on the CPU only"));
    // float16 cannot run on the CPU: a clear error instead of a LibTorch trace.
    REQUIRE_THROWS_WITH(load_decoder(dir.string(), at::kCPU, at::kHalf),
                        Catch::Contains("dtype float16 cannot run on the CPU") && Catch::Contains("use bfloat16"));
  }
}

TEST_CASE("make-model refuses to write int8 checkpoints and parse_dtype names what it accepts", "[kernels]") {
  c10::InferenceMode guard;
  const std::filesystem::path dir = test::temp_dir("kernels_int8_write");
  MakeModelOptions o;
  o.config = shape_preset("tiny-gpt2");
  o.dtype = at::kChar;
  REQUIRE_THROWS_WITH(make_model((dir / "q").string(), o),
                      Catch::Contains("a checkpoint is written in float32, float16 or bfloat16, found int8"));
  CHECK(parse_dtype("q8_0", at::kCPU) == at::kChar);
  REQUIRE_THROWS_WITH(parse_dtype("int4", at::kCPU), Catch::Contains("expected float32, float16, bfloat16, int8 or auto"));
}

TEST_CASE("AMX products of several rows keep float32 accuracy with int8 and bfloat16 matrices", "[kernels]") {
  if (!amx_available()) {
    WARN("this CPU has no AMX (or oneDNN is missing): linear_rows widens the matrices instead");
    return;
  }
  c10::InferenceMode guard;
  at::manual_seed(5);
  // Row counts around the threshold, inner sizes with a partial int8 block and a tail of the bfloat16 split, row
  // counts that leave a partial block of the weight buffer.
  for (const auto& [m, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {kAmxMinRows, 64, 16}, {33, 72, 50}, {24, 576, 1536}, {100, 1536, 700}}) {
    INFO("m " << m << " k " << k << " n " << n);
    const at::Tensor x = at::randn({m, k});
    const at::Tensor w = at::randn({n, k}) * 0.05;
    const at::Tensor b = at::randn({n});
    const Q8Matrix q = quantize_q8(w);
    const at::Tensor wq = dequantize_q8(q.values, q.scales).to(at::kDouble);
    const at::Tensor ref_q = at::addmm(b.to(at::kDouble), x.to(at::kDouble), wq.t());
    const at::Tensor out_q = amx_linear(x, q.values, q.scales, b);
    CHECK(out_q.scalar_type() == at::kFloat);
    CHECK(rel_err(out_q.to(at::kDouble), ref_q) < 2e-5);
    // The same through linear_rows, which takes this path from kAmxMinRows rows on ([1, m, k] input kept 3-D).
    CHECK(rel_err(linear_rows(x.unsqueeze(0), q.values, b, q.scales)[0].to(at::kDouble), ref_q) < 2e-5);
    const at::Tensor wb = w.to(at::kBFloat16);
    const at::Tensor ref_b = at::mm(x.to(at::kDouble), wb.to(at::kDouble).t());
    CHECK(rel_err(amx_linear(x, wb, {}, {}).to(at::kDouble), ref_b) < 2e-5);
    // Plain bfloat16 inputs would be ~100x further off: the split is what keeps the accuracy.
    const at::Tensor plain = at::mm(x.to(at::kBFloat16), wb.t()).to(at::kDouble);
    CHECK(rel_err(plain, ref_b) > 1e-3);
  }
  REQUIRE_THROWS_WITH(amx_linear(at::randn({20, 8}), at::randn({4, 8}), {}, {}),
                      Catch::Contains("expected float32 x [M, K] and a contiguous bfloat16 or int8 W [N, K]"));
}

TEST_CASE("fused RMSNorm, RoPE, gated activation and residual add equal the LibTorch expressions", "[kernels]") {
  c10::InferenceMode guard;
  at::manual_seed(6);
  for (const int64_t d : {7, 64, 576}) {
    const at::Tensor x = at::randn({3, 5, d}) * 3;
    const at::Tensor w = at::randn({d});
    for (const bool plus_one : {false, true}) {
      INFO("d " << d << " plus_one " << plus_one);
      // float64 input takes the LibTorch expression, float32 the one-pass kernel.
      const at::Tensor ref = rms_norm(x.to(at::kDouble), w.to(at::kDouble), 1e-5, plus_one);
      CHECK(rel_err(rms_norm(x, w, 1e-5, plus_one).to(at::kDouble), ref) < 1e-6);
    }
  }
  // RoPE over [heads, T, d_head] with partial rotary dims (phi3's shape class): every position row.
  ModelConfig c = shape_preset("tiny-llama");
  c.partial_rotary_factor = 0.5;
  const Rope rope(c);
  const std::vector<int64_t> positions = {0, 3, 17, 1000};
  const auto [cos, sin] = rope.tables(positions, at::kCPU, 0);
  const at::Tensor q = at::randn({c.n_head, static_cast<int64_t>(positions.size()), c.d_head});
  const at::Tensor ref = rope.apply(q.to(at::kDouble), cos.to(at::kDouble), sin.to(at::kDouble));
  const at::Tensor fast = rope.apply(q, cos, sin);
  CHECK(rel_err(fast.to(at::kDouble), ref) < 1e-6);
  CHECK(at::equal(fast.narrow(-1, c.d_head / 2, c.d_head / 2), q.narrow(-1, c.d_head / 2, c.d_head / 2)));
  // SwiGLU and GeGLU, written over the gate; the residual add written over its second operand.
  const at::Tensor g = at::randn({2, 9}), u = at::randn({2, 9});
  at::Tensor g1 = g.clone();
  const at::Tensor s = gated_activation(g1, u, false);
  CHECK(s.data_ptr() == g1.data_ptr());
  CHECK(rel_err(s, at::silu(g) * u) < 1e-6);
  CHECK(rel_err(gated_activation(g.clone(), u, true), at::gelu(g, "tanh") * u) < 1e-6);
  at::Tensor b2 = u.clone();
  const at::Tensor sum = add_into(g, b2);
  CHECK(sum.data_ptr() == b2.data_ptr());
  CHECK(at::equal(sum, g + u));
}

TEST_CASE("grouped-query attention kernels equal a float64 product for every group size and head size", "[kernels]") {
  at::manual_seed(8);
  // g > 4 runs in groups of four; d = 80 has no grouped kernel (per-query fallback); rows strided (ld > d).
  for (const int64_t g : {1, 2, 3, 4, 5, 8})
    for (const int64_t d : {64, 128, 256, 80}) {
      INFO("g " << g << " d " << d);
      const int64_t rows = 37, ld = d + 16;
      const at::Tensor cache = at::randn({rows, ld});
      const at::Tensor k = cache.narrow(1, 0, d);
      const at::Tensor q = at::randn({g, d});
      at::Tensor scores = at::empty({g, rows});
      attend_scores_f32(cache.data_ptr<float>(), ld, q.data_ptr<float>(), scores.data_ptr<float>(), g, d, rows, rows, d);
      CHECK(rel_err(scores.to(at::kDouble), at::mm(q.to(at::kDouble), k.to(at::kDouble).t())) < 1e-5);
      const at::Tensor p = at::softmax(at::randn({g, rows}), -1);
      at::Tensor out = at::empty({g, d});
      attend_values_f32(cache.data_ptr<float>(), ld, p.data_ptr<float>(), out.data_ptr<float>(), g, rows, d, rows, d);
      CHECK(rel_err(out.to(at::kDouble), at::mm(p.to(at::kDouble), k.to(at::kDouble))) < 1e-5);
    }
}
