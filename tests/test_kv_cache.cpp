// The streaming KV cache: hand-worked eviction tables, position-scheme oracles, policy equivalences.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <catch2/catch.hpp>

#include "models/cache/kv_cache.h"
#include "models/nn/runtime.h"
#include "models/stream/stream.h"
#include "tests/test_util.h"

using namespace sinkflow;

namespace {

struct Layout {
  std::vector<int64_t> tokens;
  std::vector<int64_t> positions;
};

Layout layout(const KvCache& c) {
  Layout l;
  for (int64_t s : c.ordered_slots()) {
    l.tokens.push_back(c.slot_token(s));
    l.positions.push_back(c.slot_position(s));
  }
  return l;
}

// Feeds tokens 100, 101, ... one step at a time (`per_step` tokens each) and records the layout after each step.
std::vector<Layout> run_layout(CacheConfig cc, int64_t n_tokens, int64_t per_step, std::vector<EvictedSpan>* out = nullptr) {
  KvCache cache(test::tiny_gpt2_config(), cc, nullptr, at::Device(at::kCPU), at::kFloat);
  std::vector<Layout> steps;
  for (int64_t i = 0; i < n_tokens; i += per_step) {
    std::vector<int64_t> toks;
    for (int64_t j = i; j < std::min(n_tokens, i + per_step); ++j) toks.push_back(100 + j);
    EvictedSpan span = cache.apply(plan_step(cache, toks));
    if (out && !span.tokens.empty()) out->push_back(span);
    steps.push_back(layout(cache));
  }
  return steps;
}

using V = std::vector<int64_t>;

}  // namespace

TEST_CASE("sink policy, token granularity: hand-worked table", "[kv_cache]") {
  CacheConfig cc;
  cc.n_sink = 2;
  cc.n_recent = 4;
  std::vector<EvictedSpan> evicted;
  auto steps = run_layout(cc, 9, 1, &evicted);
  CHECK(steps[1].tokens == V{100, 101});
  CHECK(steps[5].tokens == V{100, 101, 102, 103, 104, 105});
  CHECK(steps[6].tokens == V{100, 101, 103, 104, 105, 106});
  CHECK(steps[6].positions == V{0, 1, 3, 4, 5, 6});
  CHECK(steps[8].tokens == V{100, 101, 105, 106, 107, 108});
  REQUIRE(evicted.size() == 3);
  CHECK(evicted[0].tokens == V{102});
  CHECK(evicted[2].tokens == V{104});
  CHECK(evicted[2].positions == V{4});
}

TEST_CASE("sink policy, block granularity: hand-worked table", "[kv_cache]") {
  CacheConfig cc;
  cc.n_sink = 2;
  cc.n_recent = 4;
  cc.evict_block = 2;
  std::vector<EvictedSpan> evicted;
  auto steps = run_layout(cc, 10, 1, &evicted);
  CHECK(steps[5].tokens == V{100, 101, 102, 103, 104, 105});
  CHECK(steps[6].tokens == V{100, 101, 104, 105, 106});  // two leave at once
  CHECK(steps[7].tokens == V{100, 101, 104, 105, 106, 107});
  CHECK(steps[8].tokens == V{100, 101, 106, 107, 108});
  CHECK(steps[9].tokens == V{100, 101, 106, 107, 108, 109});
  REQUIRE(evicted.size() == 2);
  CHECK(evicted[0].tokens == V{102, 103});
  CHECK(evicted[1].tokens == V{104, 105});
}

TEST_CASE("window policy (no sinks) and multi-token steps: hand-worked table", "[kv_cache]") {
  CacheConfig cc;
  cc.n_sink = 0;
  cc.n_recent = 4;
  auto steps = run_layout(cc, 10, 3);
  CHECK(steps[0].tokens == V{100, 101, 102});
  CHECK(steps[1].tokens == V{102, 103, 104, 105});
  CHECK(steps[2].tokens == V{105, 106, 107, 108});
  CHECK(steps[3].tokens == V{106, 107, 108, 109});
  CHECK(steps[3].positions == V{6, 7, 8, 9});
}

