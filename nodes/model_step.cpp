#include "nodes/model_step.h"

#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <deque>
#include <mutex>
#include <optional>

#include "models/nn/decoder.h"
#include "models/stream/kv_align.h"
#include "models/memory/memory_path.h"
#include "models/nn/runtime.h"
#include "models/nn/sampler.h"
#include "models/stream/stream.h"
#include "models/text/tokenizer.h"
#include "nodes/messages.h"
#include "nodes/resources.h"
#include "nodes/stage.h"

namespace sinkflow {

ModelStepConfig ModelStepConfig::from_params(const ParamMap& params, const std::string& where) {
  ModelStepConfig c;
  c.cache.n_recent = 252;
  ParamReader r(params, where, c.origin);
  r.require("model", c.model);
  r.read("threads", c.threads);
  r.read_enum("policy", c.policy, kPolicyNames);
  r.read("kv_align", c.kv_align);
  r.nested("cache", [&](ParamReader& n) {
    n.read("n_sink", c.cache.n_sink);
    n.read("n_memory", c.cache.n_memory);
    n.read("n_recent", c.cache.n_recent);
    n.read("evict_block", c.cache.evict_block);
  });
  r.read("prefill_block", c.prefill_block);
  r.read("max_new_tokens", c.max_new_tokens);
  r.read("stop_at_newline", c.stop_at_newline);
  r.nested("sampler", [&](ParamReader& n) {
    n.read("temperature", c.sampler.temperature);
    n.read("top_k", c.sampler.top_k);
    n.read("top_p", c.sampler.top_p);
    int64_t seed = static_cast<int64_t>(c.sampler.seed);
    n.read("seed", seed);
    if (seed < 0) c.origin.fail("sampler.seed", "an integer >= 0", std::to_string(seed));
    c.sampler.seed = static_cast<uint64_t>(seed);
  });
  r.read("memory", c.memory);
  r.nested("retrieval", [&](ParamReader& n) {
    n.read_enum("trigger", c.retrieval.trigger, kRetrievalTriggerNames);
    n.read("every", c.retrieval.every);
    n.read("query_tokens", c.retrieval.query_tokens);
    n.read("sync", c.retrieval.sync);
    n.read_enum("inject", c.retrieval.inject, kInjectModeNames);
    n.read_enum("replace", c.retrieval.replace, kReplacePolicyNames);
  });
  r.read("show_retrieval", c.show_retrieval);
  r.done();
  return c;
}

void ModelStepConfig::validate() const {
  origin.require(threads >= 0, "threads", "an integer >= 0", threads);
  origin.check("cache", [&] { cache.validate(""); });
  origin.require(prefill_block >= 1, "prefill_block", "an integer >= 1", prefill_block);
  origin.require(max_new_tokens >= 0, "max_new_tokens", "an integer >= 0", max_new_tokens);
  origin.check("sampler", [&] { sampler.validate(""); });
  origin.check("retrieval", [&] { retrieval.validate(); });
  const bool retrieving = memory && retrieval.trigger != RetrievalTrigger::none;
  origin.require(cache.n_memory > 0 || !retrieving, "cache.n_memory",
                 "an integer >= 1 when memory is on and retrieval.trigger is not 'none' (the region retrieved chunks "
                 "enter)",
                 cache.n_memory);
  origin.require(policy != Policy::cluster || !retrieving, "policy",
                 "not 'cluster' while retrieved chunks need the memory region (memory on and retrieval.trigger not "
                 "'none')",
                 enum_name(kPolicyNames, policy));
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

class ModelStep : public NodeInstance {
  using Emit = Emitter<StepResult, EvictedBatch, Query>;

 public:
  ModelStep(const NodeContext& context, ModelStepConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        model_(context.resources.model(config_.model, config_.origin, "model")),
        decoder_(model_->decoder),
        tokenizer_(model_->tokenizer),
        region_(config_.retrieval.replace),
        stage_(*this, [this](const TokenBlock& b, Emit& out) { on_block(b, out); },
               [this](const Retrieval& r, Emit& out) { on_inject(r, out); }) {
    if (config_.threads > 0) configure_threads(static_cast<int>(config_.threads));
    c10::InferenceMode guard;
    StreamConfig sc;
    sc.policy = config_.policy;
    sc.cache = config_.cache;
    sc.cache.evict_kv = config_.memory && config_.retrieval.inject == InjectMode::kv;
    sc.prefill_block = config_.prefill_block;
    if (sc.policy == Policy::kv_align) sc.kv_align = KvAlign::load_for(model_->config.path, config_.kv_align);
    config_.origin.check("cache", [&] { sc.validate(decoder_->config(), ""); });
    session_ = std::make_unique<StreamSession>(decoder_, sc);
    sampler_ = std::make_unique<Sampler>(config_.sampler);
    streamer_ = std::make_unique<TextStreamer>(*tokenizer_);
    const CacheConfig rc = sc.resolved_cache();
    spdlog::info("model-step '{}': model={} policy={} n_sink={} n_memory={} n_recent={} memory={} trigger={}{} "
                 "max_new_tokens={} temperature={}",
                 name(), config_.model, policy_name(config_.policy), rc.n_sink, rc.n_memory, rc.n_recent,
                 config_.memory, enum_name(kRetrievalTriggerNames, config_.retrieval.trigger),
                 config_.retrieval.sync ? " (sync)" : "", config_.max_new_tokens, config_.sampler.temperature);
  }

  void finish() override {
    if (pending_turn_ && !context().run.failed() && !context().run.stop_requested())
      throw std::runtime_error("sync retrieval: a turn waited for its retrieval, which never came (connect " +
                               name() + ".query -> retrieve, index.indexed -> retrieve.indexed and retrieve -> "
                               "re-inject -> " + name() + ".inject)");
  }

  std::shared_ptr<const Decoder> decoder() const { return decoder_; }

  ModelStepStats stats() const {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    ModelStepStats s = stats_;
    s.tokens_evicted = session_->tokens_evicted();
    return s;
  }

 private:
  bool evicted_connected() const { return !runtime().destinations[1].empty(); }
  bool query_connected() const { return !runtime().destinations[2].empty(); }

  void on_block(const TokenBlock& b, Emit& out) {
    c10::InferenceMode guard;
    if (!started_) {
      first_block_ = Clock::now();
      started_ = true;
    }
    // A turn waits for the memory path (sync): later blocks queue behind it, in order (bounded by the
    // source's gate).
    if (pending_turn_ || !stash_.empty()) {
      stash_.push_back(b);
      return;
    }
    process(b, out);
  }

  void process(const TokenBlock& b, Emit& out) {
    seq_ = b.seq;
    const RetrievalOptions& ro = config_.retrieval;
    if (b.turn && config_.memory && ro.trigger == RetrievalTrigger::turn && !b.text.empty() && query_connected()) {
      Query q = query(b.seq, b.text);
      if (ro.sync) {
        // Flush the chunker's tail; retrieve answers once index-insert has stored it. The turn waits (without
        // blocking a thread) for that answer on `inject`.
        q.sync = true;
        q.wait_for = send_evicted({}, true, out);
        pending_turn_ = b;
        pending_query_ = q.id;
      }
      out.put<2>(q);
      if (ro.sync) return;
    }
    complete(b, out);
  }

  // A retrieval request made now (the next id; the chunks' K/V asked for when injecting kv).
  Query query(int64_t seq, std::string text) {
    Query q{seq, session_->position(), std::move(text), queries_++};
    q.load_kv = config_.retrieval.inject == InjectMode::kv;
    return q;
  }

  // The rest of a block: prefill, `always` queries, the answer, the end-of-input flush.
  void complete(const TokenBlock& b, Emit& out) {
    const Clock::time_point start = Clock::now();
    if (!b.tokens.empty()) {
      std::vector<EvictedSpan> evicted;
      logits_ = session_->feed(b.tokens, &evicted);
      context().run.counters.tokens_in.fetch_add(static_cast<int64_t>(b.tokens.size()), std::memory_order_relaxed);
      send_evicted(std::move(evicted), false, out);
      since_query_ += static_cast<int64_t>(b.tokens.size());
    }
    {
      std::lock_guard<std::mutex> lock(stats_mutex_);
      stats_.prefill_tokens += static_cast<int64_t>(b.tokens.size());
      stats_.prefill_busy_s += seconds(Clock::now() - start);
      stats_.ingest_wall_s = seconds(Clock::now() - first_block_);
    }
    if (config_.memory && config_.retrieval.trigger == RetrievalTrigger::always &&
        since_query_ >= config_.retrieval.every && query_connected()) {
      const std::vector<int64_t> cached = session_->cache().cached_tokens();
      const size_t n = std::min<size_t>(cached.size(), static_cast<size_t>(config_.retrieval.query_tokens));
      const std::vector<int64_t> recent(cached.end() - static_cast<long>(n), cached.end());
      out.put<2>(query(b.seq, tokenizer_->decode(recent)));
      since_query_ = 0;
    }
    if (b.turn) answer(out);
    if (b.last) send_evicted({}, true, out);
  }

  void answer(Emit& out) {
    if (!logits_.defined()) throw std::invalid_argument("a turn with no tokens at the start of the stream: nothing to answer");
    const Clock::time_point start = Clock::now();
    std::vector<int64_t> generated;
    std::string answer_text;
    for (int64_t i = 0; i < config_.max_new_tokens; ++i) {
      if (context().run.failed()) return;
      const int64_t next = sampler_->next(logits_);
      if (model_->generation.is_stop(next)) break;
      generated.push_back(next);
      context().run.counters.tokens_out.fetch_add(1, std::memory_order_relaxed);
      StepResult r;
      r.seq = seq_;
      r.step = session_->position();
      r.tokens = {next};
      r.text = streamer_->feed(next);
      answer_text += r.text;
      r.produced = Clock::now();
      out.put<0>(r);
      std::vector<EvictedSpan> evicted;
      logits_ = session_->feed({next}, &evicted);
      send_evicted(std::move(evicted), false, out);
      if (config_.stop_at_newline && answer_text.find('\n') != std::string::npos) break;
    }
    StepResult end;
    end.seq = seq_;
    end.step = session_->position();
    end.text = streamer_->flush();
    end.end_of_turn = true;
    out.put<0>(end);
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.decode_tokens += static_cast<int64_t>(generated.size());
    stats_.decode_s += seconds(Clock::now() - start);
    stats_.generated.insert(stats_.generated.end(), generated.begin(), generated.end());
  }

  // Sends the spans (copies leave the node; the cache keeps nothing of them). Returns the batch's step, or
  // the last one sent when there is nothing to send.
  int64_t send_evicted(std::vector<EvictedSpan> spans, bool flush, Emit& out) {
    if (!spans.empty()) context().run.counters.evictions.fetch_add(static_cast<int64_t>(spans.size()),
                                                                   std::memory_order_relaxed);
    if (!config_.memory || !evicted_connected() || (spans.empty() && !flush)) return batches_ - 1;
    EvictedBatch batch;
    batch.seq = seq_;
    batch.step = batches_++;
    batch.spans = std::move(spans);
    batch.flush = flush;
    out.put<1>(batch);
    return batch.step;
  }

  // A Retrieval between two steps: inject it; when it answers the waiting turn's sync query, feed that turn now
  // and then the blocks that queued behind it.
  void on_inject(const Retrieval& r, Emit& out) {
    c10::InferenceMode guard;
    apply_injection(r);
    if (!r.sync || !pending_turn_ || r.query_id != pending_query_) return;
    const TokenBlock turn = std::move(*pending_turn_);
    pending_turn_.reset();
    complete(turn, out);
    while (!pending_turn_ && !stash_.empty()) {
      const TokenBlock next = std::move(stash_.front());
      stash_.pop_front();
      process(next, out);
    }
  }

  void apply_injection(const Retrieval& r) {
    if (r.hits.empty()) return;
    const InjectMode mode = config_.retrieval.inject;
    const std::vector<int64_t> written = region_.inject(*session_, r.hits, mode, session_->position());
    int64_t tokens = 0;
    for (const Retrieved& h : r.hits)
      for (int64_t id : written)
        if (h.chunk.id == id) tokens += static_cast<int64_t>(h.chunk.tokens.size());
    if (mode == InjectMode::text) context().run.counters.tokens_in.fetch_add(tokens, std::memory_order_relaxed);
    if (config_.show_retrieval) {
      context().run.before_output();
      for (const Retrieved& h : r.hits) {
        const bool now = std::find(written.begin(), written.end(), h.chunk.id) != written.end();
        std::string text = h.chunk.text.substr(0, 160);
        std::replace(text.begin(), text.end(), '\n', ' ');
        std::fprintf(stderr, "[memory] chunk %ld (score %.3f, tokens at %ld..%ld)%s: %s\n", static_cast<long>(h.chunk.id),
                     h.score, static_cast<long>(h.chunk.positions.empty() ? -1 : h.chunk.positions.front()),
                     static_cast<long>(h.chunk.positions.empty() ? -1 : h.chunk.positions.back()),
                     now ? " re-injected" : " already in the cache", text.c_str());
      }
    }
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.injected_chunks += static_cast<int64_t>(written.size());
    stats_.injected_ids.insert(stats_.injected_ids.end(), written.begin(), written.end());
    stats_.injected_at.insert(stats_.injected_at.end(), written.size(), session_->position());
  }

  ModelStepConfig config_;
  std::shared_ptr<const ModelResource> model_;
  std::shared_ptr<const Decoder> decoder_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::unique_ptr<StreamSession> session_;
  std::unique_ptr<Sampler> sampler_;
  std::unique_ptr<TextStreamer> streamer_;
  MemoryRegion region_;
  at::Tensor logits_;                     // [1, vocab] of the last token fed
  int64_t seq_ = 0;
  int64_t batches_ = 0;
  int64_t since_query_ = 0;
  bool started_ = false;
  Clock::time_point first_block_;
  mutable std::mutex stats_mutex_;
  ModelStepStats stats_;
  int64_t queries_ = 0;                     // Query ids sent
  std::optional<TokenBlock> pending_turn_;  // sync: the turn waiting for its retrieval
  int64_t pending_query_ = -1;              // the id of the Query it waits for
  std::deque<TokenBlock> stash_;            // blocks that arrived behind it
  Stage<In<TokenBlock, Retrieval>, Out<StepResult, EvictedBatch, Query>> stage_;
};

}  // namespace

ModelStepStats model_step_stats(const NodeInstance& node) {
  const auto* m = dynamic_cast<const ModelStep*>(&node);
  if (!m) throw std::invalid_argument("node '" + node.name() + "' is not a model-step node");
  return m->stats();
}

std::shared_ptr<const Decoder> model_step_decoder(const NodeInstance& node) {
  const auto* m = dynamic_cast<const ModelStep*>(&node);
  if (!m) throw std::invalid_argument("node '" + node.name() + "' is not a model-step node");
  return m->decoder();
}

NodeKind model_step_kind() {
  NodeKind kind = make_node_kind<ModelStep, ModelStepConfig>(
      "model-step", "owns the KV cache: prefills blocks, decodes answers, sends evicted spans and queries",
      {in_port<TokenBlock>("tokens"), in_port<Retrieval>("inject", PortRole::step_boundary)},
      {out_port<StepResult>("step"), out_port<EvictedBatch>("evicted"), out_port<Query>("query")});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
