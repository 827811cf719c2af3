// Vector indexes for the memory store: cosine similarity over float vectors.
//
// Two implementations behind one interface: HnswIndex (hnswlib 0.6.2, approximate, the one the memory path uses)
// and BruteForceIndex (exact, the test oracle and a fine choice below a few thousand vectors).
//
// Cosine similarity is computed as the inner product of unit vectors: every vector is L2-normalized (in double
// precision) when it is added and every query is normalized before it is searched. Callers may pass vectors of any
// non-zero length. A zero vector may be added (an empty text embeds to one): it is stored as zero and scores 0
// against every query. A zero query matches nothing: search() returns no hits.
//
// Thread safety (both indexes): any number of threads may call the const methods (search, contains, vector, save,
// size) at once, and one or more threads may call add() meanwhile. hnswlib itself is NOT safe for a search that runs
// during an insert (its authors: nmslib/hnswlib issues #29, #100, #562; e.g. maxlevel_ and enterpoint_node_ are
// updated without synchronisation), so add() takes an exclusive lock and searches share one: a search waits for at most
// one insert (~1 ms at 384-d), never for a whole batch.
//
// hnswlib is an implementation detail: its header defines non-inline functions, so it must be included by
// exactly one translation unit of the program (vector_index.cpp). Keep it out of headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sinkflow {

struct SearchHit {
  int64_t id = -1;
  float score = 0.0f;  // cosine similarity to the query, in [-1, 1]
};

class VectorIndex {
 public:
  virtual ~VectorIndex() = default;

  // "hnsw" | "brute".
  virtual std::string name() const = 0;
  // Length of every vector, >= 1.
  virtual int64_t dim() const = 0;
  // Number of vectors added.
  virtual int64_t size() const = 0;

  // Adds a copy of vector[0..dim) under `id`, normalized to unit length.
  // Throws std::invalid_argument if `id` is already present or a component is not finite.
  virtual void add(int64_t id, const float* vector) = 0;

  // The (at most) k stored vectors most similar to query[0..dim), sorted by score descending, ties by id ascending.
  // Returns nothing for k <= 0, an empty index, or a zero/non-finite query.
  virtual std::vector<SearchHit> search(const float* query, int k) const = 0;

  virtual bool contains(int64_t id) const = 0;
  // A copy of the stored (normalized) vector of `id`; throws std::invalid_argument if absent.
  virtual std::vector<float> vector(int64_t id) const = 0;

  // Writes the index to `path` atomically (path.tmp, fsync, rename). The file starts with a header (magic, dim,
  // count, tag, payload size, CRC32 of the payload, CRC32 of the header); `tag` is an opaque number the caller
  // may use to tie the index to other data (the chunk store stores a digest of its log there).
  // Native byte order (little-endian on every supported platform). Throws std::runtime_error on I/O failure.
  virtual void save(const std::string& path, uint64_t tag = 0) const = 0;
};

struct HnswParams {
  // How vectors are kept in the graph. f32: 4 * dim bytes, exact inner products. i8: a float scale and dim int8
  // codes per vector (dim + 4 bytes; scale = max |component| / 127), inner products approximate to ~1e-2: the
  // chunk store re-scores the best candidates with the exact float embeddings it reads from its log.
  enum class Storage { f32, i8 };
  Storage storage = Storage::f32;
  int M = 16;                        // graph degree (level 0 keeps 2*M), [2, 2048]
  int ef_construction = 100;         // candidate list size while inserting, >= 1
  int ef_search = 64;                // candidate list size while searching (raised to k when k is larger), >= 1
  int64_t initial_capacity = 1024;   // vectors before the first resize; capacity doubles when full, >= 1
  uint64_t seed = 100;               // level generator seed: same inserts + same seed = same graph
  // Throws std::invalid_argument naming the field, the range and the value found.
  void validate() const;
};

// Both hnsw indexes: a vector whose stored form (HnswParams::Storage) equals that of a vector already in the graph
// is not inserted into the graph but kept as its duplicate (an id and the element it shares a vector with) and
// returned beside it, with its score; size() counts duplicates. A graph of thousands of equal vectors (a repeated
// text embeds to one vector) cuts every other vector off from them, and a search that enters them never leaves.
// Graphs of at most kExactSearchMax elements are searched exactly (a scan is as cheap as the graph search there).
inline constexpr int64_t kExactSearchMax = 2048;

class HnswIndex final : public VectorIndex {
 public:
  explicit HnswIndex(int64_t dim, HnswParams params = {});
  ~HnswIndex() override;
  HnswIndex(const HnswIndex&) = delete;
  HnswIndex& operator=(const HnswIndex&) = delete;

  // Reads a file written by save(). M, ef_construction and storage come from the file; ef_search, initial_capacity and seed
  // from `params`. Every field, offset and neighbour id is validated against the file size and the graph before it
  // is used, so a damaged or hostile file gives std::invalid_argument naming `path`, what was expected and what was
  // found (never a crash); a missing/unreadable file gives std::runtime_error. `tag` receives the saved tag.
  static std::unique_ptr<HnswIndex> load(const std::string& path, int64_t dim, HnswParams params = {},
                                         uint64_t* tag = nullptr);

  std::string name() const override { return "hnsw"; }
  int64_t dim() const override;
  int64_t size() const override;
  void add(int64_t id, const float* vector) override;
  std::vector<SearchHit> search(const float* query, int k) const override;
  bool contains(int64_t id) const override;
  std::vector<float> vector(int64_t id) const override;
  void save(const std::string& path, uint64_t tag = 0) const override;

