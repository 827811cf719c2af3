// KV-Align: the cache keeps originals and realigns from them (no compounding), the networks train, save, load
// and validate, and the kv-align policy is exact wherever nothing moved.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "models/stream/kv_align.h"
#include "models/cache/kv_cache.h"
#include "models/stream/stream.h"
#include "tests/test_util.h"

using namespace sinkflow;
namespace fs = std::filesystem;

namespace {

// Networks trained briefly on random text of the tiny GPT-2: not the identity any more.
std::shared_ptr<KvAlign> tiny_trained(const std::shared_ptr<Decoder>& d, KvAlignTrainReport* report = nullptr) {
  KvAlignTrainOptions o;
  o.caches = {16, 24};
  o.n_sink = 2;
  o.windows = 30;
  o.shifts = 3;
  o.samples_per_pair = 8;
  o.steps = 150;
  o.batch = 256;
  o.hidden = 32;
  o.embed_dim = 8;
  std::vector<int64_t> ids = test::random_tokens(600, d->config().vocab_size, 11);
  return train_kv_align(*d, ids, o, report);
}

StreamConfig kv_align_stream(std::shared_ptr<const KvAlign> net, int64_t window) {
  StreamConfig sc;
  sc.policy = Policy::kv_align;
  sc.kv_align = std::move(net);
  sc.cache.n_sink = 2;
  sc.cache.n_recent = window;
  return sc;
}

}  // namespace

TEST_CASE("the cache realigns from the originals: realignments never compound", "[kv_align]") {
  const ModelConfig mc = test::tiny_gpt2_config();
  CacheConfig cc;
  cc.n_sink = 2;
  cc.n_recent = 6;
  cc.evict_block = 2;
  cc.keep_originals = true;
  KvCache cache(mc, cc, nullptr, at::Device(at::kCPU), at::kFloat);
  // Each token's K/V as first computed: a constant equal to its stream position (stored the way the decoder does).
  std::vector<int64_t> calls;
  for (int64_t t = 0; t < 30; ++t) {
    StepPlan plan = plan_step(cache, {100 + t});
    EvictedSpan span = cache.apply(plan);
    if (!span.tokens.empty()) {
      // A function that does not compose: applied twice it would add 2.
      calls.push_back(cache.realign([&](const at::Tensor& k, const at::Tensor& v, const std::vector<int64_t>& tokens,
                                        const std::vector<int64_t>& from, const std::vector<int64_t>& to) {
        for (size_t i = 0; i < from.size(); ++i) REQUIRE(from[i] > to[i]);
        REQUIRE(tokens.size() == from.size());
        return std::pair<at::Tensor, at::Tensor>{k + 1000, v - 1000};
      }));
    }
    for (int64_t l = 0; l < mc.n_layer; ++l) {
      at::Tensor kv = at::full({mc.n_kv_head, 1, mc.d_head}, static_cast<float>(t));
      cache.store(l, plan, kv, kv, kv);
    }
  }
  REQUIRE(calls.size() == 11);  // evictions of 2 at steps 8, 10, ..., 28: one realignment each
  // Every window token but the two just written has moved since it was computed: original + 1000 exactly once.
  for (int64_t slot : cache.ordered_slots()) {
    const int64_t pos = cache.slot_position(slot);
    const float k = cache.keys()[1][0][slot][0].item<float>();
    const float v = cache.values()[1][0][slot][0].item<float>();
    if (pos < 2 || pos >= 28) {  // sinks never move; tokens 28, 29 came after the last eviction
      CHECK(k == static_cast<float>(pos));
      CHECK(v == static_cast<float>(pos));
    } else {
      CHECK(k == static_cast<float>(pos + 1000));
      CHECK(v == static_cast<float>(pos - 1000));
    }
  }
  CacheConfig rope_cc = cc;
  REQUIRE_THROWS_WITH(KvCache(test::tiny_llama_config(), rope_cc, nullptr, at::Device(at::kCPU), at::kFloat),
                      Catch::Contains("keep_originals (KV-Align) is for learned absolute positions"));
}

