#include "models/lab/needle_run.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <set>
#include <stdexcept>

#include "models/memory/memory_dir.h"

namespace sinkflow {

namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// Absolute positions of everything the model can attend to: sinks, window and memory-region chunks.
std::set<int64_t> cached_positions(const StreamSession& s, const MemoryRegion& region) {
  std::set<int64_t> out;
  const KvCache& c = s.cache();
  for (int64_t slot : c.ordered_slots()) {
    const bool memory = slot >= c.config().n_sink && slot < c.config().n_sink + c.config().n_memory;
    if (!memory) out.insert(c.slot_position(slot));
  }
  for (int64_t p : region.resident_positions()) out.insert(p);
  return out;
}

std::vector<int64_t> concat(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> out(a);
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// One ingestion: a session, its memory (when the arms retrieve) and what was retrieved.
struct Ingestion {
  Ingestion(const std::shared_ptr<const Decoder>& decoder, const StreamConfig& config) : session(decoder, config) {}
  StreamSession session;
  std::optional<MemoryDirLock> lock;
  std::unique_ptr<ChunkStore> store;
  std::optional<EvictionIndexer> indexer;
  MemoryRegion region{ReplacePolicy::score};
  std::vector<int64_t> segment_start;  // absolute position of each segment's first token
  std::vector<int64_t> prompt_positions;  // original positions of the chunks the latest prompt retrieval placed
  int64_t retrievals = 0;
  std::vector<std::pair<int64_t, float>> last_retrieved;
  int64_t fed = 0;
};

class CellRunner {
 public:
  CellRunner(const std::shared_ptr<const Decoder>& decoder, const Tokenizer& tokenizer, const GenerationConfig& generation,
             const EvalCase& c, const EvalOptions& o, const std::string& store_dir,
             const std::function<void(int64_t)>& progress)
      : decoder_(decoder), tok_(tokenizer), gen_(generation), c_(c), o_(o), store_dir_(store_dir), progress_(progress) {}

  // Feeds the case up to (not including) the question. region_slots: memory-region size; index: chunk and store
  // what is evicted; always: retrieve every `every` tokens (dialogue: at every user turn) and put it by `placement`.
  std::unique_ptr<Ingestion> ingest(Policy policy, int64_t region_slots, bool index, bool always, Placement placement) {
    StreamConfig sc;
    sc.policy = policy;
    sc.cache.n_sink = o_.n_sink;
    sc.cache.n_recent = o_.n_recent;
    sc.cache.n_memory = region_slots;
    sc.cache.evict_kv = index && o_.inject == InjectMode::kv;
    sc.prefill_block = o_.prefill_block;
    auto in = std::make_unique<Ingestion>(decoder_, sc);
    if (index) {
      in->lock.emplace(store_dir_);  // a sinkflow memory directory only, then emptied: never anything else
      in->lock->reset();
      StoreOptions so;
      so.embedder_name = embedder_.name();
      so.dim = embedder_.dim();
      so.fsync = StoreOptions::Fsync::none;
      so.index = o_.index;
      in->store = ChunkStore::open(store_dir_, so);
      in->indexer.emplace(*in->store, embedder_, tok_, o_.chunk, o_.overlap);
    }
    const bool dialogue = c_.task == NeedleTask::dialogue;
    int64_t since_query = 0;
    for (size_t s = 0; s < c_.segments.size(); ++s) {
      const std::vector<int64_t>& seg = c_.segments[s];
      if (always && dialogue && in->store->size() > 0) {
        // Seed 001: each user turn retrieves with the turn as the query.
        retrieve_and_place(*in, tok_.decode(seg), placement, /*tail=*/false);
      }
      in->segment_start.push_back(in->session.position());
      at::Tensor logits;
      for (size_t b = 0; b < seg.size(); b += static_cast<size_t>(o_.prefill_block)) {
        const std::vector<int64_t> part(seg.begin() + static_cast<int64_t>(b),
                                        seg.begin() + static_cast<int64_t>(std::min(seg.size(), b + o_.prefill_block)));
        logits = feed(*in, part, index);
        since_query += static_cast<int64_t>(part.size());
        if (always && !dialogue && since_query >= o_.every && in->store->size() > 0) {
          const auto recent = in->session.cache().cached_tokens();
          const std::vector<int64_t> tail(recent.end() - std::min<int64_t>(static_cast<int64_t>(recent.size()), 64),
                                          recent.end());
          retrieve_and_place(*in, tok_.decode(tail), placement, false);
          since_query = 0;
        }
      }
      if (dialogue) {  // the model's brief answer to the turn, then a newline
        std::vector<int64_t> reply;
        for (int64_t i = 0; i < o_.turn_answer_tokens; ++i) {
          const int64_t next = logits.argmax(-1).item<int64_t>();
          if (gen_.is_stop(next) || tok_.decode(concat(reply, {next})).find('\n') != std::string::npos) break;
          reply.push_back(next);
          logits = feed(*in, {next}, index);
        }
        feed(*in, c_.turn_end, index);
      }
    }
    if (in->indexer) in->indexer->flush();
    return in;
  }

  // Retrieves for `query`; region: injects into the memory region; prompt: feeds the chunks' text (oldest first)
  // into the stream, marked, and returns those tokens when `tail` (the caller feeds them with the question).
  std::vector<int64_t> retrieve_and_place(Ingestion& in, const std::string& query, Placement placement, bool tail) {
    if (!in.store || in.store->size() == 0) return {};
    SelectOptions sel;
    sel.k = o_.top_k;
    sel.mode = o_.select;
    std::vector<Retrieved> hits = retrieve(*in.store, embedder_, query, sel, o_.inject == InjectMode::kv);
    ++in.retrievals;
    in.last_retrieved.clear();
    for (const Retrieved& r : hits) in.last_retrieved.emplace_back(r.chunk.positions.front(), r.score);
    if (placement == Placement::region) {
      in.region.inject(in.session, hits, o_.inject, in.session.position());
      return {};
    }
    in.prompt_positions.clear();  // a hit counts what the latest retrieval placed
    for (const Retrieved& r : hits)
      in.prompt_positions.insert(in.prompt_positions.end(), r.chunk.positions.begin(), r.chunk.positions.end());
    std::vector<int64_t> block = tok_.encode("\n" + placed_text(hits));
    const int64_t begin = in.session.position();
    if (in.indexer) in.indexer->mark(begin, begin + static_cast<int64_t>(block.size()));
    if (tail) return block;
    feed(in, block, true);
    return {};
  }

  // The greedy answer to `prompt` (up to max_new_tokens, a stop id or a newline), scored into `r`.
  void greedy_answer(StreamSession& session, const std::vector<int64_t>& prompt, ArmResult& r) {
    at::Tensor logits = session.feed(prompt);
    std::vector<int64_t> out;
    for (int64_t i = 0; i < o_.max_new_tokens; ++i) {
      const int64_t next = logits.argmax(-1).item<int64_t>();
      if (gen_.is_stop(next)) break;
      out.push_back(next);
      if (tok_.decode(out).find('\n') != std::string::npos) break;
      logits = session.feed({next});
    }
    r.output = tok_.decode(out);
    r.answer = lower_contains(r.output, c_.answer_text);
    r.keywords = keyword_fraction(r.output, c_.keywords);
  }

  // Mean NLL of the expected answer, teacher-forced after `prompt`; NaN without one.
  double answer_nll(StreamSession& session, const std::vector<int64_t>& prompt) {
    if (c_.answer.empty()) return std::numeric_limits<double>::quiet_NaN();
    at::Tensor rows = session.feed(prompt);  // [1, vocab]: predicts answer[0]
    if (c_.answer.size() > 1) {
      const std::vector<int64_t> teacher(c_.answer.begin(), c_.answer.end() - 1);
      rows = at::cat({rows, session.feed(teacher, nullptr, true)}, 0);
    }
    return mean_answer_nll(rows, c_.answer);
  }

  // Asks the question after `prefix` (greedy answer, then the answer NLL), going back to the state before it.
  void ask(Ingestion& in, const std::vector<int64_t>& prefix, ArmResult& r) {
    const CacheSnapshot before(in.session);
    const std::vector<int64_t> prompt = concat(prefix, c_.question);
    greedy_answer(in.session, prompt, r);
    before.restore(in.session);
    r.nll = answer_nll(in.session, prompt);
    before.restore(in.session);
  }

  // Cluster: no snapshot (its centroids change as the question evicts); one ingestion per question.
  void ask_fresh(Ingestion& in, ArmResult& r, const std::function<std::unique_ptr<Ingestion>()>& again) {
    greedy_answer(in.session, c_.question, r);
    if (!c_.answer.empty()) r.nll = answer_nll(again()->session, c_.question);
  }

  // True when every needle token is among `positions`.
  bool needle_in(const Ingestion& in, const std::set<int64_t>& positions) const {
    const int64_t base = in.segment_start[static_cast<size_t>(c_.needle_segment)];
    for (int64_t p = base + c_.needle_begin; p < base + c_.needle_end; ++p) {
      if (!positions.count(p)) return false;
    }
    return true;
  }

  void fill_counts(const Ingestion& in, ArmResult& r) const {
    r.retrievals = in.retrievals;
    r.retrieved = in.last_retrieved;
    r.chunks = in.indexer ? in.indexer->chunks() : 0;
    r.evicted = in.indexer ? in.indexer->evicted() : in.session.tokens_evicted();
    r.not_indexed = in.indexer ? in.indexer->dropped() : 0;
  }

  CellResult run(const std::vector<EvalArm>& arms) {
    CellResult cell;
    cell.length = c_.length;
    cell.depth = c_.depth;
    cell.tokens = c_.tokens();
    cell.passkey = c_.passkey;
    cell.arms.resize(arms.size());
    for (size_t i = 0; i < arms.size(); ++i) cell.arms[i].arm = arms[i].name();
    // The shared ingestion: none, the oracle, evicted:prompt, evicted:region (last: it injects).
    bool shared_region = false, shared_index = false;
    for (const EvalArm& a : arms) {
      shared_region |= a.mode == MemoryMode::evicted && a.placement == Placement::region;
      shared_index |= a.mode == MemoryMode::evicted;
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto shared = ingest(Policy::sink, shared_region ? o_.memory_slots() : 0, shared_index, false, Placement::region);
    cell.ingest_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    cell.ingest_tokens = shared->fed;
    {
      cell.none.arm = "none";
      cell.none.hit = needle_in(*shared, cached_positions(shared->session, shared->region));
      fill_counts(*shared, cell.none);
      ask(*shared, {}, cell.none);
      cell.oracle.arm = "oracle";
      cell.oracle.hit = true;
      ask(*shared, c_.needle, cell.oracle);
    }
    auto find = [&](MemoryMode m, Placement p) -> ArmResult* {
      for (size_t i = 0; i < arms.size(); ++i) {
        if (arms[i].mode == m && (!arms[i].retrieves() || arms[i].placement == p)) return &cell.arms[i];
      }
      return nullptr;
    };
    if (ArmResult* r = find(MemoryMode::evicted, Placement::prompt)) {
      const std::vector<int64_t> block = retrieve_and_place(*shared, c_.query, Placement::prompt, true);
      std::set<int64_t> seen = cached_positions(shared->session, shared->region);
      seen.insert(shared->prompt_positions.begin(), shared->prompt_positions.end());
      r->hit = needle_in(*shared, seen);
      r->prompt_tokens = static_cast<int64_t>(block.size());
      fill_counts(*shared, *r);
      ask(*shared, block, *r);
    }
    if (ArmResult* r = find(MemoryMode::evicted, Placement::region)) {
      shared->retrievals = 0;
      retrieve_and_place(*shared, c_.query, Placement::region, true);
      r->hit = needle_in(*shared, cached_positions(shared->session, shared->region));
      fill_counts(*shared, *r);
      ask(*shared, {}, *r);
    }
    shared.reset();
    for (Placement p : {Placement::region, Placement::prompt}) {
      ArmResult* r = find(MemoryMode::always, p);
      if (!r) continue;
      auto in = ingest(Policy::sink, p == Placement::region ? o_.memory_slots() : 0, true, true, p);
      const std::vector<int64_t> block = retrieve_and_place(*in, c_.query, p, true);
      std::set<int64_t> seen = cached_positions(in->session, in->region);
      seen.insert(in->prompt_positions.begin(), in->prompt_positions.end());
      r->hit = needle_in(*in, seen);
      r->prompt_tokens = static_cast<int64_t>(block.size());
      fill_counts(*in, *r);
      ask(*in, block, *r);
    }
    if (ArmResult* r = find(MemoryMode::cluster, Placement::region)) {
      const int64_t slots = o_.n_memory > 0 ? o_.n_memory : 16;
      auto again = [&] { return ingest(Policy::cluster, slots, false, false, Placement::region); };
      auto in = again();
      r->hit = needle_in(*in, cached_positions(in->session, in->region));
      fill_counts(*in, *r);
      ask_fresh(*in, *r, again);
    }
    for (size_t i = 0; i < arms.size(); ++i) {
      if (arms[i].mode == MemoryMode::none) cell.arms[i] = cell.none;
    }
    return cell;
  }

 private:
  static bool lower_contains(const std::string& output, const std::string& what) {
    auto lower = [](std::string s) {
      for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      return s;
    };
    return !what.empty() && lower(output).find(lower(what)) != std::string::npos;
  }

  at::Tensor feed(Ingestion& in, const std::vector<int64_t>& tokens, bool index) {
    std::vector<EvictedSpan> evicted;
    at::Tensor logits = in.session.feed(tokens, index && in.indexer ? &evicted : nullptr);
    if (in.indexer) in.indexer->add(evicted);
    in.fed += static_cast<int64_t>(tokens.size());
    if (progress_) progress_(static_cast<int64_t>(tokens.size()));
    return logits;
  }

  std::shared_ptr<const Decoder> decoder_;
  const Tokenizer& tok_;
  const GenerationConfig& gen_;
  const EvalCase& c_;
  const EvalOptions& o_;
  std::string store_dir_;
  std::function<void(int64_t)> progress_;
  HashEmbedder embedder_{384};
};

}  // namespace

std::string EvalArm::name() const {
  std::string n = enum_name(kMemoryModeNames, mode);
  if (retrieves()) n += std::string(":") + enum_name(kPlacementNames, placement);
  return n;
}

void EvalOptions::validate() const {
  require(n_sink >= 0, "--sinks: expected >= 0, found " + std::to_string(n_sink));
  require(n_recent >= 16, "--window: expected >= 16, found " + std::to_string(n_recent));
  require(n_memory >= 0, "--memory-slots: expected >= 0, found " + std::to_string(n_memory));
  require(chunk >= 1, "--chunk: expected >= 1, found " + std::to_string(chunk));
  require(overlap >= 0 && overlap < chunk, "--overlap: expected in [0, " + std::to_string(chunk) + "), found " +
                                               std::to_string(overlap));
  require(top_k >= 1, "--top-k: expected >= 1, found " + std::to_string(top_k));
  require(every >= 1, "--every: expected >= 1, found " + std::to_string(every));
  require(prefill_block >= 1, "prefill_block: expected >= 1, found " + std::to_string(prefill_block));
  require(max_new_tokens >= 1, "--max-new-tokens: expected >= 1, found " + std::to_string(max_new_tokens));
  require(turn_answer_tokens >= 0, "--turn-answer-tokens: expected >= 0, found " + std::to_string(turn_answer_tokens));
}

EvictionIndexer::EvictionIndexer(ChunkStore& store, const Embedder& embedder, const Tokenizer& tokenizer,
                                 int64_t chunk_size, int64_t overlap)
    : store_(store), embedder_(embedder), tokenizer_(tokenizer), chunker_(chunk_size, overlap) {}

void EvictionIndexer::mark(int64_t begin, int64_t end) {
  if (end > begin) marks_.emplace_back(begin, end);
}

void EvictionIndexer::store_all(std::vector<Chunk> chunks) {
  for (Chunk& c : chunks) {
    if (c.text.empty()) c.text = tokenizer_.decode(c.tokens);
    store_chunk(store_, embedder_, c);
    ++chunks_;
  }
}

void EvictionIndexer::add(const std::vector<EvictedSpan>& spans) {
  for (const EvictedSpan& span : spans) {
    evicted_ += static_cast<int64_t>(span.tokens.size());
    // Runs of unmarked tokens, each chunked as the stream's next tokens.
    for (const EvictedSpan& run : unmarked_runs(span, marks_, &dropped_))
      store_all(chunk_span(chunker_, 0, run, tokenizer_));
  }
}

void EvictionIndexer::flush() { store_all(chunker_.flush()); }

CacheSnapshot::CacheSnapshot(const StreamSession& session) {
  if (session.config().policy != Policy::sink) {
    throw std::invalid_argument(std::string("cache snapshot: expected the sink policy, found ") +
                                policy_name(session.config().policy));
  }
  for (const auto& [name, t] : session.state_tensors()) state_.emplace(name, t.clone());  // every buffer, deep
}

void CacheSnapshot::restore(StreamSession& session) const { session.restore_state(state_, "cache snapshot"); }

CellResult run_eval_cell(const std::shared_ptr<const Decoder>& decoder, const Tokenizer& tokenizer,
                         const GenerationConfig& generation, const EvalCase& c, const std::vector<EvalArm>& arms,
                         const EvalOptions& options, const std::string& store_dir,
                         const std::function<void(int64_t)>& progress) {
  options.validate();
  for (const EvalArm& a : arms) {
    if (a.mode == MemoryMode::always && a.placement == Placement::prompt && c.task != NeedleTask::dialogue) {
      throw std::invalid_argument("--placement prompt with --memory always needs --task dialogue (retrieved text is "
                                  "placed before each user turn), found --task " +
                                  std::string(enum_name(kNeedleTaskNames, c.task)));
    }
  }
  return CellRunner(decoder, tokenizer, generation, c, options, store_dir, progress).run(arms);
}

}  // namespace sinkflow
