#include "nodes/model_step.h"

#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <deque>
#include <mutex>
#include <optional>

#include "models/decoder.h"
#include "models/kv_align.h"
#include "models/memory_path.h"
#include "models/runtime.h"
#include "models/sampler.h"
#include "models/stream.h"
#include "models/tokenizer.h"
#include "nodes/messages.h"
#include "nodes/stage.h"

namespace sinkflow {

ModelStepConfig ModelStepConfig::from_params(const ParamMap& params, const std::string& where) {
  ModelStepConfig c;
  ParamReader r(params, where, c.origin);
  r.require("model", c.model);
  r.read("device", c.device);
  r.read("dtype", c.dtype);
  r.read("threads", c.threads);
  r.read_choice("policy", c.policy, {"dense", "window", "sink", "recompute", "kv-align", "cluster"});
  r.read("kv_align", c.kv_align);
  r.read("n_sink", c.n_sink);
  r.read("n_memory", c.n_memory);
  r.read("n_recent", c.n_recent);
  r.read("evict_block", c.evict_block);
  r.read("prefill_block", c.prefill_block);
  r.read("max_new_tokens", c.max_new_tokens);
  r.read("stop_at_newline", c.stop_at_newline);
  r.read("temperature", c.temperature);
  r.read("top_k", c.top_k);
  r.read("top_p", c.top_p);
  r.read("seed", c.seed);
  r.read("memory", c.memory);
  r.read_choice("retrieve", c.retrieve, {"none", "turn", "always"});
  r.read("retrieve_every", c.retrieve_every);
  r.read("query_tokens", c.query_tokens);
  r.read("sync", c.sync);
  r.read("retrieve_k", c.retrieve_k);
  r.read_choice("select", c.select, {"topk", "mmr", "farthest"});
  r.read("mmr_lambda", c.mmr_lambda);
  r.read_choice("inject", c.inject, {"text", "kv"});
  r.read_choice("replace", c.replace, {"score", "lru"});
  r.read("show_retrieval", c.show_retrieval);
  c.memory_params.read(r);
  r.read("fail_at", c.fail_at);
  r.done();
  return c;
}

void ModelStepConfig::validate() const {
  origin.require(threads >= 0, "threads", "an integer >= 0", threads);
  origin.require(n_sink >= 0, "n_sink", "an integer >= 0", n_sink);
  origin.require(n_memory >= 0, "n_memory", "an integer >= 0", n_memory);
  origin.require(n_recent >= 1, "n_recent", "an integer >= 1", n_recent);
  origin.require(evict_block >= 1 && evict_block <= n_recent, "evict_block", "an integer in [1, n_recent]", evict_block);
  origin.require(prefill_block >= 1, "prefill_block", "an integer >= 1", prefill_block);
  origin.require(max_new_tokens >= 0, "max_new_tokens", "an integer >= 0", max_new_tokens);
  origin.require(temperature >= 0, "temperature", "a number >= 0", temperature);
  origin.require(top_k >= 0, "top_k", "an integer >= 0", top_k);
  origin.require(top_p > 0 && top_p <= 1, "top_p", "a number in (0, 1]", top_p);
  origin.require(seed >= 0, "seed", "an integer >= 0", seed);
  origin.require(retrieve_every >= 1, "retrieve_every", "an integer >= 1", retrieve_every);
  origin.require(query_tokens >= 1, "query_tokens", "an integer >= 1", query_tokens);
  origin.require(retrieve_k >= 0, "retrieve_k", "an integer >= 0", retrieve_k);
  origin.require(mmr_lambda >= 0 && mmr_lambda <= 1, "mmr_lambda", "a number in [0, 1]", mmr_lambda);
  origin.require(!sync || retrieve == "turn", "sync", "false unless retrieve is 'turn'", sync);
  origin.require(n_memory > 0 || !(memory && retrieve != "none"), "n_memory",
                 "an integer >= 1 when memory is on and retrieve is not 'none' (the region retrieved chunks enter)",
                 n_memory);
  origin.require(policy != "cluster" || !memory || retrieve == "none", "policy",
                 "not 'cluster' while retrieved chunks need the memory region (memory on and retrieve not 'none')", policy);
  origin.require(fail_at >= 0, "fail_at", "an integer >= 0", fail_at);
  if (sync) memory_params.validate(origin);
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
        region_(parse_replace_policy(config_.replace)),
        stage_(*this, [this](const TokenBlock& b, Emit& out) { on_block(b, out); },
               [this](const Retrieval& r, Emit& out) { on_inject(r, out); },
               [this](const int64_t& step, Emit& out) { on_indexed(step, out); }) {
    if (config_.threads > 0) configure_threads(static_cast<int>(config_.threads));
    c10::InferenceMode guard;
    const at::Device device = parse_device(config_.device);
    decoder_ = load_decoder(config_.model, device, parse_dtype(config_.dtype, device));
    tokenizer_ = shared_tokenizer(context.run, config_.model);
    StreamConfig sc;
    sc.policy = parse_policy(config_.policy);
    sc.cache.n_sink = config_.n_sink;
    sc.cache.n_memory = config_.n_memory;
    sc.cache.n_recent = config_.n_recent;
    sc.cache.evict_block = config_.evict_block;
    sc.cache.evict_kv = config_.memory && config_.inject == "kv";
    sc.prefill_block = config_.prefill_block;
    if (sc.policy == Policy::kv_align) {
      sc.kv_align = KvAlign::load_for(config_.model, config_.kv_align);
    }
    sc.validate(decoder_->config(), context.where);
    session_ = std::make_unique<StreamSession>(decoder_, sc);
    SamplerConfig smp;
    smp.temperature = config_.temperature;
    smp.top_k = config_.top_k;
    smp.top_p = config_.top_p;
    smp.seed = static_cast<uint64_t>(config_.seed);
    smp.validate(context.where);
    sampler_ = std::make_unique<Sampler>(smp);
    streamer_ = std::make_unique<TextStreamer>(*tokenizer_);
    if (config_.sync && config_.memory) memory_ = shared_memory(context.run, config_.memory_params);
    const CacheConfig rc = sc.resolved_cache();
    spdlog::info("model-step '{}': model={} policy={} n_sink={} n_memory={} n_recent={} memory={} retrieve={}{} "
                 "max_new_tokens={} temperature={}",
                 name(), config_.model, config_.policy, rc.n_sink, rc.n_memory, rc.n_recent, config_.memory,
                 config_.retrieve, config_.sync ? " (sync)" : "", config_.max_new_tokens, config_.temperature);
  }

  void finish() override {
    if (pending_turn_ && !context().run.failed() && !context().run.stop_requested())
      throw std::runtime_error("sync retrieval: a turn waited for index-insert, which never reported (connect "
                               "index.indexed -> " + name() + ".indexed)");
  }

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
    check_fail_at(config_.fail_at, ++messages_);
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

  // index-insert has stored every chunk of the EvictedBatches up to `step`: resume a turn waiting for it.
  void on_indexed(const int64_t& step, Emit& out) {
    c10::InferenceMode guard;
    indexed_ = std::max(indexed_, step);
    if (!pending_turn_ || indexed_ < wait_for_) return;
    const TokenBlock turn = std::move(*pending_turn_);
    pending_turn_.reset();
    complete(turn, out);
    while (!pending_turn_ && !stash_.empty()) {
      const TokenBlock next = std::move(stash_.front());
      stash_.pop_front();
      process(next, out);
    }
  }

  void process(const TokenBlock& b, Emit& out) {
    seq_ = b.seq;
    if (b.turn && config_.memory && config_.retrieve == "turn" && !b.text.empty()) {
      if (!config_.sync) {
        if (query_connected()) out.put<2>(Query{b.seq, session_->position(), b.text});
      } else if (evicted_connected()) {
        // Flush the chunker's tail and wait (without blocking a thread) for index-insert to report it.
        wait_for_ = send_evicted({}, true, out);
        if (indexed_ < wait_for_) {
          pending_turn_ = b;
          return;
        }
      }
    }
    complete(b, out);
  }

  // The rest of a block: sync retrieval, prefill, `always` queries, the answer, the end-of-input flush.
  void complete(const TokenBlock& b, Emit& out) {
    const Clock::time_point start = Clock::now();
    if (b.turn && config_.memory && config_.retrieve == "turn" && config_.sync && !b.text.empty()) sync_retrieve(b);
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
    if (config_.memory && config_.retrieve == "always" && since_query_ >= config_.retrieve_every &&
        query_connected()) {
      const std::vector<int64_t> cached = session_->cache().cached_tokens();
      const size_t n = std::min<size_t>(cached.size(), static_cast<size_t>(config_.query_tokens));
      const std::vector<int64_t> recent(cached.end() - static_cast<long>(n), cached.end());
      out.put<2>(Query{b.seq, session_->position(), tokenizer_->decode(recent)});
      since_query_ = 0;
    }
    if (b.turn) answer(out);
    if (b.last) send_evicted({}, true, out);
  }

  // Retrieves the turn's context from the shared store (now up to date) and injects it before the turn.
  void sync_retrieve(const TokenBlock& b) {
    if (memory_->store->size() == 0) return;
    SelectOptions sel;
    sel.k = static_cast<int>(config_.retrieve_k);
    sel.mode = config_.select == "mmr" ? SelectOptions::Mode::mmr
               : config_.select == "farthest" ? SelectOptions::Mode::farthest
                                               : SelectOptions::Mode::topk;
    sel.mmr_lambda = static_cast<float>(config_.mmr_lambda);
    const bool kv = config_.inject == "kv";
    Retrieval r{b.seq, session_->position(), retrieve(*memory_->store, *memory_->embedder, b.text, sel, kv)};
    context().run.counters.retrievals.fetch_add(1, std::memory_order_relaxed);
    apply_injection(r);
  }

  void answer(Emit& out) {
    if (!logits_.defined()) throw std::invalid_argument("a turn with no tokens at the start of the stream: nothing to answer");
    const Clock::time_point start = Clock::now();
    std::vector<int64_t> generated;
    std::string answer_text;
    for (int64_t i = 0; i < config_.max_new_tokens; ++i) {
      if (context().run.failed()) return;
      const int64_t next = sampler_->next(logits_);
      if (next == tokenizer_->eos_id()) break;
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

  void on_inject(const Retrieval& r, Emit&) {
    c10::InferenceMode guard;
    check_fail_at(config_.fail_at, ++messages_);
    apply_injection(r);
  }

  void apply_injection(const Retrieval& r) {
    const InjectMode mode = parse_inject_mode(config_.inject);
    const std::vector<int64_t> written = region_.inject(*session_, r.hits, mode, session_->position());
    int64_t tokens = 0;
    for (const Retrieved& h : r.hits)
      for (int64_t id : written)
        if (h.chunk.id == id) tokens += static_cast<int64_t>(h.chunk.tokens.size());
    if (mode == InjectMode::text) context().run.counters.tokens_in.fetch_add(tokens, std::memory_order_relaxed);
    if (config_.show_retrieval) {
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
  }

  ModelStepConfig config_;
  std::shared_ptr<const Decoder> decoder_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::unique_ptr<StreamSession> session_;
  std::unique_ptr<Sampler> sampler_;
  std::unique_ptr<TextStreamer> streamer_;
  std::shared_ptr<SharedMemory> memory_;  // sync only
  MemoryRegion region_;
  at::Tensor logits_;                     // [1, vocab] of the last token fed
  int64_t seq_ = 0;
  int64_t messages_ = 0;
  int64_t batches_ = 0;
  int64_t since_query_ = 0;
  bool started_ = false;
  Clock::time_point first_block_;
  mutable std::mutex stats_mutex_;
  ModelStepStats stats_;
  std::optional<TokenBlock> pending_turn_;  // sync: the turn waiting for index-insert
  std::deque<TokenBlock> stash_;            // blocks that arrived behind it
  int64_t wait_for_ = -1;                   // the EvictedBatch step the pending turn waits for
  int64_t indexed_ = -1;                    // the last EvictedBatch step index-insert reported
  Stage<In<TokenBlock, Retrieval, int64_t>, Out<StepResult, EvictedBatch, Query>> stage_;
};

}  // namespace

ModelStepStats model_step_stats(const NodeInstance& node) {
  const auto* m = dynamic_cast<const ModelStep*>(&node);
  if (!m) throw std::invalid_argument("node '" + node.name() + "' is not a model-step node");
  return m->stats();
}

NodeKind model_step_kind() {
  NodeKind kind = make_node_kind<ModelStep, ModelStepConfig>(
      "model-step", "owns the KV cache: prefills blocks, decodes answers, sends evicted spans and queries",
      {in_port<TokenBlock>("tokens"), in_port<Retrieval>("inject", PortRole::step_boundary),
       in_port<int64_t>("indexed", PortRole::step_boundary)},
      {out_port<StepResult>("step"), out_port<EvictedBatch>("evicted"), out_port<Query>("query")});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
