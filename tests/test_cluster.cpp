// Cluster sinks: k-means++ seeding, online mini-batch k-means, centroids in a KvCache's memory region.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "models/stream/cluster.h"
#include "models/cache/kv_cache.h"
#include "models/stream/stream.h"
#include "tests/test_util.h"

using namespace sinkflow;

namespace {

// G groups of seeded Gaussian blobs: `n_blob` means per group (scale 10, different per group), points with
// noise `sigma` around them.
struct Blobs {
  at::Tensor means;   // [G, n_blob, D]
  at::Tensor points;  // [G, n, D]
  at::Tensor labels;  // [G, n] int64: true blob of each point
};

Blobs make_blobs(int64_t groups, int64_t n_blob, int64_t dim, int64_t n, double sigma, uint64_t seed,
                 const at::Tensor& means = {}) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Blobs b;
  b.means = means.defined() ? means : 10.0 * at::normal(0.0, 1.0, {groups, n_blob, dim}, gen);
  b.labels = at::randint(n_blob, {groups, n}, gen, at::kLong);
  at::Tensor centre = b.means.gather(1, b.labels.unsqueeze(-1).expand({groups, n, dim}));
  b.points = centre + sigma * at::normal(0.0, 1.0, {groups, n, dim}, gen);
  return b;
}

// For each centroid of group g: the index of the nearest true mean.
std::vector<int64_t> nearest_mean(const at::Tensor& centroids, const at::Tensor& means, int64_t g) {
  at::Tensor d = at::cdist(centroids[g].to(at::kDouble), means[g].to(at::kDouble));  // [k, n_blob]
  at::Tensor a = d.argmin(1);
  return std::vector<int64_t>(a.data_ptr<int64_t>(), a.data_ptr<int64_t>() + a.numel());
}

double max_dist_to_mean(const at::Tensor& centroids, const at::Tensor& means, int64_t g) {
  at::Tensor d = at::cdist(centroids[g].to(at::kDouble), means[g].to(at::kDouble));
  return std::get<0>(d.min(1)).max().item<double>();
}

using V = std::vector<int64_t>;

at::Tensor longs(const V& v) { return at::tensor(v, at::kLong); }

}  // namespace

TEST_CASE("k-means++ and online k-means find separated blobs in every group", "[cluster]") {
  const int64_t G = 2, K = 4, D = 8;
  Blobs first = make_blobs(G, K, D, 64, 0.3, 1);

  SECTION("k-means++ seeding puts one centre in each blob") {
    std::mt19937_64 rng(7);
    at::Tensor c = kmeans_pp_init(first.points, K, rng);
    REQUIRE(c.sizes() == at::IntArrayRef({G, K, D}));
    REQUIRE(c.scalar_type() == at::kFloat);
    for (int64_t g = 0; g < G; ++g) {
      V owner = nearest_mean(c, first.means, g);
      std::sort(owner.begin(), owner.end());
      CHECK(owner == V{0, 1, 2, 3});
    }
  }

  SECTION("online k-means: centroids at the true means, assign() is the true partition") {
    OnlineKMeans km(G, K, D, 3);
    CHECK_FALSE(km.ready());
    km.update(first.points.narrow(1, 0, 2));  // fewer than k points: buffered
    CHECK_FALSE(km.ready());
    CHECK_FALSE(km.centroids().defined());
    km.update(first.points.narrow(1, 2, 62));
    REQUIRE(km.ready());
    for (int64_t batch = 0; batch < 10; ++batch) km.update(make_blobs(G, K, D, 50, 0.3, 100 + batch, first.means).points);
    CHECK(km.n_seen() == 64 + 500);
    at::Tensor c = km.centroids();
    REQUIRE(c.sizes() == at::IntArrayRef({G, K, D}));
    REQUIRE(km.counts().sizes() == at::IntArrayRef({G, K}));
    CHECK(km.counts().sum(1).equal(at::full({G}, 564, at::kLong)));
    for (int64_t g = 0; g < G; ++g) {
      V owner = nearest_mean(c, first.means, g);
      std::vector<int64_t> sorted = owner;
      std::sort(sorted.begin(), sorted.end());
      REQUIRE(sorted == V{0, 1, 2, 3});  // every true blob has exactly one centroid
      // ~560 points over 4 blobs, sigma 0.3 in 8-D: the running means are ~0.05 from the true ones
      CHECK(max_dist_to_mean(c, first.means, g) < 0.2);

      Blobs test = make_blobs(G, K, D, 200, 0.3, 999, first.means);
      at::Tensor a = km.assign(test.points);
      REQUIRE(a.sizes() == at::IntArrayRef({G, 200}));
      // centroid j stands for blob owner[j]: mapping the labels must give the true partition exactly
      at::Tensor mapped = longs(owner).index_select(0, a[g]);
      CHECK(mapped.equal(test.labels[g]));
    }
  }

  SECTION("the same seed gives the same centroids") {
    OnlineKMeans a(G, K, D, 5), b(G, K, D, 5);
    for (int64_t batch = 0; batch < 3; ++batch) {
      at::Tensor p = make_blobs(G, K, D, 20, 0.3, 50 + batch, first.means).points;
      a.update(p);
      b.update(p);
    }
    CHECK(a.centroids().equal(b.centroids()));
    CHECK(a.counts().equal(b.counts()));
  }
}

