// bench memory: feeds a long stream of chunks straight into a ChunkStore (no model: the store is what is measured)
// and prints, at each decade of chunks, the process's RSS, the store's size on disk, the retrieval latency
// (ChunkStore::search, k = 10, from one thread; its segments shared with --search-threads - 1 helpers) and
// recall@10 against an exact oracle kept alongside.
//
//   sinkflow bench memory --chunks 1000000 [--source synthetic|text --text FILE] [--index-ram-mb 64] [--json]
//
// A run's chunks are reproducible by index, so one that was stopped (killed, even mid-write: the store drops a torn
// tail) goes on with --resume from the chunks the directory holds, and ends with the same directory as a run that
// was never stopped; --reuse measures a directory as it is. Both rebuild the oracle over the chunks already stored
// (the vectors regenerated, not read back) and draw the queries of the points before as the first run did, so
// every point measures the queries the uninterrupted run would.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/memory/memory_dir.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace sinkflow::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct BenchMemoryArgs {
  int64_t chunks = 1000000;      // chunks to store
  std::string source = "synthetic";  // synthetic | text
  std::string text;              // --source text: the document
  int64_t dim = 384;             // embedding length (hash-<dim> for text)
  int64_t tokens_per_chunk = 32;  // new tokens per chunk (default chunking: chunk_size 64, overlap 32)
  int64_t chunk_tokens = 64;     // tokens stored per chunk record (synthetic)
  int64_t window_words = 48;     // --source text: words per chunk (~64 tokens)
  int64_t index_ram_mb = 64;     // StoreOptions::index_ram_mb
  int64_t index_first_ram_mb = StoreOptions{}.index_first_ram_mb;  // StoreOptions::index_first_ram_mb
  int64_t segment_chunks = 0;    // StoreOptions::segment_chunks
  int merge_factor = 4;          // StoreOptions::merge_factor (0 = never merge)
  int64_t merge_ram_mb = 256;    // StoreOptions::merge_ram_mb
  int merge_nice = 10;           // StoreOptions::merge_nice
  int search_threads = StoreOptions{}.search_threads;  // StoreOptions::search_threads
  int64_t queries = 1000;        // latency queries per point
  int64_t recall_queries = 100;  // queries with an exact oracle
  int64_t first_point = 100000;  // first measured point; then every decade, and the end
  int ef_search = 0;              // HnswParams::ef_search of the store; 0 = StoreOptions' default
  std::string storage = "i8";     // HnswParams::storage: i8 | f32 (f32 = the vectors as before session 10)
  bool reuse = false;             // measure the directory as it is (filled, maybe partly, by a run of these arguments)
  bool resume = false;            // go on filling a directory that a run of the same arguments filled partly
  uint64_t seed = 1;
  std::string dir = "/tmp/sinkflow-bench-memory";
  bool json = false;
};

struct ProcMemory {
  double rss_mib = 0, anon_mib = 0, file_mib = 0, hwm_mib = 0;
};

ProcMemory proc_memory() {
  ProcMemory m;
  std::ifstream in("/proc/self/status");
  std::string key;
  double kb = 0;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream l(line);
    if (!(l >> key >> kb)) continue;
    if (key == "VmRSS:") m.rss_mib = kb / 1024;
    if (key == "RssAnon:") m.anon_mib = kb / 1024;
    if (key == "RssFile:") m.file_mib = kb / 1024;
    if (key == "VmHWM:") m.hwm_mib = kb / 1024;
  }
  return m;
}

// Clustered synthetic embeddings, reproducible one at a time without keeping any: vector i = centre(c(i)) +
// 0.5 * noise(i), 100 vectors per centre on average, the members of a cluster spread over the whole stream.
class Synthetic {
 public:
  Synthetic(int64_t dim, int64_t total, uint64_t seed)
      : dim_(dim), centres_(std::max<int64_t>(1, total / 100)), seed_(seed) {}
  void vector(int64_t i, float* out) const {
    const int64_t c = int64_t((uint64_t(i) * 2654435761u) % uint64_t(centres_));
    std::mt19937_64 cr(seed_ * 1000003u + uint64_t(c));
    std::mt19937_64 nr(seed_ * 7919u + 0x9E3779B97F4A7C15ull * uint64_t(i + 1));
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (int64_t d = 0; d < dim_; ++d) out[d] = g(cr);
    for (int64_t d = 0; d < dim_; ++d) out[d] += 0.5f * g(nr);
  }
  // A stored vector plus fresh noise: a query with true near neighbours.
  std::vector<float> query(int64_t source, uint64_t salt) const {
    std::vector<float> q(static_cast<size_t>(dim_));
    vector(source, q.data());
    std::mt19937_64 r(salt);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (auto& x : q) x += 0.5f * g(r);
    return q;
  }

