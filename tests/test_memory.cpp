// Memory store: vector indexes (hnsw vs the brute-force oracle), the hash embedder, the chunker, the persistent
// chunk store (reopen, torn writes, corrupt files) and diverse selection.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>
#include <unistd.h>

#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/memory/vector_index.h"
#include "tests/memory_test_util.h"

using namespace sinkflow;
using namespace sinkflow::memory_test;
namespace fs = std::filesystem;

namespace {

std::vector<float> gaussian(int64_t n, int64_t dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> v(size_t(n * dim));
  for (auto& x : v) x = g(rng);
  return v;
}

bool sorted_by_score(const std::vector<SearchHit>& hits) {
  for (size_t i = 1; i < hits.size(); ++i)
    if (hits[i - 1].score < hits[i].score) return false;
  return true;
}

bool same_tensor_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0;
}

void require_same_chunk(const Chunk& a, const Chunk& b) {
  REQUIRE(a.id == b.id);
  REQUIRE(a.stream_id == b.stream_id);
  REQUIRE(a.n_overlap == b.n_overlap);
  REQUIRE(a.tokens == b.tokens);
  REQUIRE(a.positions == b.positions);
  REQUIRE(a.text == b.text);
  REQUIRE(same_tensor_bits(a.kv, b.kv));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Vector indexes

TEST_CASE("brute force index: hand-worked cosine scores, normalization, errors", "[memory][index]") {
  BruteForceIndex index(2);
  const float a[] = {1, 0}, b[] = {0, 2}, c[] = {3, 3}, d[] = {3, 4};
  index.add(10, a);
  index.add(11, b);
  index.add(12, c);
  index.add(13, d);
  REQUIRE(index.size() == 4);
  REQUIRE(index.name() == "brute");
  const float q[] = {5, 0};
  auto hits = index.search(q, 3);
  REQUIRE(hits.size() == 3);
  CHECK(hits[0].id == 10);
  CHECK(hits[0].score == Approx(1.0));
  CHECK(hits[1].id == 12);
  CHECK(hits[1].score == Approx(std::sqrt(0.5)));
  CHECK(hits[2].id == 13);
  CHECK(hits[2].score == Approx(0.6));
  auto v = index.vector(13);
  CHECK(v[0] == Approx(0.6));
  CHECK(v[1] == Approx(0.8));
  CHECK(index.contains(11));
  CHECK_FALSE(index.contains(99));
  CHECK(index.search(q, 0).empty());
  CHECK(index.search(q, 100).size() == 4);
  const float zero[] = {0, 0};
  CHECK(index.search(zero, 3).empty());
  REQUIRE_THROWS_WITH(index.add(12, a), Catch::Contains("id 12 is already in the index"));
  const float bad[] = {1, NAN};
  REQUIRE_THROWS_WITH(index.add(20, bad), Catch::Contains("component 1 is nan"));
  REQUIRE_THROWS_WITH(index.vector(99), Catch::Contains("id 99 is not in the index"));
  REQUIRE_THROWS_WITH(BruteForceIndex(0), Catch::Contains("dim is 0, expected >= 1"));
  // A stored zero vector scores 0.
  index.add(14, zero);
  auto all = index.search(q, 5);
  REQUIRE(all.size() == 5);
  CHECK(all[3].id == 11);  // score 0 twice: ties by id
  CHECK(all[4].id == 14);
  CHECK(all[4].score == 0.0f);
}

TEST_CASE("hnsw matches brute force: recall@5 on 2000 seeded 64-d vectors", "[memory][index]") {
  const int64_t n = 2000, dim = 64;
  auto data = gaussian(n, dim, 42);
  HnswIndex hnsw(dim);
  BruteForceIndex brute(dim);
  for (int64_t i = 0; i < n; ++i) {
    hnsw.add(i, data.data() + i * dim);
    brute.add(i, data.data() + i * dim);
  }
  REQUIRE(hnsw.size() == n);
  auto queries = gaussian(200, dim, 7);
  const double recall = recall_at(hnsw, brute, queries, dim, 5);
  CAPTURE(recall);
  REQUIRE(recall >= 0.95);
  // Scores are cosine similarities: the same as the oracle's for the same id.
  auto h = hnsw.search(queries.data(), 5);
  auto e = brute.search(queries.data(), 5);
  REQUIRE(sorted_by_score(h));
  REQUIRE(h[0].id == e[0].id);
  REQUIRE(h[0].score == Approx(e[0].score).margin(1e-5));
  REQUIRE_THROWS_WITH(hnsw.add(5, data.data()), Catch::Contains("id 5 is already in the index"));
}

TEST_CASE("hnsw grows past its initial capacity and keeps every vector findable", "[memory][index]") {
  const int64_t n = 1000, dim = 32;
  HnswParams p;
  p.initial_capacity = 16;
  HnswIndex index(dim, p);
  auto data = gaussian(n, dim, 3);
  for (int64_t i = 0; i < n; ++i) index.add(i, data.data() + i * dim);
  REQUIRE(index.size() == n);
  REQUIRE(index.capacity() == 1024);  // 16 doubled six times
  int self_found = 0;
  for (int64_t i = 0; i < n; ++i) {
    REQUIRE(index.contains(i));
    auto v = index.vector(i);
    auto u = normalized(data.data() + i * dim, dim);
    REQUIRE(v == u);
    auto hits = index.search(data.data() + i * dim, 1);
    self_found += hits.size() == 1 && hits[0].id == i;
  }
  REQUIRE(self_found == n);
}

TEST_CASE("hnsw: one thread adds while another searches", "[memory][index]") {
  const int64_t n = 3000, dim = 64;
  HnswParams p;
  p.initial_capacity = 64;  // several resizes happen under the readers
  p.ef_search = 128;
  HnswIndex index(dim, p);
  auto data = gaussian(n, dim, 11);
  auto queries = gaussian(50, dim, 12);
  std::atomic<bool> done{false};
  std::atomic<int64_t> searches{0}, bad{0};
  std::thread writer([&] {
    for (int64_t i = 0; i < n; ++i) index.add(i, data.data() + i * dim);
    done = true;
  });
  std::thread reader([&] {
    int64_t q = 0;
    do {
      auto hits = index.search(queries.data() + (q % 50) * dim, 5);
      if (!sorted_by_score(hits)) ++bad;
      for (const auto& h : hits)
        if (h.id < 0 || h.id >= n || !index.contains(h.id) || index.vector(h.id).size() != size_t(dim)) ++bad;
      ++q;
      ++searches;
    } while (!done);
  });
  writer.join();
  reader.join();
  CAPTURE(searches.load());
  REQUIRE(searches > 0);
  REQUIRE(bad == 0);
  REQUIRE(index.size() == n);
  BruteForceIndex brute(dim);
  for (int64_t i = 0; i < n; ++i) brute.add(i, data.data() + i * dim);
  const double recall = recall_at(index, brute, queries, dim, 5);
  CAPTURE(recall);
  REQUIRE(recall >= 0.95);
  // Inserts are serialized, so the searches did not perturb the graph: same results as a quiet build.
  HnswIndex quiet(dim, p);
  for (int64_t i = 0; i < n; ++i) quiet.add(i, data.data() + i * dim);
  for (int64_t q = 0; q < 50; ++q)
    require_same_hits(index.search(queries.data() + q * dim, 10), quiet.search(queries.data() + q * dim, 10));
}

TEST_CASE("index files: save/load round trip, tag, corruption is reported", "[memory][index]") {
  TempDir tmp;
  const int64_t n = 300, dim = 16;
  auto data = gaussian(n, dim, 5);
  auto queries = gaussian(20, dim, 6);
  HnswIndex hnsw(dim);
  BruteForceIndex brute(dim);
  for (int64_t i = 0; i < n; ++i) {
    hnsw.add(i * 3, data.data() + i * dim);
    brute.add(i * 3, data.data() + i * dim);
  }
  const std::string hp = tmp / "h.bin", bp = tmp / "b.bin";
  hnsw.save(hp, 0xABCDEF);
  brute.save(bp, 77);
  uint64_t tag = 0;
  auto h2 = HnswIndex::load(hp, dim, {}, &tag);
  REQUIRE(tag == 0xABCDEF);
  auto b2 = BruteForceIndex::load(bp, dim, &tag);
  REQUIRE(tag == 77);
  REQUIRE(h2->size() == n);
  REQUIRE(b2->size() == n);
  for (int64_t q = 0; q < 20; ++q) {
    require_same_hits(hnsw.search(queries.data() + q * dim, 7), h2->search(queries.data() + q * dim, 7));
    require_same_hits(brute.search(queries.data() + q * dim, 7), b2->search(queries.data() + q * dim, 7));
  }
  REQUIRE(h2->vector(30) == hnsw.vector(30));
  // The loaded index keeps growing.
  const float extra[16] = {1};
  h2->add(100000, extra);
  REQUIRE(h2->search(extra, 1)[0].id == 100000);

  REQUIRE_THROWS_WITH(HnswIndex::load(hp, 32), Catch::Contains("h.bin: dim is 16, expected 32"));
  REQUIRE_THROWS_WITH(BruteForceIndex::load(hp, dim), Catch::Contains("magic is SFHNSW01, expected SFBRUT01"));
  REQUIRE_THROWS_WITH(HnswIndex::load(tmp / "missing.bin", dim), Catch::Contains("missing.bin: cannot open"));
  auto bytes = read_bytes(hp);
  auto flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  write_bytes(hp, flipped);
  REQUIRE_THROWS_WITH(HnswIndex::load(hp, dim), Catch::Contains("payload CRC32"));
  auto cut = bytes;
  cut.resize(bytes.size() - 5);
  write_bytes(hp, cut);
  REQUIRE_THROWS_WITH(HnswIndex::load(hp, dim), Catch::Contains("payload size"));
  write_bytes(hp, {1, 2, 3});
  REQUIRE_THROWS_WITH(HnswIndex::load(hp, dim), Catch::Contains("file size is 3 bytes"));
}

// ---------------------------------------------------------------------------------------------------------------
// Hash embedder

TEST_CASE("hash embedder: tokens, fixed hash, determinism, unit norm, zero vector", "[memory][embedder]") {
  REQUIRE(hash_tokens("Don't STOP 'believing' \xE2\x80\x94 San Francisco\xE2\x80\x99s 3rd-best, ok?") ==
          std::vector<std::string>{"don't", "stop", "believing", "san", "francisco's", "3rd", "best", "ok"});
  REQUIRE(hash_tokens("caf\xC3\xA9\xC2\xA0na\xC3\xAFve") == std::vector<std::string>{"caf\xC3\xA9", "na\xC3\xAFve"});
  // FNV-1a 64 + splitmix64 finaliser, values computed independently.
  REQUIRE(hash_feature("san") == 0x6155d58f6babdd19ull);
  REQUIRE(hash_feature("san francisco") == 0x09ff74a8d30f5530ull);

  HashEmbedder e;
  REQUIRE(e.name() == "hash-384");
  REQUIRE(e.dim() == 384);
  REQUIRE(HashEmbedder(64).name() == "hash-64");
  REQUIRE_THROWS_WITH(HashEmbedder(0), Catch::Contains("dim is 0, expected >= 1"));

  const std::string text = "The quick brown fox jumps over the lazy dog near the river bank.";
  auto v1 = e.embed(text);
  auto v2 = HashEmbedder(384).embed(text);
  REQUIRE(v1 == v2);
  double ss = 0;
  for (float x : v1) ss += double(x) * x;
  REQUIRE(ss == Approx(1.0).epsilon(1e-6));
  // One content word: a single signed unit entry in the bucket of its hash.
  auto one = e.embed("what is the SAN?");
  int nonzero = 0;
  for (float x : one) nonzero += x != 0.0f;
  REQUIRE(nonzero == 1);
  REQUIRE(one[0x6155d58f6babdd19ull % 384] == 1.0f);

  for (const char* empty : {"", "   ", "?!...", "What is the", "it is what it is"}) {
    auto z = e.embed(empty);
    REQUIRE(z.size() == 384);
    REQUIRE(std::all_of(z.begin(), z.end(), [](float x) { return x == 0.0f; }));
  }
  auto batch = e.embed_batch({text, "", "San Francisco"});
  REQUIRE(batch.size() == 3);
  REQUIRE(batch[0] == v1);
  REQUIRE(batch[2] == e.embed("san francisco!"));
}

TEST_CASE("hash embedder: a question ranks the paragraph sharing its content words first", "[memory][embedder]") {
  const std::vector<std::string> paragraphs = {
      "The committee met on Tuesday to review the budget for the new library wing and approved the plans.",
      "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
      "Photosynthesis converts light energy into chemical energy stored in glucose molecules inside plants.",
      "He sailed from Lisbon in the spring, carrying spices, maps and letters for the merchants of Antwerp.",
      "To bake bread, mix flour, water, salt and yeast, knead the dough, let it rise, and bake it hot."};
  HashEmbedder e(384);
  BruteForceIndex index(384);
  for (size_t i = 0; i < paragraphs.size(); ++i) index.add(int64_t(i), e.embed(paragraphs[i]).data());
  auto q = e.embed("What is the best thing to do in San Francisco?");
  auto hits = index.search(q.data(), 5);
  REQUIRE(hits.size() == 5);
  REQUIRE(hits[0].id == 1);
  REQUIRE(hits[0].score > 0.4f);
  REQUIRE(hits[1].score < hits[0].score / 2);
  auto q2 = e.embed("how do I knead dough for bread?");
  REQUIRE(index.search(q2.data(), 1)[0].id == 4);
  // A stop-word-only query is the zero vector: no hits at all.
  REQUIRE(index.search(e.embed("What is it?").data(), 5).empty());
}

// ---------------------------------------------------------------------------------------------------------------
// Chunker

namespace {

// Feeds `total` tokens in random pieces; returns every chunk (feeds + final flush).
std::vector<Chunk> chunk_randomly(Chunker& chunker, int64_t stream, const std::vector<int64_t>& tokens,
                                  const std::vector<int64_t>& positions, const at::Tensor& kv, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> piece(0, 20);
  std::vector<Chunk> out;
  int64_t at = 0;
  const int64_t n = int64_t(tokens.size());
  while (at < n) {
    const int64_t len = std::min(piece(rng), n - at);
    std::vector<int64_t> t(tokens.begin() + at, tokens.begin() + at + len);
    std::vector<int64_t> p(positions.begin() + at, positions.begin() + at + len);
    at::Tensor k = kv.defined() ? kv.narrow(3, at, len) : at::Tensor();
    for (auto& c : chunker.feed(stream, t, p, k)) out.push_back(std::move(c));
    at += len;
  }
  for (auto& c : chunker.flush()) out.push_back(std::move(c));
  return out;
}

}  // namespace

TEST_CASE("chunker: exact reconstruction with and without overlap, kv sliced along the token dim", "[memory][chunker]") {
  const int64_t n = 203;
  std::vector<int64_t> tokens(n), positions(n);
  std::mt19937_64 rng(9);
  for (int64_t i = 0; i < n; ++i) {
    tokens[size_t(i)] = int64_t(rng() % 32000);
    positions[size_t(i)] = 1000 + i;
  }
  // kv[l, s, h, t, d] = a distinct value per element: a chunk's kv must equal the source columns of its tokens.
  at::Tensor kv = at::arange(2 * 2 * 3 * n * 4, at::kFloat).reshape({2, 2, 3, n, 4});
  for (int64_t overlap : {0, 3}) {
    for (bool with_kv : {false, true}) {
      DYNAMIC_SECTION("overlap " << overlap << " kv " << with_kv) {
        const int64_t size = 7;
        Chunker chunker(size, overlap);
        auto chunks = chunk_randomly(chunker, 5, tokens, positions, with_kv ? kv : at::Tensor(), 100 + overlap);
        REQUIRE(chunker.pending() == 0);
        // 7 new tokens in the first chunk, then 7 - overlap each.
        const int64_t expected_chunks = 1 + (n - size + (size - overlap) - 1) / (size - overlap);
        REQUIRE(int64_t(chunks.size()) == expected_chunks);
        std::vector<int64_t> rebuilt_tokens, rebuilt_positions;
        for (size_t i = 0; i < chunks.size(); ++i) {
          const Chunk& c = chunks[i];
          REQUIRE(c.stream_id == 5);
          REQUIRE(c.id == -1);
          REQUIRE(c.tokens.size() == c.positions.size());
          if (i + 1 < chunks.size()) REQUIRE(int64_t(c.tokens.size()) == size);
          REQUIRE(c.n_overlap == (i == 0 ? 0 : overlap));
          if (i > 0) {
            const auto& prev = chunks[i - 1].tokens;
            REQUIRE(std::equal(c.tokens.begin(), c.tokens.begin() + c.n_overlap, prev.end() - c.n_overlap));
          }
          rebuilt_tokens.insert(rebuilt_tokens.end(), c.tokens.begin() + c.n_overlap, c.tokens.end());
          rebuilt_positions.insert(rebuilt_positions.end(), c.positions.begin() + c.n_overlap, c.positions.end());
          if (with_kv) {
            REQUIRE(c.kv.defined());
            REQUIRE(c.kv.sizes() == at::IntArrayRef({2, 2, 3, int64_t(c.tokens.size()), 4}));
            std::vector<int64_t> idx;
            for (auto p : c.positions) idx.push_back(p - 1000);
            REQUIRE(at::equal(c.kv, kv.index_select(3, at::tensor(idx, at::kLong))));
          } else {
            REQUIRE_FALSE(c.kv.defined());
          }
        }
        REQUIRE(rebuilt_tokens == tokens);
        REQUIRE(rebuilt_positions == positions);
      }
    }
  }
}

TEST_CASE("chunker: streams are independent, kv is copied, flush keeps the overlap", "[memory][chunker]") {
  Chunker chunker(4, 1);
  at::Tensor kv = at::ones({1, 2, 1, 3, 2});
  REQUIRE(chunker.feed(1, {1, 2, 3}, {0, 1, 2}, kv).empty());
  kv.fill_(7);  // the caller reuses its buffer: the pending copy must not change
  REQUIRE(chunker.feed(2, {10, 11}, {0, 1}).empty());
  auto c = chunker.feed(1, {4, 5}, {3, 4}, at::zeros({1, 2, 1, 2, 2}));
  REQUIRE(c.size() == 1);
  REQUIRE(c[0].tokens == std::vector<int64_t>{1, 2, 3, 4});
  REQUIRE(c[0].kv.narrow(3, 0, 3).eq(1).all().item<bool>());
  REQUIRE(c[0].kv.narrow(3, 3, 1).eq(0).all().item<bool>());
  REQUIRE(chunker.pending() == 3);  // 5 of stream 1, 10 11 of stream 2
  auto f = chunker.flush();
  REQUIRE(f.size() == 2);
  REQUIRE(f[0].stream_id == 1);
  REQUIRE(f[0].tokens == std::vector<int64_t>{4, 5});
  REQUIRE(f[0].n_overlap == 1);
  REQUIRE(f[1].stream_id == 2);
  REQUIRE(f[1].tokens == std::vector<int64_t>{10, 11});
  REQUIRE(chunker.flush().empty());
  // After a flush, the next chunk of stream 2 starts with the flushed chunk's last token.
  auto g = chunker.feed(2, {12, 13, 14}, {2, 3, 4});
  REQUIRE(g.size() == 1);
  REQUIRE(g[0].tokens == std::vector<int64_t>{11, 12, 13, 14});
  REQUIRE(g[0].n_overlap == 1);
}

TEST_CASE("chunker: bad input is reported", "[memory][chunker]") {
  REQUIRE_THROWS_WITH(Chunker(0, 0), Catch::Contains("chunk_size is 0, expected >= 1"));
  REQUIRE_THROWS_WITH(Chunker(4, 4), Catch::Contains("overlap is 4, expected [0, 3]"));
  Chunker chunker(4, 0);
  REQUIRE_THROWS_WITH(chunker.feed(0, {1, 2}, {1}), Catch::Contains("positions has 1 entries, expected 2"));
  REQUIRE_THROWS_WITH(chunker.feed(0, {1, 2}, {1, 2}, at::zeros({2, 2})),
                      Catch::Contains("expected 5 dims [n_layer, 2, n_kv_head, n_tok, d_head]"));
  REQUIRE_THROWS_WITH(chunker.feed(0, {1, 2}, {1, 2}, at::zeros({1, 2, 1, 3, 2})),
                      Catch::Contains("expected n_tok (dim 3) = 2"));
  chunker.feed(0, {1}, {1}, at::zeros({1, 2, 1, 1, 2}));
  REQUIRE_THROWS_WITH(chunker.feed(0, {2}, {2}), Catch::Contains("kv missing"));
  REQUIRE_THROWS_WITH(chunker.feed(0, {2}, {2}, at::zeros({1, 2, 1, 1, 3})), Catch::Contains("expected [1, 2, 1, n_tok, 2]"));
  chunker.feed(1, {1}, {1});
  REQUIRE_THROWS_WITH(chunker.feed(1, {2}, {2}, at::zeros({1, 2, 1, 1, 2})), Catch::Contains("kv given, expected none"));
}

// ---------------------------------------------------------------------------------------------------------------
// Selection

namespace {

// q ~ a; a2 is a near-duplicate of a; b is less relevant but different.
struct SelectFixture {
  BruteForceIndex index{3};
  std::vector<float> q = {1.0f, 0.0f, 0.3f};
  SelectFixture() {
    const float a[] = {1, 0, 0}, a2[] = {0.99f, 0.1f, 0}, b[] = {0.7f, 0, 0.7f}, far[] = {0, 1, 0};
    index.add(0, a);
    index.add(1, a2);
    index.add(2, b);
    index.add(3, far);
  }
  std::vector<int64_t> ids(const SelectOptions& o) const {
    std::vector<int64_t> out;
    for (const auto& h : select(index, q.data(), o)) out.push_back(h.id);
    return out;
  }
};

}  // namespace

TEST_CASE("select: top-k, MMR and farthest-point on hand-made vectors", "[memory][select]") {
  SelectFixture f;
  // Relevance: cos(q, a) = 0.958 > cos(q, a2) = 0.953 > cos(q, b) = 0.881 > cos(q, far) = 0.
  SelectOptions o;
  o.k = 2;
  REQUIRE(f.ids(o) == std::vector<int64_t>{0, 1});
  // MMR (lambda 0.5): a2 = 0.5*0.953 - 0.5*0.995 < 0, b = 0.5*0.881 - 0.5*0.707 > 0: the diverse b wins.
  o.mode = SelectOptions::Mode::mmr;
  REQUIRE(f.ids(o) == std::vector<int64_t>{0, 2});
  auto hits = select(f.index, f.q.data(), o);
  REQUIRE(hits[1].score == Approx(0.91 / (std::sqrt(0.98) * std::sqrt(1.09))).epsilon(1e-5));  // cosine, not MMR value
  o.mmr_lambda = 1.0f;  // relevance only = top-k
  REQUIRE(f.ids(o) == std::vector<int64_t>{0, 1});
  o.mmr_lambda = 0.5f;
  o.k = 3;
  REQUIRE(f.ids(o) == std::vector<int64_t>{0, 2, 3});
  // Farthest point: after a, b is farther than a2 (1 - 0.707 vs 1 - 0.995), then far.
  o.mode = SelectOptions::Mode::farthest;
  REQUIRE(f.ids(o) == std::vector<int64_t>{0, 3, 2});
  o.min_score = 0.5f;  // drops `far` (score 0)
  REQUIRE(f.ids(o) == std::vector<int64_t>{0, 2, 1});
  o.min_score = 0.9f;  // only a and a2 are relevant enough
  REQUIRE(f.ids(o) == std::vector<int64_t>{0, 1});
  // Exclude: chunks already in the cache are never returned.
  SelectOptions e;
  e.k = 2;
  e.exclude = {0};
  REQUIRE(f.ids(e) == std::vector<int64_t>{1, 2});
  e.mode = SelectOptions::Mode::mmr;
  e.exclude = {0, 2};
  REQUIRE(f.ids(e) == std::vector<int64_t>{1, 3});
  // The candidate pool: with 2 candidates MMR can only choose among the 2 nearest.
  SelectOptions c;
  c.k = 2;
  c.mode = SelectOptions::Mode::mmr;
  c.candidates = 2;
  REQUIRE(f.ids(c) == std::vector<int64_t>{0, 1});
  c.k = 0;
  REQUIRE(f.ids(c).empty());
  SelectOptions bad;
  bad.mmr_lambda = 1.5f;
  REQUIRE_THROWS_WITH(f.ids(bad), Catch::Contains("mmr_lambda is 1.5"));
  bad.mmr_lambda = 0.5f;
  bad.k = -1;
  REQUIRE_THROWS_WITH(f.ids(bad), Catch::Contains("k is -1, expected [0, 4096]"));
}

// ---------------------------------------------------------------------------------------------------------------
// ChunkStore

namespace {

const char* kTopics[] = {"harbour ships sailing",    "bread flour oven",    "planets orbit telescope",
                         "violin concerto orchestra", "glacier ice mountain", "river delta floods"};

Chunk make_chunk(int64_t i, bool with_kv) {
  Chunk c;
  c.stream_id = i % 3;
  c.n_overlap = i % 2;
  for (int64_t t = 0; t < 5 + i % 4; ++t) {
    c.tokens.push_back(1000 + i * 10 + t);
    c.positions.push_back(i * 100 + t);
  }
  c.text = "chunk " + std::to_string(i) + " about " + kTopics[i % 6] + " number" + std::to_string(i);
  if (with_kv) {
    const auto dtype = i % 3 == 0 ? at::kHalf : i % 3 == 1 ? at::kFloat : at::kBFloat16;
    c.kv = at::randn({2, 2, 1, int64_t(c.tokens.size()), 4}).to(dtype);
  }
  return c;
}

StoreOptions store_options(int64_t dim = 384) {
  StoreOptions o;
  o.embedder_name = "hash-" + std::to_string(dim);
  o.dim = dim;
  o.fsync = StoreOptions::Fsync::none;
  return o;
}

struct Filled {
  std::vector<Chunk> chunks;
  std::vector<std::vector<SearchHit>> results;  // per query
};

const std::vector<std::string> kQueries = {"ships in the harbour", "an oven for bread", "telescope planets",
                                           "chunk 17, number17", "ice"};

std::vector<std::vector<SearchHit>> run_queries(const ChunkStore& store, const HashEmbedder& e) {
  std::vector<std::vector<SearchHit>> out;
  for (const auto& q : kQueries) out.push_back(store.search(e.embed(q), 5));
  return out;
}

Filled fill(const std::string& dir, int64_t n, bool with_kv, StoreOptions options = store_options()) {
  HashEmbedder e(options.dim);
  Filled f;
  auto store = ChunkStore::open(dir, options);
  for (int64_t i = 0; i < n; ++i) {
    Chunk c = make_chunk(i, with_kv);
    REQUIRE(store->add(c, e.embed(c.text)) == i);
    c.id = i;
    f.chunks.push_back(std::move(c));
  }
  f.results = run_queries(*store, e);
  return f;
}

void require_store_matches(const ChunkStore& store, const Filled& f, size_t n_chunks) {
  REQUIRE(store.size() == int64_t(n_chunks));
  for (size_t i = 0; i < n_chunks; ++i) require_same_chunk(store.get(int64_t(i)), f.chunks[i]);
}

}  // namespace

TEST_CASE("chunk store: add 100, reopen, identical chunks and search results", "[memory][store]") {
  TempDir tmp;
  const std::string dir = tmp / "mem";
  for (auto kind : {StoreOptions::IndexKind::hnsw, StoreOptions::IndexKind::brute}) {
    fs::remove_all(dir);
    auto options = store_options();
    options.index = kind;
    Filled f = fill(dir, 100, false, options);
    REQUIRE(fs::exists(dir + "/meta.json"));
    REQUIRE(fs::exists(dir + "/index.bin"));
    LogCapture log;
    auto store = ChunkStore::open(dir, options);
    REQUIRE_FALSE(log.contains("rebuilding"));  // the saved index was used
    require_store_matches(*store, f, 100);
    HashEmbedder e(384);
    auto again = run_queries(*store, e);
    for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(again[q], f.results[q]);
    // "number17" and "chunk 17" are only in chunk 17's text.
    REQUIRE(again[3][0].id == 17);
    REQUIRE(store->embedding(17) == e.embed(f.chunks[17].text));
    REQUIRE(store->get(17, false).text == f.chunks[17].text);
    REQUIRE_THROWS_WITH(store->get(100), Catch::Contains("id 100 is not in"));
    // Resumes at the next id.
    Chunk c = make_chunk(100, false);
    REQUIRE(store->add(c, e.embed(c.text)) == 100);
  }
}

TEST_CASE("chunk store: kv round trip is bit-exact", "[memory][store]") {
  TempDir tmp;
  const std::string dir = tmp / "mem";
  Filled f = fill(dir, 12, true);
  auto store = ChunkStore::open(dir, store_options());
  require_store_matches(*store, f, 12);
  REQUIRE(store->get(0).kv.scalar_type() == at::kHalf);
  REQUIRE(store->get(1).kv.scalar_type() == at::kFloat);
  REQUIRE(store->get(2).kv.scalar_type() == at::kBFloat16);
  REQUIRE_FALSE(store->get(3, false).kv.defined());
}

TEST_CASE("chunk store: a torn or garbage tail is dropped with a warning", "[memory][store]") {
  TempDir tmp;
  const std::string dir = tmp / "mem", log_file = dir + "/chunks.log";
  Filled f = fill(dir, 100, true);
  const auto original = read_bytes(log_file);
  const auto offsets = record_offsets(log_file);
  REQUIRE(offsets.size() == 100);

  SECTION("short write: the last record loses its last bytes") {
    auto cut = original;
    cut.resize(original.size() - 5);
    write_bytes(log_file, cut);
    LogCapture log;
    auto store = ChunkStore::open(dir, store_options());
    REQUIRE(log.contains("dropping"));
    REQUIRE(log.contains("byte offset " + std::to_string(offsets[99])));
    require_store_matches(*store, f, 99);
    REQUIRE(fs::file_size(log_file) == offsets[99]);
    REQUIRE(log.contains("rebuilding"));  // the index covered 100 records
    HashEmbedder e(384);
    REQUIRE(store->add(f.chunks[99], e.embed(f.chunks[99].text)) == 99);
    store.reset();
    store = ChunkStore::open(dir, store_options());
    require_store_matches(*store, f, 100);
  }
  SECTION("only part of a header") {
    auto cut = original;
    cut.resize(offsets[99] + 10);
    write_bytes(log_file, cut);
    LogCapture log;
    auto store = ChunkStore::open(dir, store_options());
    REQUIRE(log.contains("header of 10 bytes"));
    require_store_matches(*store, f, 99);
  }
  SECTION("garbage appended") {
    auto junk = original;
    for (int i = 0; i < 37; ++i) junk.push_back(uint8_t(i * 7 + 1));
    write_bytes(log_file, junk);
    LogCapture log;
    auto store = ChunkStore::open(dir, store_options());
    REQUIRE(log.contains("dropping 37 bytes"));
    REQUIRE_FALSE(log.contains("rebuilding"));  // all 100 records kept: the index still covers them
    require_store_matches(*store, f, 100);
    REQUIRE(fs::file_size(log_file) == original.size());
  }
  SECTION("a record header with a bad CRC at the tail") {
    auto bad = original;
    bad[offsets[99] + 20] ^= 0xFF;
    write_bytes(log_file, bad);
    LogCapture log;
    auto store = ChunkStore::open(dir, store_options());
    REQUIRE(log.contains("CRC32"));
    require_store_matches(*store, f, 99);
  }
}

TEST_CASE("chunk store: a corrupt record that is not the last is an error naming its offset", "[memory][store]") {
  TempDir tmp;
  const std::string dir = tmp / "mem", log_file = dir + "/chunks.log";
  fill(dir, 30, false);
  const auto offsets = record_offsets(log_file);
  auto bytes = read_bytes(log_file);
  auto payload_byte = bytes;
  payload_byte[offsets[10] + 30] ^= 0x01;
  write_bytes(log_file, payload_byte);
  REQUIRE_THROWS_AS(ChunkStore::open(dir, store_options()), std::invalid_argument);
  REQUIRE_THROWS_WITH(ChunkStore::open(dir, store_options()),
                      Catch::Contains("chunks.log: record 10 at byte offset " + std::to_string(offsets[10]) +
                                      " is corrupt (CRC32") &&
                          Catch::Contains("a valid record follows at byte offset " + std::to_string(offsets[11])));
  REQUIRE(read_bytes(log_file) == payload_byte);  // nothing dropped
  auto length_field = bytes;
  length_field[offsets[3] + 12] = 0x7F;  // a huge payload length in the middle
  write_bytes(log_file, length_field);
  REQUIRE_THROWS_WITH(ChunkStore::open(dir, store_options()),
                      Catch::Contains("byte offset " + std::to_string(offsets[3])) && Catch::Contains("beyond the end"));
}

TEST_CASE("chunk store: a corrupt, missing or stale index.bin is rebuilt with the same results", "[memory][store]") {
  TempDir tmp;
  const std::string dir = tmp / "mem", index_file = dir + "/index.bin";
  fill(dir, 40, false);
  const auto stale = read_bytes(index_file);  // covers 40 records
  Filled f;
  {
    HashEmbedder e(384);
    auto store = ChunkStore::open(dir, store_options());
    for (int64_t i = 40; i < 100; ++i) {
      Chunk c = make_chunk(i, false);
      store->add(c, e.embed(c.text));
    }
  }
  {
    auto store = ChunkStore::open(dir, store_options());
    for (int64_t i = 0; i < 100; ++i) f.chunks.push_back(store->get(i));
    f.results = run_queries(*store, HashEmbedder(384));
  }
  HashEmbedder e(384);
  auto check_rebuilt = [&](const std::string& why) {
    LogCapture log;
    auto store = ChunkStore::open(dir, store_options());
    REQUIRE(log.contains("rebuilding " + index_file + " from 100 records"));
    REQUIRE(log.contains(why));
    require_store_matches(*store, f, 100);
    auto again = run_queries(*store, e);
    for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(again[q], f.results[q]);
  };
  SECTION("corrupt") {
    auto bytes = read_bytes(index_file);
    bytes[bytes.size() / 3] ^= 0x40;
    write_bytes(index_file, bytes);
    check_rebuilt("payload CRC32");
    // Saved again on close: the next open uses it.
    LogCapture log;
    auto store = ChunkStore::open(dir, store_options());
    REQUIRE_FALSE(log.contains("rebuilding"));
  }
  SECTION("missing") {
    fs::remove(index_file);
    check_rebuilt("missing");
  }
  SECTION("stale") {
    write_bytes(index_file, stale);
    check_rebuilt("it covers 40 records");
  }
  SECTION("other ids, with the count and digest of the log") {
    // As a writer with a bug (or the fuzz harness, which makes its checksums valid) would leave it.
    uint64_t tag;
    std::memcpy(&tag, read_bytes(index_file).data() + 24, 8);
    HnswIndex other(384, store_options().hnsw);
    for (int64_t i = 0; i < 100; ++i) other.add(1000 + i, e.embed(f.chunks[size_t(i)].text).data());
    other.save(index_file, tag);
    check_rebuilt("it does not hold id 0, one of the records it covers");
  }
  SECTION("other kind") {
    auto options = store_options();
    options.index = StoreOptions::IndexKind::brute;
    ChunkStore::open(dir, options).reset();  // rebuilds a brute index and saves it
    check_rebuilt("magic is SFBRUT01, expected SFHNSW01");
  }
}

TEST_CASE("chunk store: a chunks.log deleted beside its index files is an error naming it", "[memory][store]") {
  TempDir tmp;
  const std::string dir = tmp / "mem";
  fill(dir, 10, false);
  fs::remove(dir + "/chunks.log");
  REQUIRE_THROWS_WITH(ChunkStore::open(dir, store_options()),
                      dir + "/chunks.log: missing beside " + dir + "/index.bin (the records it indexes are lost); reset the "
                      "memory directory to start it empty");
  // Reset deletes the index files with it: the directory opens empty.
  fs::remove(dir + "/index.bin");
  CHECK(ChunkStore::open(dir, store_options())->size() == 0);
}

TEST_CASE("chunk store: wrong embedder or dim, bad input, second open", "[memory][store]") {
  TempDir tmp;
  const std::string dir = tmp / "mem";
  fill(dir, 3, false);
  auto o = store_options(32);
  REQUIRE_THROWS_AS(ChunkStore::open(dir, o), std::invalid_argument);
  REQUIRE_THROWS_WITH(ChunkStore::open(dir, o),
                      Catch::Contains("meta.json: embedder is 'hash-384', expected 'hash-32'"));
  o.embedder_name = "hash-384";
  REQUIRE_THROWS_WITH(ChunkStore::open(dir, o), Catch::Contains("meta.json: dim is 384, expected 32"));
  auto bad_meta = store_options();
  {
    fs::create_directories(tmp / "broken");
    std::ofstream(tmp / "broken/meta.json") << "{\"format\": \"sinkflow-chunk-store\", \"version\": 9}";
    REQUIRE_THROWS_WITH(ChunkStore::open(tmp / "broken", bad_meta), Catch::Contains("meta.json: version is 9, expected 1"));
    std::ofstream(tmp / "broken/meta.json") << "not json";
    REQUIRE_THROWS_WITH(ChunkStore::open(tmp / "broken", bad_meta), Catch::Contains("meta.json: malformed JSON"));
  }
  StoreOptions empty;
  REQUIRE_THROWS_WITH(ChunkStore::open(tmp / "x", empty), Catch::Contains("embedder_name is empty"));

  auto store = ChunkStore::open(dir, store_options());
  REQUIRE_THROWS_WITH(ChunkStore::open(dir, store_options()), Catch::Contains("chunks.log: locked"));
  Chunk c = make_chunk(3, false);
  REQUIRE_THROWS_WITH(store->add(c, std::vector<float>(10, 1.0f)), Catch::Contains("embedding has 10 floats, expected dim 384"));
  std::vector<float> nan_emb(384, 0.0f);
  nan_emb[5] = NAN;
  REQUIRE_THROWS_WITH(store->add(c, nan_emb), Catch::Contains("component 5 is nan"));
  c.positions.pop_back();
  REQUIRE_THROWS_WITH(store->add(c, std::vector<float>(384, 1.0f)), Catch::Contains("positions, expected"));
  c = make_chunk(3, false);
  c.kv = at::zeros({2, 2, 1, 1, 4});
  REQUIRE_THROWS_WITH(store->add(c, std::vector<float>(384, 1.0f)), Catch::Contains("chunk kv has shape [2, 2, 1, 1, 4]"));
  c.kv = at::zeros({2, 2, 1, int64_t(c.tokens.size()), 4}, at::kInt);
  REQUIRE_THROWS_WITH(store->add(c, std::vector<float>(384, 1.0f)), Catch::Contains("chunk kv has dtype Int"));
  REQUIRE(store->size() == 3);  // nothing was written
  REQUIRE_THROWS_WITH(store->search(std::vector<float>(3, 1.0f), 2), Catch::Contains("query has 3 floats, expected dim 384"));
}

TEST_CASE("chunk store: search uses select (exclude, MMR), a zero query finds nothing", "[memory][store]") {
  TempDir tmp;
  StoreOptions o;
  o.embedder_name = "test-3";
  o.dim = 3;
  o.fsync = StoreOptions::Fsync::every;
  auto store = ChunkStore::open(tmp / "mem", o);
  Chunk c = make_chunk(0, false);
  store->add(c, {1, 0, 0});
  store->add(c, {0.99f, 0.1f, 0});
  store->add(c, {0.7f, 0, 0.7f});
  const std::vector<float> q = {1.0f, 0.0f, 0.3f};
  SelectOptions s;
  s.k = 2;
  auto ids = [&](const SelectOptions& so) {
    std::vector<int64_t> out;
    for (const auto& h : store->search(q, so)) out.push_back(h.id);
    return out;
  };
  REQUIRE(ids(s) == std::vector<int64_t>{0, 1});
  s.mode = SelectOptions::Mode::mmr;
  REQUIRE(ids(s) == std::vector<int64_t>{0, 2});
  s.exclude = {0};
  REQUIRE(ids(s) == std::vector<int64_t>{1, 2});
  REQUIRE(store->search(std::vector<float>(3, 0.0f), 3).empty());
}

TEST_CASE("chunk store: one writer and concurrent readers", "[memory][store]") {
  TempDir tmp;
  auto store = ChunkStore::open(tmp / "mem", store_options());
  HashEmbedder e(384);
  const int64_t n = 400;
  std::atomic<bool> done{false};
  std::atomic<int64_t> bad{0}, reads{0};
  std::thread writer([&] {
    for (int64_t i = 0; i < n; ++i) {
      Chunk c = make_chunk(i, i % 5 == 0);
      if (store->add(c, e.embed(c.text)) != i) ++bad;
      if (i % 100 == 99) store->flush();
    }
    done = true;
  });
  std::thread reader([&] {
    std::mt19937_64 rng(1);
    do {
      const int64_t size = store->size();
      if (size > 0) {
        const int64_t id = int64_t(rng() % uint64_t(size));
        Chunk c = store->get(id);
        if (c.id != id || c.text != make_chunk(id, false).text) ++bad;
      }
      for (const auto& h : store->search(e.embed(kQueries[size_t(rng() % kQueries.size())]), 3))
        if (h.id < 0 || h.id >= n || store->get(h.id, false).id != h.id) ++bad;
      ++reads;
    } while (!done);
  });
  writer.join();
  reader.join();
  REQUIRE(bad == 0);
  REQUIRE(reads > 0);
  REQUIRE(store->size() == n);
}

// ---------------------------------------------------------------------------------------------------------------
// Benchmark (figures printed, never asserted)

TEST_CASE("bench_index: a small run returns sane figures", "[memory][bench]") {
  auto r = bench_index(500, 16, 50, 1);
  REQUIRE(r.n == 500);
  REQUIRE(r.recall_queries == 50);
  REQUIRE(r.insert_per_s > 0);
  REQUIRE(r.query_p99_ms >= r.query_p50_ms);
  REQUIRE(r.recall_at_10 >= 0.9);
}

TEST_CASE("bench_index: hnsw at 100k x 384", "[memory][bench][.slow]") {
  auto r = bench_index(100000, 384, 1000, 1);
  std::printf("bench_index n=%lld dim=%lld: build %.1f s, %.0f inserts/s; query (k=10, ef=64) p50 %.3f ms, p99 %.3f ms, "
              "mean %.3f ms; recall@10 %.3f over %lld queries\n",
              (long long)r.n, (long long)r.dim, r.build_s, r.insert_per_s, r.query_p50_ms, r.query_p99_ms,
              r.query_mean_ms, r.recall_at_10, (long long)r.recall_queries);
  REQUIRE(r.recall_at_10 > 0.0);
}
