#include "models/stream/stream.h"

#include <algorithm>
#include <stdexcept>

#include "models/stream/cluster.h"
#include "models/stream/kv_align.h"
#include "models/cache/rope.h"

namespace sinkflow {

Policy parse_policy(const std::string& name) { return enum_from_name(kPolicyNames, name, "policy"); }

const char* policy_name(Policy policy) { return enum_name(kPolicyNames, policy); }

InjectMode parse_inject_mode(const std::string& name) { return enum_from_name(kInjectModeNames, name, "injection mode"); }

CacheConfig StreamConfig::resolved_cache() const {
  CacheConfig c = cache;
  if (policy == Policy::window || policy == Policy::dense) c.n_sink = 0;
  if (policy == Policy::dense) {
    c.allow_evict = false;
    c.n_memory = 0;
  }
  if (policy == Policy::kv_align) c.keep_originals = true;
  if (policy == Policy::cluster) c.evict_kv = true;
  return c;
}

void StreamConfig::validate(const ModelConfig& model, const std::string& where) const {
  if (prefill_block <= 0) throw std::invalid_argument(where + ": prefill_block must be > 0, found " + std::to_string(prefill_block));
  if (policy == Policy::recompute && cache.n_memory > 0) {
    throw std::invalid_argument(where + ": the recompute policy has no memory region (n_memory must be 0, found " +
                                std::to_string(cache.n_memory) + ")");
  }
  if (policy == Policy::kv_align) {
    if (!kv_align) throw std::invalid_argument(where + ": the kv-align policy needs its networks (train-kv-align)");
    if (cache.n_memory > 0) {
      throw std::invalid_argument(where + ": the kv-align policy has no memory region (n_memory must be 0, found " +
                                  std::to_string(cache.n_memory) + ")");
    }
    kv_align->check_model(model, where);
  }
  if (policy == Policy::cluster && cache.n_memory <= 0) {
    throw std::invalid_argument(where + ": the cluster policy keeps its centroids in the memory region: n_memory (the "
                                "number of centroids) must be > 0, found " + std::to_string(cache.n_memory));
  }
  CacheConfig c = resolved_cache();
  if (policy == Policy::recompute) c.allow_evict = false;  // its scratch cache is dense
  c.validate(model, where);
}

StreamSession::StreamSession(std::shared_ptr<const Decoder> decoder, const StreamConfig& config, int64_t start_position)
    : decoder_(std::move(decoder)), config_(config) {
  config_.validate(decoder_->config(), "stream");
  cache_ = decoder_->make_cache(config_.resolved_cache());
  cache_->reset(start_position);
  if (config_.policy == Policy::recompute) {
    CacheConfig s;
    s.n_sink = 0;
    s.n_memory = 0;
    s.n_recent = config_.resolved_cache().capacity();
    s.allow_evict = false;
    scratch_ = decoder_->make_cache(s);
  }
  if (config_.policy == Policy::cluster) {
    const ModelConfig& m = decoder_->config();
    cluster_ = std::make_unique<ClusterMemory>(m.n_layer, m.n_kv_head, m.d_head, config_.cache.n_memory, config_.cluster_seed);
  }
}

StreamSession::~StreamSession() = default;

at::Tensor StreamSession::feed(const std::vector<int64_t>& tokens, std::vector<EvictedSpan>* evicted, bool all_logits,
                               at::Tensor* hidden_out) {
  if (tokens.empty()) throw std::invalid_argument("stream: feed() needs at least one token");
  const int64_t block = std::min(config_.prefill_block, cache_->config().n_recent);
  std::vector<at::Tensor> rows, hiddens;
  at::Tensor last, last_hidden;
  for (size_t begin = 0; begin < tokens.size(); begin += block) {
    const size_t end = std::min(tokens.size(), begin + static_cast<size_t>(block));
    std::vector<int64_t> part(tokens.begin() + begin, tokens.begin() + end);
    at::Tensor h;
    last = step(part, evicted, all_logits, hidden_out ? &h : nullptr);
    if (all_logits) rows.push_back(last);
    if (hidden_out) hiddens.push_back(h);
  }
  if (hidden_out) *hidden_out = hiddens.size() == 1 ? hiddens[0] : at::cat(hiddens, 0);
  if (all_logits && rows.size() > 1) return at::cat(rows, 0);
  return last;
}

at::Tensor StreamSession::step(const std::vector<int64_t>& tokens, std::vector<EvictedSpan>* evicted, bool all_logits,
                               at::Tensor* hidden_out) {
  StepPlan plan = plan_step(*cache_, tokens);
  EvictedSpan span = cache_->apply(plan);
  tokens_evicted_ += static_cast<int64_t>(span.tokens.size());
  if (!span.tokens.empty()) {
    if (config_.policy == Policy::kv_align) {
      cache_->realign([this](const at::Tensor& k, const at::Tensor& v, const std::vector<int64_t>& tokens,
                             const std::vector<int64_t>& from, const std::vector<int64_t>& to) {
        return config_.kv_align->realign(k, v, tokens, from, to, decoder_.get());
      });
    } else if (config_.policy == Policy::cluster) {
      cluster_->observe(span);
      cluster_->refresh(*cache_);  // nothing until k tokens were seen
    }
  }
  if (evicted && !span.tokens.empty()) evicted->push_back(std::move(span));
  if (config_.policy != Policy::recompute) return decoder_->forward(plan, *cache_, !all_logits, hidden_out);
  // Sliding window with re-computation: the cached tokens, rebuilt at positions 0..L-1.
  std::vector<int64_t> window = cache_->cached_tokens();
  scratch_->reset(0);
  StepPlan full = plan_step(*scratch_, window);
  scratch_->apply(full);
  at::Tensor hidden;
  at::Tensor logits = decoder_->forward(full, *scratch_, !all_logits, hidden_out ? &hidden : nullptr);
  const int64_t t = static_cast<int64_t>(tokens.size());
  const int64_t rows = all_logits ? t : 1;
  if (hidden_out) *hidden_out = hidden.narrow(0, hidden.size(0) - rows, rows);
  return logits.narrow(0, logits.size(0) - rows, rows);
}

}  // namespace sinkflow