  // Vectors kept as duplicates (not in the graph).
  int64_t duplicates() const;
  // Current capacity (vectors storable before the next resize).
  int64_t capacity() const;
  // Bytes of RAM the graph takes per stored vector (level 0 links, vector, label and hnswlib's per-element
  // bookkeeping), for sizing; upper levels (~1/M of the elements) are left out.
  static int64_t bytes_per_element(int64_t dim, const HnswParams& params);
  const HnswParams& params() const { return params_; }
  void set_ef_search(int ef_search);

 private:
  struct Impl;
  HnswIndex(int64_t dim, HnswParams params, std::unique_ptr<Impl> impl);
  HnswParams params_;
  std::unique_ptr<Impl> impl_;
};

// A file written by HnswIndex::save(), memory-mapped read-only and searched in place (the same algorithm as
// hnswlib's search: greedy descent through the upper levels, then a best-first search of level 0 with ef_search
// candidates). It takes almost no RAM of its own: an entry per element above level 0 (~1/M of them); the graph
// and vectors are pages of the file, read on demand by the kernel (they count as RssFile while resident, and
// the kernel drops them under memory pressure). add() throws: a mapped index is sealed.
class MappedHnswIndex final : public VectorIndex {
 public:
  // Same checks and error contract as HnswIndex::load (every field, neighbour id and level is validated before
  // a search can follow it), done by streaming the file once; labels must ascend with the element order (an index
  // filled in id order, as the chunk store's segments are). `storage` is read from the file.
  static std::unique_ptr<MappedHnswIndex> open(const std::string& path, int64_t dim, int ef_search,
                                               uint64_t* tag = nullptr);
  ~MappedHnswIndex() override;
  MappedHnswIndex(const MappedHnswIndex&) = delete;
  MappedHnswIndex& operator=(const MappedHnswIndex&) = delete;

  std::string name() const override { return "hnsw-mapped"; }
  int64_t dim() const override;
  int64_t size() const override;
  void add(int64_t id, const float* vector) override;  // throws std::logic_error
  std::vector<SearchHit> search(const float* query, int k) const override;
  // Labels ascend (checked at open): contains() and vector() are binary searches.
  bool contains(int64_t id) const override;
  std::vector<float> vector(int64_t id) const override;  // dequantized for i8
  void save(const std::string& path, uint64_t tag = 0) const override;  // copies the file
  // Smallest and largest label (id) stored; {0, -1} when empty.
  std::pair<int64_t, int64_t> id_range() const;
  // Candidate list size of later searches (>= 1; else std::invalid_argument). Safe beside running searches.
  void set_ef_search(int ef_search);
  int ef_search() const;
  // Vectors kept as duplicates (not in the graph).
  int64_t duplicates() const;
  // Size of the mapped file in bytes.
  uint64_t file_bytes() const;

 private:
  struct Impl;
  explicit MappedHnswIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class BruteForceIndex final : public VectorIndex {
 public:
  explicit BruteForceIndex(int64_t dim);
  ~BruteForceIndex() override;
  BruteForceIndex(const BruteForceIndex&) = delete;
  BruteForceIndex& operator=(const BruteForceIndex&) = delete;

  // Reads a file written by save(); same error contract as HnswIndex::load.
  static std::unique_ptr<BruteForceIndex> load(const std::string& path, int64_t dim, uint64_t* tag = nullptr);

  std::string name() const override { return "brute"; }
  int64_t dim() const override;
  int64_t size() const override;
  void add(int64_t id, const float* vector) override;
  std::vector<SearchHit> search(const float* query, int k) const override;
  bool contains(int64_t id) const override;
  std::vector<float> vector(int64_t id) const override;
  void save(const std::string& path, uint64_t tag = 0) const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Unit-length copy of v[0..dim) (norm accumulated in double). A zero vector stays zero and sets *nonzero (if given)
// to false. A non-finite component: std::invalid_argument naming `what`, the component and its value.
std::vector<float> normalized(const float* v, int64_t dim, const char* what = "vector", bool* nonzero = nullptr);

// sum a[i] * b[i] over [0, n), eight partial sums (vectorizable without -ffast-math).
float inner_product(const float* a, const float* b, int64_t n);
// Search order: score descending, ties by id ascending.
bool hit_before(const SearchHit& a, const SearchHit& b);

// CRC-32 (IEEE 802.3 / zlib polynomial), chainable: crc32(b, nb, crc32(a, na)) == crc32(a||b).
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

// Insert rate and query latency of HnswIndex (default params), single thread, on `n` seeded clustered vectors of
// `dim` (n/100 Gaussian centres, point = centre + 0.5 * noise) queried with `n_queries` seeded queries (a stored
// point + 0.5 * noise), k = 10. Recall@10 against exact search is measured on min(n_queries, 100) of them.
// Used by `sinkflow bench memory`; never by a test that asserts a time.
struct BenchResult {
  int64_t n = 0, dim = 0, n_queries = 0;
  double build_s = 0;        // wall time of n inserts
  double insert_per_s = 0;   // n / build_s
  double query_p50_ms = 0;   // per-query latency percentiles, k = 10
  double query_p99_ms = 0;
  double query_mean_ms = 0;
  double recall_at_10 = 0;   // mean over the checked queries, vs BruteForceIndex
  int64_t recall_queries = 0;
};
BenchResult bench_index(int64_t n, int64_t dim, int64_t n_queries, uint64_t seed);

}  // namespace sinkflow
