#include "models/cache/kv_cache.h"

#include "models/io/field_error.h"
#include "models/io/limits.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "models/cache/rope.h"

namespace sinkflow {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

at::Tensor index_tensor(const std::vector<int64_t>& idx, at::Device device) {
  at::Tensor t = at::from_blob(const_cast<int64_t*>(idx.data()), {static_cast<int64_t>(idx.size())}, at::kLong).clone();
  return device.is_cpu() ? t : t.to(device);
}

// True when idx is first, first+1, ..., first+n-1.
bool contiguous(const std::vector<int64_t>& idx) {
  for (size_t i = 1; i < idx.size(); ++i) {
    if (idx[i] != idx[0] + static_cast<int64_t>(i)) return false;
  }
  return !idx.empty();
}

// Selects `idx` along `dim` (a view when contiguous).
at::Tensor take(const at::Tensor& t, int64_t dim, const std::vector<int64_t>& idx) {
  if (contiguous(idx)) return t.narrow(dim, idx[0], static_cast<int64_t>(idx.size()));
  return t.index_select(dim, index_tensor(idx, t.device()));
}

void put(at::Tensor& t, int64_t dim, const std::vector<int64_t>& idx, const at::Tensor& src) {
  if (contiguous(idx)) {
    t.narrow(dim, idx[0], static_cast<int64_t>(idx.size())).copy_(src);
  } else {
    t.index_copy_(dim, index_tensor(idx, t.device()), src.to(t.scalar_type()));
  }
}

}  // namespace

void CacheConfig::validate(const std::string& where) const {
  auto fail = [&](const char* field, const std::string& what) { throw FieldError(field, at_where(where, what)); };
  if (n_sink < 0) fail("n_sink", "n_sink must be >= 0, found " + str(n_sink));
  if (n_memory < 0) fail("n_memory", "n_memory must be >= 0, found " + str(n_memory));
  if (n_recent <= 0) fail("n_recent", "n_recent (the window) must be > 0, found " + str(n_recent));
  for (const auto& [field, value] : {std::pair<const char*, int64_t>{"n_sink", n_sink}, {"n_memory", n_memory}, {"n_recent", n_recent}})
    if (value > kMaxCacheTokens)
      fail(field, std::string(field) + " is " + str(value) + ", more than the limit of " + str(kMaxCacheTokens) + " tokens");
  if (evict_block < 1 || evict_block > n_recent) {
    fail("evict_block", "evict_block must be in [1, n_recent=" + str(n_recent) + "], found " + str(evict_block));
  }
  if (kv_dtype != at::ScalarType::Undefined && kv_dtype != at::kFloat && kv_dtype != at::kBFloat16 &&
      kv_dtype != at::kHalf)
    fail("kv_dtype",
         std::string("kv_dtype must be float32, bfloat16 or float16, found ") + c10::toString(kv_dtype));
}

void CacheConfig::validate(const ModelConfig& model, const std::string& where) const {
  validate(where);
  auto fail = [&](const std::string& what) { throw std::invalid_argument(where + ": " + what); };
  // Keys and values of every layer, at 2 bytes an element at the least: more than this machine has is an error
  // now rather than an allocator's message later.
  const double bytes = 2.0 * 2.0 * static_cast<double>(model.n_layer * model.n_kv_head * model.d_head) *
                       static_cast<double>(capacity());
  const int64_t memory = physical_memory_bytes();
  if (memory > 0 && bytes > static_cast<double>(memory)) {
    throw FieldError("n_recent", at_where(where, "a cache of n_sink + n_memory + n_recent = " + str(capacity()) +
                                                     " tokens needs at least " + gib_text(bytes) + " for this model, more than this machine's " +
                                                     gib_text(static_cast<double>(memory))));
  }
  const bool learned_positions = model.family == Family::gpt2;
  if (keep_originals && !learned_positions) {
    fail("keep_originals (KV-Align) is for learned absolute positions; model_type '" + model.model_type + "' uses RoPE");
  }
  if ((learned_positions || !allow_evict) && model.max_positions > 0 && capacity() > model.max_positions) {
    fail("n_sink + n_memory + n_recent = " + str(capacity()) + " exceeds the model's max_positions " +
         str(model.max_positions) + (allow_evict ? " (learned absolute positions)" : " (dense: no eviction)"));
  }
}

