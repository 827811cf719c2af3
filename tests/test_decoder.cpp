// Decoder families: incremental decode through the cache equals the full causal forward.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <catch2/catch.hpp>

#include "models/stream/stream.h"
#include "tests/test_util.h"

using namespace sinkflow;

namespace {

// Logits of every token fed one by one (or in blocks) through a dense stream.
at::Tensor stream_logits(std::shared_ptr<Decoder> d, const std::vector<int64_t>& tokens, int64_t block) {
  StreamConfig sc;
  sc.policy = Policy::dense;
  sc.cache.n_recent = static_cast<int64_t>(tokens.size());
  sc.prefill_block = block;
  StreamSession s(d, sc);
  return s.feed(tokens, nullptr, true);
}

}  // namespace

// Tolerance: fp32 throughout; the cached and the full forward sum in different orders, so they agree to
// about 1e-6 relative; we assert 1e-4 absolute on logits of magnitude ~1-10 (test::tol: wider on a GPU).
// These two run on test::device() (SINKFLOW_TEST_DEVICE).
TEST_CASE("incremental decode equals the full forward (llama, GQA, tied)", "[decoder]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_llama_config(), 1, 0.2, test::device());
  auto tokens = test::random_tokens(40, 97, 2);
  at::Tensor full = d->forward_full(at::tensor(tokens).view({1, -1}))[0];
  for (int64_t block : {1, 7, 40}) {
    at::Tensor inc = stream_logits(d, tokens, block);
    REQUIRE(inc.sizes() == full.sizes());
    CHECK(test::max_abs_diff(inc, full) < test::tol(1e-4));
  }
  CHECK(full.abs().max().item<double>() > 0.5);  // not a vacuous comparison of zeros
}

TEST_CASE("incremental decode equals the full forward (qwen2-style biases, partial rotary, untied)", "[decoder]") {
  c10::InferenceMode guard;
  ModelConfig c = test::tiny_llama_config();
  c.model_type = "qwen2";
  c.attention_bias = true;
  c.partial_rotary_factor = 0.5;
  c.tie_word_embeddings = false;
  c.rope_theta = 1e6;
  auto d = test::random_decoder(c, 3);
  auto tokens = test::random_tokens(33, 97, 4);
  at::Tensor full = d->forward_full(at::tensor(tokens).view({1, -1}))[0];
  CHECK(test::max_abs_diff(stream_logits(d, tokens, 1), full) < 1e-4);
  CHECK(test::max_abs_diff(stream_logits(d, tokens, 5), full) < 1e-4);
}

TEST_CASE("incremental decode equals the full forward (gpt2)", "[decoder]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_gpt2_config(), 5, 0.2, test::device());
  auto tokens = test::random_tokens(50, 97, 6);
  at::Tensor full = d->forward_full(at::tensor(tokens).view({1, -1}))[0];
  for (int64_t block : {1, 9, 50}) CHECK(test::max_abs_diff(stream_logits(d, tokens, block), full) < test::tol(1e-4));
  CHECK(full.abs().max().item<double>() > 0.5);
}

TEST_CASE("batched full forward equals per-sequence forward", "[decoder]") {
  c10::InferenceMode guard;
  for (const auto& cfg : {test::tiny_llama_config(), test::tiny_gpt2_config()}) {
    auto d = test::random_decoder(cfg, 7);
    at::Tensor a = at::tensor(test::random_tokens(16, 97, 8)).view({1, -1});
    at::Tensor b = at::tensor(test::random_tokens(16, 97, 9)).view({1, -1});
    at::Tensor both = d->forward_full(at::cat({a, b}, 0));
    CHECK(test::max_abs_diff(both[0], d->forward_full(a)[0]) < 1e-5);
    CHECK(test::max_abs_diff(both[1], d->forward_full(b)[0]) < 1e-5);
  }
}

TEST_CASE("gpt2 rejects positions beyond its learned table", "[decoder]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_gpt2_config(), 5);
  REQUIRE_THROWS_WITH(d->forward_full(at::zeros({1, 300}, at::kLong)),
                      Catch::Contains("exceed the model's 256 learned positions"));
}

TEST_CASE("full-forward gradients equal central finite differences for every weight tensor (what training relies on)",
          "[decoder][train]") {
  for (const ModelConfig& config : {test::tiny_llama_config(), test::tiny_gpt2_config()}) {
    INFO(config.model_type);
    auto d = make_decoder(config, at::Device(at::kCPU), at::kDouble);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
    d->load_weights([&](const std::string& name, const std::vector<int64_t>& shape) {
      const at::Tensor noise = at::normal(0.0, 1.0, shape, gen).to(at::kDouble);
      const bool norm = name.find("norm") != std::string::npos || name.find("ln_") != std::string::npos;
      if (norm && name.find("bias") == std::string::npos) return 1.0 + 0.1 * noise;
      return (name.find("bias") != std::string::npos ? 0.05 : 0.2) * noise;
    });
    auto params = d->named_parameters();
    for (auto& [name, p] : params) p.set_requires_grad(true);
    const auto ids = test::random_tokens(24, config.vocab_size, 5);
    const at::Tensor tokens = at::tensor(ids, at::kLong).unsqueeze(0);
    auto loss_of = [&] {
      const at::Tensor logits = d->forward_full(tokens, 0)[0];
      return at::cross_entropy_loss(logits.narrow(0, 0, 23), tokens[0].narrow(0, 1, 23));
    };
    loss_of().backward();
    REQUIRE(params.size() >= 10);
    for (auto& [name, p] : params) {
      INFO(name);
      REQUIRE(p.grad().defined());
      // The entry with the largest gradient: finite differences are then far above the float32 softmax noise.
      const int64_t i = p.grad().abs().flatten().argmax().item<int64_t>();
      const double g = p.grad().flatten()[i].item<double>();
      REQUIRE(std::abs(g) > 1e-4);
      const double eps = 1e-3;
      double l[2];
      {
        at::NoGradGuard no_grad;
        const double orig = p.flatten()[i].item<double>();
        p.view(-1)[i].fill_(orig + eps);
        l[0] = loss_of().item<double>();
        p.view(-1)[i].fill_(orig - eps);
        l[1] = loss_of().item<double>();
        p.view(-1)[i].fill_(orig);
      }
      const double fd = (l[0] - l[1]) / (2 * eps);
      INFO("autograd " << g << ", finite difference " << fd);
      CHECK(std::abs(fd - g) <= 0.02 * std::abs(g) + 1e-4);
    }
  }
}
