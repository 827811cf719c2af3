// The memory of evicted text: chunking, a crash-safe persistent chunk store, and diverse selection.
//
//   evicted spans --Chunker--> Chunk (+ text from the caller's tokenizer) --Embedder--> ChunkStore::add
//   query vector --ChunkStore::search (select: top-k | MMR | farthest-point)--> SearchHit ids --get--> Chunk
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <shared_mutex>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include <ATen/core/Tensor.h>

#include "models/memory/segmented_index.h"
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
  int k = 2;                              // chunks to return, [0, kMaxRetrieved = 4096]
  enum class Mode { topk, mmr, farthest };
  Mode mode = Mode::topk;
  float mmr_lambda = 0.5f;                // MMR trade-off, [0, 1]: 1 = relevance only, 0 = diversity only
  int candidates = 20;                    // nearest non-excluded neighbours considered (at least k are), [0, 2^20]
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
  // Used when index == hnsw (M, ef_construction and storage of a saved index win). Vectors are kept as int8
  // codes (HnswParams::Storage::i8) and the best candidates re-scored with the exact embeddings of the log;
  // ef_search 128: hash vectors of text are sparse, and at 64 hnsw's recall@10 on them is ~0.85-0.90
  // (tools/BENCHMARKS.md, "Memory without end").
  HnswParams hnsw = default_hnsw();
  // RAM cap of the in-memory (newest) hnsw segment, MiB, >= 0: when it holds about this much it is sealed into
  // a segment file, memory-mapped and searched from disk; 0 = never seal (one in-RAM index). hnsw only.
  int64_t index_ram_mb = 64;
  // RAM cap of the first in-RAM segment, MiB, >= 0: the first segment is sealed at about this much, each later
  // one when it holds as many vectors as the sealed segments before it, until index_ram_mb (8, 8, 16, 32, 64, 64,
  // ... MiB at the defaults; the first four make one of 64 MiB when merged). The in-RAM segment then never holds
  // more than half of the stream, and a short stream takes little RAM (the first 10^6 tokens at 32 per chunk:
  // ~7 instead of ~25 MiB, tools/BENCHMARKS.md). 0 or >= index_ram_mb = index_ram_mb from the first segment on.
  int64_t index_first_ram_mb = 8;
  // Vectors per sealed segment; 0 = derived from index_ram_mb (HnswIndex::bytes_per_element). For tests.
  int64_t segment_chunks = 0;
  // Vectors of the first sealed segment (the ramp of index_first_ram_mb); 0 = derived from index_first_ram_mb, or
  // segment_chunks when that is set (no ramp). For tests.
  int64_t first_segment_chunks = 0;
  // Background merging of sealed segments (hnsw): whenever merge_factor adjacent sealed segments are of the same
  // tier (tier t: between merge_factor^t and merge_factor^(t+1) sealed segments' worth of ids), a thread of the
  // store (nice merge_nice) builds one segment of their ids from the log's embeddings, writes it (same rules as a seal),
  // swaps it in and deletes them, so that searches visit O(log n) segments. merge_factor 0 = never merge.
  int merge_factor = 4;
  // RAM cap of a segment being merged, MiB (it is built in RAM, as the active segment is): runs that would be
  // larger are left as they are. With the defaults, merged segments hold up to ~425K vectors at 384-d.
  int64_t merge_ram_mb = 256;
  // Nice value of the merge thread, [0, 19]: 10 leaves the cores to decoding; 0 merges at full speed (on a
  // machine whose cores are all busy, a nice-10 merge of 4 x 105K vectors may take an hour).
  int merge_nice = 10;
  // Threads that share a search's segments, [1, 64] (SegmentedIndex): the caller and search_threads - 1 helpers
  // of the store, idle between searches. At 10^7 chunks a search visits ~25 segments (tools/BENCHMARKS.md).
  int search_threads = 2;
  // Test hook: called by the merge thread at "saved" (the merged file is durable, the old ones are all there)
  // and "deleted-one" (the first old file is gone); a test kills the process there.
  std::function<void(const char* stage)> merge_hook;
  // The segment size in effect: segment_chunks, or index_ram_mb / bytes per element (at least 1,024), or 0.
  int64_t effective_segment_chunks() const;
  // The size of the first sealed segment: first_segment_chunks, or segment_chunks, or index_first_ram_mb / bytes
  // per element (at least 1,024); never above effective_segment_chunks().
  int64_t effective_first_segment_chunks() const;
  // Vectors at which the in-RAM segment is sealed when `sealed` ids lie in sealed segments before it:
  // clamp(sealed, first, full) of the two above; 0 = never.
  int64_t seal_chunks(int64_t sealed) const;
  void validate() const;
  static HnswParams default_hnsw() {
    HnswParams p;
    p.storage = HnswParams::Storage::i8;
    p.ef_search = 128;
    return p;
  }
};

