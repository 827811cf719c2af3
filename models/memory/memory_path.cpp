#include "models/memory/memory_path.h"

#include "models/io/field_error.h"
#include "models/io/limits.h"

#include <algorithm>
#include <stdexcept>

namespace sinkflow {

ReplacePolicy parse_replace_policy(const std::string& name) {
  return enum_from_name(kReplacePolicyNames, name, "replacement policy");
}

void RetrievalOptions::validate() const {
  if (every < 1 || every > kMaxCount)
    throw FieldError("every", "every must be in [1, " + std::to_string(kMaxCount) + "] (tokens between two queries), found " +
                                  std::to_string(every));
  if (query_tokens < 1 || query_tokens > kMaxCacheTokens)
    throw FieldError("query_tokens", "query_tokens must be in [1, " + std::to_string(kMaxCacheTokens) + "], found " +
                                         std::to_string(query_tokens));
  if (sync && !retrieves_per_turn(trigger))
    throw FieldError("sync", std::string("sync must be false unless trigger is turn or both, found trigger ") +
                                 enum_name(kRetrievalTriggerNames, trigger));
  if (placement == Placement::prompt && inject == InjectMode::kv)
    throw FieldError("placement", "placement prompt places retrieved text in the stream, so inject must be text, found kv");
}

std::vector<Chunk> chunk_span(Chunker& chunker, int64_t stream_id, const EvictedSpan& span, const Tokenizer& tokenizer) {
  std::vector<Chunk> chunks = chunker.feed(stream_id, span.tokens, span.positions, span.kv);
  for (Chunk& c : chunks) c.text = tokenizer.decode(c.tokens);
  return chunks;
}

int64_t store_chunk(ChunkStore& store, const Embedder& embedder, Chunk& chunk) {
  chunk.id = store.add(chunk, embedder.embed(chunk.text));
  return chunk.id;
}

std::vector<Retrieved> retrieve(const ChunkStore& store, const Embedder& embedder, const std::string& query,
                                const SelectOptions& options, bool load_kv) {
  std::vector<Retrieved> out;
  for (const SearchHit& hit : store.search(embedder.embed(query), options)) {
    out.push_back({hit.score, store.get(hit.id, load_kv)});
  }
  return out;
}

std::vector<int64_t> MemoryRegion::inject(StreamSession& session, const std::vector<Retrieved>& hits, InjectMode mode,
                                          int64_t step) {
  std::vector<int64_t> written;
  const int64_t region = session.cache().config().n_memory;
  std::vector<int64_t> wanted;
  for (const Retrieved& r : hits) wanted.push_back(r.chunk.id);
  for (const Retrieved& r : hits) {
    auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.chunk_id == r.chunk.id; });
    if (it != entries_.end()) {
      it->last_used = step;
      it->score = r.score;
      continue;
    }
    const int64_t n = static_cast<int64_t>(r.chunk.tokens.size());
    if (n == 0 || n > region) continue;
    while (static_cast<int64_t>(session.cache().free_memory_slots().size()) < n) {
      // The resident chunk to give up: lowest score or least recently used, never one wanted now.
      auto victim = entries_.end();
      for (auto e = entries_.begin(); e != entries_.end(); ++e) {
        if (std::find(wanted.begin(), wanted.end(), e->chunk_id) != wanted.end()) continue;
        const bool better = victim == entries_.end() ||
                            (policy_ == ReplacePolicy::score ? e->score < victim->score : e->last_used < victim->last_used);
        if (better) victim = e;
      }
      if (victim == entries_.end()) break;
      session.release(victim->chunk_id);
      entries_.erase(victim);
    }
    if (static_cast<int64_t>(session.cache().free_memory_slots().size()) < n) continue;
    if (mode == InjectMode::kv && !r.chunk.kv.defined()) {
      throw std::invalid_argument("memory: chunk " + std::to_string(r.chunk.id) +
                                  " has no stored K/V; kv injection needs the eviction node's keep_kv");
    }
    session.inject(MemoryChunk{r.chunk.id, r.chunk.tokens, r.chunk.kv}, mode);
    entries_.push_back({r.chunk.id, r.score, step, r.chunk.positions});
    written.push_back(r.chunk.id);
  }
  return written;
}

std::vector<int64_t> MemoryRegion::resident() const {
  std::vector<int64_t> out;
  for (const Entry& e : entries_) out.push_back(e.chunk_id);
  return out;
}

bool MemoryRegion::contains(int64_t chunk_id) const {
  return std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.chunk_id == chunk_id; });
}

std::string placed_text(std::vector<Retrieved> hits) {
  std::stable_sort(hits.begin(), hits.end(), [](const Retrieved& a, const Retrieved& b) {
    const int64_t pa = a.chunk.positions.empty() ? -1 : a.chunk.positions.front();
    const int64_t pb = b.chunk.positions.empty() ? -1 : b.chunk.positions.front();
    return pa < pb;
  });
  std::string text;
  for (const Retrieved& h : hits) text += h.chunk.text + "\n";
  return text;
}

std::vector<EvictedSpan> unmarked_runs(const EvictedSpan& span, const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                       int64_t* dropped) {
  auto marked = [&](int64_t p) {
    for (const auto& [b, e] : ranges)
      if (p >= b && p < e) return true;
    return false;
  };
  std::vector<EvictedSpan> out;
  const int64_t n = static_cast<int64_t>(span.tokens.size());
  for (int64_t i = 0; i < n;) {
    if (marked(span.positions[static_cast<size_t>(i)])) {
      if (dropped) ++*dropped;
      ++i;
      continue;
    }
    int64_t j = i;
    while (j < n && !marked(span.positions[static_cast<size_t>(j)])) ++j;
    EvictedSpan run;
    run.tokens.assign(span.tokens.begin() + i, span.tokens.begin() + j);
    run.positions.assign(span.positions.begin() + i, span.positions.begin() + j);
    if (span.kv.defined()) run.kv = span.kv.narrow(3, i, j - i);
    out.push_back(std::move(run));
    i = j;
  }
  return out;
}

std::vector<MemoryRegion::Resident> MemoryRegion::residents() const { return entries_; }

void MemoryRegion::restore(std::vector<Resident> residents) { entries_ = std::move(residents); }

std::vector<int64_t> MemoryRegion::resident_positions() const {
  std::vector<int64_t> out;
  for (const Entry& e : entries_) out.insert(out.end(), e.positions.begin(), e.positions.end());
  return out;
}

}  // namespace sinkflow
