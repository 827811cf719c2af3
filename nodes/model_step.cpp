#include "nodes/model_step.h"

#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>

#include "models/io/limits.h"
#include "models/nn/decoder.h"
#include "models/stream/kv_align.h"
#include "models/memory/memory_path.h"
#include "models/nn/runtime.h"
#include "models/nn/sampler.h"
#include "models/stream/snapshot.h"
#include "models/stream/stream.h"
#include "models/text/chat_turns.h"
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
    std::string kv_dtype = "auto";
    n.read("kv_dtype", kv_dtype);
    try {
      c.cache.kv_dtype = parse_kv_dtype(kv_dtype);
    } catch (const std::invalid_argument&) {
      c.origin.fail("cache.kv_dtype", "auto, float32, bfloat16 or float16", kv_dtype);
    }
  });
  r.read("prefill_block", c.prefill_block);
  r.read("max_new_tokens", c.max_new_tokens);
  r.read("stop_at_newline", c.stop_at_newline);
  r.nested("sampler", [&](ParamReader& n) {
    n.read("temperature", c.sampler.temperature);
    n.read("top_k", c.sampler.top_k);
    n.read("top_p", c.sampler.top_p);
    n.read("min_p", c.sampler.min_p);
    n.read("repetition_penalty", c.sampler.repetition_penalty);
    n.read("repeat_last_n", c.sampler.repeat_last_n);
    n.read("model_defaults", c.sampler_model_defaults);
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
    n.read_enum("placement", c.retrieval.placement, kPlacementNames);
  });
  r.read("show_retrieval", c.show_retrieval);
  r.read("stop", c.stop);
  r.nested("chat", [&](ParamReader& n) {
    n.read("template", c.chat_template);
    n.read("system", c.system);
  });
  r.read("checkpoint", c.checkpoint);
  r.done();
  return c;
}