TEST_CASE("plan_step is pure and apply is the only mutator", "[kv_cache]") {
  CacheConfig cc;
  cc.n_sink = 1;
  cc.n_recent = 2;
  KvCache cache(test::tiny_gpt2_config(), cc, nullptr, at::Device(at::kCPU), at::kFloat);
  cache.apply(plan_step(cache, {1, 2, 3}));
  StepPlan a = plan_step(cache, {4});
  StepPlan b = plan_step(cache, {4});
  CHECK(a.evict_slots == b.evict_slots);
  CHECK(a.write_slots == b.write_slots);
  CHECK(cache.cached_tokens() == V{1, 2, 3});
  CHECK(a.evict_slots == V{1});  // token 2 sits in the first window slot
  CHECK(a.write_slots == V{1});
}

TEST_CASE("sink policy with a window as long as the text equals dense exactly", "[kv_cache]") {
  c10::InferenceMode guard;
  for (const auto& cfg : {test::tiny_llama_config(), test::tiny_gpt2_config()}) {
    auto d = test::random_decoder(cfg, 11);
    auto tokens = test::random_tokens(150, 97, 12);
    StreamConfig dense;
    dense.policy = Policy::dense;
    dense.cache.n_recent = 150;
    StreamConfig sink;
    sink.cache.n_sink = 4;
    sink.cache.n_recent = 200;
    StreamSession a(d, dense), b(d, sink);
    for (int64_t t : tokens) {
      at::Tensor la = a.feed({t}), lb = b.feed({t});
      REQUIRE(at::equal(la, lb));
    }
  }
}

namespace {

// Streams `tokens` through fast and naive sessions and returns the largest logit difference. With
// inject_at >= 0, the span evicted at that step is written into the memory region of both caches.
// On test::device().
double fast_vs_naive(const std::vector<int64_t>& tokens, int64_t n_memory, int64_t inject_at, double* scale) {
  auto d = test::random_decoder(test::tiny_llama_config(), 21, 0.2, test::device());
  StreamConfig fast;
  fast.cache.n_sink = 4;
  fast.cache.n_memory = n_memory;
  fast.cache.n_recent = 32;
  fast.cache.evict_kv = true;
  StreamConfig naive = fast;
  naive.cache.scheme = PositionScheme::naive;
  StreamSession a(d, fast), b(d, naive);
  double worst = 0;
  *scale = 0;
  std::vector<int64_t> injected_tokens;
  at::Tensor injected_kv;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<EvictedSpan> ea, eb;
    at::Tensor la = a.feed({tokens[i]}, &ea), lb = b.feed({tokens[i]}, &eb);
    worst = std::max(worst, test::max_abs_diff(la, lb));
    *scale = std::max(*scale, la.abs().max().item<double>());
    if (n_memory > 0 && static_cast<int64_t>(i) >= inject_at && static_cast<int64_t>(injected_tokens.size()) < n_memory) {
      REQUIRE(ea.size() == eb.size());
      for (size_t k = 0; k < ea.size(); ++k) {
        for (auto* sess : {&a, &b}) {
          const EvictedSpan& span = sess == &a ? ea[k] : eb[k];
          MemoryWrite w;
          w.chunk_id = static_cast<int64_t>(injected_tokens.size());
          w.slots = {sess->cache().free_memory_slots().front()};
          w.tokens = span.tokens;
          w.positions = span.positions;
          w.kv = span.kv;
          sess->cache().apply(w);
        }
        injected_tokens.push_back(ea[k].tokens[0]);
      }
    }
  }
  return worst;
}

}  // namespace

TEST_CASE("fast RoPE position scheme equals the naive definition over 2,000 steps", "[kv_cache][rope]") {
  c10::InferenceMode guard;
  auto tokens = test::random_tokens(2000, 97, 22);
  double scale = 0;
  SECTION("n_memory = 0") {
    const double diff = fast_vs_naive(tokens, 0, -1, &scale);
    INFO("max |logit| " << scale << ", max diff " << diff);
    CHECK(scale > 0.5);
    CHECK(diff < test::tol(1e-5) * std::max(1.0, scale));
  }
  SECTION("n_memory = 8, filled from evicted K/V") {
    const double diff = fast_vs_naive(tokens, 8, 100, &scale);
    INFO("max |logit| " << scale << ", max diff " << diff);
    CHECK(diff < test::tol(1e-5) * std::max(1.0, scale));
  }
}