 private:
  int64_t dim_, centres_;
  uint64_t seed_;
};

// Chunks of a document: windows of `window` words at stride window / 2. Pass p over the document starts p % stride
// words later and, after every `stride` passes, windows grow by 5 words: a run longer than the text gives
// distinct (overlapping) windows, never exact repeats.
class TextWindows {
 public:
  TextWindows(const std::string& path, int64_t window) : window_(window), stride_(std::max<int64_t>(1, window / 2)) {
    std::ifstream in(path);
    if (!in) throw std::invalid_argument("bench memory: --text " + path + ": cannot open");
    std::string w;
    while (in >> w) words_.push_back(w);
    if (int64_t(words_.size()) < 8 * window)
      throw std::invalid_argument("bench memory: --text " + path + " has " + std::to_string(words_.size()) +
                                  " words, expected at least " + std::to_string(8 * window));
  }
  std::string chunk(int64_t i) const {
    const int64_t per_pass = (int64_t(words_.size()) - 2 * window_ - 2 * stride_) / stride_;
    const int64_t pass = i / per_pass, grow = 5 * (pass / stride_);
    const int64_t start = (i % per_pass) * stride_ + pass % stride_;
    if (start + window_ + grow > int64_t(words_.size()))
      throw std::invalid_argument("bench memory: --text has too few words for " + std::to_string(i + 1) + " chunks");
    return span(start, window_ + grow);
  }
  // A phrase of `n` words from a random place: a retrieval query.
  std::string phrase(std::mt19937_64& rng, int64_t n) const {
    std::uniform_int_distribution<int64_t> at(0, int64_t(words_.size()) - n - 1);
    return span(at(rng), n);
  }
  // The embedding of a random phrase that embeds to a non-zero vector (a run of verse numbers embeds to zero).
  std::vector<float> query(const Embedder& e, std::mt19937_64& rng, int64_t n) const {
    for (;;) {
      std::vector<float> q = e.embed(phrase(rng, n));
      if (std::any_of(q.begin(), q.end(), [](float x) { return x != 0.0f; })) return q;
    }
  }
  size_t words() const { return words_.size(); }

 private:
  std::string span(int64_t start, int64_t n) const {
    std::string s;
    for (int64_t j = start; j < start + n; ++j) {
      if (!s.empty()) s += ' ';
      s += words_[size_t(j)];
    }
    return s;
  }
  int64_t window_, stride_;
  std::vector<std::string> words_;
};

// Exact top-k of a fixed query set over everything added so far (ties by id ascending, as the indexes).
class Oracle {
 public:
  Oracle(std::vector<std::vector<float>> queries, int k) : k_(k) {
    for (auto& q : queries) queries_.push_back(normalized(q.data(), int64_t(q.size()), "oracle query"));
    top_.resize(queries_.size());
  }
  void add(int64_t id, const float* v, int64_t dim) {
    const std::vector<float> u = normalized(v, dim, "oracle vector");
    for (size_t q = 0; q < queries_.size(); ++q) {
      const SearchHit h{id, inner_product(queries_[q].data(), u.data(), dim)};
      auto& t = top_[q];
      if (int(t.size()) == k_ && !hit_before(h, t.back())) continue;
      t.insert(std::upper_bound(t.begin(), t.end(), h, hit_before), h);
      if (int(t.size()) > k_) t.pop_back();
    }
  }
  const std::vector<std::vector<float>>& queries() const { return queries_; }
  const std::vector<SearchHit>& top(size_t q) const { return top_[q]; }

 private:
  int k_;
  std::vector<std::vector<float>> queries_;
  std::vector<std::vector<SearchHit>> top_;
};