TEST_CASE("k-means++ seeding picks k distinct input points", "[cluster]") {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
  at::Tensor points = at::normal(0.0, 1.0, {3, 10, 5}, gen);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::mt19937_64 rng(seed);
    at::Tensor c = kmeans_pp_init(points, 10, rng);  // k == n: a permutation of the points
    for (int64_t g = 0; g < 3; ++g) {
      std::set<int64_t> found;
      for (int64_t j = 0; j < 10; ++j) {
        at::Tensor hit = (points[g] - c[g][j]).abs().sum(1).eq(0).nonzero();
        REQUIRE(hit.numel() == 1);
        found.insert(hit.item<int64_t>());
      }
      CHECK(found.size() == 10);
    }
  }
  // duplicated points: still k distinct indices (the centres are the duplicates' values)
  at::Tensor same = at::ones({1, 6, 2});
  std::mt19937_64 rng(1);
  CHECK(kmeans_pp_init(same, 6, rng).equal(at::ones({1, 6, 2})));

  std::mt19937_64 a(9), b(9);
  CHECK(kmeans_pp_init(points, 4, a).equal(kmeans_pp_init(points, 4, b)));

  std::mt19937_64 r(0);
  REQUIRE_THROWS_WITH(kmeans_pp_init(points.narrow(1, 0, 3), 4, r),
                      Catch::Contains("n=3 points per group, expected at least k=4"));
  REQUIRE_THROWS_WITH(kmeans_pp_init(points, 0, r), Catch::Contains("k must be >= 1, found 0"));
  REQUIRE_THROWS_WITH(kmeans_pp_init(points[0], 2, r), Catch::Contains("shape [G, n, D], found [10, 5]"));
}

TEST_CASE("online k-means: hand-worked mini-batch steps are running means", "[cluster]") {
  SECTION("1-D, k=2") {
    OnlineKMeans km(1, 2, 1, 0);
    km.update(at::tensor({0.0f, 10.0f}).view({1, 2, 1}));  // k points: seeded with both
    REQUIRE(km.ready());
    auto sorted = [&] {
      at::Tensor c = km.centroids().view({2});
      at::Tensor order = c.argsort();
      return std::make_pair(c.index_select(0, order), km.counts().view({2}).index_select(0, order));
    };
    CHECK(sorted().first.equal(at::tensor({0.0f, 10.0f})));
    CHECK(sorted().second.equal(longs({1, 1})));
    km.update(at::tensor({1.0f, 2.0f, 12.0f}).view({1, 3, 1}));
    // centre 0 (count 1) takes 1 and 2: (0 + 1 + 2) / 3 = 1; centre 10 takes 12: (10 + 12) / 2 = 11
    CHECK(sorted().first.equal(at::tensor({1.0f, 11.0f})));
    CHECK(sorted().second.equal(longs({3, 2})));
    const int64_t low = km.centroids()[0][0][0].item<float>() < 5.0f ? 0 : 1;  // the centre at 1
    CHECK(km.assign(at::tensor({5.9f, 6.1f}).view({1, 2, 1})).equal(longs({low, 1 - low}).view({1, 2})));
  }

  SECTION("k=1: the centroid is the mean of everything seen, in every group") {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
    OnlineKMeans km(3, 1, 4, 0);
    std::vector<at::Tensor> all;
    for (int64_t n : {1, 5, 0, 17, 3}) {
      at::Tensor p = at::normal(0.0, 1.0, {3, n, 4}, gen).to(at::kDouble);  // any floating dtype
      all.push_back(p);
      km.update(p);
    }
    at::Tensor mean = at::cat(all, 1).mean(1, /*keepdim=*/true);
    CHECK(test::max_abs_diff(km.centroids(), mean) < 1e-5);
    CHECK(km.counts().equal(at::full({3, 1}, 26, at::kLong)));
  }
}