TEST_CASE("a stream started at position 2^30 gives the logits of one started at 0", "[kv_cache][rope]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_llama_config(), 31);
  StreamConfig sc;
  sc.cache.n_sink = 4;
  sc.cache.n_recent = 60;
  StreamSession a(d, sc, 0), b(d, sc, int64_t{1} << 30);
  auto tokens = test::random_tokens(300, 97, 32);
  double worst = 0, scale = 0;
  for (int64_t t : tokens) {
    at::Tensor la = a.feed({t}), lb = b.feed({t});
    worst = std::max(worst, test::max_abs_diff(la, lb));
    scale = std::max(scale, la.abs().max().item<double>());
  }
  INFO("max |logit| " << scale << ", max diff " << worst);
  CHECK(b.position() == (int64_t{1} << 30) + 300);
  CHECK(worst < 1e-4 * std::max(1.0, scale));
}

TEST_CASE("recompute policy on gpt2 equals a fresh forward over the same window", "[kv_cache]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_gpt2_config(), 41);
  StreamConfig sc;
  sc.policy = Policy::recompute;
  sc.cache.n_sink = 4;
  sc.cache.n_recent = 28;
  StreamSession s(d, sc);
  auto tokens = test::random_tokens(100, 97, 42);
  for (size_t i = 0; i < tokens.size(); ++i) {
    at::Tensor got = s.feed({tokens[i]});
    std::vector<int64_t> window = s.cache().cached_tokens();
    REQUIRE(static_cast<int64_t>(window.size()) == std::min<int64_t>(i + 1, 32));
    at::Tensor want = d->forward_full(at::tensor(window).view({1, -1}))[0][-1];
    REQUIRE(test::max_abs_diff(got[0], want) < 1e-4);
  }
}

TEST_CASE("sink and window policies differ once the first tokens are evicted", "[kv_cache]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_llama_config(), 51);
  StreamConfig sink, window;
  sink.cache.n_sink = 4;
  sink.cache.n_recent = 16;
  window.policy = Policy::window;
  window.cache.n_recent = 20;
  StreamSession a(d, sink), b(d, window);
  auto tokens = test::random_tokens(20, 97, 52);
  at::Tensor la = a.feed(tokens), lb = b.feed(tokens);
  CHECK(at::allclose(la, lb, 1e-5, 1e-5));  // nothing evicted yet: same cache contents
  la = a.feed({5});
  lb = b.feed({5});
  CHECK_FALSE(at::allclose(la, lb, 1e-3, 1e-3));
}

TEST_CASE("bad cache configuration fails with a clear message", "[kv_cache][errors]") {
  ModelConfig gpt2 = test::tiny_gpt2_config();
  ModelConfig llama = test::tiny_llama_config();
  CacheConfig c;
  c.n_recent = 0;
  REQUIRE_THROWS_WITH(c.validate(llama, "configs/x.yaml: cache"), Catch::Contains("configs/x.yaml: cache: n_recent (the window) must be > 0, found 0"));
  c = CacheConfig{};
  c.n_sink = -2;
  REQUIRE_THROWS_WITH(c.validate(llama, "cache"), Catch::Contains("n_sink must be >= 0, found -2"));
  c = CacheConfig{};
  c.n_memory = -1;
  REQUIRE_THROWS_WITH(c.validate(llama, "cache"), Catch::Contains("n_memory must be >= 0, found -1"));
  c = CacheConfig{};
  c.n_recent = 300;
  REQUIRE_THROWS_WITH(c.validate(gpt2, "cache"), Catch::Contains("exceeds the model's max_positions 256"));
  StreamConfig dense;
  dense.policy = Policy::dense;
  dense.cache.n_recent = 5000;
  REQUIRE_THROWS_WITH(dense.validate(llama, "stream"), Catch::Contains("dense: no eviction"));
  c = CacheConfig{};
  c.evict_block = 2000;
  REQUIRE_THROWS_WITH(c.validate(llama, "cache"), Catch::Contains("evict_block must be in [1, n_recent=1020], found 2000"));
  REQUIRE_THROWS_WITH(parse_policy("streaming"), Catch::Contains("expected dense, window, sink, recompute, kv-align or cluster"));
}