TEST_CASE("an untrained kv-align network is the identity: the policy equals sink bit for bit", "[kv_align]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_gpt2_config(), 3, 0.2, test::device());
  KvAlignConfig c = KvAlignConfig::for_model(d->config());
  c.exact_first_layer = false;  // every layer by the (identity) networks
  auto net = std::make_shared<KvAlign>(c);
  StreamConfig a = kv_align_stream(net, 8);
  StreamConfig b = a;
  b.policy = Policy::sink;
  StreamSession sa(d, a), sb(d, b);
  for (int64_t t : test::random_tokens(40, d->config().vocab_size, 5)) {
    REQUIRE(test::max_abs_diff(sa.feed({t}), sb.feed({t})) == 0.0);
  }
  REQUIRE(sa.tokens_evicted() == 30);
}

TEST_CASE("kv-align trains, beats the stale cache on held-out pairs, and round-trips through its files", "[kv_align]") {
  auto d = test::random_decoder(test::tiny_gpt2_config(), 3);
  KvAlignTrainReport rep;
  auto net = tiny_trained(d, &rep);
  CHECK(rep.train_vectors > 0);
  CHECK(rep.heldout_vectors > 0);
  CHECK(rep.heldout_key < rep.heldout_stale_key);
  CHECK(rep.heldout_value < rep.heldout_stale_value);

  c10::InferenceMode guard;
  // Zero shift: unchanged bit for bit; a real shift: changed.
  const auto& c = net->config();
  at::Tensor k = at::randn({c.n_layer, c.n_kv_head, 3, c.d_head}), v = at::randn({c.n_layer, c.n_kv_head, 3, c.d_head});
  const std::vector<int64_t> toks = {7, 8, 9};
  auto [k2, v2] = net->realign(k, v, toks, {5, 9, 12}, {5, 3, 12}, d.get());
  CHECK(test::max_abs_diff(k2.select(2, 0), k.select(2, 0)) == 0.0);
  CHECK(test::max_abs_diff(v2.select(2, 2), v.select(2, 2)) == 0.0);
  CHECK(test::max_abs_diff(k2.select(2, 1), k.select(2, 1)) > 1e-4);
  // The first layer is exact: the K/V of token 8 computed from scratch at position 3.
  {
    CacheConfig cc;
    cc.n_sink = 0;
    cc.n_recent = 8;
    cc.allow_evict = false;
    auto cache = d->make_cache(cc);
    StepPlan plan = plan_step(*cache, {1, 2, 3, 8});
    cache->apply(plan);
    d->forward(plan, *cache, true);
    CHECK(test::max_abs_diff(k2[0].select(1, 1), cache->keys()[0].select(1, 3)) < 1e-5);
    CHECK(test::max_abs_diff(v2[0].select(1, 1), cache->values()[0].select(1, 3)) < 1e-5);
  }
  REQUIRE_THROWS_WITH(net->realign(k, v, toks, {5, 9, 12}, {5, 3, 12}, nullptr),
                      Catch::Contains("leave the first layer to the model (exact_first_layer); realign needs the model"));

  const fs::path dir = test::temp_dir("kv_align");
  net->save(dir.string(), rep.to_json());
  auto back = KvAlign::load(dir.string());
  auto [k3, v3] = back->realign(k, v, toks, {5, 9, 12}, {5, 3, 12}, d.get());
  CHECK(test::max_abs_diff(k3, k2) == 0.0);
  CHECK(test::max_abs_diff(v3, v2) == 0.0);

  // The policy: identical to sink until the first eviction, different (realigned) after it.
  StreamConfig a = kv_align_stream(net, 8);
  StreamConfig b = a;
  b.policy = Policy::sink;
  StreamSession sa(d, a), sb(d, b);
  const auto tokens = test::random_tokens(30, d->config().vocab_size, 9);
  double after = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const double diff = test::max_abs_diff(sa.feed({tokens[i]}), sb.feed({tokens[i]}));
    if (i < 10) REQUIRE(diff == 0.0);
    else after = std::max(after, diff);
  }
  CHECK(after > 1e-4);
  fs::remove_all(dir);
}