namespace sinkflow {

void StreamSession::inject(const MemoryChunk& chunk, InjectMode mode) {
  const int64_t n = static_cast<int64_t>(chunk.tokens.size());
  std::vector<int64_t> free = cache_->free_memory_slots();
  if (n == 0 || n > static_cast<int64_t>(free.size())) {
    throw std::invalid_argument("stream: chunk " + std::to_string(chunk.chunk_id) + " of " + std::to_string(n) +
                                " tokens does not fit the " + std::to_string(free.size()) + " free memory slots");
  }
  MemoryWrite w;
  w.chunk_id = chunk.chunk_id;
  w.slots.assign(free.begin(), free.begin() + n);
  w.tokens = chunk.tokens;
  if (mode == InjectMode::kv) {
    if (!chunk.kv.defined()) {
      throw std::invalid_argument("stream: chunk " + std::to_string(chunk.chunk_id) + " has no stored K/V for kv injection");
    }
    w.kv = chunk.kv;
  } else {
    // The sinks followed by the chunk, from scratch; the chunk's keys then leave un-rotated.
    const int64_t n_sink = cache_->n_sink_used();
    if (!inject_scratch_ || inject_scratch_->capacity() < n_sink + n) {
      CacheConfig c;
      c.n_sink = 0;
      c.n_memory = 0;
      c.n_recent = cache_->config().n_sink + cache_->config().n_memory;
      c.allow_evict = false;
      inject_scratch_ = decoder_->make_cache(c);
    }
    inject_scratch_->reset(0);
    std::vector<int64_t> tokens;
    for (int64_t s = 0; s < n_sink; ++s) tokens.push_back(cache_->slot_token(s));
    tokens.insert(tokens.end(), chunk.tokens.begin(), chunk.tokens.end());
    StepPlan plan = plan_step(*inject_scratch_, tokens);
    inject_scratch_->apply(plan);
    decoder_->forward(plan, *inject_scratch_, true);
    at::Tensor k = inject_scratch_->keys().narrow(2, n_sink, n);
    if (const Rope* rope = decoder_->rope()) {
      std::vector<int64_t> neg;
      for (int64_t j = 0; j < n; ++j) neg.push_back(-(n_sink + j));
      k = rope->rotate_layers(k, neg);
    }
    w.kv = at::stack({k, inject_scratch_->values().narrow(2, n_sink, n)}, 1);
  }
  for (int64_t j = 0; j < n; ++j) w.positions.push_back(j);
  cache_->apply(w);
}

}  // namespace sinkflow

namespace sinkflow {

namespace {

void require_saveable(Policy policy, const std::string& where) {
  if (policy != Policy::dense && policy != Policy::window && policy != Policy::sink)
    throw std::invalid_argument(where + "policy '" + policy_name(policy) +
                                "' cannot be saved and resumed (its state is more than the cache); use sink, window or dense");
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> StreamSession::state_tensors() const {
  require_saveable(config_.policy, "");
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, t] : cache_->state_tensors()) out.emplace_back("cache." + name, t);
  out.emplace_back("session.tokens_evicted", at::full({1}, tokens_evicted_, at::kLong));
  return out;
}

void StreamSession::restore_state(const std::map<std::string, at::Tensor>& tensors, const std::string& where) {
  require_saveable(config_.policy, where + ": ");
  std::map<std::string, at::Tensor> cache;
  for (const auto& [name, t] : tensors)
    if (name.rfind("cache.", 0) == 0) cache.emplace(name.substr(6), t);
  const auto it = tensors.find("session.tokens_evicted");
  if (it == tensors.end() || it->second.scalar_type() != at::kLong || it->second.numel() != 1 ||
      it->second.item<int64_t>() < 0)
    throw std::invalid_argument(where + ": tensor 'session.tokens_evicted': expected one int64 >= 0");
  cache_->restore_state(cache, where);
  tokens_evicted_ = it->second.item<int64_t>();
}

}  // namespace sinkflow