TEST_CASE("a bfloat16 KV cache keeps bfloat16 and decodes close to a float32 one", "[kv_cache]") {
  c10::InferenceMode guard;
  for (const auto& cfg : {test::tiny_llama_config(), test::tiny_gpt2_config()}) {
    auto d = test::random_decoder(cfg, 31);
    const auto tokens = test::random_tokens(120, 97, 32);
    // Sinks and a window that overflows (re-rotated sinks, evictions), a 40-token prefill, then one token a step;
    // and the cluster policy, whose centroids come from evicted K/V.
    for (const Policy policy : {Policy::sink, Policy::cluster}) {
      StreamConfig f32;
      f32.policy = policy;
      f32.cache.n_sink = 4;
      f32.cache.n_memory = policy == Policy::cluster ? 4 : 0;
      f32.cache.n_recent = 40;
      StreamConfig bf16 = f32;
      bf16.cache.kv_dtype = at::kBFloat16;
      StreamSession a(d, f32), b(d, bf16);
      CHECK(a.cache().kv_dtype() == at::kFloat);
      CHECK(b.cache().kv_dtype() == at::kBFloat16);
      const std::vector<int64_t> prefill(tokens.begin(), tokens.begin() + 40);
      double diff = test::max_abs_diff(a.feed(prefill), b.feed(prefill)), scale = 0;
      for (size_t i = 40; i < tokens.size(); ++i) {
        const at::Tensor la = a.feed({tokens[i]}), lb = b.feed({tokens[i]});
        diff = std::max(diff, test::max_abs_diff(la, lb));
        scale = std::max(scale, la.abs().max().item<double>());
      }
      INFO(cfg.model_type << " policy " << static_cast<int>(policy) << " max |logit| " << scale << " max diff " << diff);
      CHECK(diff > 0.0);  // the keys and values were rounded
      CHECK(diff < 0.02 * std::max(1.0, scale));
      for (const auto& [name, t] : b.cache().state_tensors())
        if (name == "k" || name == "v") CHECK(t.scalar_type() == at::kBFloat16);
      // A float32 stream's state is not taken into a bfloat16 one (cluster streams are not saved at all).
      if (policy == Policy::sink) {
        std::map<std::string, at::Tensor> state;
        for (const auto& [name, t] : a.state_tensors()) state.emplace(name, t);
        StreamSession c(d, bf16);
        REQUIRE_THROWS_WITH(c.restore_state(state, "snap"), Catch::Contains("snap: tensor 'k': expected BFloat16"));
      }
    }
  }
  CacheConfig c;
  c.kv_dtype = at::kChar;
  REQUIRE_THROWS_WITH(c.validate(test::tiny_llama_config(), "cache"),
                      Catch::Contains("kv_dtype must be float32, bfloat16 or float16, found Char"));
  REQUIRE_THROWS_WITH(parse_kv_dtype("int8"), Catch::Contains("unknown KV cache dtype 'int8'"));
  REQUIRE_THROWS_WITH(parse_kv_dtype("fp8"), Catch::Contains("expected auto, float32, bfloat16 or float16"));
  CHECK(parse_kv_dtype("auto") == at::ScalarType::Undefined);
  CHECK(parse_kv_dtype("bf16") == at::kBFloat16);
}

TEST_CASE("a dense cache that is full refuses more tokens", "[kv_cache][errors]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_llama_config(), 61);
  StreamConfig dense;
  dense.policy = Policy::dense;
  dense.cache.n_recent = 8;
  StreamSession s(d, dense);
  s.feed(test::random_tokens(8, 97, 62));
  REQUIRE_THROWS_WITH(s.feed({1}), Catch::Contains("the cache is full (8 slots, no eviction: dense policy)"));
}