KvCache::KvCache(const ModelConfig& model, const CacheConfig& config, const Rope* rope, at::Device device,
                 at::ScalarType dtype)
    : model_(model), config_(config), rope_(rope), n_layer_(model.n_layer), compute_dtype_(dtype) {
  config_.validate(model, "kv_cache");
  const int64_t cap = capacity();
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  const auto kv_opts = config_.kv_dtype == at::ScalarType::Undefined ? opts : opts.dtype(config_.kv_dtype);
  k_ = at::zeros({n_layer_, model.n_kv_head, cap, model.d_head}, kv_opts);
  v_ = at::zeros({n_layer_, model.n_kv_head, cap, model.d_head}, kv_opts);
  if (rope_ && config_.scheme == PositionScheme::fast && config_.n_sink + config_.n_memory > 0) {
    k_raw_ = at::zeros({n_layer_, model.n_kv_head, config_.n_sink + config_.n_memory, model.d_head}, opts);
  }
  if (config_.keep_originals) {
    k_orig_ = at::zeros({n_layer_, model.n_kv_head, cap, model.d_head}, opts);
    v_orig_ = at::zeros({n_layer_, model.n_kv_head, cap, model.d_head}, opts);
    orig_index_.assign(cap, -1);
    aligned_index_.assign(cap, -1);
  }
  slot_token_.assign(cap, -1);
  slot_pos_.assign(cap, -1);
  slot_chunk_.assign(cap, -1);
  rot_pos_.assign(cap, -1);
  used_.assign(cap, 0);
}

int64_t KvCache::n_memory_used() const {
  int64_t n = 0;
  for (int64_t s = config_.n_sink; s < recent_begin(); ++s) n += used_[s];
  return n;
}

int64_t KvCache::ring_slot(int64_t k) const { return recent_begin() + (ring_start_ + k) % config_.n_recent; }

int64_t KvCache::extent() const {
  if (ring_count_ == config_.n_recent) return capacity();
  // The window's slots are ring_slot(0 .. ring_count_ - 1): the last one, or the window's end once they wrap.
  if (ring_count_ > 0) return recent_begin() + std::min(ring_start_ + ring_count_, config_.n_recent);
  for (int64_t s = recent_begin() - 1; s >= 0; --s) {
    if (used_[s]) return s + 1;
  }
  return 0;
}

std::vector<int64_t> KvCache::ordered_slots() const {
  std::vector<int64_t> out;
  out.reserve(n_cached());
  for (int64_t s = 0; s < n_sink_used_; ++s) out.push_back(s);
  for (int64_t s = config_.n_sink; s < recent_begin(); ++s) {
    if (used_[s]) out.push_back(s);
  }
  for (int64_t k = 0; k < ring_count_; ++k) out.push_back(ring_slot(k));
  return out;
}

std::vector<int64_t> KvCache::cached_tokens() const {
  std::vector<int64_t> out;
  for (int64_t s : ordered_slots()) out.push_back(slot_token_[s]);
  return out;
}

std::vector<int64_t> KvCache::in_cache_index() const {
  std::vector<int64_t> idx(capacity(), -1);
  int64_t i = 0;
  for (int64_t s : ordered_slots()) idx[s] = i++;
  return idx;
}

std::vector<int64_t> KvCache::free_memory_slots() const {
  std::vector<int64_t> out;
  for (int64_t s = config_.n_sink; s < recent_begin(); ++s) {
    if (!used_[s]) out.push_back(s);
  }
  return out;
}

void KvCache::reset(int64_t start_position) {
  std::fill(slot_token_.begin(), slot_token_.end(), -1);
  std::fill(slot_pos_.begin(), slot_pos_.end(), -1);
  std::fill(slot_chunk_.begin(), slot_chunk_.end(), -1);
  std::fill(rot_pos_.begin(), rot_pos_.end(), -1);
  std::fill(used_.begin(), used_.end(), 0);
  n_sink_used_ = 0;
  ring_start_ = 0;
  ring_count_ = 0;
  next_pos_ = start_position;
}

