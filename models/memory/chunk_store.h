// The memory of evicted text: chunking, a crash-safe persistent chunk store, and diverse selection.
//
//   evicted spans --Chunker--> Chunk (+ text from the caller's tokenizer) --Embedder--> ChunkStore::add
//   query vector --ChunkStore::search (select: top-k | MMR | farthest-point)--> SearchHit ids --get--> Chunk
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include <ATen/core/Tensor.h>

#include "models/memory/vector_index.h"

namespace sinkflow {

struct Chunk {
  int64_t id = -1;                 // assigned by ChunkStore::add (0, 1, 2, ...); -1 before
  int64_t stream_id = 0;           // the sequence the tokens were evicted from
  int64_t n_overlap = 0;           // leading tokens repeated from the stream's previous chunk (Chunker overlap)
  std::vector<int64_t> tokens;     // token ids
  std::vector<int64_t> positions;  // absolute position in the stream of each token
  std::string text;                // the tokens decoded (filled in by the caller, which has the tokenizer)
  at::Tensor kv;                   // optional: [n_layer, 2, n_kv_head, n_tok, d_head], f16/bf16/f32/f64; undefined = none
};

// Groups a stream's evicted tokens into chunks of chunk_size tokens.
// Without overlap, the chunks partition the fed sequence. With overlap > 0, every chunk after a stream's first
// starts with the last `overlap` tokens of the previous chunk (Chunk::n_overlap says how many), followed by
// chunk_size - overlap new tokens; concatenating tokens[n_overlap:] of a stream's chunks reproduces exactly what was
// fed (tokens, positions and kv alike). Streams are independent. Not thread-safe (one owner).
class Chunker {
 public:
  // chunk_size >= 1, 0 <= overlap < chunk_size; else std::invalid_argument.
  Chunker(int64_t chunk_size, int64_t overlap = 0);

  // Appends tokens (and their absolute positions, same count) of `stream_id`; returns the chunks they complete, in
  // order. kv is optional: [n_layer, 2, n_kv_head, n_tok, d_head] with n_tok = tokens.size() (token dim = 3); a
  // stream is fed either always with kv (same dtype, device and other dims) or never. The chunks own their kv
  // (never a view of the caller's tensor). Bad shapes or counts: std::invalid_argument naming the mismatch.
  std::vector<Chunk> feed(int64_t stream_id, const std::vector<int64_t>& tokens,
                          const std::vector<int64_t>& positions, const at::Tensor& kv = {});

  // Emits the pending tokens of every stream as a final, shorter chunk (streams in ascending id order; streams
  // with nothing pending emit nothing). The stream's next chunk overlaps the flushed one as usual.
  std::vector<Chunk> flush();

  // Tokens fed but not yet emitted, over all streams.
  int64_t pending() const;
  int64_t chunk_size() const { return chunk_size_; }
  int64_t overlap() const { return overlap_; }

 private:
  struct Stream {
    std::vector<int64_t> tokens, positions;  // pending new tokens
    std::vector<at::Tensor> kv;              // pending kv pieces (token dim 3), in order
    std::vector<int64_t> tail_tokens, tail_positions;  // overlap carried from the previous chunk
    at::Tensor tail_kv;
    int kv_state = -1;   // -1 not yet known, 0 without kv, 1 with kv
    at::Tensor kv_like;  // first kv seen: the reference for dtype, device and dims
  };
  Chunk emit(int64_t stream_id, Stream& s, int64_t n_new);