TEST_CASE("cluster memory: centroids of evicted K/V fill the memory region of a real cache", "[cluster]") {
  c10::InferenceMode guard;
  const ModelConfig mc = test::tiny_llama_config();
  auto decoder = test::random_decoder(mc, 17);
  StreamConfig sc;
  sc.policy = Policy::sink;
  sc.cache.n_sink = 2;
  sc.cache.n_memory = 4;
  sc.cache.n_recent = 8;
  sc.cache.evict_kv = true;
  sc.prefill_block = 3;
  StreamSession session(decoder, sc);
  KvCache& cache = session.cache();
  ClusterMemory memory(mc.n_layer, mc.n_kv_head, mc.d_head, 4, 11);
  REQUIRE(memory.k() == 4);

  std::vector<EvictedSpan> evicted;
  session.feed(test::random_tokens(12, mc.vocab_size, 1), &evicted);  // 2 evicted: not enough for k=4
  int64_t n_evicted = 0;
  for (const auto& span : evicted) {
    memory.observe(span);
    n_evicted += static_cast<int64_t>(span.tokens.size());
  }
  REQUIRE(n_evicted == 2);
  CHECK_FALSE(memory.ready());
  memory.refresh(cache);  // not ready: leaves the cache alone
  CHECK(cache.n_memory_used() == 0);
  REQUIRE_THROWS_WITH(memory.write(2), Catch::Contains("no centroids yet (2 evicted tokens observed, expected at least k=4)"));

  evicted.clear();
  session.feed(test::random_tokens(20, mc.vocab_size, 2), &evicted);
  for (const auto& span : evicted) memory.observe(span);
  REQUIRE(memory.ready());
  memory.refresh(cache);
  CHECK(cache.n_memory_used() == 4);
  CHECK(cache.n_cached() == 2 + 4 + 8);
  for (int64_t s = 2; s < 6; ++s) {
    CHECK(cache.slot_used(s));
    CHECK(cache.slot_chunk(s) == ClusterMemory::kChunkId);
    CHECK(cache.slot_token(s) == -1);
  }
  CHECK(cache.slot_position(2) == 0);
  CHECK(cache.slot_position(5) == 3);

  // the write: key and value halves of each centroid, in the span's dtype; the cache's values are exactly them
  MemoryWrite w = memory.write(2);
  CHECK(w.slots == V{2, 3, 4, 5});
  CHECK(w.tokens == V{-1, -1, -1, -1});
  CHECK(w.positions == V{0, 1, 2, 3});
  CHECK(w.chunk_id == ClusterMemory::kChunkId);
  REQUIRE(w.kv.sizes() == at::IntArrayRef({mc.n_layer, 2, mc.n_kv_head, 4, mc.d_head}));
  CHECK(w.kv.scalar_type() == at::kFloat);
  at::Tensor c = memory.kmeans().centroids().view({mc.n_layer, mc.n_kv_head, 4, 2 * mc.d_head});
  CHECK(w.kv.select(1, 0).equal(c.narrow(3, 0, mc.d_head)));
  CHECK(w.kv.select(1, 1).equal(c.narrow(3, mc.d_head, mc.d_head)));
  CHECK(cache.values().narrow(2, 2, 4).equal(w.kv.select(1, 1)));

  // streaming on: the centroids stay, the window slides; refreshing never grows the region
  for (int round = 0; round < 3; ++round) {
    evicted.clear();
    at::Tensor logits = session.feed(test::random_tokens(5, mc.vocab_size, 10 + round), &evicted);
    CHECK(logits.isfinite().all().item<bool>());
    for (const auto& span : evicted) memory.observe(span);
    memory.refresh(cache);
    CHECK(cache.n_memory_used() == 4);
    CHECK(cache.n_cached() == 2 + 4 + 8);
    CHECK(cache.free_memory_slots().empty());
  }
  CHECK(memory.kmeans().counts().sum(1).equal(at::full({mc.n_layer * mc.n_kv_head}, 2 + 20 + 15, at::kLong)));

  // a cache whose memory region is not k slots
  CacheConfig other;
  other.n_sink = 2;
  other.n_memory = 3;
  other.n_recent = 8;
  other.evict_kv = true;
  auto wrong = decoder->make_cache(other);
  REQUIRE_THROWS_WITH(memory.refresh(*wrong),
                      Catch::Contains("the cache has n_memory=3 memory slots, expected k=4"));
}