StepPlan plan_step(const KvCache& cache, const std::vector<int64_t>& tokens) {
  const CacheConfig& c = cache.config_;
  const int64_t t = static_cast<int64_t>(tokens.size());
  StepPlan plan;
  plan.tokens = tokens;
  const int64_t to_sink = std::min(t, c.n_sink - cache.n_sink_used_);
  const int64_t to_ring = t - to_sink;
  if (to_ring > c.n_recent) {
    throw std::invalid_argument("kv_cache: a step of " + str(t) + " tokens does not fit the window of n_recent=" +
                                str(c.n_recent) + " slots; feed at most n_recent tokens per step");
  }
  const int64_t free = c.n_recent - cache.ring_count_;
  int64_t evict = 0;
  if (to_ring > free) {
    if (!c.allow_evict) {
      throw std::invalid_argument("kv_cache: the cache is full (" + str(cache.capacity()) +
                                  " slots, no eviction: dense policy) and cannot take " + str(to_ring) +
                                  " more tokens at position " + str(cache.next_pos_));
    }
    evict = std::min(cache.ring_count_, std::max(to_ring - free, c.evict_block));
  }
  for (int64_t k = 0; k < evict; ++k) plan.evict_slots.push_back(cache.ring_slot(k));
  for (int64_t i = 0; i < to_sink; ++i) plan.write_slots.push_back(cache.n_sink_used_ + i);
  const int64_t start = (cache.ring_start_ + evict) % c.n_recent;
  const int64_t count = cache.ring_count_ - evict;
  for (int64_t j = 0; j < to_ring; ++j) {
    plan.write_slots.push_back(c.n_sink + c.n_memory + (start + count + j) % c.n_recent);
  }
  for (int64_t j = 0; j < t; ++j) plan.positions.push_back(cache.next_pos_ + j);
  return plan;
}

EvictedSpan KvCache::apply(const StepPlan& plan) {
  EvictedSpan span;
  const int64_t n_evict = static_cast<int64_t>(plan.evict_slots.size());
  if (n_evict > 0) {
    for (int64_t s : plan.evict_slots) {
      span.tokens.push_back(slot_token_[s]);
      span.positions.push_back(slot_pos_[s]);
    }
    if (config_.evict_kv) {
      at::Tensor k = take(k_, 2, plan.evict_slots).to(compute_dtype_);
      if (rope_ && config_.scheme == PositionScheme::fast) k = rope_->rotate_layers(k, [&] {
          std::vector<int64_t> neg;
          for (int64_t p : span.positions) neg.push_back(-p);
          return neg;
        }());
      // [L, 2, KV, n, dh], in the model's dtype whatever the cache keeps
      span.kv = at::stack({k, take(v_, 2, plan.evict_slots).to(compute_dtype_)}, 1).contiguous();
    }
    for (int64_t s : plan.evict_slots) {
      slot_token_[s] = -1;
      slot_pos_[s] = -1;
      used_[s] = 0;
    }
    ring_start_ = (ring_start_ + n_evict) % config_.n_recent;
    ring_count_ -= n_evict;
  }
  for (size_t j = 0; j < plan.tokens.size(); ++j) {
    const int64_t s = plan.write_slots[j];
    slot_token_[s] = plan.tokens[j];
    slot_pos_[s] = plan.positions[j];
    rot_pos_[s] = plan.positions[j];
    used_[s] = 1;
    if (s < config_.n_sink) {
      ++n_sink_used_;
    } else {
      ++ring_count_;
    }
  }
  next_pos_ += static_cast<int64_t>(plan.tokens.size());
  if (config_.keep_originals) {
    const std::vector<int64_t> idx = in_cache_index();
    for (int64_t s : plan.write_slots) orig_index_[s] = aligned_index_[s] = idx[s];
  }
  if (n_evict > 0) refresh_virtual_positions();
  return span;
}

int64_t KvCache::realign(const RealignFn& fn) {
  if (!config_.keep_originals) throw std::logic_error("kv_cache: realign() needs keep_originals");
  const std::vector<int64_t> idx = in_cache_index();
  std::vector<int64_t> slots, tokens, from, to;
  for (int64_t s = 0; s < capacity(); ++s) {
    if (used_[s] && idx[s] != aligned_index_[s]) {
      slots.push_back(s);
      tokens.push_back(slot_token_[s]);
      from.push_back(orig_index_[s]);
      to.push_back(idx[s]);
    }
  }
  if (slots.empty()) return 0;
  auto [k, v] = fn(take(k_orig_, 2, slots), take(v_orig_, 2, slots), tokens, from, to);
  put(k_, 2, slots, k);
  put(v_, 2, slots, v);
  for (size_t i = 0; i < slots.size(); ++i) aligned_index_[slots[i]] = to[i];
  return static_cast<int64_t>(slots.size());
}