  int64_t chunk_size_;
  int64_t overlap_;
  std::map<int64_t, Stream> streams_;
};

// Choice of retrieved chunks. Returned hits carry their cosine similarity to the query and come in selection order.
struct SelectOptions {
  int k = 2;                              // chunks to return, >= 0
  enum class Mode { topk, mmr, farthest };
  Mode mode = Mode::topk;
  float mmr_lambda = 0.5f;                // MMR trade-off, [0, 1]: 1 = relevance only, 0 = diversity only
  int candidates = 20;                    // nearest non-excluded neighbours considered (at least k are), >= 0
  std::unordered_set<int64_t> exclude;    // ids never returned (e.g. chunks already in the cache)
  float min_score = -1.0f;                // candidates with a lower cosine similarity are never returned
  // Throws std::invalid_argument naming the field, the range and the value found.
  void validate() const;
};

// Fetches the max(candidates, k) nearest ids of `query` that are not excluded (asking the index for that many
// plus exclude.size()), drops those below min_score, then picks k of them:
//  - topk:     the k most similar;
//  - mmr:      maximal marginal relevance: repeatedly the candidate maximizing
//              lambda * sim(q, d) - (1 - lambda) * max_{s selected} sim(d, s)   (the first pick is the most similar);
//  - farthest: farthest-point: first the most similar, then repeatedly the candidate maximizing
//              min_{s selected} (1 - sim(d, s)).
// Ties go to the more similar candidate. sim(d, s) uses the vectors stored in the index. A zero query returns {}.
std::vector<SearchHit> select(const VectorIndex& index, const float* query, const SelectOptions& options);

struct StoreOptions {
  std::string embedder_name;             // Embedder::name() of the vectors; must match an existing directory
  int64_t dim = 0;                       // embedding length, >= 1; must match an existing directory
  // Durability of chunks.log. Every add() is written to the OS at once (a process crash loses nothing);
  // none: never fsync; flush: fsync in flush() and on close; every: fsync after every add().
  enum class Fsync { none, flush, every };
  Fsync fsync = Fsync::flush;
  enum class IndexKind { hnsw, brute };
  IndexKind index = IndexKind::hnsw;
  HnswParams hnsw;                       // used when index == hnsw (M and ef_construction of a saved index win)
  void validate() const;
};

// The files of a memory directory (MemoryDirLock deletes these and nothing else).
inline constexpr const char* kStoreMetaFile = "meta.json";
inline constexpr const char* kStoreLogFile = "chunks.log";
inline constexpr const char* kStoreIndexFile = "index.bin";

// A memory directory:
//   meta.json   {"format": "sinkflow-chunk-store", "version": 1, "embedder": <name>, "dim": <dim>}
//   chunks.log  append-only records, record i holds chunk id i:
//                 u32 magic "SFCK" | u32 CRC32(length field + payload) | u64 payload length | payload
//               payload: i64 id, stream_id, n_overlap | u64 n_tok, i64 tokens[n_tok], i64 positions[n_tok] |
//                 u64 text bytes, text | u64 dim, f32 embedding[dim] (as given) |
//                 u8 kv dtype (0 none, 1 f32, 2 f16, 3 bf16, 4 f64) [| u8 ndim, i64 shape[ndim], raw kv bytes]
//               (native little-endian)
//   index.bin   VectorIndex::save() of the index, its tag = a digest of the records' CRCs it covers.
// Opening checks meta.json, then every record of the log:
//   - a torn or corrupt tail (short header, length beyond the end, bad CRC, garbage) with no valid record after it
//     is dropped with a warning and the file is truncated to the last good record;
//   - a bad record followed by a valid one: std::invalid_argument naming chunks.log and the byte offset (data is
//     never dropped silently); so is a record with a good CRC but inconsistent content;
//   - index.bin missing, unreadable, of the other kind, or covering other records: rebuilt from the log's
//     embeddings (info line), saved at the next flush().
// All lengths read from a file are checked against what is left of it before anything is allocated.
// Thread safety: one writer thread (add, flush) and any number of reader threads (get, search, size) at once.
// One process at a time: the log is flock()ed; a second open of the same directory gets std::runtime_error.
class ChunkStore {
 public:
  // Creates the directory and meta.json if needed. Wrong embedder name or dim for an existing directory:
  // std::invalid_argument naming dir/meta.json, expected and found. I/O failures: std::runtime_error.
  static std::unique_ptr<ChunkStore> open(const std::string& dir, const StoreOptions& options);
  // Flushes (errors are logged, not thrown).
  ~ChunkStore();
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  // Appends the chunk (chunk.id is ignored) with its embedding (dim floats, finite; stored as given, indexed
  // normalized) and returns its id = the previous size(). kv, if defined, must be 5-d with n_tok = tokens.size()
  // and a supported dtype; it is stored on CPU in its dtype. Bad input: std::invalid_argument before anything is
  // written. A failed write is rolled back and throws std::runtime_error.
  int64_t add(const Chunk& chunk, const std::vector<float>& embedding);

  // The chunk with this id (kv left undefined unless load_kv). Unknown id: std::invalid_argument.
  Chunk get(int64_t id, bool load_kv = true) const;
  // The embedding of this id as it was given to add().
  std::vector<float> embedding(int64_t id) const;

  // select() over the index; query has dim floats.
  std::vector<SearchHit> search(const std::vector<float>& query, const SelectOptions& options) const;
  // Top-k shorthand.
  std::vector<SearchHit> search(const std::vector<float>& query, int k) const;

  int64_t size() const;
  // fsyncs the log (per StoreOptions::fsync) and saves index.bin if it changed since the last save.
  void flush();

  const std::string& dir() const { return dir_; }
  const StoreOptions& options() const { return options_; }
  const VectorIndex& index() const { return *index_; }

 private:
  struct Record {
    uint64_t offset;        // of the record header in chunks.log
    uint64_t payload_len;
    uint32_t crc;
    uint32_t embedding_at;  // offset of the embedding floats inside the payload
  };
  ChunkStore(std::string dir, StoreOptions options);
  void scan_log();
  void open_index();
  std::string read_payload(const Record& r) const;
  std::string log_path() const;
  std::string index_path() const;

  std::string dir_;
  StoreOptions options_;
  int fd_ = -1;
  uint64_t end_ = 0;        // size of the valid log
  uint32_t digest_ = 0;     // chained CRC32 of the records' CRCs
  bool index_dirty_ = false;
  std::vector<Record> records_;
  std::unique_ptr<VectorIndex> index_;
  mutable std::shared_mutex mutex_;  // records_, end_, digest_: exclusive to append, shared to read
  std::mutex writer_;                // serializes add/flush
};

}  // namespace sinkflow