struct Point {
  int64_t chunks = 0, tokens = 0, segments = 0;
  ProcMemory mem;
  ProcMemory mem_after_merges;
  double merge_wait_s = 0;
  int64_t merges = 0;
  double log_mib = 0, index_mib = 0, p50_ms = 0, p99_ms = 0, cpu_p50_ms = 0, cpu_p99_ms = 0, recall = 0, add_per_s = 0;
};

// CPU time of this process, ms: a query's own cost on every thread that served it (StoreOptions::search_threads;
// ingestion waits and merges are done while queries run), without the time the scheduler gave other processes
// (the wall-clock p99 of a shared 2-core machine is mostly a preempted query waiting a time slice).
double process_cpu_ms() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) * 1e3 + double(t.tv_nsec) / 1e6;
}

double dir_mib(const std::string& dir, bool index_files) {
  uint64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    const bool is_index = name == kStoreIndexFile || is_store_segment_file(name);
    if (e.is_regular_file() && is_index == index_files && name != kStoreMetaFile) bytes += e.file_size();
  }
  return double(bytes) / (1 << 20);
}

void bench_memory(const BenchMemoryArgs& a) {
  if (a.source != "synthetic" && a.source != "text")
    throw std::invalid_argument("bench memory: --source is '" + a.source + "', expected synthetic or text");
  if (a.source == "text" && a.text.empty())
    throw std::invalid_argument("bench memory: --source text needs --text FILE");
  constexpr int k = 10;
  std::unique_ptr<Synthetic> synth;
  std::unique_ptr<TextWindows> text;
  std::unique_ptr<HashEmbedder> embedder;
  std::mt19937_64 rng(a.seed);
  std::vector<std::vector<float>> recall_queries;
  if (a.source == "synthetic") {
    synth = std::make_unique<Synthetic>(a.dim, a.chunks, a.seed);
    std::uniform_int_distribution<int64_t> src(0, std::min(a.chunks, a.first_point) - 1);
    for (int64_t q = 0; q < a.recall_queries; ++q) recall_queries.push_back(synth->query(src(rng), rng()));
  } else {
    text = std::make_unique<TextWindows>(a.text, a.window_words);
    embedder = std::make_unique<HashEmbedder>(a.dim);
    for (int64_t q = 0; q < a.recall_queries; ++q) recall_queries.push_back(text->query(*embedder, rng, 12));
  }
  Oracle oracle(recall_queries, k);

  // A fresh memory directory, under its lock (reset deletes the store's files and nothing else).
  MemoryDirLock lock(a.dir);
  if (!a.reuse && !a.resume) lock.reset();
  StoreOptions so;
  so.embedder_name = embedder ? embedder->name() : "synthetic-" + std::to_string(a.dim);
  so.dim = a.dim;
  so.fsync = StoreOptions::Fsync::none;
  so.index_ram_mb = a.index_ram_mb;
  so.index_first_ram_mb = a.index_first_ram_mb;
  so.segment_chunks = a.segment_chunks;
  so.merge_factor = a.merge_factor;
  so.merge_ram_mb = a.merge_ram_mb;
  so.merge_nice = a.merge_nice;
  so.search_threads = a.search_threads;
  if (a.ef_search > 0) so.hnsw.ef_search = a.ef_search;
  if (a.storage != "i8" && a.storage != "f32")
    throw std::invalid_argument("bench memory: --storage is '" + a.storage + "', expected i8 or f32");
  so.hnsw.storage = a.storage == "i8" ? HnswParams::Storage::i8 : HnswParams::Storage::f32;
  const ProcMemory before = proc_memory();
  auto store = ChunkStore::open(a.dir, so);
  // Chunks already in the directory (--reuse, --resume); the loop adds the ones after them.
  const int64_t stored = a.reuse || a.resume ? store->size() : 0;
  if ((a.reuse && stored == 0) || stored > a.chunks)
    throw std::invalid_argument("bench memory: " + std::string(a.reuse ? "--reuse" : "--resume") + ": " + a.dir +
                                " holds " + std::to_string(stored) + " chunks, expected 1 to --chunks " +
                                std::to_string(a.chunks));
  if (stored > 0)
    std::fprintf(stderr, "bench memory: %s holds %ld of %ld chunks: %s\n", a.dir.c_str(), static_cast<long>(stored),
                 static_cast<long>(a.chunks), a.reuse ? "measured as it is" : "resuming after them");
  std::fprintf(stderr,
               "bench memory: %s, dim %ld, %ld chunks into %s (segment_chunks %ld, first %ld), RSS %.1f MiB before\n",
               a.source.c_str(), static_cast<long>(a.dim), static_cast<long>(a.chunks), a.dir.c_str(),
               static_cast<long>(so.effective_segment_chunks()), static_cast<long>(so.effective_first_segment_chunks()),
               before.rss_mib);

  std::vector<int64_t> points;
  for (int64_t p = a.first_point; p < a.chunks; p *= 10) points.push_back(p);
  points.push_back(a.chunks);
  // The store holds `stored` chunks: the points before that are past (their queries are drawn and dropped, to keep
  // the random sequence of an uninterrupted run); --reuse measures one point, what the directory holds.
  const int64_t end = a.reuse ? stored : a.chunks;
  if (a.reuse && std::find(points.begin(), points.end(), end) == points.end()) points.push_back(end);
  std::sort(points.begin(), points.end());
  auto latency_queries = [&](int64_t n) {
    std::vector<std::vector<float>> qs;
    std::uniform_int_distribution<int64_t> src(0, n - 1);
    for (int64_t q = 0; q < a.queries; ++q)
      qs.push_back(synth ? synth->query(src(rng), rng()) : text->query(*embedder, rng, 12));
    return qs;
  };

  std::vector<Point> results;
  std::vector<float> v(size_t(a.dim));
  Chunk c;
  auto t_add = Clock::now();
  double add_s = 0;
  int64_t added_since = 0;
  for (int64_t i = 0; i < end; ++i) {
    c.tokens.clear();
    c.positions.clear();
    if (synth) {
      synth->vector(i, v.data());
      for (int64_t t = 0; t < a.chunk_tokens; ++t) {
        c.tokens.push_back((i * 31 + t) % 32000);
        c.positions.push_back(i * a.tokens_per_chunk + t);
      }
      c.text = "synthetic chunk " + std::to_string(i);
    } else {
      c.text = text->chunk(i);
      const std::vector<float> e = embedder->embed(c.text);
      std::copy(e.begin(), e.end(), v.begin());
      for (int64_t t = 0; t < 2 * a.tokens_per_chunk; ++t) {
        c.tokens.push_back((i * 31 + t) % 32000);
        c.positions.push_back(i * a.tokens_per_chunk + t);
      }
    }
    if (i >= stored) {
      const auto t0 = Clock::now();
      store->add(c, v);
      add_s += std::chrono::duration<double>(Clock::now() - t0).count();
      ++added_since;
    }
    oracle.add(i, v.data(), a.dim);
    const int64_t n = i + 1;
    if (n % std::max<int64_t>(1, a.chunks / 20) == 0 && n != end)
      std::fprintf(stderr, "  %ld/%ld chunks%s, %.0f adds/s, RSS %.1f MiB\n", static_cast<long>(n),
                   static_cast<long>(a.chunks), n <= stored ? " (stored before: oracle only)" : "",
                   double(added_since) / std::max(add_s, 1e-9), proc_memory().rss_mib);
    if (std::find(points.begin(), points.end(), n) == points.end()) continue;
    if (n < stored) {
      latency_queries(n);
      continue;
    }

    store->flush();
    Point p;
    p.mem = proc_memory();  // before the queries and before waiting for merges: what ingestion holds
    // Searches are measured once the merges due at this point are done (they run beside ingestion; a merge in
    // progress costs its segment's RAM, seen in the peak).
    const auto tw = Clock::now();
    store->wait_merges();
    p.merge_wait_s = std::chrono::duration<double>(Clock::now() - tw).count();
    p.merges = store->merges_done();
    p.chunks = n;
    p.tokens = n * a.tokens_per_chunk;
    p.add_per_s = double(added_since) / std::max(add_s, 1e-9);
    p.mem_after_merges = proc_memory();
    p.segments = store->sealed_segments();
    p.log_mib = dir_mib(a.dir, false);
    p.index_mib = dir_mib(a.dir, true);
    std::vector<double> ms, cpu;
    for (const auto& query : latency_queries(n)) {
      const auto t = Clock::now();
      const double c0 = process_cpu_ms();
      const auto hits = store->search(query, k);
      cpu.push_back(process_cpu_ms() - c0);
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
      if (hits.empty()) throw std::runtime_error("bench memory: a query found nothing");
    }
    auto pct = [](std::vector<double>& v, double f) {
      std::sort(v.begin(), v.end());
      return v[std::min(v.size() - 1, size_t(f * double(v.size() - 1) + 0.5))];
    };
    p.p50_ms = pct(ms, 0.50);
    p.p99_ms = pct(ms, 0.99);
    p.cpu_p50_ms = pct(cpu, 0.50);
    p.cpu_p99_ms = pct(cpu, 0.99);
    double recall = 0;
    for (size_t q = 0; q < oracle.queries().size(); ++q) {
      const auto hits = store->search(oracle.queries()[q], k);
      int got = 0;
      for (const auto& t : oracle.top(q))
        for (const auto& h : hits) got += h.id == t.id;
      recall += double(got) / double(oracle.top(q).size());
    }
    p.recall = recall / double(oracle.queries().size());
    std::fprintf(stderr,
                 "  point %ld chunks: RSS %.1f MiB (anon %.1f, file %.1f), log %.0f MiB, index %.0f MiB in %ld "
                 "sealed segments + RAM, search p50 %.3f ms p99 %.3f ms (CPU p99 %.3f ms), recall@10 %.3f\n",
                 static_cast<long>(n), p.mem.rss_mib, p.mem.anon_mib, p.mem.file_mib, p.log_mib, p.index_mib,
                 static_cast<long>(p.segments), p.p50_ms, p.p99_ms, p.cpu_p99_ms, p.recall);
    std::fprintf(stderr, "    merges %ld (waited %.1f s), RSS after them %.1f MiB (anon %.1f), peak RSS so far %.1f MiB\n",
                 static_cast<long>(p.merges), p.merge_wait_s, p.mem_after_merges.rss_mib, p.mem_after_merges.anon_mib,
                 p.mem_after_merges.hwm_mib);
    results.push_back(p);
    add_s = 0;
    added_since = 0;
  }
  const double wall = std::chrono::duration<double>(Clock::now() - t_add).count();

  FILE* table = table_stream(a.json);
  std::fprintf(table,
               "bench memory: %s vectors, dim %ld, %ld tokens per chunk, index_ram_mb %ld (first %ld), ef_search %d, "
               "%.0f s\n",
               a.source.c_str(), static_cast<long>(a.dim), static_cast<long>(a.tokens_per_chunk),
               static_cast<long>(a.index_ram_mb), static_cast<long>(a.index_first_ram_mb), so.hnsw.ef_search, wall);
  std::fprintf(table, "%10s %12s %9s %9s %9s %12s %9s %9s %4s %8s %8s %8s %9s\n", "chunks", "tokens", "RSS MiB",
               "anon", "file", "MiB/1e6 tok", "log MiB", "idx MiB", "seg", "p50 ms", "p99 ms", "cpu p99", "recall@10");
  nlohmann::json jp = nlohmann::json::array();
  for (const Point& p : results) {
    const double per_mtok = (p.mem.rss_mib - before.rss_mib) / (double(p.tokens) / 1e6);
    std::fprintf(table, "%10ld %12ld %9.1f %9.1f %9.1f %12.2f %9.0f %9.0f %4ld %8.3f %8.3f %8.3f %9.3f\n",
                 static_cast<long>(p.chunks), static_cast<long>(p.tokens), p.mem.rss_mib, p.mem.anon_mib,
                 p.mem.file_mib, per_mtok, p.log_mib, p.index_mib, static_cast<long>(p.segments), p.p50_ms, p.p99_ms,
                 p.cpu_p99_ms, p.recall);
    jp.push_back({{"chunks", p.chunks}, {"tokens", p.tokens}, {"rss_mib", p.mem.rss_mib},
                  {"rss_anon_mib", p.mem.anon_mib}, {"rss_file_mib", p.mem.file_mib},
                  {"rss_mib_per_1e6_tokens", per_mtok}, {"log_mib", p.log_mib}, {"index_mib", p.index_mib},
                  {"sealed_segments", p.segments}, {"p50_ms", p.p50_ms}, {"p99_ms", p.p99_ms},
                  {"cpu_p50_ms", p.cpu_p50_ms}, {"cpu_p99_ms", p.cpu_p99_ms},
                  {"recall_at_10", p.recall}, {"adds_per_s", p.add_per_s}, {"merges", p.merges},
                  {"merge_wait_s", p.merge_wait_s}, {"rss_after_merges_mib", p.mem_after_merges.rss_mib},
                  {"rss_anon_after_merges_mib", p.mem_after_merges.anon_mib}, {"peak_rss_mib", p.mem_after_merges.hwm_mib}});
  }
  std::fprintf(table, "RSS before the store: %.1f MiB; MiB/1e6 tok = (RSS - that) / tokens\n", before.rss_mib);
  if (a.json)
    print_json({{"command", "bench memory"}, {"source", a.source}, {"dim", a.dim},
                {"tokens_per_chunk", a.tokens_per_chunk}, {"index_ram_mb", a.index_ram_mb},
                {"index_first_ram_mb", a.index_first_ram_mb},
                {"first_segment_chunks", so.effective_first_segment_chunks()},
                {"segment_chunks", so.effective_segment_chunks()}, {"merge_factor", so.merge_factor},
                {"merge_ram_mb", so.merge_ram_mb}, {"merge_nice", so.merge_nice}, {"search_threads", so.search_threads},
                {"ef_search", so.hnsw.ef_search},
                {"rss_before_mib", before.rss_mib}, {"stored_before", stored},
                {"wall_s", wall}, {"points", jp}});
}

}  // namespace