// The files of a memory directory (MemoryDirLock deletes these and nothing else).
inline constexpr const char* kStoreMetaFile = "meta.json";
inline constexpr const char* kStoreLogFile = "chunks.log";
inline constexpr const char* kStoreIndexFile = "index.bin";
// Sealed segments: segment-000000.bin, segment-000001.bin, ... (6 or more digits). The number is a name, not an
// order: each file says which ids it covers, and a new file takes the lowest number not in use.
std::string store_segment_file(int64_t k);
// True for a name store_segment_file() makes (or its ".tmp" partner).
bool is_store_segment_file(const std::string& name);

// A memory directory:
//   meta.json   {"format": "sinkflow-chunk-store", "version": 1, "embedder": <name>, "dim": <dim>}
//   chunks.log  append-only records, record i holds chunk id i:
//                 u32 magic "SFCK" | u32 CRC32(length field + payload) | u64 payload length | payload
//               payload: i64 id, stream_id, n_overlap | u64 n_tok, i64 tokens[n_tok], i64 positions[n_tok] |
//                 u64 text bytes, text | u64 dim, f32 embedding[dim] (as given) |
//                 u8 kv dtype (0 none, 1 f32, 2 f16, 3 bf16, 4 f64) [| u8 ndim, i64 shape[ndim], raw kv bytes]
//               (native little-endian)
//   index.bin   VectorIndex::save() of the in-RAM index, its tag = a digest (chained CRC32) of the CRCs of the
//               records it covers: all of them (brute), those after the sealed segments (hnsw).
//   segment-NNNNNN.bin  (hnsw, when options.index_ram_mb or segment_chunks is set) sealed segments: HnswIndex::save()
//               of a full in-RAM segment (StoreOptions::seal_chunks: smaller ones first) or of a merge of adjacent
//               segments (StoreOptions::merge_factor), each covering a contiguous range of ids, labels ascending;
//               tag = the digest of the records it covers.
//               Memory-mapped read-only (MappedHnswIndex) and searched in place. A merge writes its file (tmp,
//               fsync, rename, fsync of the directory) before the segments it replaces are deleted: after a crash
//               the directory holds both, and opening keeps the larger.
// What stays in RAM per chunk: one u64 (its byte offset in the log). Text, tokens, K/V and the float embeddings
// are read from the log on demand (get, embedding, and the exact re-score of search candidates).
// Opening checks meta.json (a chunks.log missing beside index.bin or a segment is an error naming it), then every
// record of the log:
//   - a torn or corrupt tail (short header, length beyond the end, bad CRC, garbage) with no valid record after it
//     is dropped with a warning and the file is truncated to the last good record;
//   - a bad record followed by a valid one: std::invalid_argument naming chunks.log and the byte offset (data is
//     never dropped silently); so is a record with a good CRC but inconsistent content;
//   - every segment file is checked (readable, ids within the log, tag = the digest of their records); those that
//     are not are deleted (info line naming the file and why), as are leftover .tmp files. From id 0 on, the
//     segment that starts at the next id and reaches furthest is taken (a merged one before the ones it
//     replaced, which are deleted); where none starts there, a segment's worth of records is rebuilt from the
//     log (info line) and the chain goes on, while a full segment's worth of records is left;
//   - index.bin missing, unreadable, of the other kind, or covering other records or ids: rebuilt from the log's
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

  // Sealed segment files and their bytes (0 for a brute index or before the first seal).
  int64_t sealed_segments() const;
  uint64_t sealed_bytes() const;
  // Blocks until the merge thread has nothing left to do (no merge running or wanted). Merges done so far.
  void wait_merges();
  int64_t merges_done() const { return merges_done_; }

  const std::string& dir() const { return dir_; }
  const StoreOptions& options() const { return options_; }
  const VectorIndex& index() const { return *index_; }

 private:
  ChunkStore(std::string dir, StoreOptions options);
  // Fills offsets_ and the record CRCs (kept only while opening).
  void scan_log(std::vector<uint32_t>& crcs);
  void open_index(const std::vector<uint32_t>& crcs);
  // Maps the valid sealed segments and rebuilds the rest; sets sealed_end_.
  std::vector<std::unique_ptr<MappedHnswIndex>> open_segments(const std::vector<uint32_t>& crcs);
  // Builds a HnswIndex over ids [first, last) from the log's embeddings.
  std::unique_ptr<HnswIndex> build_hnsw(int64_t first, int64_t last) const;
  // Saves the active segment as the next segment file and maps it; the caller holds writer_.
  void seal();
  // Segment files: lowest unused number (taken), and its release.
  int64_t take_segment_number();
  void release_segment_number(int64_t k);
  // The merge thread: waits for a request, merges while a run is due.
  void merge_loop();
  // Merges one run if one is due; false if none (or the store is closing).
  bool merge_once();
  void request_merge();
  // ef_search of a sealed segment of `size` ids: scaled with sqrt(size / segment), as merged segments return their
  // candidates from one graph instead of several.
  int segment_ef(int64_t size) const;
  // [offset, end) of record `id` in the log; unknown id: std::invalid_argument naming `who`.
  std::pair<uint64_t, uint64_t> record_span(int64_t id, const char* who) const;
  std::string read_record(uint64_t offset, uint64_t end) const;
  // The embedding of record `id`; `crc`, if given, receives the record's CRC (as scanned at open).
  void read_embedding(int64_t id, float* out, uint32_t* crc = nullptr) const;
  std::string log_path() const;
  std::string index_path() const;
  std::string segment_path(int64_t k) const;

  std::string dir_;
  StoreOptions options_;
  int fd_ = -1;
  uint64_t end_ = 0;          // size of the valid log
  uint32_t digest_ = 0;       // chained CRC32 of the records' CRCs
  uint32_t active_digest_ = 0;  // the same over the records after the sealed segments (index.bin's, hnsw)
  int64_t sealed_end_ = 0;    // ids below this are in sealed segments
  int64_t segment_chunks_ = 0;  // options_.effective_segment_chunks() (0 for brute)
  bool index_dirty_ = false;
  std::vector<uint64_t> offsets_;  // byte offset of record i in chunks.log
  // Sealed segment files: first id -> (last id, file number); and the numbers in use. Under files_mutex_.
  std::map<int64_t, std::pair<int64_t, int64_t>> chain_;
  std::set<int64_t> numbers_;
  std::mutex files_mutex_;
  std::thread merger_;
  std::mutex merge_mutex_;
  std::condition_variable merge_cv_;
  bool merge_stop_ = false, merge_wanted_ = false, merge_busy_ = false;  // under merge_mutex_
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> merges_done_{0};
  std::unique_ptr<VectorIndex> index_;
  SegmentedIndex* segmented_ = nullptr;  // index_ when it is hnsw
  mutable std::shared_mutex mutex_;  // offsets_, end_: exclusive to append, shared to read
  std::mutex writer_;                // serializes add/flush
};

}  // namespace sinkflow
