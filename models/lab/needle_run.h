// The grid runner of `sinkflow needle`: one EvalCase (models/lab/needle.h) through the streaming cache and the
// memory path, inline and deterministic (no flow graph), for several arms at once:
//   none            StreamingLLM alone (sinks + window)
//   evicted:region  what was evicted is indexed; at the question the top-k chunks enter the cache's memory region
//   evicted:prompt  ... the top-k chunks' text is fed into the stream right before the question (seed 001), marked
//                   so that it is never indexed again when it is evicted in turn
//   always:region   retrieval every `every` tokens (dialogue: at every user turn, query = the turn) and at the question
//   always:prompt   dialogue only: the retrieved text is fed before every user turn and before the question
//   cluster         no retrieval: the memory region holds centroids of the evicted K/V
// and an oracle: the none stream with the needle re-placed right before the question (the fact at the most
// favourable distance, at any length; a dense cache cannot go past the model's positions).
// Arms that see the same stream up to the question (none, evicted:*, the oracle) share one ingestion: the cache is
// snapshotted and restored between their questions (an unused memory region is masked, so the none and prompt arms
// are not changed by its presence).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "models/cache/kv_cache.h"
#include "models/io/names.h"
#include "models/lab/needle.h"
#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/memory/memory_path.h"
#include "models/stream/stream.h"
#include "models/text/generation_config.h"
#include "models/text/tokenizer.h"

namespace sinkflow {

enum class MemoryMode { none, evicted, always, cluster };
inline constexpr NameTable<MemoryMode, 4> kMemoryModeNames{{{{MemoryMode::none, "none"},
                                                             {MemoryMode::evicted, "evicted"},
                                                             {MemoryMode::always, "always"},
                                                             {MemoryMode::cluster, "cluster"}}}};
// Placement and kPlacementNames: models/memory/memory_path.h (the pipeline's retrieval.placement).

inline constexpr NameTable<StoreOptions::IndexKind, 2> kStoreIndexNames{
    {{{StoreOptions::IndexKind::hnsw, "hnsw"}, {StoreOptions::IndexKind::brute, "brute"}}}};

struct EvalArm {
  MemoryMode mode = MemoryMode::none;
  Placement placement = Placement::region;  // evicted and always only
  bool retrieves() const { return mode == MemoryMode::evicted || mode == MemoryMode::always; }
  std::string name() const;  // "none", "cluster", "evicted:region", "always:prompt", ...
};

struct EvalOptions {
  int64_t n_sink = 4;             // attention sinks, >= 0
  int64_t n_recent = 252;         // recent window, >= 16
  int64_t n_memory = 0;           // memory-region slots of the region placement; 0 = top_k x chunk (cluster: 16)
  int64_t chunk = 64;             // tokens per memory chunk, >= 1
  int64_t overlap = 32;           // chunk overlap, [0, chunk)
  int top_k = 2;                  // chunks retrieved per query, >= 1
  int64_t every = 128;            // always (needle, passkey): tokens between two retrievals, >= 1
  int64_t prefill_block = 32;     // tokens per forward while ingesting, >= 1
  int64_t max_new_tokens = 16;    // greedy answer length, >= 1
  int64_t turn_answer_tokens = 8; // dialogue: greedy tokens the model answers each user turn with, >= 0
  InjectMode inject = InjectMode::text;               // region placement: text | kv
  SelectOptions::Mode select = SelectOptions::Mode::topk;
  StoreOptions::IndexKind index = StoreOptions::IndexKind::hnsw;  // the chunk store's index: hnsw | brute (exact)
  // std::invalid_argument naming the flag (--window, --chunk, ...) and its range.
  void validate() const;
  int64_t memory_slots() const { return n_memory > 0 ? n_memory : top_k * chunk; }
};

// Chunks and stores what a stream evicts, except the tokens at marked absolute positions (retrieved text that was
// fed back into the stream: it is in the memory already and must never be indexed again). The text before and
// after a marked range joins as if the range had never been fed.
class EvictionIndexer {
 public:
  EvictionIndexer(ChunkStore& store, const Embedder& embedder, const Tokenizer& tokenizer, int64_t chunk_size,
                  int64_t overlap);
  // Positions [begin, end) are never indexed.
  void mark(int64_t begin, int64_t end);
  // Indexes the unmarked tokens of `spans` (chunks complete as chunk_size tokens gather).
  void add(const std::vector<EvictedSpan>& spans);
  // Indexes the partial last chunk.
  void flush();
  int64_t evicted() const { return evicted_; }  // tokens seen in spans
  int64_t dropped() const { return dropped_; }  // of which marked
  int64_t chunks() const { return chunks_; }    // chunks stored
 private:
  void store_all(std::vector<Chunk> chunks);
  ChunkStore& store_;
  const Embedder& embedder_;
  const Tokenizer& tokenizer_;
  Chunker chunker_;
  std::vector<std::pair<int64_t, int64_t>> marks_;
  int64_t evicted_ = 0, dropped_ = 0, chunks_ = 0;
};

// The state of a sink-policy session's cache (slots, positions, K/V: a deep copy), to go back to after a question was
// asked.
class CacheSnapshot {
 public:
  // std::invalid_argument unless the session runs the sink policy.
  explicit CacheSnapshot(const StreamSession& session);
  void restore(StreamSession& session) const;

 private:
  std::map<std::string, at::Tensor> state_;  // StreamSession::state_tensors(), copied
};

struct ArmResult {
  std::string arm;
  bool hit = false;     // every needle token was in the cache, or in the text the question's retrieval placed
  bool answer = false;  // answer_text in the greedy output
  double keywords = 0;  // keyword_fraction of the output
  double nll = std::numeric_limits<double>::quiet_NaN();  // mean NLL per answer token after the question
  std::string output;
  int64_t retrievals = 0, chunks = 0, evicted = 0, prompt_tokens = 0;  // prompt_tokens: retrieved text fed (prompt)
  int64_t not_indexed = 0;  // evicted tokens left out of the memory: retrieved text placed in the stream earlier
  std::vector<std::pair<int64_t, float>> retrieved;  // the question's retrieval: each chunk's first position, score
};

struct CellResult {
  int64_t length = 0;
  double depth = 0;
  int64_t tokens = 0;     // tokens of the case's segments
  std::string passkey;
  std::vector<ArmResult> arms;  // in the order asked
  ArmResult none;               // always run (the oracle gain needs it), reported as an arm only when asked
  ArmResult oracle;             // the needle re-placed right before the question
  double ingest_seconds = 0;    // the first (shared) ingestion
  int64_t ingest_tokens = 0;    // tokens it fed (segments and dialogue replies)
};

// Runs `c` for every arm and the oracle. `store_dir` is a memory directory the runner resets and reuses.
// progress(n) is called after every n tokens ingested (any ingestion). Throws std::invalid_argument for
// always:prompt outside the dialogue task.
CellResult run_eval_cell(const std::shared_ptr<const Decoder>& decoder, const Tokenizer& tokenizer,
                         const GenerationConfig& generation, const EvalCase& c, const std::vector<EvalArm>& arms,
                         const EvalOptions& options, const std::string& store_dir,
                         const std::function<void(int64_t)>& progress = {});

}  // namespace sinkflow