void add_bench_memory_command(CLI::App& app) {
  auto a = std::make_shared<BenchMemoryArgs>();
  CLI::App* c = bench_command(app)->add_subcommand(
      "memory", "Chunk store at scale: RSS, size on disk, search latency and recall@10 at each decade of chunks");
  c->add_option("--chunks", a->chunks, "chunks to store")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--source", a->source, "synthetic (clustered vectors) or text (hash embeddings of --text)")
      ->capture_default_str();
  c->add_option("--text", a->text, "document for --source text (windows of --window-words words)");
  c->add_option("--window-words", a->window_words, "words per chunk for --source text")->capture_default_str();
  c->add_option("--dim", a->dim, "embedding length")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--tokens-per-chunk", a->tokens_per_chunk, "new tokens per chunk (tokens = chunks * this)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--chunk-tokens", a->chunk_tokens, "tokens stored in each synthetic record")->capture_default_str();
  c->add_option("--index-ram-mb", a->index_ram_mb, "RAM cap of the in-memory index segment (0 = never seal)")
      ->capture_default_str();
  c->add_option("--index-first-ram-mb", a->index_first_ram_mb,
                "RAM cap of the first in-memory segment; later ones ramp up to --index-ram-mb (0 = no ramp)")
      ->capture_default_str();
  c->add_option("--segment-chunks", a->segment_chunks, "vectors per sealed segment (overrides --index-ram-mb)")
      ->capture_default_str();
  c->add_option("--merge-factor", a->merge_factor, "merge this many sealed segments of a tier (0 = never merge)")
      ->capture_default_str();
  c->add_option("--merge-ram-mb", a->merge_ram_mb, "RAM cap of a segment being merged")->capture_default_str();
  c->add_option("--merge-nice", a->merge_nice, "nice value of the merge thread (0 = full speed)")->capture_default_str();
  c->add_option("--search-threads", a->search_threads, "threads that share a search's segments")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  c->add_option("--queries", a->queries, "latency queries per point")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--recall-queries", a->recall_queries, "queries checked against the exact oracle")
      ->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--first-point", a->first_point, "first measured point (then each decade and the end)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--seed", a->seed, "seed of vectors and queries")->capture_default_str();
  c->add_option("--ef-search", a->ef_search, "hnsw candidate list size while searching (0 = the store's default)")
      ->capture_default_str();
  c->add_option("--storage", a->storage, "vectors in the hnsw graphs: i8 or f32")->capture_default_str();
  c->add_flag("--reuse", a->reuse,
              "measure the directory as it is, at the chunks it holds (filled by a run of the same arguments)");
  c->add_flag("--resume", a->resume,
              "go on from the chunks the directory holds (filled partly by a run of the same arguments)")
      ->excludes("--reuse");
  c->add_option("--dir", a->dir, "memory directory (reset first)")->capture_default_str();
  c->add_flag("--json", a->json, "print a one-line JSON summary on stdout");
  c->callback([a] { bench_memory(*a); });
}

}  // namespace sinkflow::cli
