// The memory path as plain functions plus one small state holder: evicted spans -> chunks with text ->
// embeddings -> chunk store; query -> retrieved chunks -> the cache's memory region. The flow-graph nodes
// (embedding, index-insert, retrieve, re-inject) and `sinkflow needle` call these.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "models/io/names.h"
#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/cache/kv_cache.h"
#include "models/stream/stream.h"
#include "models/text/tokenizer.h"

namespace sinkflow {

enum class ReplacePolicy { score, lru };
inline constexpr NameTable<ReplacePolicy, 2> kReplacePolicyNames{{{{ReplacePolicy::score, "score"},
                                                                   {ReplacePolicy::lru, "lru"}}}};
ReplacePolicy parse_replace_policy(const std::string& name);  // "score" | "lru"

// When model-step asks the memory for context: never, at each user turn (query = the turn), or every N tokens
// (query = the recent text).
enum class RetrievalTrigger { none, turn, always, both };
inline constexpr NameTable<RetrievalTrigger, 4> kRetrievalTriggerNames{{{{RetrievalTrigger::none, "none"},
                                                                        {RetrievalTrigger::turn, "turn"},
                                                                        {RetrievalTrigger::always, "always"},
                                                                        {RetrievalTrigger::both, "both"}}}};
// Whether `t` asks at each user turn / every N tokens.
inline bool retrieves_per_turn(RetrievalTrigger t) { return t == RetrievalTrigger::turn || t == RetrievalTrigger::both; }
inline bool retrieves_every(RetrievalTrigger t) { return t == RetrievalTrigger::always || t == RetrievalTrigger::both; }

// Where retrieved chunks go: into the cache's memory region between the sinks and the window (`region`), or as
// text placed right before the turn that asked for them, fed into the stream and never indexed again (`prompt`).
enum class Placement { region, prompt };
inline constexpr NameTable<Placement, 2> kPlacementNames{{{{Placement::region, "region"}, {Placement::prompt, "prompt"}}}};

// How a stream asks its memory for context and how what comes back enters the cache.
struct RetrievalOptions {
  RetrievalTrigger trigger = RetrievalTrigger::turn;  // none | turn | always | both (turn and always)
  int64_t every = 128;         // always: tokens between two queries, [1, 2^40]
  int64_t query_tokens = 64;   // always: recent tokens that make the query text, [1, 2^24]
  bool sync = false;           // turn: the turn waits until everything evicted so far is indexed and its
                               // retrieval is injected (deterministic; evaluation)
  InjectMode inject = InjectMode::text;        // text (prefill the chunk) | kv (restore its stored K/V)
  ReplacePolicy replace = ReplacePolicy::score;  // which resident chunk leaves the memory region when full
  Placement placement = Placement::region;       // region | prompt (a turn then always waits for its retrieval)
  // FieldError (a std::invalid_argument) naming the field and its range.
  void validate() const;
};

inline constexpr NameTable<SelectOptions::Mode, 3> kSelectModeNames{{{{SelectOptions::Mode::topk, "topk"},
                                                                      {SelectOptions::Mode::mmr, "mmr"},
                                                                      {SelectOptions::Mode::farthest, "farthest"}}}};

// Groups an evicted span into chunks (through `chunker`, which keeps the partial tail) and decodes their text.
std::vector<Chunk> chunk_span(Chunker& chunker, int64_t stream_id, const EvictedSpan& span, const Tokenizer& tokenizer);

// Embeds `chunk.text` and appends it to the store; returns its id (also written into chunk.id).
int64_t store_chunk(ChunkStore& store, const Embedder& embedder, Chunk& chunk);

struct Retrieved {
  float score = 0;  // cosine similarity to the query
  Chunk chunk;      // with its id, tokens, text and (when stored) K/V
};

// The text placement `prompt` feeds for `hits`: each chunk's text in stream order, each followed by a newline.
std::string placed_text(std::vector<Retrieved> hits);

// The parts of `span` whose positions lie outside `ranges` (stream positions [begin, end): text placed by placement
// `prompt`, never indexed again), as spans of their own, oldest first (K/V narrowed along the tokens). `dropped`
// (optional) is increased by the tokens left out.
std::vector<EvictedSpan> unmarked_runs(const EvictedSpan& span, const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                       int64_t* dropped = nullptr);

// The chunks `options` selects for `query` (top-k / MMR / farthest-point, excluding options.exclude).
std::vector<Retrieved> retrieve(const ChunkStore& store, const Embedder& embedder, const std::string& query,
                                const SelectOptions& options, bool load_kv);

// Which chunks occupy a stream's memory region, and which leave when a new one needs room: the lowest
// retrieval score (`score`) or the least recently retrieved (`lru`).
class MemoryRegion {
 public:
  explicit MemoryRegion(ReplacePolicy policy = ReplacePolicy::score) : policy_(policy) {}

  // Writes the retrieved chunks into the session's memory region, best first: a chunk already resident is
  // only marked as used; others replace resident chunks (never one of `hits` itself) until they fit; a chunk
  // longer than the whole region is skipped. Returns the ids written now.
  std::vector<int64_t> inject(StreamSession& session, const std::vector<Retrieved>& hits, InjectMode mode, int64_t step);

  std::vector<int64_t> resident() const;
  bool contains(int64_t chunk_id) const;
  // Absolute positions of the tokens of the resident chunks (the original ones, in the stream).
  std::vector<int64_t> resident_positions() const;

  // One resident chunk: its id, the retrieval score it came with, the step it was last used at, and the stream
  // positions of its tokens. In the order they entered.
  struct Resident {
    int64_t chunk_id = -1;
    float score = 0;
    int64_t last_used = 0;
    std::vector<int64_t> positions;
  };
  std::vector<Resident> residents() const;
  // Takes back residents() (a resumed stream whose cache already holds those chunks).
  void restore(std::vector<Resident> residents);

 private:
  using Entry = Resident;
  ReplacePolicy policy_;
  std::vector<Entry> entries_;
};

}  // namespace sinkflow
