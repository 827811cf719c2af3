// The architectures of real checkpoints (Llama-3.x rope scaling, YaRN, dynamic NTK, Qwen3, Gemma 2/3, Mistral's
// sliding window), each on a tiny make-model shape:
//   - its logits and RoPE frequencies equal those of tools/reference_forward.py, an independent forward written
//     from transformers' modeling code (golden files from tools/make_golden.sh);
//   - the full forward equals incremental decode through the cache (blocks of 1, 7 and all);
//   - a sink cache whose window covers the text equals the dense one, and the fast position scheme equals the naive
//     definition (every key at its in-cache index) with evictions and memory writes, per-layer RoPE bases and
//     sliding windows included.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <filesystem>
#include <string>
#include <vector>

#include "models/cache/rope.h"
#include "models/io/safetensors.h"
#include "models/lab/make_model.h"
#include "models/stream/stream.h"
#include "tests/test_util.h"

// ATen pulls in glog, whose one-argument CHECK macro would replace Catch's: include Catch last.
#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;

namespace {

const std::string kSource = SINKFLOW_SOURCE_DIR;
const std::vector<std::string> kTiny = {"tiny-llama3", "tiny-yarn",   "tiny-qwen3",  "tiny-gemma2",
                                        "tiny-gemma3", "tiny-mistral", "tiny-phi3"};

at::Tensor stream_logits(std::shared_ptr<Decoder> d, const std::vector<int64_t>& tokens, int64_t block,
                         int64_t n_sink = -1) {
  StreamConfig sc;
  sc.policy = n_sink < 0 ? Policy::dense : Policy::sink;
  sc.cache.n_sink = std::max<int64_t>(n_sink, 0);
  sc.cache.n_recent = static_cast<int64_t>(tokens.size());
  sc.prefill_block = block;
  StreamSession s(d, sc);
  return s.feed(tokens, nullptr, true);
}

at::Tensor as_tensor(const std::vector<double>& v) {
  return at::tensor(std::vector<float>(v.begin(), v.end()));
}

// Largest relative difference of two frequency vectors.
double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs() / b.abs().clamp_min(1e-30)).max().item<double>();
}

}  // namespace

