// Memory without end: int8 hnsw storage, memory-mapped sealed segments, the chunk store's on-demand reads, and
// the rebuild of every derived file (index.bin, segment-NNNNNN.bin) when it is missing, truncated, corrupt or
// stale.
#include <ATen/ATen.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/memory/int8_dot.h"
#include "models/memory/memory_dir.h"
#include "models/memory/segmented_index.h"
#include "models/memory/vector_index.h"

#undef CHECK
#include <catch2/catch.hpp>

#include "tests/memory_test_util.h"

using namespace sinkflow;
using namespace sinkflow::memory_test;
namespace fs = std::filesystem;

namespace {

// Clustered vectors (centre + 0.5 * noise, 20 per centre), as embeddings of text are.
std::vector<float> clustered(int64_t n, int64_t dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int64_t n_centres = std::max<int64_t>(1, n / 20);
  std::vector<float> centres(size_t(n_centres * dim));
  for (auto& x : centres) x = g(rng);
  std::vector<float> v(size_t(n * dim));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < dim; ++d) v[size_t(i * dim + d)] = centres[size_t((i % n_centres) * dim + d)] + 0.5f * g(rng);
  return v;
}

HnswParams i8_params() {
  HnswParams p;
  p.storage = HnswParams::Storage::i8;
  return p;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// int8 storage and the mapped index

TEST_CASE("int8 dot: every kernel gives the portable loop's sum, extremes, dims 1 to 1024, unaligned",
          "[memory][segments][int8dot]") {
  const int8_t a[3] = {1, -2, 3}, b[3] = {4, 5, -6};
  CHECK(int8_dot(Int8DotKernel::portable, a, b, 3) == -24);  // 4 - 10 - 18
  CHECK(int8_dot(a, b, 3) == -24);
  std::vector<Int8DotKernel> fast;
  for (auto k : {Int8DotKernel::avx512bw, Int8DotKernel::avx512vnni})
    if (int8_dot_supported(k)) fast.push_back(k);
  if (fast.empty()) WARN("no AVX-512 kernel on this CPU: only the portable loop is checked");
  std::mt19937_64 rng(20);
  std::uniform_int_distribution<int> code(-128, 127);
  const size_t max_n = 1024;
  std::vector<int8_t> x(max_n + 64), y(max_n + 64);
  // Fills x and y: 0 random codes, 1 all 127 x 127 (the largest sum of stored codes), 2 -127 x 127, 3 -128 x -128
  // (the largest of int8's whole range), 4 random codes at the extremes -128, -127, 127.
  auto fill = [&](int pattern) {
    const int8_t ends[3] = {-128, -127, 127};
    for (size_t i = 0; i < x.size(); ++i) {
      switch (pattern) {
        case 0: x[i] = int8_t(code(rng)), y[i] = int8_t(code(rng)); break;
        case 1: x[i] = 127, y[i] = 127; break;
        case 2: x[i] = -127, y[i] = 127; break;
        case 3: x[i] = -128, y[i] = -128; break;
        default: x[i] = ends[rng() % 3], y[i] = ends[rng() % 3]; break;
      }
    }
  };
  int64_t checked = 0;
  for (int pattern = 0; pattern < 5; ++pattern) {
    for (size_t n = 0; n <= max_n; ++n) {
      fill(pattern);
      const size_t ox = rng() % 64, oy = rng() % 64;  // any alignment
      if (ox + n > x.size() || oy + n > y.size()) continue;
      int64_t want = 0;  // in 64 bits: the portable loop itself is checked too
      for (size_t i = 0; i < n; ++i) want += int64_t(x[ox + i]) * int64_t(y[oy + i]);
      if (int8_dot(Int8DotKernel::portable, x.data() + ox, y.data() + oy, n) != want) {
        FAIL("portable, pattern " << pattern << ", n " << n);
      }
      for (auto k : fast) {
        const int32_t got = int8_dot(k, x.data() + ox, y.data() + oy, n);
        if (got != want)
          FAIL(int8_dot_kernel_name(k) << ", pattern " << pattern << ", n " << n << ": " << got << " != " << want);
      }
      if (int8_dot(x.data() + ox, y.data() + oy, n) != want) FAIL("best kernel, pattern " << pattern << ", n " << n);
      ++checked;
    }
  }
  CHECK(checked > 4000);
  for (auto k : {Int8DotKernel::portable, Int8DotKernel::avx512bw, Int8DotKernel::avx512vnni})
    if (!int8_dot_supported(k)) CHECK_THROWS_WITH(int8_dot(k, a, b, 3), Catch::Contains("not supported by this CPU"));
}

TEST_CASE("hnsw i8: recall against brute force, vectors within the code's resolution, save/load", "[memory][segments]") {
  const int64_t dim = 48, n = 3000;
  const auto data = clustered(n, dim, 1);
  const auto queries = clustered(50, dim, 1);  // the same centres: queries near stored points
  HnswIndex i8(dim, i8_params());
  BruteForceIndex brute(dim);
  for (int64_t i = 0; i < n; ++i) {
    i8.add(i, data.data() + i * dim);
    brute.add(i, data.data() + i * dim);
  }
  CHECK(recall_at(i8, brute, queries, dim, 10) >= 0.9);
  // The stored vector is the unit vector to within half a code step (scale / 2) per component.
  const auto exact = brute.vector(7), approx = i8.vector(7);
  float max_abs = 0, max_err = 0;
  for (int64_t d = 0; d < dim; ++d) {
    max_abs = std::max(max_abs, std::abs(exact[size_t(d)]));
    max_err = std::max(max_err, std::abs(exact[size_t(d)] - approx[size_t(d)]));
  }
  CHECK(max_err <= max_abs / 127.0f / 2.0f + 1e-6f);
  TempDir tmp("sinkflow_test_segments_");
  i8.save(tmp / "i8.bin", 42);
  {
    HnswIndex f32(dim);
    for (int64_t i = 0; i < 100; ++i) f32.add(i, data.data() + i * dim);
    f32.save(tmp / "f32.bin");
    HnswIndex small(dim, i8_params());
    for (int64_t i = 0; i < 100; ++i) small.add(i, data.data() + i * dim);
    small.save(tmp / "i8-100.bin");
    // int8 codes and a scale instead of floats: 3 * dim - 4 bytes less per element.
    CHECK(read_bytes(tmp / "f32.bin").size() - read_bytes(tmp / "i8-100.bin").size() == 100 * size_t(3 * dim - 4));
  }
  uint64_t tag = 0;
  auto loaded = HnswIndex::load(tmp / "i8.bin", dim, {}, &tag);  // storage comes from the file
  CHECK(tag == 42);
  CHECK(loaded->params().storage == HnswParams::Storage::i8);
  for (int64_t q = 0; q < 50; ++q) require_same_hits(loaded->search(queries.data() + q * dim, 10), i8.search(queries.data() + q * dim, 10));
  CHECK(HnswIndex::bytes_per_element(384, i8_params()) < HnswIndex::bytes_per_element(384, HnswParams{}) - 1000);
}

TEST_CASE("mapped hnsw: searches the saved graph in place, same hits as hnswlib", "[memory][segments]") {
  const int64_t dim = 32, n = 2000;
  const auto data = clustered(n, dim, 2);
  const auto queries = clustered(40, dim, 2);
  TempDir tmp("sinkflow_test_segments_");
  for (auto storage : {HnswParams::Storage::f32, HnswParams::Storage::i8}) {
    HnswParams p;
    p.storage = storage;
    HnswIndex index(dim, p);
    for (int64_t i = 0; i < n; ++i) index.add(1000 + i, data.data() + i * dim);
    index.save(tmp / "seg.bin", 7);
    uint64_t tag = 0;
    auto mapped = MappedHnswIndex::open(tmp / "seg.bin", dim, p.ef_search, &tag);
    CHECK(tag == 7);
    CHECK(mapped->size() == n);
    CHECK(mapped->id_range() == std::pair<int64_t, int64_t>{1000, 1000 + n - 1});
    CHECK(mapped->contains(1500));
    CHECK_FALSE(mapped->contains(999));
    CHECK(mapped->vector(1005) == index.vector(1005));
    int same = 0;
    for (int64_t q = 0; q < 40; ++q) {
      const auto a = mapped->search(queries.data() + q * dim, 10), b = index.search(queries.data() + q * dim, 10);
      REQUIRE(a.size() == 10);
      bool eq = a.size() == b.size();
      for (size_t j = 0; eq && j < a.size(); ++j) eq = a[j].id == b[j].id && std::abs(a[j].score - b[j].score) < 1e-5f;
      if (!eq && q < 3)
        for (size_t j = 0; j < a.size(); ++j) UNSCOPED_INFO(a[j].id << " " << a[j].score << " | " << b[j].id << " " << b[j].score);
      same += eq;
    }
    CHECK(same >= 39);  // the same algorithm on the same graph (a tie may be broken the other way)
    REQUIRE_THROWS_WITH(mapped->add(5, data.data()), Catch::Contains("a mapped index is sealed"));
    CHECK(mapped->search(std::vector<float>(size_t(dim), 0.0f).data(), 5).empty());
  }
}

TEST_CASE("mapped hnsw: a damaged file is refused with its path and the field", "[memory][segments]") {
  const int64_t dim = 16;
  const auto data = clustered(300, dim, 3);
  TempDir tmp("sinkflow_test_segments_");
  HnswIndex index(dim, i8_params());
  for (int64_t i = 0; i < 300; ++i) index.add(i, data.data() + i * dim);
  const std::string path = tmp / "seg.bin";
  index.save(path);
  const auto good = read_bytes(path);
  auto flipped = good;
  flipped[good.size() / 2] ^= 0x10;
  write_bytes(path, flipped);
  REQUIRE_THROWS_WITH(MappedHnswIndex::open(path, dim, 64), Catch::Contains("seg.bin: payload CRC32"));
  write_bytes(path, std::vector<uint8_t>(good.begin(), good.end() - 9));
  REQUIRE_THROWS_WITH(MappedHnswIndex::open(path, dim, 64), Catch::Contains("seg.bin: payload size"));
  write_bytes(path, good);
  REQUIRE_THROWS_WITH(MappedHnswIndex::open(path, 8, 64), Catch::Contains("seg.bin: dim is 16, expected 8"));
  REQUIRE_THROWS_WITH(MappedHnswIndex::open(tmp / "none.bin", dim, 64), Catch::Contains("none.bin: cannot open"));
  // Labels must ascend (a sealed segment is filled in id order).
  HnswIndex shuffled(dim, i8_params());
  shuffled.add(5, data.data());
  shuffled.add(3, data.data() + dim);
  shuffled.save(path);
  REQUIRE_THROWS_WITH(MappedHnswIndex::open(path, dim, 64),
                      Catch::Contains("element 1 label is 3, expected a label above the previous element's 5"));
}

// ---------------------------------------------------------------------------------------------------------------
// The chunk store in segments

namespace {

const char* kWords[] = {"harbour", "ships", "bread", "oven", "planets", "telescope", "violin", "orchestra",
                        "glacier", "mountain", "river", "delta", "lantern", "market", "copper", "falcon"};

Chunk text_chunk(int64_t i, bool with_kv = false) {
  Chunk c;
  c.stream_id = 0;
  for (int64_t t = 0; t < 4; ++t) {
    c.tokens.push_back(i * 4 + t);
    c.positions.push_back(i * 4 + t);
  }
  c.text = std::string(kWords[i % 16]) + " " + kWords[(i / 16) % 16] + " " + kWords[(i * 7 + 3) % 16] + " item" +
           std::to_string(i);
  if (with_kv) c.kv = at::randn({1, 2, 1, 4, 2});
  return c;
}

StoreOptions segmented_options(int64_t segment_chunks) {
  StoreOptions o;
  o.embedder_name = "hash-384";
  o.dim = 384;
  o.fsync = StoreOptions::Fsync::none;
  o.segment_chunks = segment_chunks;
  o.merge_factor = 0;  // the tests of merging turn it on
  return o;
}

const std::vector<std::string> kQueries = {"harbour ships", "violin orchestra river", "item137", "copper falcon",
                                           "glacier", "bread oven market", "item5", "delta lantern planets"};

std::vector<std::vector<SearchHit>> run_queries(const ChunkStore& store) {
  HashEmbedder e(384);
  std::vector<std::vector<SearchHit>> out;
  for (const auto& q : kQueries) out.push_back(store.search(e.embed(q), 8));
  return out;
}

// Fills a store of 230 chunks in segments of 50: segments 0..3 sealed, 30 chunks in RAM.
std::vector<std::vector<SearchHit>> fill_segmented(const std::string& dir, bool with_kv = false) {
  HashEmbedder e(384);
  auto store = ChunkStore::open(dir, segmented_options(50));
  for (int64_t i = 0; i < 230; ++i) {
    Chunk c = text_chunk(i, with_kv);
    REQUIRE(store->add(c, e.embed(c.text)) == i);
  }
  REQUIRE(store->sealed_segments() == 4);
  return run_queries(*store);
}

}  // namespace

TEST_CASE("chunk store segments: sealed at the cap, exact scores, same results after reopening", "[memory][segments]") {
  TempDir tmp("sinkflow_test_segments_");
  const std::string dir = tmp / "mem";
  const auto results = fill_segmented(dir);
  for (int k = 0; k < 4; ++k) CHECK(fs::exists(dir + "/" + store_segment_file(k)));
  CHECK_FALSE(fs::exists(dir + "/" + store_segment_file(4)));
  // The oracle: brute force over the same embeddings. Scores are the exact cosines (re-scored from the log).
  HashEmbedder e(384);
  BruteForceIndex brute(384);
  for (int64_t i = 0; i < 230; ++i) brute.add(i, e.embed(text_chunk(i).text).data());
  double recall = 0;
  for (size_t q = 0; q < kQueries.size(); ++q) {
    const auto truth = brute.search(e.embed(kQueries[q]).data(), 8);
    std::set<int64_t> ids;
    for (const auto& h : truth) ids.insert(h.id);
    for (const auto& h : results[q]) recall += double(ids.count(h.id)) / 8.0 / double(kQueries.size());
  }
  CHECK(recall >= 0.95);
  CHECK(results[2][0].id == 137);  // "item137" is in chunk 137's text only (sealed segment 2)
  CHECK(results[6][0].id == 5);
  LogCapture log;
  auto store = ChunkStore::open(dir, segmented_options(50));
  CHECK_FALSE(log.contains("rebuilding"));
  CHECK(store->sealed_segments() == 4);
  CHECK(store->sealed_bytes() > 0);
  const auto again = run_queries(*store);
  for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(again[q], results[q]);
  // On-demand reads across segments and the in-RAM part.
  for (int64_t id : {0, 49, 50, 137, 199, 200, 229}) {
    CHECK(store->get(id).text == text_chunk(id).text);
    CHECK(store->embedding(id) == e.embed(text_chunk(id).text));
    CHECK(store->index().vector(id) == brute.vector(id));
  }
  REQUIRE_THROWS_WITH(store->get(230), Catch::Contains("id 230 is not in"));
}

TEST_CASE("chunk store segments: scores equal brute force's for the ids returned", "[memory][segments]") {
  TempDir tmp("sinkflow_test_segments_");
  const auto results = fill_segmented(tmp / "mem");
  HashEmbedder e(384);
  BruteForceIndex brute(384);
  for (int64_t i = 0; i < 230; ++i) brute.add(i, e.embed(text_chunk(i).text).data());
  for (size_t q = 0; q < kQueries.size(); ++q) {
    const auto all = brute.search(e.embed(kQueries[q]).data(), 230);
    for (const auto& h : results[q]) {
      auto it = std::find_if(all.begin(), all.end(), [&](const SearchHit& b) { return b.id == h.id; });
      REQUIRE(it != all.end());
      CHECK(h.score == it->score);
    }
  }
}

TEST_CASE("chunk store segments: a missing, truncated, corrupt or stale segment is rebuilt from the log", "[memory][segments]") {
  TempDir tmp("sinkflow_test_segments_");
  const std::string dir = tmp / "mem";
  const auto results = fill_segmented(dir);
  const std::string seg0 = dir + "/" + store_segment_file(0), seg1 = dir + "/" + store_segment_file(1),
                    seg2 = dir + "/" + store_segment_file(2);
  const auto seg0_bytes = read_bytes(seg0), seg1_bytes = read_bytes(seg1), seg2_bytes = read_bytes(seg2);
  auto check_rebuilt = [&](const std::string& why, const std::string& first_rebuilt) {
    LogCapture log;
    auto store = ChunkStore::open(dir, segmented_options(50));
    INFO(why);
    CHECK(log.contains(why));
    CHECK(log.contains("rebuilding " + first_rebuilt));
    CHECK(store->sealed_segments() == 4);
    const auto again = run_queries(*store);
    for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(again[q], results[q]);
    store.reset();
    // Rebuilt byte for byte: same inserts, same seed, same graph.
    CHECK(read_bytes(seg1) == seg1_bytes);
    CHECK(read_bytes(seg2) == seg2_bytes);
  };
  SECTION("missing") {
    fs::remove(seg1);
    // Segment 1 missing: segments 2 and 3 no longer follow a valid one; all three are rebuilt.
    check_rebuilt("rebuilding " + seg1 + " from records 50..99", seg1);
  }
  SECTION("truncated") {
    write_bytes(seg2, std::vector<uint8_t>(seg2_bytes.begin(), seg2_bytes.begin() + 100));
    check_rebuilt("payload size", seg2);
  }
  SECTION("corrupt") {
    auto b = seg1_bytes;
    b[b.size() / 2] ^= 0x01;
    write_bytes(seg1, b);
    check_rebuilt("payload CRC32", seg1);
  }
  SECTION("stale: another range") {
    write_bytes(seg1, seg0_bytes);
    check_rebuilt("it covers ids 0..49, already covered by segment-000000.bin", seg1);
  }
  SECTION("stale: same range, other records") {
    // A segment of the same ids from a log whose records differ: its digest does not match.
    TempDir other("sinkflow_test_segments_");
    {
      HashEmbedder e(384);
      auto store = ChunkStore::open(other / "mem", segmented_options(50));
      for (int64_t i = 0; i < 100; ++i) {
        Chunk c = text_chunk(i + 1000);
        store->add(c, e.embed(c.text));
      }
    }
    write_bytes(seg1, read_bytes(other / "mem/" + store_segment_file(1)));
    check_rebuilt("its digest", seg1);
  }
  SECTION("index.bin missing after the segments") {
    fs::remove(dir + "/index.bin");
    LogCapture log;
    auto store = ChunkStore::open(dir, segmented_options(50));
    CHECK(log.contains("rebuilding " + dir + "/index.bin from 30 records of the log (missing)"));
    const auto again = run_queries(*store);
    for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(again[q], results[q]);
  }
}

TEST_CASE("chunk store segments: the log is the truth; index.bin and segments follow a torn tail", "[memory][segments]") {
  TempDir tmp("sinkflow_test_segments_");
  const std::string dir = tmp / "mem";
  fill_segmented(dir);
  // Cut the log back into segment 3 (ids 150..199): segment 3 now covers records the log lacks.
  const std::string log_file = dir + "/chunks.log";
  const std::vector<uint64_t> offsets = record_offsets(log_file);
  REQUIRE(offsets.size() == 230);
  fs::resize_file(log_file, offsets[180] + 7);  // torn record 180
  LogCapture log;
  auto store = ChunkStore::open(dir, segmented_options(50));
  CHECK(log.contains("dropping"));
  CHECK(log.contains("it covers ids 150..199 (50 vectors), expected a contiguous range within the log's 180 records"));
  CHECK(store->size() == 180);
  CHECK(store->sealed_segments() == 3);
  CHECK_FALSE(fs::exists(dir + "/" + store_segment_file(3)));
  HashEmbedder e(384);
  // Each chunk's own text finds it (score 1), whether in a segment that survived or in the rebuilt RAM part.
  for (int64_t id : {20, 120, 170, 179}) {
    const auto hits = store->search(e.embed(text_chunk(id).text), 1);
    REQUIRE(hits.size() == 1);
    CHECK(hits[0].id == id);
    CHECK(hits[0].score == Approx(1.0f));
  }
  // Adding resumes at 180 and seals segment 3 again at 200.
  for (int64_t i = 180; i < 205; ++i) {
    Chunk c = text_chunk(i);
    REQUIRE(store->add(c, e.embed(c.text)) == i);
  }
  CHECK(store->sealed_segments() == 4);
  CHECK(store->search(e.embed(text_chunk(190).text), 1)[0].id == 190);
}

TEST_CASE("chunk store segments: kv and text read on demand; a log changed under the store is reported", "[memory][segments]") {
  TempDir tmp("sinkflow_test_segments_");
  const std::string dir = tmp / "mem";
  fill_segmented(dir, true);
  auto store = ChunkStore::open(dir, segmented_options(50));
  const Chunk c = store->get(60);
  CHECK(c.text == text_chunk(60).text);
  CHECK(c.kv.defined());
  CHECK(c.kv.sizes() == at::IntArrayRef({1, 2, 1, 4, 2}));
  CHECK_FALSE(store->get(60, false).kv.defined());
  // Overwrite a byte of record 60's text behind the store's back: get() checks the CRC again.
  const std::vector<uint64_t> offsets = record_offsets(dir + "/chunks.log");
  {
    std::fstream f(dir + "/chunks.log", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(offsets[60] + 16 + 24 + 8 + 16 * 4 + 8));  // first byte of the text
    f.put('X');
  }
  REQUIRE_THROWS_WITH(store->get(60), Catch::Contains("the file changed after it was opened"));
}

TEST_CASE("chunk store segments: sealing under concurrent readers", "[memory][segments]") {
  TempDir tmp("sinkflow_test_segments_");
  auto store = ChunkStore::open(tmp / "mem", segmented_options(64));
  HashEmbedder e(384);
  const int64_t n = 500;
  std::atomic<bool> done{false};
  std::atomic<int64_t> bad{0}, reads{0};
  std::thread writer([&] {
    for (int64_t i = 0; i < n; ++i) {
      Chunk c = text_chunk(i);
      if (store->add(c, e.embed(c.text)) != i) ++bad;
    }
    done = true;
  });
  std::thread reader([&] {
    std::mt19937_64 rng(1);
    while (!done) {
      const int64_t size = store->size();
      if (size == 0) continue;
      const int64_t id = int64_t(rng() % uint64_t(size));
      if (store->get(id).text != text_chunk(id).text) ++bad;
      const auto hits = store->search(e.embed(text_chunk(id).text), 3);
      // Every indexed chunk is found, whether it sits in RAM, in a segment being sealed, or in a sealed one.
      if (store->index().size() > id && (hits.empty() || hits[0].id != id)) ++bad;
      ++reads;
    }
  });
  writer.join();
  reader.join();
  CHECK(bad == 0);
  CHECK(reads > 0);
  CHECK(store->sealed_segments() == 7);
}

TEST_CASE("chunk store segments: a search shared by helper threads finds what one thread does, searches at once", "[memory][segments]") {
  TempDir tmp("sinkflow_test_segments_");
  const std::string dir = tmp / "mem";
  fill_segmented(dir);  // 4 sealed segments and the in-RAM one
  StoreOptions one = segmented_options(50);
  one.search_threads = 1;
  const auto alone = run_queries(*ChunkStore::open(dir, one));
  for (const int threads : {2, 3, 8}) {
    StoreOptions o = segmented_options(50);
    o.search_threads = threads;
    auto store = ChunkStore::open(dir, o);
    INFO("search_threads " << threads);
    const auto shared = run_queries(*store);
    for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(shared[q], alone[q]);
    // Searches from several threads at once: one holds the helpers, the others run on their own threads.
    std::atomic<int64_t> bad{0};
    std::vector<std::thread> searchers;
    for (int t = 0; t < 4; ++t)
      searchers.emplace_back([&] {
        for (int round = 0; round < 20; ++round) {
          const auto again = run_queries(*store);
          for (size_t q = 0; q < kQueries.size(); ++q) {
            if (again[q].size() != alone[q].size()) {
              ++bad;
              continue;
            }
            for (size_t i = 0; i < again[q].size(); ++i) bad += again[q][i].id != alone[q][i].id;
          }
        }
      });
    for (auto& t : searchers) t.join();
    CHECK(bad == 0);
  }
  StoreOptions o = segmented_options(50);
  o.search_threads = 0;
  REQUIRE_THROWS_WITH(o.validate(), Catch::Contains("search_threads is 0, expected [1, 64]"));
}

TEST_CASE("chunk store segments: options, the directory's files and reset", "[memory][segments]") {
  StoreOptions o = segmented_options(0);
  o.index_ram_mb = -1;
  REQUIRE_THROWS_WITH(o.validate(), Catch::Contains("index_ram_mb is -1, expected [0, 2^30] MiB"));
  o.index_ram_mb = 64;
  o.dim = 384;
  // 64 MiB at ~0.6 KB per int8 element of 384 dims.
  CHECK(o.effective_segment_chunks() > 90000);
  CHECK(o.effective_segment_chunks() < 120000);
  o.index_ram_mb = 0;
  CHECK(o.effective_segment_chunks() == 0);
  o.index = StoreOptions::IndexKind::brute;
  o.segment_chunks = 10;
  CHECK(o.effective_segment_chunks() == 0);
  CHECK(store_segment_file(3) == "segment-000003.bin");
  CHECK(is_store_segment_file("segment-000003.bin"));
  CHECK(is_store_segment_file("segment-1234567.bin.tmp"));
  CHECK_FALSE(is_store_segment_file("segment-12.bin"));
  CHECK_FALSE(is_store_segment_file("segment-00000x.bin"));
  CHECK(is_memory_dir_entry("segment-000000.bin"));

  TempDir tmp("sinkflow_test_segments_");
  const std::string dir = tmp / "mem";
  fill_segmented(dir);
  MemoryDirLock lock(dir);
  const auto deleted = lock.reset();
  CHECK(std::count_if(deleted.begin(), deleted.end(), [](const std::string& s) { return is_store_segment_file(s); }) == 4);
  CHECK(fs::is_empty(dir) == false);  // the lock stays
  CHECK_FALSE(fs::exists(dir + "/" + store_segment_file(0)));
}

// ---------------------------------------------------------------------------------------------------------------
// Duplicates: many equal (or nearly equal) vectors, as a repeated filler text embeds to

namespace {

// n_dup copies of one vector (ids 0, 2, 4, ... interleaved with clustered others), then `relevant` last.
struct DupData {
  int64_t dim = 64, n = 0;
  std::vector<float> data;  // n rows
  int64_t relevant = -1;
};

DupData dup_data(int64_t n_dup, int64_t n_other, float jitter, uint64_t seed) {
  DupData d;
  d.n = n_dup + n_other + 1;
  const auto others = clustered(n_other, d.dim, seed);
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> filler(size_t(d.dim));
  for (auto& x : filler) x = g(rng);
  int64_t dups = 0, other = 0;
  for (int64_t i = 0; i + 1 < d.n; ++i) {
    const bool dup = (i % 2 == 0 && dups < n_dup) || other == n_other;
    for (int64_t c = 0; c < d.dim; ++c)
      d.data.push_back(dup ? filler[size_t(c)] + jitter * g(rng) : others[size_t(other * d.dim + c)]);
    (dup ? dups : other)++;
  }
  // The relevant vector: far from the filler and from the clusters.
  for (int64_t c = 0; c < d.dim; ++c) d.data.push_back(c % 7 == 0 ? 1.0f : 0.0f);
  d.relevant = d.n - 1;
  return d;
}

std::vector<float> near(const DupData& d, int64_t id, float noise, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> q(d.data.begin() + id * d.dim, d.data.begin() + (id + 1) * d.dim);
  for (auto& x : q) x += noise * g(rng);
  return q;
}

}  // namespace

TEST_CASE("hnsw: thousands of equal vectors are kept once in the graph, the distinct one is found", "[memory][segments][dups]") {
  for (auto storage : {HnswParams::Storage::i8, HnswParams::Storage::f32}) {
    const DupData d = dup_data(6000, 3000, 0.0f, 11);
    HnswParams p;
    p.storage = storage;
    HnswIndex index(d.dim, p);
    BruteForceIndex brute(d.dim);
    for (int64_t i = 0; i < d.n; ++i) {
      index.add(i, d.data.data() + i * d.dim);
      brute.add(i, d.data.data() + i * d.dim);
    }
    CHECK(index.size() == d.n);
    CHECK(index.duplicates() == 5999);
    CHECK(index.contains(4000));
    CHECK(index.vector(4000) == index.vector(0));
    REQUIRE_THROWS_WITH(index.add(4000, d.data.data()), Catch::Contains("already in the index"));
    const float tol = storage == HnswParams::Storage::i8 ? 2e-2f : 1e-5f;
    auto check_scores = [&](const std::vector<SearchHit>& hits, const std::vector<float>& q) {
      const auto all = brute.search(q.data(), int(d.n));
      std::unordered_map<int64_t, float> exact;
      for (const auto& h : all) exact[h.id] = h.score;
      for (const auto& h : hits) CHECK(std::abs(h.score - exact.at(h.id)) <= tol);
    };
    // The relevant vector, from a query near it.
    const auto q = near(d, d.relevant, 0.05f, 3);
    const auto hits = index.search(q.data(), 10);
    REQUIRE(hits.size() == 10);
    CHECK(hits[0].id == d.relevant);
    CHECK(hits[0].score > 0.9f);
    check_scores(hits, q);
    // A query at the filler: the equal vectors, in id order, with their (equal) score.
    const auto qf = near(d, 0, 0.0f, 4);
    const auto fh = index.search(qf.data(), 20);
    REQUIRE(fh.size() == 20);
    for (size_t j = 0; j < fh.size(); ++j) {
      CHECK(fh[j].id == int64_t(2 * j));
      CHECK(fh[j].score == Approx(1.0f).margin(tol));
    }
    // Recall against brute force on queries near the clustered vectors.
    std::vector<float> queries;
    for (int64_t j = 0; j < 40; ++j) {
      const auto v = near(d, 1 + 2 * j * 37 % 5000, 0.3f, 100 + uint64_t(j));
      queries.insert(queries.end(), v.begin(), v.end());
    }
    CHECK(recall_at(index, brute, queries, d.dim, 10) >= 0.9);
    // Through a file: loaded and mapped, the same hits.
    TempDir tmp("sinkflow_test_segments_");
    index.save(tmp / "dups.bin", 5);
    auto loaded = HnswIndex::load(tmp / "dups.bin", d.dim, p);
    auto mapped = MappedHnswIndex::open(tmp / "dups.bin", d.dim, p.ef_search);
    CHECK(loaded->size() == d.n);
    CHECK(loaded->duplicates() == 5999);
    CHECK(mapped->size() == d.n);
    CHECK(mapped->duplicates() == 5999);
    CHECK(mapped->id_range() == std::pair<int64_t, int64_t>{0, d.n - 1});
    CHECK(mapped->contains(4000));
    CHECK(mapped->vector(4000) == index.vector(0));
    // (The mapped index computes f32 inner products in its own order: equal to ~1e-6.)
    auto same = [](const std::vector<SearchHit>& a, const std::vector<SearchHit>& b) {
      REQUIRE(a.size() == b.size());
      for (size_t j = 0; j < a.size(); ++j) {
        CHECK(a[j].id == b[j].id);
        CHECK(a[j].score == Approx(b[j].score).margin(1e-5));
      }
    };
    require_same_hits(loaded->search(q.data(), 10), hits);
    same(mapped->search(q.data(), 10), hits);
    same(mapped->search(qf.data(), 20), fh);
    // A loaded index keeps deduplicating.
    loaded->add(d.n, d.data.data());
    CHECK(loaded->duplicates() == 6000);
  }
}

TEST_CASE("hnsw: nearly equal vectors (different codes) do not hide the distinct one", "[memory][segments][dups]") {
  const DupData d = dup_data(6000, 3000, 1e-3f, 12);
  HnswIndex index(d.dim, i8_params());
  BruteForceIndex brute(d.dim);
  for (int64_t i = 0; i < d.n; ++i) {
    index.add(i, d.data.data() + i * d.dim);
    brute.add(i, d.data.data() + i * d.dim);
  }
  INFO("duplicates " << index.duplicates());
  const auto q = near(d, d.relevant, 0.05f, 3);
  const auto hits = index.search(q.data(), 10);
  REQUIRE_FALSE(hits.empty());
  CHECK(hits[0].id == d.relevant);
  std::vector<float> queries;
  for (int64_t j = 0; j < 40; ++j) {
    const auto v = near(d, 1 + 2 * j * 37 % 5000, 0.3f, 100 + uint64_t(j));
    queries.insert(queries.end(), v.begin(), v.end());
  }
  CHECK(recall_at(index, brute, queries, d.dim, 10) >= 0.9);
}

TEST_CASE("chunk store: a repeated filler text and one needle, across sealed segments", "[memory][segments][dups]") {
  TempDir tmp("sinkflow_test_segments_");
  HashEmbedder e(384);
  const std::string filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
  const std::string needle = "The pass key is 71432. Remember it. 71432 is the pass key.";
  const int64_t n = 9000, needle_id = 6100;
  auto store = ChunkStore::open(tmp / "mem", segmented_options(3000));
  BruteForceIndex brute(384);
  for (int64_t i = 0; i < n; ++i) {
    Chunk c;
    c.tokens = {i};
    c.positions = {i};
    // Five rotations of the filler repeated, as windows over a repeated text are.
    c.text = i == needle_id ? needle : filler.substr(size_t(i % 5) * 4) + " " + filler.substr(0, size_t(i % 5) * 4);
    const auto v = e.embed(c.text);
    REQUIRE(store->add(c, v) == i);
    brute.add(i, v.data());
  }
  CHECK(store->sealed_segments() == 3);
  for (const std::string& question : {std::string("What is the pass key?"), std::string("remember the key 71432")}) {
    const auto q = e.embed(question);
    const auto hits = store->search(q, 5);
    REQUIRE(hits.size() == 5);
    CHECK(hits[0].id == needle_id);
    CHECK(hits[0].score > 0.2f);
    const auto truth = brute.search(q.data(), 5);
    CHECK(hits[0].score == truth[0].score);
    for (size_t j = 0; j < hits.size(); ++j) CHECK(hits[j].score == truth[j].score);  // exact scores
  }
  // The filler itself: its equal copies, score 1.
  const auto fh = store->search(e.embed(filler), 10);
  REQUIRE(fh.size() == 10);
  for (const auto& h : fh) CHECK(h.score == Approx(1.0f));
  // Reopened: the same.
  store.reset();
  store = ChunkStore::open(tmp / "mem", segmented_options(3000));
  CHECK(store->search(e.embed("What is the pass key?"), 1)[0].id == needle_id);
}

// ---------------------------------------------------------------------------------------------------------------
// Merging sealed segments

namespace {

StoreOptions merging_options(int64_t segment_chunks, int factor) {
  StoreOptions o = segmented_options(segment_chunks);
  o.merge_factor = factor;
  return o;
}

int64_t segment_files(const std::string& dir) {
  int64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += is_store_segment_file(e.path().filename().string());
  return n;
}

void fill(ChunkStore& store, int64_t from, int64_t to) {
  HashEmbedder e(384);
  for (int64_t i = from; i < to; ++i) {
    Chunk c = text_chunk(i);
    REQUIRE(store.add(c, e.embed(c.text)) == i);
  }
}

// The oracle of a test: chunks 0..n-1 in sealed segments of `segment_chunks` from the first, never merged
// (segments this small are searched exactly); `sealed` of them sealed. run_queries() of that store.
std::vector<std::vector<SearchHit>> fixed_results(const std::string& dir, int64_t segment_chunks, int64_t n, int64_t sealed) {
  auto store = ChunkStore::open(dir, segmented_options(segment_chunks));
  fill(*store, 0, n);
  REQUIRE(store->sealed_segments() == sealed);
  return run_queries(*store);
}

}  // namespace

TEST_CASE("chunk store merges: merged segments answer as the unmerged ones, reopen, readers during merges", "[memory][segments][merge]") {
  TempDir tmp("sinkflow_test_segments_");
  // The oracle: the same chunks, never merged (segments this small are searched exactly: the same hits).
  const auto unmerged = fixed_results(tmp / "plain", 50, 430, 8);
  const std::string dir = tmp / "merged";
  {
    auto store = ChunkStore::open(dir, merging_options(50, 2));
    HashEmbedder e(384);
    std::atomic<bool> done{false};
    std::atomic<int64_t> bad{0}, reads{0};
    std::thread reader([&] {
      std::mt19937_64 rng(2);
      while (!done) {
        const int64_t size = store->index().size();
        if (size == 0) continue;
        const int64_t id = int64_t(rng() % uint64_t(size));
        const auto hits = store->search(e.embed(text_chunk(id).text), 1);
        if (hits.empty() || hits[0].id != id) ++bad;
        ++reads;
      }
    });
    fill(*store, 0, 430);
    store->wait_merges();
    done = true;
    reader.join();
    CHECK(bad == 0);
    CHECK(reads > 0);
    // 8 segments of 50 -> 4 of 100 -> 2 of 200 -> 1 of 400 (7 merges).
    CHECK(store->merges_done() == 7);
    CHECK(store->sealed_segments() == 1);
    CHECK(segment_files(dir) == 1);
    const auto merged = run_queries(*store);
    for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(merged[q], unmerged[q]);
  }
  LogCapture log;
  auto store = ChunkStore::open(dir, segmented_options(50));
  CHECK_FALSE(log.contains("rebuilding"));
  CHECK_FALSE(log.contains("deleting"));
  CHECK(store->sealed_segments() == 1);
  const auto again = run_queries(*store);
  for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(again[q], unmerged[q]);
  // Sealing goes on after a merge (a new file takes a free number).
  fill(*store, 430, 460);
  CHECK(store->sealed_segments() == 2);
  CHECK(segment_files(dir) == 2);
}

TEST_CASE("chunk store merges: a process killed mid-merge leaves a directory that opens and answers the same", "[memory][segments][merge]") {
  for (const std::string stage : {"saved", "deleted-one"}) {
    INFO("killed at " << stage);
    TempDir tmp("sinkflow_test_segments_");
    const std::string dir = tmp / "mem";
    const auto results = fill_segmented(dir);  // 4 segments of 50 + 30 in RAM
    REQUIRE(segment_files(dir) == 4);
    StoreOptions o = merging_options(50, 4);
    o.merge_hook = [stage](const char* s) {
      if (stage == s) ::kill(::getpid(), SIGKILL);
    };
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      try {
        auto store = ChunkStore::open(dir, o);  // merges the 4 segments on its thread
        store->wait_merges();
      } catch (...) {
      }
      ::_exit(3);  // not killed: the test fails below
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
    // The merged file is durable; the old ones are all there ("saved") or all but one ("deleted-one").
    CHECK(fs::exists(dir + "/" + store_segment_file(4)));
    CHECK(segment_files(dir) == (stage == "saved" ? 5 : 4));
    if (stage == "saved") {
      // A damaged merged file: the old segments are used instead.
      const std::string merged = dir + "/" + store_segment_file(4);
      auto b = read_bytes(merged);
      b[b.size() / 2] ^= 0x40;
      const auto good = read_bytes(merged);
      write_bytes(merged, b);
      {
        LogCapture log;
        auto store = ChunkStore::open(dir, segmented_options(50));
        CHECK(log.contains("segment-000004.bin (" + dir + "/segment-000004.bin: payload CRC32"));
        CHECK_FALSE(log.contains("rebuilding " + dir + "/segment"));
        CHECK(store->sealed_segments() == 4);
        const auto again = run_queries(*store);
        for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(again[q], results[q]);
      }
      CHECK(segment_files(dir) == 4);
      write_bytes(merged, good);  // the crash state again
      write_bytes(dir + "/" + store_segment_file(7) + ".tmp", {1, 2, 3});  // and a torn write
    }
    LogCapture log;
    auto store = ChunkStore::open(dir, segmented_options(50));
    CHECK(log.contains("already covered by segment-000004.bin"));
    if (stage == "saved") CHECK(log.contains("segment-000007.bin.tmp (a segment file left unfinished)"));
    CHECK_FALSE(log.contains("rebuilding " + dir + "/segment"));
    CHECK(store->sealed_segments() == 1);
    CHECK(segment_files(dir) == 1);
    const auto again = run_queries(*store);
    for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(again[q], results[q]);
  }
}

TEST_CASE("chunk store merges: options are checked", "[memory][segments][merge]") {
  StoreOptions o = merging_options(50, 1);
  REQUIRE_THROWS_WITH(o.validate(), Catch::Contains("merge_factor is 1, expected 0 (never merge) or [2, 64]"));
  o.merge_factor = 4;
  o.merge_ram_mb = -2;
  REQUIRE_THROWS_WITH(o.validate(), Catch::Contains("merge_ram_mb is -2"));
  // A RAM cap below a run's size: nothing is merged.
  TempDir tmp("sinkflow_test_segments_");
  o.merge_ram_mb = 0;
  {
    auto store = ChunkStore::open(tmp / "mem", o);
    fill(*store, 0, 230);
    store->wait_merges();
    CHECK(store->sealed_segments() == 4);
    CHECK(store->merges_done() == 0);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// RAM of a short stream: in-RAM segments grow in steps, the first segments are sealed smaller

TEST_CASE("hnsw grown in steps from a small capacity equals one allocated whole: same hits, same file", "[memory][segments][ramp]") {
  const int64_t dim = 48, n = 3000;
  const auto data = clustered(n, dim, 5);
  const auto queries = clustered(40, dim, 5);
  HnswParams whole = i8_params(), steps = i8_params();
  whole.initial_capacity = n;
  steps.initial_capacity = 8;
  HnswIndex a(dim, whole), b(dim, steps);
  CHECK(b.capacity() == 8);
  for (int64_t i = 0; i < n; ++i) {
    a.add(i, data.data() + i * dim);
    b.add(i, data.data() + i * dim);
    if (i == 100) CHECK(b.capacity() == 128);  // 8 doubled four times: never the whole index ahead
  }
  CHECK(a.capacity() == n);
  CHECK(b.capacity() == 4096);
  for (int64_t q = 0; q < 40; ++q) require_same_hits(b.search(queries.data() + q * dim, 10), a.search(queries.data() + q * dim, 10));
  // Same inserts, same seed: the same graph, whatever the capacity was on the way.
  TempDir tmp("sinkflow_test_segments_");
  a.save(tmp / "a.bin");
  b.save(tmp / "b.bin");
  CHECK(read_bytes(tmp / "a.bin") == read_bytes(tmp / "b.bin"));
}

TEST_CASE("chunk store: options of the first segment and the sizes they give", "[memory][segments][ramp]") {
  StoreOptions o = segmented_options(0);  // sizes from index_ram_mb 64, index_first_ram_mb 8
  const int64_t full = o.effective_segment_chunks(), first = o.effective_first_segment_chunks();
  CHECK(first == (int64_t(8) << 20) / HnswIndex::bytes_per_element(384, o.hnsw));
  CHECK(full >= 8 * first);
  CHECK(full < 8 * first + 8);
  CHECK(o.seal_chunks(0) == first);
  CHECK(o.seal_chunks(first) == first);
  CHECK(o.seal_chunks(2 * first) == 2 * first);
  CHECK(o.seal_chunks(4 * first) == 4 * first);
  CHECK(o.seal_chunks(8 * first) == 8 * first);  // the four of the ramp: about one full segment
  CHECK(o.seal_chunks(full) == full);
  CHECK(o.seal_chunks(int64_t(1) << 40) == full);
  // The first 10^6 tokens at 32 per chunk are 31,250 chunks: two small segments sealed, the rest in RAM.
  CHECK(o.seal_chunks(0) + o.seal_chunks(first) < 31250);
  CHECK(o.seal_chunks(0) + o.seal_chunks(first) + o.seal_chunks(2 * first) > 31250);
  o.index_first_ram_mb = 0;
  CHECK(o.effective_first_segment_chunks() == full);
  o.index_first_ram_mb = 100;  // above index_ram_mb: no ramp
  CHECK(o.effective_first_segment_chunks() == full);
  o.index_first_ram_mb = 8;
  o.segment_chunks = 50;  // the test hook: fixed sizes, unless first_segment_chunks is set too
  CHECK(o.effective_first_segment_chunks() == 50);
  o.first_segment_chunks = 20;
  CHECK(o.seal_chunks(0) == 20);
  CHECK(o.seal_chunks(20) == 20);
  CHECK(o.seal_chunks(40) == 40);
  CHECK(o.seal_chunks(80) == 50);
  o.first_segment_chunks = 70;
  CHECK(o.effective_first_segment_chunks() == 50);
  o.first_segment_chunks = -1;
  REQUIRE_THROWS_WITH(o.validate(), Catch::Contains("first_segment_chunks is -1, expected [0, 2^32 - 2)"));
  o.first_segment_chunks = 0;
  o.index_first_ram_mb = -1;
  REQUIRE_THROWS_WITH(o.validate(), Catch::Contains("index_first_ram_mb is -1, expected [0, 2^30] MiB (0 = index_ram_mb)"));
}

namespace {

StoreOptions ramp_options() {
  StoreOptions o = segmented_options(100);
  o.first_segment_chunks = 25;
  o.hnsw.initial_capacity = 8;
  return o;
}

// Id range of each segment file, by file number.
std::map<int64_t, std::pair<int64_t, int64_t>> segment_ranges(const std::string& dir) {
  std::map<int64_t, std::pair<int64_t, int64_t>> out;
  for (int64_t k = 0; k < 16; ++k)
    if (fs::exists(dir + "/" + store_segment_file(k)))
      out[k] = MappedHnswIndex::open(dir + "/" + store_segment_file(k), 384, 64)->id_range();
  return out;
}

}  // namespace

TEST_CASE("chunk store: the first segments are sealed smaller, the in-RAM one grows in steps, rebuilt alike", "[memory][segments][ramp]") {
  TempDir tmp("sinkflow_test_segments_");
  // The oracle: the same chunks in segments of 100 from the first.
  const auto fixed = fixed_results(tmp / "fixed", 100, 330, 3);
  const std::string dir = tmp / "ramp";
  const std::map<int64_t, std::pair<int64_t, int64_t>> expected = {
      {0, {0, 24}}, {1, {25, 49}}, {2, {50, 99}}, {3, {100, 199}}, {4, {200, 299}}};
  std::vector<std::vector<SearchHit>> ramped;
  {
    auto store = ChunkStore::open(dir, ramp_options());
    fill(*store, 0, 24);
    CHECK(store->sealed_segments() == 0);
    fill(*store, 24, 25);
    CHECK(store->sealed_segments() == 1);  // 25 = the first segment
    fill(*store, 25, 330);
    // 25, 25, 50, 100, 100: each as large as the sealed ones before it, up to segment_chunks; 30 ids in RAM.
    CHECK(store->sealed_segments() == 5);
    const auto& active = static_cast<const SegmentedIndex&>(store->index()).active();
    CHECK(active.size() == 30);
    CHECK(active.capacity() == 32);  // 8 doubled twice, not the segment's 100
    ramped = run_queries(*store);
    for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(ramped[q], fixed[q]);
    CHECK(ramped[2][0].id == 137);
  }
  CHECK(segment_ranges(dir) == expected);
  const auto bytes0 = read_bytes(dir + "/" + store_segment_file(0)), bytes2 = read_bytes(dir + "/" + store_segment_file(2));
  {
    // Reopened as it is: nothing rebuilt.
    LogCapture log;
    auto store = ChunkStore::open(dir, ramp_options());
    CHECK_FALSE(log.contains("rebuilding"));
    CHECK(store->sealed_segments() == 5);
  }
  // Every segment file lost: rebuilt from the log in the same sizes, byte for byte.
  for (int64_t k = 0; k < 5; ++k) fs::remove(dir + "/" + store_segment_file(k));
  {
    LogCapture log;
    auto store = ChunkStore::open(dir, ramp_options());
    CHECK(log.contains("rebuilding " + dir + "/" + store_segment_file(0) + " from records 0..24 of the log"));
    CHECK(log.contains("rebuilding " + dir + "/" + store_segment_file(2) + " from records 50..99 of the log"));
    CHECK(store->sealed_segments() == 5);
    const auto again = run_queries(*store);
    for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(again[q], ramped[q]);
  }
  CHECK(segment_ranges(dir) == expected);
  CHECK(read_bytes(dir + "/" + store_segment_file(0)) == bytes0);
  CHECK(read_bytes(dir + "/" + store_segment_file(2)) == bytes2);
}

TEST_CASE("chunk store: the small first segments merge into one of a full segment's size", "[memory][segments][ramp][merge]") {
  TempDir tmp("sinkflow_test_segments_");
  const auto fixed = fixed_results(tmp / "fixed", 100, 330, 3);
  const std::string dir = tmp / "ramp";
  StoreOptions o = ramp_options();
  o.merge_factor = 4;
  auto store = ChunkStore::open(dir, o);
  fill(*store, 0, 330);
  store->wait_merges();
  // 25 + 25 + 50 + 100 (all below 4 segments' worth: one tier) -> 0..199; then 200..299 and 30 in RAM.
  CHECK(store->merges_done() == 1);
  CHECK(store->sealed_segments() == 2);
  const auto ranges = segment_ranges(dir);
  REQUIRE(ranges.size() == 2);
  std::set<std::pair<int64_t, int64_t>> got;
  for (const auto& [k, r] : ranges) got.insert(r);
  CHECK(got == std::set<std::pair<int64_t, int64_t>>{{0, 199}, {200, 299}});
  const auto merged = run_queries(*store);
  for (size_t q = 0; q < kQueries.size(); ++q) require_same_hits(merged[q], fixed[q]);
}