void KvCache::refresh_virtual_positions() {
  if (!rope_ || config_.scheme != PositionScheme::fast) return;
  // Sinks and memory sit just before the oldest window token, in in-cache order.
  const int64_t oldest = ring_count_ > 0 ? slot_pos_[ring_slot(0)] : next_pos_;
  std::vector<int64_t> slots;
  for (int64_t s = 0; s < n_sink_used_; ++s) slots.push_back(s);
  for (int64_t s = config_.n_sink; s < recent_begin(); ++s) {
    if (used_[s]) slots.push_back(s);
  }
  if (slots.empty()) return;
  const int64_t first = oldest - static_cast<int64_t>(slots.size());
  std::vector<int64_t> targets;
  bool changed = false;
  for (size_t i = 0; i < slots.size(); ++i) {
    targets.push_back(first + static_cast<int64_t>(i));
    changed |= rot_pos_[slots[i]] != targets.back();
  }
  if (!changed) return;
  // Re-rotate from the un-rotated keys: no error accumulates however long the stream.
  at::Tensor raw = take(k_raw_, 2, slots);  // [L, KV, n, dh]
  at::Tensor rotated = rope_->rotate_layers(raw, targets);
  put(k_, 2, slots, rotated);
  for (size_t i = 0; i < slots.size(); ++i) rot_pos_[slots[i]] = targets[i];
}

void KvCache::apply(const MemoryWrite& write) {
  const int64_t n = static_cast<int64_t>(write.slots.size());
  if (write.kv.dim() != 5 || write.kv.size(0) != n_layer_ || write.kv.size(1) != 2 ||
      write.kv.size(2) != k_.size(1) || write.kv.size(3) != n || write.kv.size(4) != k_.size(3)) {
    throw std::invalid_argument("kv_cache: memory write expects kv of shape [" + str(n_layer_) + ", 2, " +
                                str(k_.size(1)) + ", " + str(n) + ", " + str(k_.size(3)) + "], found " +
                                std::string(c10::str(write.kv.sizes())));
  }
  for (int64_t s : write.slots) {
    if (s < config_.n_sink || s >= recent_begin() || used_[s]) {
      throw std::invalid_argument("kv_cache: memory write to slot " + str(s) + " which is not a free memory slot");
    }
  }
  at::Tensor k = write.kv.select(1, 0).to(k_.device(), compute_dtype_);
  at::Tensor v = write.kv.select(1, 1).to(v_.device(), compute_dtype_);
  if (rope_ && config_.scheme == PositionScheme::fast) {
    std::vector<int64_t> raw_slots(write.slots);
    put(k_raw_, 2, raw_slots, k);
  }
  put(k_, 2, write.slots, k);  // fast: re-rotated just below
  put(v_, 2, write.slots, v);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = write.slots[i];
    slot_chunk_[s] = write.chunk_id;
    slot_token_[s] = i < static_cast<int64_t>(write.tokens.size()) ? write.tokens[i] : -1;
    used_[s] = 1;
    slot_pos_[s] = i < static_cast<int64_t>(write.positions.size()) ? write.positions[i] : 0;
    rot_pos_[s] = std::numeric_limits<int64_t>::min();  // forces the re-rotation
  }
  refresh_virtual_positions();
}

int64_t KvCache::release_memory(int64_t chunk_id) {
  int64_t n = 0;
  for (int64_t s = config_.n_sink; s < recent_begin(); ++s) {
    if (used_[s] && slot_chunk_[s] == chunk_id) {
      used_[s] = 0;
      slot_chunk_[s] = -1;
      slot_token_[s] = -1;
      slot_pos_[s] = -1;
      ++n;
    }
  }
  if (n > 0) refresh_virtual_positions();
  return n;
}

std::vector<int64_t> KvCache::input_positions(const StepPlan& plan) const {
  if (rope_ && config_.scheme == PositionScheme::fast) return plan.positions;
  const std::vector<int64_t> idx = in_cache_index();
  std::vector<int64_t> out;
  out.reserve(plan.write_slots.size());
  for (int64_t s : plan.write_slots) out.push_back(idx[s]);
  return out;
}