TEST_CASE("golden: each tiny architecture equals the reference forward written from transformers' modeling code",
          "[golden][architectures]") {
  c10::InferenceMode guard;
  const std::filesystem::path dir = test::temp_dir("golden-architectures");
  for (const std::string name : {"tiny-llama3", "tiny-yarn", "tiny-qwen3", "tiny-gemma2", "tiny-gemma3",
                                 "tiny-mistral", "tiny-dynamic", "tiny-phi3", "tiny-phi3-long"}) {
    DYNAMIC_SECTION(name) {
      const bool dynamic = name == "tiny-dynamic", long_rope = name == "tiny-phi3-long";
      MakeModelOptions options;
      options.config = shape_preset(dynamic ? "tiny-llama" : long_rope ? "tiny-phi3" : name);
      if (dynamic) {  // as tools/make_golden.sh patches it: dynamic NTK over 32 positions
        options.config.max_positions = 32;
        options.config.rope_scaling.type = "dynamic";
        options.config.rope_scaling.factor = 2.0;
      }
      if (long_rope) options.config.rope_scaling.original_max_positions = 32;  // the 64 tokens take the long factors
      options.seed = 7;
      const std::string model = (dir / name).string();
      make_model(model, options);
      const SafetensorsFile golden(kSource + "/tests/data/golden/" + name + ".safetensors");
      auto decoder = load_decoder(model, at::kCPU, at::kFloat);

      double sum = 0;
      for (const auto& [pname, p] : decoder->named_parameters()) sum += p.to(at::kDouble).sum().item<double>();
      const double expected_sum = std::stod(golden.metadata().at("weights_sum"));
      INFO(name << ": the checkpoint make-model writes today must be the one the golden file was made from "
                   "(else regenerate with tools/make_golden.sh): weight sum " << sum << " vs " << expected_sum);
      REQUIRE(std::abs(sum - expected_sum) <= 1e-9 * std::max(1.0, std::abs(expected_sum)));

      // RoPE frequencies, value by value.
      const Rope& rope = *decoder->rope();
      const ModelConfig& c = decoder->config();
      int64_t global_layer = 0, local_layer = -1;
      for (int64_t l = 0; l < c.n_layer; ++l) (c.is_sliding(l) ? local_layer : global_layer) = l;
      // The reference writes the frequencies of its 64-token forward (dynamic NTK: rescaled for that length).
      const int64_t seq_len = golden.tensor("tokens").size(0);
      CHECK(rel_diff(as_tensor(rope.inv_freq(global_layer, seq_len)), golden.tensor("inv_freq").to(at::kFloat)) < 1e-6);
      CHECK(std::abs(rope.attention_factor() - std::stod(golden.metadata().at("attention_factor"))) < 1e-12);
      if (golden.contains("inv_freq_local")) {
        REQUIRE(local_layer >= 0);
        CHECK(rel_diff(as_tensor(rope.inv_freq(local_layer)), golden.tensor("inv_freq_local").to(at::kFloat)) < 1e-6);
        CHECK(rel_diff(as_tensor(rope.inv_freq(local_layer)), as_tensor(rope.inv_freq(global_layer))) > 1e-3);
      }
      if (dynamic) {
        const at::Tensor scaled = as_tensor(rope.inv_freq(0, 4 * 32));
        CHECK(rel_diff(scaled, golden.tensor("inv_freq_dynamic_4x").to(at::kFloat)) < 1e-6);
        CHECK(rel_diff(scaled, as_tensor(rope.inv_freq(0))) > 1e-3);  // the scaling did something
      }

      const at::Tensor tokens = golden.tensor("tokens").to(at::kLong);
      const at::Tensor positions = golden.tensor("positions").to(at::kLong);
      const at::Tensor expected = golden.tensor("logits").to(at::kFloat);
      const at::Tensor full = decoder->forward_full(tokens.unsqueeze(0), 0)[0].index_select(0, positions);
      const double scale = expected.abs().max().item<double>();
      INFO("largest |logit| " << scale << ", full-forward error " << test::max_abs_diff(full, expected));
      CHECK(scale > 0.1);
      CHECK(test::max_abs_diff(full, expected) < 1e-4 * scale + 1e-5);
      CHECK(at::equal(full.argmax(-1), expected.argmax(-1)));
      if (long_rope) CHECK(rel_diff(as_tensor(rope.inv_freq(0, seq_len)), as_tensor(rope.inv_freq(0))) > 1e-3);
      if (!dynamic && !long_rope) {  // scaled by sequence length: the cache path keeps the frequencies of its own
        const std::vector<int64_t> ids(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.size(0));
        const at::Tensor streamed = stream_logits(decoder, ids, 7).index_select(0, positions);
        INFO("streaming error " << test::max_abs_diff(streamed, expected));
        CHECK(test::max_abs_diff(streamed, expected) < 1e-4 * scale + 1e-5);
      }
    }
  }
}

TEST_CASE("each tiny architecture: incremental decode and a covering sink cache equal the full forward",
          "[decoder][architectures]") {
  c10::InferenceMode guard;
  for (const std::string& name : kTiny) {
    DYNAMIC_SECTION(name) {
      const ModelConfig c = shape_preset(name);
      auto d = test::random_decoder(c, 41);
      const auto tokens = test::random_tokens(40, c.vocab_size, 42);
      const at::Tensor full = d->forward_full(at::tensor(tokens).view({1, -1}))[0];
      CHECK(full.abs().max().item<double>() > 0.5);
      for (int64_t block : {1, 7, 40}) CHECK(test::max_abs_diff(stream_logits(d, tokens, block), full) < 1e-4);
      CHECK(test::max_abs_diff(stream_logits(d, tokens, 1, 4), full) < 1e-4);
      if (c.sliding_window > 0) {  // the window matters: the same weights without it give other logits
        ModelConfig open = c;
        open.sliding_window = 0;
        open.sliding_layers.clear();
        auto o = test::random_decoder(open, 41);
        CHECK(test::max_abs_diff(o->forward_full(at::tensor(tokens).view({1, -1}))[0], full) > 1e-3);
      }
    }
  }
}