void ModelStepConfig::validate() const {
  origin.require_in(threads, "threads", 0, kMaxThreads, " (0 = LibTorch's default)");
  origin.check("cache", [&] { cache.validate(""); });
  origin.require_in(prefill_block, "prefill_block", 1, kMaxCacheTokens);
  origin.require_in(max_new_tokens, "max_new_tokens", 0, kMaxCount);
  origin.check("sampler", [&] { sampler.validate(""); });
  origin.check("retrieval", [&] { retrieval.validate(); });
  const bool retrieving = memory && retrieval.trigger != RetrievalTrigger::none;
  origin.require(cache.n_memory > 0 || !retrieving || retrieval.placement == Placement::prompt, "cache.n_memory",
                 "an integer >= 1 when memory is on, retrieval.trigger is not 'none' and retrieval.placement is "
                 "region (the region retrieved chunks enter)",
                 cache.n_memory);
  origin.require(stop.size() <= 64, "stop", "at most 64 stop strings", stop.size());
  for (const std::string& s : stop)
    origin.require(!s.empty() && s.size() <= 256, "stop", "stop strings of 1 to 256 bytes", "'" + s.substr(0, 64) + "'");
  origin.require(system.empty() || chat_template != "none", "chat.system",
                 "empty unless chat.template is set (a system message needs a chat template)", system.substr(0, 64));
  origin.require(checkpoint.empty() || chat_template != "none", "checkpoint",
                 "empty unless chat.template is set (a checkpoint is written after each chat reply)", checkpoint);
  origin.require(checkpoint.empty() || policy == Policy::sink || policy == Policy::window || policy == Policy::dense,
                 "policy", "sink, window or dense with a checkpoint (only their state is the cache alone)",
                 enum_name(kPolicyNames, policy));
  origin.require(policy != Policy::cluster || !retrieving, "policy",
                 "not 'cluster' while retrieved chunks need the memory region (memory on and retrieval.trigger not "
                 "'none')",
                 enum_name(kPolicyNames, policy));
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Length of the longest suffix of `text` that is a proper prefix of one of `stops` (text held back while it
// may still become a stop string).
size_t held_back(const std::string& text, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const std::string& s : stops)
    for (size_t n = std::min(text.size(), s.size() - 1); n > best; --n)
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        best = n;
        break;
      }
  return best;
}

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
               [this](const Retrieval& r, Emit& out) { on_inject(r, out); },
               [this](const int64_t& step, Emit&) { on_indexed(step); }) {
    if (config_.threads > 0) configure_threads(static_cast<int>(config_.threads));
    c10::InferenceMode guard;
    stream_config_.policy = config_.policy;
    stream_config_.cache = config_.cache;
    stream_config_.cache.evict_kv = config_.memory && config_.retrieval.inject == InjectMode::kv;
    stream_config_.prefill_block = config_.prefill_block;
    if (stream_config_.policy == Policy::kv_align)
      stream_config_.kv_align = KvAlign::load_for(model_->config.path, config_.kv_align);
    config_.origin.check("cache", [&] { stream_config_.validate(decoder_->config(), ""); });
    session_ = std::make_unique<StreamSession>(decoder_, stream_config_);
    if (config_.sampler_model_defaults) {
      config_.sampler = with_model_defaults(config_.sampler, model_->generation);
      config_.origin.check("sampler", [&] { config_.sampler.validate(model_->config.path + "/generation_config.json"); });
    }
    sampler_ = std::make_unique<Sampler>(config_.sampler);
    streamer_ = std::make_unique<TextStreamer>(*tokenizer_);
    if (config_.chat_template != "none") {
      bool plain = false;
      ChatTemplate t;
      config_.origin.check("chat.template", [&] {
        t = select_chat_template(model_->config.path, config_.chat_template == "auto" ? "" : config_.chat_template, &plain);
      });
      plain = plain || config_.chat_template == "plain";
      // A template that writes no end-of-turn token: the reply ends where the model starts the next role.
      if (plain && config_.stop.empty()) config_.stop = {"\nUser:"};
      chat_ = std::make_unique<ChatTurns>(t);
      if (!config_.system.empty()) chat_->add("system", config_.system);
      spdlog::info("model-step '{}': chat template from {}", name(), t.origin);
    }
    if (!config_.checkpoint.empty() && std::filesystem::exists(config_.checkpoint)) resume();
    const CacheConfig rc = stream_config_.resolved_cache();
    spdlog::info("model-step '{}': model={} policy={} n_sink={} n_memory={} n_recent={} memory={} trigger={}{} "
                 "placement={} max_new_tokens={} temperature={}",
                 name(), config_.model, policy_name(config_.policy), rc.n_sink, rc.n_memory, rc.n_recent,
                 config_.memory, enum_name(kRetrievalTriggerNames, config_.retrieval.trigger),
                 turn_waits() ? " (sync)" : "", enum_name(kPlacementNames, config_.retrieval.placement),
                 config_.max_new_tokens, config_.sampler.temperature);
  }

  void finish() override {
    if (pending_turn_ && !context().run.failed() && !context().run.stop_requested())
      throw std::runtime_error("sync retrieval: a turn waited for its retrieval, which never came (connect " +
                               name() + ".query -> retrieve, index.indexed -> retrieve.indexed and retrieve -> "
                               "re-inject -> " + name() + ".inject)");
    // The graph has drained: everything sent to the memory path is stored (unless a node failed).
    if (pending_snapshot_ && !context().run.failed()) write_pending_snapshot();
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
  bool prompt_placement() const { return config_.retrieval.placement == Placement::prompt; }
  // A turn waits for its retrieval: asked (evaluation), in a chat (deterministic: a resumed conversation retrieves
  // what one that never stopped would), and with placement prompt (the text goes before the turn).
  bool turn_waits() const { return config_.retrieval.sync || chat_ || prompt_placement(); }

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

  void on_indexed(int64_t step) {
    indexed_ = std::max(indexed_, step);
    if (pending_snapshot_ && indexed_ >= snapshot_waits_for_) write_pending_snapshot();
  }

  void process(const TokenBlock& b, Emit& out) {
    seq_ = b.seq;
    turn_start_ = Clock::now();
    if (!chat_ && (!b.role.empty() || !b.command.empty()))
      throw std::invalid_argument("a chat message arrived (token-source format chat) but chat.template is 'none': set "
                                  "chat.template (auto = the model folder's own template)");
    if (!b.command.empty()) {
      command(b.command, out);
      return;
    }
    if (chat_ && !b.role.empty() && b.role != "user") {  // context: written with the next user turn
      chat_->add(b.role, b.text);
      if (b.last) send_evicted({}, true, out);
      return;
    }
    const RetrievalOptions& ro = config_.retrieval;
    if (b.turn && config_.memory && retrieves_per_turn(ro.trigger) && !b.text.empty() && query_connected()) {
      Query q = query(b.seq, b.text);
      if (turn_waits()) {
        // Flush the chunker's tail; retrieve answers once index-insert has stored it. The turn waits (without
        // blocking a thread) for that answer on `inject`.
        q.sync = true;
        q.wait_for = send_evicted({}, true, out);
        pending_turn_ = b;
        pending_query_ = q.id;
      }
      out.put<2>(q);
      if (turn_waits()) return;
    }
    complete(b, out);
  }

  // A retrieval request made now (the next id; the chunks' K/V asked for when injecting kv).
  Query query(int64_t seq, std::string text) {
    Query q{seq, session_->position(), std::move(text), queries_++};
    q.load_kv = config_.retrieval.inject == InjectMode::kv;
    return q;
  }

  // Feeds tokens; the ranges [begin, end) of `tokens` in `unindexed` are never sent to the memory path.
  void feed(const std::vector<int64_t>& tokens, const std::vector<std::pair<size_t, size_t>>& unindexed, Emit& out) {
    if (tokens.empty()) return;
    const int64_t p0 = session_->position();
    for (const auto& [b, e] : unindexed) {
      if (e <= b) continue;
      unindexed_.emplace_back(p0 + static_cast<int64_t>(b), p0 + static_cast<int64_t>(e));
      std::lock_guard<std::mutex> lock(stats_mutex_);
      stats_.unindexed_ranges.push_back(unindexed_.back());
      stats_.unindexed_tokens += static_cast<int64_t>(e - b);
    }
    std::vector<EvictedSpan> evicted;
    logits_ = session_->feed(tokens, &evicted);
    context().run.counters.tokens_in.fetch_add(static_cast<int64_t>(tokens.size()), std::memory_order_relaxed);
    send_evicted(std::move(evicted), false, out);
    since_query_ += static_cast<int64_t>(tokens.size());
  }

  // The rest of a block: prefill (with the retrieved text placed before it), `always` queries, the answer, the
  // end-of-input flush.
  void complete(const TokenBlock& b, Emit& out) {
    const Clock::time_point start = Clock::now();
    const std::string preamble = placed_.empty() ? std::string() : placed_text(placed_);
    std::vector<int64_t> tokens;
    std::vector<std::pair<size_t, size_t>> unindexed;
    auto append = [&](const std::string& text, bool mark) {
      const std::vector<int64_t> ids = tokenizer_->encode(text);
      if (mark) unindexed.emplace_back(tokens.size(), tokens.size() + ids.size());
      tokens.insert(tokens.end(), ids.begin(), ids.end());
    };
    if (chat_ && b.role == "user") {
      const ChatTurn t = chat_->user(b.text, preamble);
      append(t.text.substr(0, t.preamble_begin), false);
      append(t.text.substr(t.preamble_begin, t.preamble_end - t.preamble_begin), true);
      append(t.text.substr(t.preamble_end), false);
      const int64_t bos = model_->generation.bos_id;
      if (session_->position() == 0 && bos >= 0 && (tokens.empty() || tokens.front() != bos)) {
        tokens.insert(tokens.begin(), bos);
        for (auto& [u, v] : unindexed) ++u, ++v;
      }
    } else {
      if (!preamble.empty()) append(preamble, true);
      tokens.insert(tokens.end(), b.tokens.begin(), b.tokens.end());
    }
    placed_.clear();
    feed(tokens, unindexed, out);
    const int64_t fed = static_cast<int64_t>(tokens.size());
    {
      std::lock_guard<std::mutex> lock(stats_mutex_);
      stats_.prefill_tokens += fed;
      stats_.prefill_busy_s += seconds(Clock::now() - start);
      stats_.ingest_wall_s = seconds(Clock::now() - first_block_);
    }
    if (config_.memory && retrieves_every(config_.retrieval.trigger) &&
        since_query_ >= config_.retrieval.every && query_connected()) {
      const std::vector<int64_t> cached = session_->cache().cached_tokens();
      const size_t n = std::min<size_t>(cached.size(), static_cast<size_t>(config_.retrieval.query_tokens));
      const std::vector<int64_t> recent(cached.end() - static_cast<long>(n), cached.end());
      out.put<2>(query(b.seq, tokenizer_->decode(recent)));
      since_query_ = 0;
    }
    if (b.turn) {
      report_->prompt_tokens = fed;
      report_->prefill_s = seconds(Clock::now() - start);
      answer(out);
    }
    if (b.last) send_evicted({}, true, out);
  }

  void answer(Emit& out) {
    if (!logits_.defined()) throw std::invalid_argument("a turn with no tokens at the start of the stream: nothing to answer");
    const Clock::time_point start = Clock::now();
    if (chat_) streamer_ = std::make_unique<TextStreamer>(*tokenizer_);  // each reply is a text of its own
    std::vector<int64_t> generated;
    std::string text;     // the reply's text so far (as fed: may end with a stop string)
    size_t shown = 0;     // bytes of `text` sent on
    size_t reply_end = std::string::npos;  // where a stop string starts
    std::string stop = "length";
    const bool penalty = config_.sampler.repetition_penalty != 1.0;
    for (int64_t i = 0; i < config_.max_new_tokens; ++i) {
      if (context().run.failed()) return;
      if (context().run.stop_requested()) {
        stop = "interrupted";
        break;
      }
      const int64_t next = sampler_->next(logits_, penalty ? session_->cache().cached_tokens() : std::vector<int64_t>{});
      if (i == 0) {
        const at::Tensor first = logits_.reshape({-1}).to(at::kCPU, at::kFloat).contiguous();
        std::lock_guard<std::mutex> lock(stats_mutex_);
        stats_.first_logits.assign(first.data_ptr<float>(), first.data_ptr<float>() + first.numel());
        report_->first_token_s = seconds(Clock::now() - turn_start_);
      }
      if (model_->generation.is_stop(next)) {
        stop = "eos";
        break;
      }
      generated.push_back(next);
      context().run.counters.tokens_out.fetch_add(1, std::memory_order_relaxed);
      text += streamer_->feed(next);
      std::vector<EvictedSpan> evicted;
      logits_ = session_->feed({next}, &evicted);
      send_evicted(std::move(evicted), false, out);
      // Stop strings: the text up to one is the reply; text that may still become one is held back.
      size_t ready = text.size();
      for (const std::string& s : config_.stop) {
        const size_t at = text.find(s, shown > s.size() ? shown - s.size() : 0);
        if (at != std::string::npos) reply_end = std::min(reply_end, at);
      }
      if (reply_end != std::string::npos) {
        ready = reply_end;
        stop = "stop";
      } else {
        ready -= held_back(text, config_.stop);
      }
      if (ready > shown) {
        emit_text(text.substr(shown, ready - shown), next, out);
        shown = ready;
      }
      if (reply_end != std::string::npos) break;
      if (config_.stop_at_newline && text.find('\n') != std::string::npos) break;
    }
    if (reply_end == std::string::npos) {
      text += streamer_->flush();
      if (text.size() > shown) emit_text(text.substr(shown), -1, out);
      reply_end = text.size();
    }
    if (chat_) chat_->reply(text.substr(0, reply_end), text.substr(reply_end));
    report_->stop = stop;
    report_->reply_tokens = static_cast<int64_t>(generated.size());
    report_->decode_s = seconds(Clock::now() - start);
    {
      std::lock_guard<std::mutex> lock(stats_mutex_);
      stats_.decode_tokens += static_cast<int64_t>(generated.size());
      stats_.decode_s += seconds(Clock::now() - start);
      stats_.generated.insert(stats_.generated.end(), generated.begin(), generated.end());
      ++stats_.turns;
    }
    if (chat_) {
      // The turn's evicted text forms its own chunks (a resumed conversation cuts them where this one did).
      snapshot_waits_for_ = send_evicted({}, true, out);
      take_pending_snapshot();
    }
    end_turn(out);
  }

  void emit_text(std::string text, int64_t token, Emit& out) {
    StepResult r;
    r.seq = seq_;
    r.step = session_->position();
    if (token >= 0) r.tokens = {token};
    r.text = std::move(text);
    r.produced = Clock::now();
    out.put<0>(r);
  }

  // The end of a turn or command: an empty StepResult with end_of_turn and the report.
  void end_turn(Emit& out) {
    StepResult end;
    end.seq = seq_;
    end.step = session_->position();
    if (!chat_) end.text = streamer_->flush();
    end.end_of_turn = true;
    end.report = std::move(report_);
    report_ = std::make_shared<TurnReport>();
    out.put<0>(end);
  }

  void command(const std::string& name, Emit& out) {
    report_->command = name;
    std::string& info = report_->info;
    const KvCache& c = session_->cache();
    if (name == "reset") {
      session_ = std::make_unique<StreamSession>(decoder_, stream_config_);
      region_ = MemoryRegion(config_.retrieval.replace);
      unindexed_.clear();
      logits_ = at::Tensor();
      if (chat_) chat_->reset();
      snapshot_waits_for_ = send_evicted({}, true, out);
      if (chat_) take_pending_snapshot();
      info = "conversation reset: the cache is empty; the memory keeps the " +
             std::to_string(context().run.counters.chunks_indexed.load()) + " chunks indexed in this run and all before";
    } else if (name == "stats") {
      const ModelStepStats s = stats();
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "stream: %ld tokens (%ld fed, %ld generated in %ld replies), %ld evicted\n"
                    "cache: %ld of %ld slots (sinks %ld/%ld, memory %ld/%ld, window %ld/%ld)\n"
                    "memory path: %ld chunks indexed in this run, %ld chunks brought back, %ld tokens kept out "
                    "(placement prompt)\n"
                    "speed: prefill %.1f tokens/s, decode %.1f tokens/s",
                    static_cast<long>(session_->position()), static_cast<long>(s.prefill_tokens),
                    static_cast<long>(s.decode_tokens), static_cast<long>(s.turns), static_cast<long>(s.tokens_evicted),
                    static_cast<long>(c.n_cached()), static_cast<long>(c.capacity()), static_cast<long>(c.n_sink_used()),
                    static_cast<long>(c.config().n_sink), static_cast<long>(c.n_memory_used()),
                    static_cast<long>(c.config().n_memory), static_cast<long>(c.n_recent_used()),
                    static_cast<long>(c.config().n_recent),
                    static_cast<long>(context().run.counters.chunks_indexed.load()),
                    static_cast<long>(s.injected_chunks), static_cast<long>(s.unindexed_tokens),
                    s.prefill_busy_s > 0 ? s.prefill_tokens / s.prefill_busy_s : 0.0,
                    s.decode_s > 0 ? s.decode_tokens / s.decode_s : 0.0);
      info = buf;
    } else if (name == "memory") {
      const std::vector<MemoryRegion::Resident> residents = region_.residents();
      info = "memory region: " + std::to_string(residents.size()) + " chunks, " + std::to_string(c.n_memory_used()) +
             " of " + std::to_string(c.config().n_memory) + " slots";
      for (const MemoryRegion::Resident& r : residents) {
        const auto it = why_.find(r.chunk_id);
        char buf[160];
        std::snprintf(buf, sizeof buf, "\n  chunk %ld: tokens %ld..%ld of the stream, score %.3f, last retrieved at %ld",
                      static_cast<long>(r.chunk_id), static_cast<long>(r.positions.empty() ? -1 : r.positions.front()),
                      static_cast<long>(r.positions.empty() ? -1 : r.positions.back()), r.score,
                      static_cast<long>(r.last_used));
        info += buf;
        if (it != why_.end()) info += " for \"" + it->second + "\"";
      }
      if (!last_placed_.empty()) {
        info += "\nplaced before the last turn (placement prompt):";
        for (const std::string& line : last_placed_) info += "\n  " + line;
      }
    } else {
      info = "unknown command '/" + name + "' (commands: /stats, /memory, /reset, /quit)";
    }
    end_turn(out);
  }

  // Sends the spans (copies leave the node; the cache keeps nothing of them), less the tokens that must never be
  // indexed (placement prompt's text). Returns the batch's step, or the last one sent when there is nothing to send.
  int64_t send_evicted(std::vector<EvictedSpan> spans, bool flush, Emit& out) {
    if (!spans.empty()) context().run.counters.evictions.fetch_add(static_cast<int64_t>(spans.size()),
                                                                   std::memory_order_relaxed);
    if (!unindexed_.empty()) spans = drop_unindexed(spans);
    if (!config_.memory || !evicted_connected() || (spans.empty() && !flush)) return batches_ - 1;
    EvictedBatch batch;
    batch.seq = seq_;
    batch.step = batches_++;
    batch.spans = std::move(spans);
    batch.flush = flush;
    out.put<1>(batch);
    return batch.step;
  }

  std::vector<EvictedSpan> drop_unindexed(const std::vector<EvictedSpan>& spans) {
    std::vector<EvictedSpan> kept;
    for (const EvictedSpan& span : spans) {
      for (EvictedSpan& run : unmarked_runs(span, unindexed_)) kept.push_back(std::move(run));
      // Ranges wholly evicted now are done with.
      if (span.positions.empty()) continue;
      const int64_t last = span.positions.back();
      unindexed_.erase(std::remove_if(unindexed_.begin(), unindexed_.end(),
                                      [&](const std::pair<int64_t, int64_t>& r) { return r.second <= last + 1; }),
                       unindexed_.end());
    }
    return kept;
  }

  // A Retrieval between two steps: place it; when it answers the waiting turn's sync query, feed that turn now
  // and then the blocks that queued behind it.
  void on_inject(const Retrieval& r, Emit& out) {
    c10::InferenceMode guard;
    const bool answers_turn = r.sync && pending_turn_ && r.query_id == pending_query_;
    if (prompt_placement()) {
      place_in_prompt(r, answers_turn, out);
    } else {
      apply_injection(r);
    }
    if (!answers_turn) return;
    const TokenBlock turn = std::move(*pending_turn_);
    pending_turn_.reset();
    complete(turn, out);
    while (!pending_turn_ && !stash_.empty()) {
      const TokenBlock next = std::move(stash_.front());
      stash_.pop_front();
      process(next, out);
    }
  }

  // Placement prompt: the chunks not already in the window go before the waiting turn, or (an `always` query)
  // into the stream now.
  void place_in_prompt(const Retrieval& r, bool for_turn, Emit& out) {
    const int64_t window_begin = session_->position() - session_->cache().n_recent_used();
    std::vector<Retrieved> hits;
    last_placed_.clear();
    for (const Retrieved& h : r.hits) {
      const bool in_window = !h.chunk.positions.empty() && h.chunk.positions.front() >= window_begin;
      TurnReport::Hit note{h.chunk.id, h.score, h.chunk.positions.empty() ? -1 : h.chunk.positions.front(),
                           h.chunk.positions.empty() ? -1 : h.chunk.positions.back(), !in_window,
                           h.chunk.text.substr(0, 160)};
      report_->retrieved.push_back(note);
      report_->placement = "prompt";
      char line[96];
      std::snprintf(line, sizeof line, "chunk %ld (tokens %ld..%ld, score %.3f)%s", static_cast<long>(note.chunk_id),
                    static_cast<long>(note.first_position), static_cast<long>(note.last_position), note.score,
                    in_window ? ": still in the window, not placed" : "");
      last_placed_.emplace_back(line);
      if (!in_window) hits.push_back(h);
    }
    if (config_.show_retrieval) show(r.hits, {});
    {
      std::lock_guard<std::mutex> lock(stats_mutex_);
      for (const Retrieved& h : hits) {
        stats_.injected_ids.push_back(h.chunk.id);
        stats_.injected_at.push_back(session_->position());
      }
      stats_.injected_chunks += static_cast<int64_t>(hits.size());
    }
    if (for_turn) {
      placed_ = std::move(hits);
    } else if (!hits.empty()) {
      const std::vector<int64_t> ids = tokenizer_->encode(placed_text(hits));
      feed(ids, {{0, ids.size()}}, out);
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
    if (config_.show_retrieval) show(r.hits, written);
    report_->placement = "region";
    for (const Retrieved& h : r.hits) {
      const bool now = std::find(written.begin(), written.end(), h.chunk.id) != written.end();
      report_->retrieved.push_back({h.chunk.id, h.score, h.chunk.positions.empty() ? -1 : h.chunk.positions.front(),
                                    h.chunk.positions.empty() ? -1 : h.chunk.positions.back(), now,
                                    h.chunk.text.substr(0, 160)});
    }
    // Why each resident chunk is there: the query that brought it (bounded by the region's size).
    if (pending_turn_) {
      for (int64_t id : written) why_[id] = pending_turn_->text.substr(0, 80);
    }
    const std::vector<int64_t> resident = region_.resident();
    for (auto it = why_.begin(); it != why_.end();)
      it = std::find(resident.begin(), resident.end(), it->first) == resident.end() ? why_.erase(it) : std::next(it);
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.injected_chunks += static_cast<int64_t>(written.size());
    stats_.injected_ids.insert(stats_.injected_ids.end(), written.begin(), written.end());
    stats_.injected_at.insert(stats_.injected_at.end(), written.size(), session_->position());
  }

  void show(const std::vector<Retrieved>& hits, const std::vector<int64_t>& written) {
    context().run.before_output();
    for (const Retrieved& h : hits) {
      const bool now = prompt_placement() || std::find(written.begin(), written.end(), h.chunk.id) != written.end();
      std::string text = h.chunk.text.substr(0, 160);
      std::replace(text.begin(), text.end(), '\n', ' ');
      std::fprintf(stderr, "[memory] chunk %ld (score %.3f, tokens at %ld..%ld)%s: %s\n", static_cast<long>(h.chunk.id),
                   h.score, static_cast<long>(h.chunk.positions.empty() ? -1 : h.chunk.positions.front()),
                   static_cast<long>(h.chunk.positions.empty() ? -1 : h.chunk.positions.back()),
                   now ? (prompt_placement() ? " placed before the turn" : " re-injected") : " already in the cache",
                   text.c_str());
    }
  }

  // ---- checkpoints of a conversation -------------------------------------------------------------------------
  nlohmann::ordered_json state_meta() const {
    nlohmann::ordered_json m;
    m["chat"] = chat_ ? chat_->state() : nlohmann::ordered_json();
    m["sampler"] = sampler_->state();
    m["since_query"] = since_query_;
    nlohmann::ordered_json region = nlohmann::ordered_json::array();
    for (const MemoryRegion::Resident& r : region_.residents())
      region.push_back({{"chunk", r.chunk_id}, {"score", r.score}, {"last_used", r.last_used}, {"positions", r.positions}});
    m["region"] = region;
    m["unindexed"] = unindexed_;
    m["turns"] = stats_.turns;
    return m;
  }

  void take_pending_snapshot() {
    if (config_.checkpoint.empty()) return;
    pending_snapshot_ = std::make_unique<Snapshot>(take_snapshot(*session_, state_meta()));
    // Written once everything evicted so far is stored (at once when nothing goes to the memory path).
    if (!config_.memory || !evicted_connected() || indexed_ >= snapshot_waits_for_) write_pending_snapshot();
  }

  void write_pending_snapshot() {
    write_snapshot(config_.checkpoint, *pending_snapshot_);
    pending_snapshot_.reset();
    std::lock_guard<std::mutex> lock(stats_mutex_);
    ++stats_.snapshots;
  }

  void resume() {
    const std::string& path = config_.checkpoint;
    const nlohmann::ordered_json m = load_snapshot(path, *session_);
    try {
      if (chat_) chat_->restore(m.at("chat"), path + " (chat)");
      sampler_->set_state(m.at("sampler").get<std::string>());
      since_query_ = m.at("since_query").get<int64_t>();
      std::vector<MemoryRegion::Resident> residents;
      for (const auto& r : m.at("region"))
        residents.push_back({r.at("chunk").get<int64_t>(), r.at("score").get<float>(), r.at("last_used").get<int64_t>(),
                             r.at("positions").get<std::vector<int64_t>>()});
      region_.restore(std::move(residents));
      unindexed_ = m.at("unindexed").get<std::vector<std::pair<int64_t, int64_t>>>();
      stats_.turns = m.at("turns").get<int64_t>();
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument(path + ": damaged conversation state: " + e.what());
    }
    stats_.resumed = true;
    spdlog::info("model-step '{}': resumed the conversation of {} ({} turns, {} tokens)", name(), path, stats_.turns,
                 session_->position());
  }

  ModelStepConfig config_;
  std::shared_ptr<const ModelResource> model_;
  std::shared_ptr<const Decoder> decoder_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  StreamConfig stream_config_;
  std::unique_ptr<StreamSession> session_;
  std::unique_ptr<Sampler> sampler_;
  std::unique_ptr<TextStreamer> streamer_;
  std::unique_ptr<ChatTurns> chat_;        // chat mode
  MemoryRegion region_;
  std::map<int64_t, std::string> why_;     // resident chunk -> the turn that brought it
  std::vector<Retrieved> placed_;          // placement prompt: what goes before the waiting turn
  std::vector<std::string> last_placed_;   // ... as /memory lists it
  std::vector<std::pair<int64_t, int64_t>> unindexed_;  // stream positions [begin, end) never to be indexed
  at::Tensor logits_;                     // [1, vocab] of the last token fed
  int64_t seq_ = 0;
  int64_t batches_ = 0;
  int64_t since_query_ = 0;
  int64_t indexed_ = -1;                  // the last EvictedBatch step index-insert reported stored
  bool started_ = false;
  Clock::time_point first_block_, turn_start_;
  std::shared_ptr<TurnReport> report_ = std::make_shared<TurnReport>();
  std::unique_ptr<Snapshot> pending_snapshot_;  // taken after a reply, written once indexed_ >= snapshot_waits_for_
  int64_t snapshot_waits_for_ = -1;
  mutable std::mutex stats_mutex_;
  ModelStepStats stats_;
  int64_t queries_ = 0;                     // Query ids sent
  std::optional<TokenBlock> pending_turn_;  // sync: the turn waiting for its retrieval
  int64_t pending_query_ = -1;              // the id of the Query it waits for
  std::deque<TokenBlock> stash_;            // blocks that arrived behind it
  Stage<In<TokenBlock, Retrieval, int64_t>, Out<StepResult, EvictedBatch, Query>> stage_;
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
      {in_port<TokenBlock>("tokens"), in_port<Retrieval>("inject", PortRole::step_boundary), in_port<int64_t>("indexed", PortRole::step_boundary)},
      {out_port<StepResult>("step"), out_port<EvictedBatch>("evicted"), out_port<Query>("query")});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
