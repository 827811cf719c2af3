// The decode-step kernels (models/nn/gemv.h) and the paths that use them (linear_rows, attend for one query)
// equal LibTorch's own ops: every shape class (row tails, column tails, strided rows, bfloat16 weights), and
// attention over a strided cache with masked slots.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <filesystem>
#include <limits>

#include "models/nn/decoder.h"
#include "models/lab/make_model.h"
#include "models/nn/gemv.h"
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
  const int64_t h = 6, kv = 2, dh = 16, e = 37, cap = 50;
  // Keys and values are the first e slots of a [KV, cap, dh] buffer, as KvCache::layer_kv returns them.
  const at::Tensor kbuf = at::randn({kv, cap, dh}), vbuf = at::randn({kv, cap, dh});
  const at::Tensor k = kbuf.narrow(1, 0, e), v = vbuf.narrow(1, 0, e);
  const at::Tensor q = at::randn({h, 1, dh});
  at::Tensor mask = at::zeros({1, e});
  mask[0][3] = -std::numeric_limits<float>::infinity();
  mask[0][20] = -std::numeric_limits<float>::infinity();
  const double scale = 0.25;
  // The reference in float64: query heads grouped per KV head (repeat_kv).
  const at::Tensor kr = k.repeat_interleave(h / kv, 0).to(at::kDouble), vr = v.repeat_interleave(h / kv, 0).to(at::kDouble);
  for (const bool masked : {false, true}) {
    at::Tensor s = at::bmm(q.to(at::kDouble), kr.transpose(1, 2)) * scale;  // [H, 1, E]
    if (masked) s = s + mask.to(at::kDouble);
    const at::Tensor ref = at::bmm(at::softmax(s, -1), vr).reshape({1, h * dh});
    const at::Tensor out = attend(q, k, v, masked ? mask : at::Tensor(), scale);
    INFO("masked " << masked);
    CHECK(out.sizes() == ref.sizes());
    CHECK(rel_err(out.to(at::kDouble), ref) < 1e-5);
  }
}

TEST_CASE("bfloat16 matrices with float32 compute equal float32 compute over the rounded weights", "[kernels]") {
  c10::InferenceMode guard;
  const std::filesystem::path dir = test::temp_dir("kernels_bf16");
  MakeModelOptions o;
  o.config = shape_preset("tiny-llama");
  o.seed = 9;
  make_model(dir.string(), o);
  auto bf = load_decoder(dir.string(), at::kCPU, at::kBFloat16);
  CHECK(bf->dtype() == at::kFloat);
  CHECK(bf->weight_dtype() == at::kBFloat16);
  // The reference: float32 weights rounded to bfloat16 and back.
  auto ref = load_decoder(dir.string(), at::kCPU, at::kFloat);
  for (auto& [name, p] : ref->named_parameters())
    if (p.dim() == 2) p.copy_(p.to(at::kBFloat16).to(at::kFloat));
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
  // float16 cannot run on the CPU: a clear error instead of a LibTorch trace.
  REQUIRE_THROWS_WITH(load_decoder(dir.string(), at::kCPU, at::kHalf),
                      Catch::Contains("dtype float16 cannot run on the CPU") && Catch::Contains("use bfloat16"));
}