namespace {

// Logits of token `x` when chunk C (the 8 tokens right after the 4 sinks) was evicted by x's own step and
// written back into the memory region before x's forward (`mode`), or never evicted (dense reference).
at::Tensor logits_with_chunk(std::shared_ptr<Decoder> d, const std::vector<int64_t>& stream, const char* mode) {
  const int64_t n_sink = 4, n_chunk = 8;
  if (std::string(mode) == "never") {
    StreamConfig big;
    big.cache.n_sink = n_sink;
    big.cache.n_recent = 64;
    StreamSession s(d, big);
    return s.feed(stream);
  }
  StreamConfig sc;
  sc.cache.n_sink = n_sink;
  sc.cache.n_memory = n_chunk;
  sc.cache.n_recent = 16;
  sc.cache.evict_block = n_chunk;
  sc.cache.evict_kv = true;
  StreamSession s(d, sc);
  std::vector<int64_t> head(stream.begin(), stream.end() - 1);
  s.feed(head);  // sinks + C + 8 tokens: the window is full
  KvCache& cache = s.cache();
  StepPlan plan = plan_step(cache, {stream.back()});
  EvictedSpan span = cache.apply(plan);  // C leaves
  REQUIRE(span.tokens == std::vector<int64_t>(stream.begin() + n_sink, stream.begin() + n_sink + n_chunk));
  MemoryChunk chunk{7, span.tokens, span.kv};
  s.inject(chunk, parse_inject_mode(mode));
  CHECK(cache.n_memory_used() == n_chunk);
  CHECK(cache.slot_chunk(n_sink) == 7);
  return d->forward(plan, cache, true);
}

}  // namespace

TEST_CASE("a just-evicted chunk re-injected by kv or text restores the logits of a cache that never evicted it",
          "[kv_cache][memory]") {
  c10::InferenceMode guard;
  for (const auto& cfg : {test::tiny_llama_config(), test::tiny_gpt2_config()}) {
    auto d = test::random_decoder(cfg, 71, 0.2, test::device());
    auto stream = test::random_tokens(4 + 8 + 8 + 1, 97, 72);
    at::Tensor never = logits_with_chunk(d, stream, "never");
    at::Tensor kv = logits_with_chunk(d, stream, "kv");
    at::Tensor text = logits_with_chunk(d, stream, "text");
    INFO(family_name(cfg.family));
    CHECK(test::max_abs_diff(kv, never) < test::tol(1e-4));
    // text recomputes C over the sinks alone, which is exactly C's original context here.
    CHECK(test::max_abs_diff(text, never) < test::tol(1e-4));
  }
}

TEST_CASE("injection errors and release", "[kv_cache][memory][errors]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_llama_config(), 81);
  StreamConfig sc;
  sc.cache.n_sink = 2;
  sc.cache.n_memory = 4;
  sc.cache.n_recent = 8;
  StreamSession s(d, sc);
  s.feed(test::random_tokens(12, 97, 82));
  REQUIRE_THROWS_WITH(s.inject(MemoryChunk{1, {1, 2, 3, 4, 5}, {}}, InjectMode::text),
                      Catch::Contains("chunk 1 of 5 tokens does not fit the 4 free memory slots"));
  REQUIRE_THROWS_WITH(s.inject(MemoryChunk{2, {1, 2}, {}}, InjectMode::kv), Catch::Contains("has no stored K/V"));
  s.inject(MemoryChunk{3, {1, 2, 3}, {}}, InjectMode::text);
  CHECK(s.cache().n_memory_used() == 3);
  CHECK(s.cache().free_memory_slots().size() == 1);
  CHECK(s.release(3) == 3);
  CHECK(s.cache().n_memory_used() == 0);
  REQUIRE_THROWS_WITH(parse_inject_mode("paste"), Catch::Contains("expected text or kv"));
}