TEST_CASE("fast position scheme equals the naive definition for every architecture, with evictions and memory",
          "[kv_cache][rope][architectures]") {
  c10::InferenceMode guard;
  for (const std::string& name : kTiny) {
    DYNAMIC_SECTION(name) {
      const ModelConfig c = shape_preset(name);
      auto d = test::random_decoder(c, 43);
      StreamConfig fast;
      fast.cache.n_sink = 4;
      fast.cache.n_memory = 6;
      fast.cache.n_recent = 20;  // longer than the 8-token sliding windows: local layers see less than the cache
      fast.cache.evict_kv = true;
      StreamConfig naive = fast;
      naive.cache.scheme = PositionScheme::naive;
      StreamSession a(d, fast), b(d, naive);
      const auto tokens = test::random_tokens(300, c.vocab_size, 44);
      double worst = 0, scale = 0;
      int64_t written = 0;
      for (size_t i = 0; i < tokens.size(); ++i) {
        std::vector<EvictedSpan> ea, eb;
        const at::Tensor la = a.feed({tokens[i]}, &ea), lb = b.feed({tokens[i]}, &eb);
        worst = std::max(worst, test::max_abs_diff(la, lb));
        scale = std::max(scale, la.abs().max().item<double>());
        REQUIRE(ea.size() == eb.size());
        // From step 50, the first six evicted tokens go back into the memory region as their stored K/V.
        for (size_t k = 0; i >= 50 && k < ea.size() && written < fast.cache.n_memory; ++k, ++written) {
          for (auto* s : {&a, &b}) {
            const EvictedSpan& span = s == &a ? ea[k] : eb[k];
            MemoryWrite w;
            w.chunk_id = written;
            w.slots = {s->cache().free_memory_slots().front()};
            w.tokens = span.tokens;
            w.positions = span.positions;
            w.kv = span.kv;
            s->cache().apply(w);
          }
        }
      }
      INFO(name << ": max |logit| " << scale << ", max fast-naive difference " << worst);
      CHECK(written == fast.cache.n_memory);
      CHECK(scale > 0.5);
      CHECK(worst < 1e-5 * std::max(1.0, scale));
    }
  }
}

TEST_CASE("a sliding-window layer in a sink cache sees the last `window` in-cache positions only",
          "[kv_cache][architectures]") {
  c10::InferenceMode guard;
  const ModelConfig c = shape_preset("tiny-mistral");  // every layer: window 8
  auto d = test::random_decoder(c, 45);
  StreamConfig sc;
  sc.cache.n_sink = 4;
  sc.cache.n_recent = 30;
  StreamSession s(d, sc);
  const auto tokens = test::random_tokens(100, c.vocab_size, 46);
  s.feed(std::vector<int64_t>(tokens.begin(), tokens.end() - 1));
  const StepPlan plan = plan_step(s.cache(), {tokens.back()});
  s.cache().apply(plan);
  const at::Tensor mask = s.cache().attention_mask(plan, c.sliding_window);
  const at::Tensor open = s.cache().attention_mask(plan);
  REQUIRE(mask.defined());
  // Full attention sees sinks and window (34 slots); the sliding window, the query and the 7 keys before it.
  const int64_t visible = (mask == 0).sum().item<int64_t>();
  CHECK(visible == 8);
  CHECK((open.defined() ? (open == 0).sum().item<int64_t>() : s.cache().extent()) == 34);
  // The visible keys are the newest 8 tokens of the stream.
  std::vector<int64_t> seen;
  for (int64_t slot = 0; slot < mask.size(1); ++slot)
    if (mask[0][slot].item<float>() == 0.0f) seen.push_back(s.cache().slot_token(slot));
  std::sort(seen.begin(), seen.end());
  std::vector<int64_t> newest(tokens.end() - 8, tokens.end());
  std::sort(newest.begin(), newest.end());
  CHECK(seen == newest);
}