at::Tensor KvCache::attention_mask(const StepPlan& plan, int64_t window) const {
  const int64_t e = extent();
  const int64_t t = static_cast<int64_t>(plan.tokens.size());
  auto memory = [&](int64_t s) { return s >= config_.n_sink && s < recent_begin(); };
  // A sliding window measures distances as the keys are rotated: rotated positions (fast: sinks and memory sit
  // just before the window) or in-cache indices (naive, learned positions), which give the same distances.
  std::vector<int64_t> key_pos, query_pos;
  if (window > 0) {
    const bool fast = rope_ && config_.scheme == PositionScheme::fast;
    key_pos = fast ? rot_pos_ : in_cache_index();
    query_pos = input_positions(plan);
  }
  auto visible = [&](int64_t s, int64_t j) {
    if (!used_[s] || !(memory(s) || slot_pos_[s] <= plan.positions[j])) return false;
    return window <= 0 || query_pos[j] - key_pos[s] < window;
  };
  bool all_visible = true;
  for (int64_t s = 0; s < e && all_visible; ++s) {
    all_visible = used_[s] && (t == 1 || memory(s) || slot_pos_[s] <= plan.positions[0]) &&
                  (window <= 0 || query_pos[t - 1] - key_pos[s] < window);
  }
  if (all_visible) return {};
  at::Tensor mask = at::full({t, e}, -std::numeric_limits<float>::infinity(), at::kFloat);
  float* m = mask.data_ptr<float>();
  for (int64_t s = 0; s < e; ++s) {
    for (int64_t j = 0; j < t; ++j) {
      if (visible(s, j)) m[j * e + s] = 0.0f;
    }
  }
  return k_.device().is_cpu() ? mask : mask.to(k_.device());
}

namespace {

// cache[layer, :, slot, :] = row[:, 0, :] by memcpy where both are float32 CPU tensors with contiguous head rows and
// no autograd is involved; false (nothing written) otherwise.
bool copy_row_raw(const at::Tensor& cache, int64_t layer, int64_t slot, const at::Tensor& row) {
  if (!cache.device().is_cpu() || !row.device().is_cpu() || cache.scalar_type() != at::kFloat ||
      row.scalar_type() != at::kFloat || cache.dim() != 4 || row.dim() != 3 || cache.stride(3) != 1 ||
      row.stride(2) != 1 || row.size(0) != cache.size(1) || row.size(2) != cache.size(3) ||
      (at::GradMode::is_enabled() && row.requires_grad()))
    return false;
  float* dst = cache.data_ptr<float>() + layer * cache.stride(0) + slot * cache.stride(2);
  const float* src = row.data_ptr<float>();
  const size_t bytes = static_cast<size_t>(row.size(2)) * sizeof(float);
  for (int64_t j = 0; j < row.size(0); ++j) std::memcpy(dst + j * cache.stride(1), src + j * row.stride(0), bytes);
  return true;
}

}  // namespace

void KvCache::store(int64_t layer, const StepPlan& plan, const at::Tensor& k_raw, const at::Tensor& k_rot,
                    const at::Tensor& v) {
  const bool naive = rope_ && config_.scheme == PositionScheme::naive;
  const at::Tensor& k = naive ? k_raw : k_rot;
  const auto& slots = plan.write_slots;
  if (slots.size() == 1 && copy_row_raw(k_, layer, slots[0], k) && copy_row_raw(v_, layer, slots[0], v)) {
    // a decode step's key and value, written without LibTorch ops
  } else if (slots.size() == 1) {
    k_.select(0, layer).select(1, slots[0]).copy_(k.select(1, 0));
    v_.select(0, layer).select(1, slots[0]).copy_(v.select(1, 0));
  } else {
    at::Tensor kl = k_.select(0, layer), vl = v_.select(0, layer);
    put(kl, 1, slots, k);
    put(vl, 1, slots, v);
  }
  if (k_orig_.defined()) {
    at::Tensor ko = k_orig_.select(0, layer), vo = v_orig_.select(0, layer);
    put(ko, 1, slots, k);
    put(vo, 1, slots, v);
  }
  if (k_raw_.defined()) {
    for (size_t j = 0; j < slots.size(); ++j) {
      if (slots[j] < recent_begin()) k_raw_.select(0, layer).select(1, slots[j]).copy_(k_raw.select(1, j));
    }
  }
}

std::pair<at::Tensor, at::Tensor> KvCache::layer_kv(int64_t layer) const {
  const int64_t e = extent();
  at::Tensor k = k_.select(0, layer).narrow(1, 0, e);
  at::Tensor v = v_.select(0, layer).narrow(1, 0, e);
  if (rope_ && config_.scheme == PositionScheme::naive) {
    k = k.to(compute_dtype_);
    // Every key rotated to its in-cache index (empty slots: anything, they are masked).
    std::vector<int64_t> idx = in_cache_index();
    idx.resize(e);
    for (auto& i : idx) i = std::max<int64_t>(i, 0);
    k = rope_->rotate(k, idx, layer);
  }
  return {k, v};
}

}  // namespace sinkflow