TEST_CASE("kv-align files and configurations are validated with clear messages", "[kv_align]") {
  auto d = test::random_decoder(test::tiny_gpt2_config(), 3);
  KvAlignConfig c = KvAlignConfig::for_model(d->config());
  const fs::path dir = test::temp_dir("kv_align_bad");
  REQUIRE_THROWS_WITH(KvAlign::load(dir.string()), Catch::Contains("kv_align.json: not found"));
  KvAlign(c).save(dir.string());
  auto rewrite = [&](const std::string& from, const std::string& to) {
    std::ifstream in(dir / "kv_align.json");
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto at = s.find(from);
    REQUIRE(at != std::string::npos);
    s.replace(at, from.size(), to);
    std::ofstream(dir / "kv_align.json") << s;
  };
  rewrite("\"hidden\": 128", "\"hidden\": 64");
  REQUIRE_THROWS_WITH(KvAlign::load(dir.string()),
                      Catch::Contains("model.safetensors: tensor 'key.fc1.weight' has shape [128, 56], expected [64, 56]"));
  rewrite("\"hidden\": 64", "\"hidden\": \"wide\"");
  REQUIRE_THROWS_WITH(KvAlign::load(dir.string()), Catch::Contains("field 'hidden' must be an integer, found \"wide\""));
  rewrite("\"hidden\": \"wide\"", "\"hidden\": 128");
  rewrite("\"exact_first_layer\": true", "\"exact_first_layer\": 1");
  REQUIRE_THROWS_WITH(KvAlign::load(dir.string()), Catch::Contains("field 'exact_first_layer' must be true or false, found 1"));
  rewrite("\"format\": \"sinkflow-kv-align\"", "\"format\": \"other\"");
  REQUIRE_THROWS_WITH(KvAlign::load(dir.string()), Catch::Contains("field 'format' must be \"sinkflow-kv-align\""));
  std::ofstream(dir / "kv_align.json") << "{ truncated";
  REQUIRE_THROWS_WITH(KvAlign::load(dir.string()), Catch::Contains("kv_align.json: malformed JSON"));

  KvAlign net(c);
  ModelConfig other = d->config();
  other.n_layer = 3;
  REQUIRE_THROWS_WITH(net.check_model(other, "stream"),
                      Catch::Contains("stream: the kv-align networks were trained for n_layer = 2, the model has 3"));
  REQUIRE_THROWS_WITH(net.check_model(test::tiny_llama_config(), "stream"),
                      Catch::Contains("needs a model with learned absolute positions"));
  c10::InferenceMode guard;
  at::Tensor k = at::zeros({c.n_layer, c.n_kv_head, 2, c.d_head});
  REQUIRE_THROWS_WITH(net.realign(k, k, {4}, {1}, {0}, d.get()),
                      Catch::Contains("realign expects k and v of shape [2, 4, 1, 8] and as many tokens"));
  REQUIRE_THROWS_WITH(net.realign(k, k, {4, 5}, {1, 300}, {0, 1}, d.get()),
                      Catch::Contains("in-cache index 300 outside the networks' 256 positions"));

  StreamConfig sc;
  sc.policy = Policy::kv_align;
  REQUIRE_THROWS_WITH(StreamSession(d, sc), Catch::Contains("the kv-align policy needs its networks"));
  sc.kv_align = std::make_shared<KvAlign>(c);
  sc.cache.n_memory = 4;
  REQUIRE_THROWS_WITH(StreamSession(d, sc), Catch::Contains("the kv-align policy has no memory region"));
  fs::remove_all(dir);
}