TEST_CASE("cluster: bad arguments and shapes are named", "[cluster]") {
  REQUIRE_THROWS_WITH(OnlineKMeans(2, 0, 8, 0), Catch::Contains("k (centres per group) must be >= 1, found 0"));
  REQUIRE_THROWS_WITH(OnlineKMeans(0, 2, 8, 0), Catch::Contains("groups must be >= 1, found 0"));
  REQUIRE_THROWS_WITH(OnlineKMeans(2, 2, 0, 0), Catch::Contains("dim must be >= 1, found 0"));

  OnlineKMeans km(2, 3, 8, 0);
  REQUIRE_THROWS_WITH(km.update(at::zeros({2, 5, 7})),
                      Catch::Contains("points must have shape [2, n, 8] (groups, points, dim)") &&
                          Catch::Contains("found [2, 5, 7]"));
  REQUIRE_THROWS_WITH(km.update(at::zeros({3, 5, 8})), Catch::Contains("found [3, 5, 8]"));
  REQUIRE_THROWS_WITH(km.update(at::zeros({2, 8})), Catch::Contains("found [2, 8]"));
  REQUIRE_THROWS_WITH(km.update(at::zeros({2, 5, 8}, at::kLong)), Catch::Contains("floating dtype, found [2, 5, 8] Long"));
  REQUIRE_THROWS_WITH(km.assign(at::zeros({2, 5, 8})), Catch::Contains("no centres yet (0 points per group seen"));

  REQUIRE_THROWS_WITH(ClusterMemory(2, 2, 8, 0), Catch::Contains("n_memory (the number of centroids k) must be >= 1, found 0"));
  REQUIRE_THROWS_WITH(ClusterMemory(2, 0, 8, 4), Catch::Contains("n_kv_head must be >= 1, found 0"));

  ClusterMemory memory(2, 2, 8, 4);
  EvictedSpan no_kv;
  no_kv.tokens = {5, 6};
  no_kv.positions = {10, 11};
  REQUIRE_THROWS_WITH(memory.observe(no_kv), Catch::Contains("enable evict_kv"));
  memory.observe(EvictedSpan{});  // nothing evicted: ignored

  EvictedSpan bad;
  bad.tokens = {5, 6};
  bad.positions = {10, 11};
  bad.kv = at::zeros({2, 2, 3, 2, 8});
  REQUIRE_THROWS_WITH(memory.observe(bad),
                      Catch::Contains("kv must be a floating tensor of shape [2, 2, 2, 2, 8] "
                                      "(n_layer, k/v, n_kv_head, tokens, d_head), found [2, 2, 3, 2, 8]"));
  bad.kv = at::zeros({2, 2, 2, 3, 8});  // 3 rows for 2 tokens
  REQUIRE_THROWS_WITH(memory.observe(bad), Catch::Contains("found [2, 2, 2, 3, 8]"));
  bad.kv = at::zeros({2, 2, 2, 2, 8}, at::kHalf);
  memory.observe(bad);  // half precision is fine
  CHECK_FALSE(memory.ready());
  memory.observe(bad);
  REQUIRE(memory.ready());
  CHECK(memory.write(0).kv.scalar_type() == at::kHalf);
  REQUIRE_THROWS_WITH(memory.write(-1), Catch::Contains("first_slot must be >= 0, found -1"));
}

TEST_CASE("the cluster policy keeps exactly n_memory centroids between the sinks and the window", "[cluster]") {
  c10::InferenceMode guard;
  for (const ModelConfig& mc : {sinkflow::test::tiny_llama_config(), sinkflow::test::tiny_gpt2_config()}) {
    auto d = sinkflow::test::random_decoder(mc, 5);
    StreamConfig sc;
    sc.policy = Policy::cluster;
    sc.cache.n_sink = 2;
    sc.cache.n_memory = 3;
    sc.cache.n_recent = 8;
    sc.cache.evict_block = 2;
    StreamSession s(d, sc);
    StreamConfig plain = sc;
    plain.policy = Policy::sink;
    StreamSession p(d, plain);
    const auto tokens = sinkflow::test::random_tokens(40, mc.vocab_size, 3);
    for (size_t i = 0; i < tokens.size(); ++i) {
      at::Tensor a = s.feed({tokens[i]}), b = p.feed({tokens[i]});
      // Until 3 tokens were evicted there are no centroids: the policy is the sink policy, bit for bit.
      if (s.tokens_evicted() < 3) REQUIRE(sinkflow::test::max_abs_diff(a, b) == 0.0);
      REQUIRE(at::isfinite(a).all().item<bool>());
    }
    CHECK(s.tokens_evicted() == p.tokens_evicted());
    CHECK(s.cache().n_memory_used() == 3);
    CHECK(s.cache().n_cached() == 2 + 3 + s.cache().n_recent_used());
    for (int64_t slot = 2; slot < 5; ++slot) CHECK(s.cache().slot_chunk(slot) == ClusterMemory::kChunkId);
    CHECK(p.cache().n_memory_used() == 0);
    sc.cache.n_memory = 0;
    REQUIRE_THROWS_WITH(StreamSession(d, sc), Catch::Contains("n_memory (the number of centroids) must be > 0, found 0"));
  }
}