namespace sinkflow {

namespace {

at::Tensor int_tensor(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {static_cast<int64_t>(v.size())}, at::kLong).clone();
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> KvCache::state_tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.emplace_back("k", k_.cpu());
  out.emplace_back("v", v_.cpu());
  if (k_raw_.defined()) out.emplace_back("k_raw", k_raw_.cpu());
  if (k_orig_.defined()) {
    out.emplace_back("k_orig", k_orig_.cpu());
    out.emplace_back("v_orig", v_orig_.cpu());
    out.emplace_back("orig_index", int_tensor(orig_index_));
    out.emplace_back("aligned_index", int_tensor(aligned_index_));
  }
  out.emplace_back("slot_token", int_tensor(slot_token_));
  out.emplace_back("slot_pos", int_tensor(slot_pos_));
  out.emplace_back("slot_chunk", int_tensor(slot_chunk_));
  out.emplace_back("rot_pos", int_tensor(rot_pos_));
  std::vector<int64_t> used(used_.begin(), used_.end());
  out.emplace_back("used", int_tensor(used));
  out.emplace_back("scalars", int_tensor({n_sink_used_, ring_start_, ring_count_, next_pos_}));
  return out;
}

void KvCache::restore_state(const std::map<std::string, at::Tensor>& tensors, const std::string& where) {
  auto get = [&](const std::string& name, const at::Tensor& like) -> at::Tensor {
    const auto it = tensors.find(name);
    if (it == tensors.end()) throw std::invalid_argument(where + ": tensor '" + name + "' is missing");
    const at::Tensor& t = it->second;
    if (t.scalar_type() != like.scalar_type() || !t.sizes().equals(like.sizes()))
      throw std::invalid_argument(where + ": tensor '" + name + "': expected " + std::string(c10::toString(like.scalar_type())) +
                                  " " + std::string(c10::str(like.sizes())) + " (this model and cache), found " +
                                  c10::toString(t.scalar_type()) + " " + std::string(c10::str(t.sizes())));
    return t.contiguous();
  };
  const int64_t cap = capacity();
  auto ints = [&](const std::string& name, int64_t n, int64_t lo, int64_t hi) {
    const at::Tensor t = get(name, at::zeros({n}, at::kLong));
    std::vector<int64_t> v(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
    for (int64_t x : v)
      if (x < lo || x > hi)
        throw std::invalid_argument(where + ": tensor '" + name + "': expected values in [" + str(lo) + ", " + str(hi) +
                                    "], found " + str(x));
    return v;
  };
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 4;
  const std::vector<int64_t> scalars = ints("scalars", 4, 0, kMax);
  if (scalars[0] > config_.n_sink || scalars[1] >= config_.n_recent || scalars[2] > config_.n_recent)
    throw std::invalid_argument(where + ": tensor 'scalars': sink/ring counters outside this cache's regions");
  std::vector<int64_t> slot_token = ints("slot_token", cap, -1, kMax), slot_pos = ints("slot_pos", cap, -1, kMax),
                       slot_chunk = ints("slot_chunk", cap, -1, kMax), rot_pos = ints("rot_pos", cap, -1, kMax),
                       used = ints("used", cap, 0, 1), orig_index, aligned_index;
  const at::Tensor k = get("k", k_), v = get("v", v_);
  at::Tensor k_raw, k_orig, v_orig;
  if (k_raw_.defined()) k_raw = get("k_raw", k_raw_);
  if (k_orig_.defined()) {
    k_orig = get("k_orig", k_orig_);
    v_orig = get("v_orig", v_orig_);
    orig_index = ints("orig_index", cap, -1, cap);
    aligned_index = ints("aligned_index", cap, -1, cap);
  }
  // Everything checked: take it.
  k_.copy_(k);
  v_.copy_(v);
  if (k_raw_.defined()) k_raw_.copy_(k_raw);
  if (k_orig_.defined()) {
    k_orig_.copy_(k_orig);
    v_orig_.copy_(v_orig);
    orig_index_ = std::move(orig_index);
    aligned_index_ = std::move(aligned_index);
  }
  slot_token_ = std::move(slot_token);
  slot_pos_ = std::move(slot_pos);
  slot_chunk_ = std::move(slot_chunk);
  rot_pos_ = std::move(rot_pos);
  used_.assign(used.begin(), used.end());
  n_sink_used_ = scalars[0];
  ring_start_ = scalars[1];
  ring_count_ = scalars[2];
  next_pos_ = scalars[3];
}

}  // namespace sinkflow
