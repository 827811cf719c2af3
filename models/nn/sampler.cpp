#include "models/nn/sampler.h"

#include "models/io/field_error.h"
#include "models/io/limits.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <unordered_set>
#include <vector>

namespace sinkflow {

void SamplerConfig::validate(const std::string& where) const {
  auto fail = [&](const char* field, const std::string& what) { throw FieldError(field, at_where(where, what)); };
  if (!(temperature >= 0 && temperature <= 1e6)) fail("temperature", "temperature must be in [0, 1e6], found " + std::to_string(temperature));
  if (top_k < 0 || top_k > kMaxVocab)
    fail("top_k", "top_k must be in [0, " + std::to_string(kMaxVocab) + "], found " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1)) fail("top_p", "top_p must be in (0, 1], found " + std::to_string(top_p));
  if (!(min_p >= 0 && min_p <= 1)) fail("min_p", "min_p must be in [0, 1], found " + std::to_string(min_p));
  if (!(repetition_penalty > 0 && repetition_penalty <= 1e6))
    fail("repetition_penalty", "repetition_penalty must be in (0, 1e6], found " + std::to_string(repetition_penalty));
  if (repeat_last_n < 0 || repeat_last_n > (int64_t{1} << 20))
    fail("repeat_last_n", "repeat_last_n must be in [0, 1048576], found " + std::to_string(repeat_last_n));
}

SamplerConfig with_model_defaults(SamplerConfig s, const GenerationConfig& g) {
  if (g.repetition_penalty) s.repetition_penalty = *g.repetition_penalty;
  if (!g.do_sample.value_or(false)) return s;
  s.temperature = g.temperature.value_or(1.0);
  s.top_k = g.top_k.value_or(50);
  s.top_p = g.top_p.value_or(1.0);
  if (g.min_p) s.min_p = *g.min_p;
  return s;
}

Sampler::Sampler(const SamplerConfig& config) : config_(config), rng_(config.seed) { config_.validate("sampler"); }

int64_t Sampler::next(const at::Tensor& logits, const std::vector<int64_t>& recent) {
  at::Tensor l = logits.reshape({-1}).to(at::kCPU, at::kFloat).contiguous();
  const int64_t n = l.numel();
  if (config_.repetition_penalty != 1.0 && config_.repeat_last_n > 0 && !recent.empty()) {
    l = l.clone();
    float* w = l.data_ptr<float>();
    const size_t from = recent.size() > static_cast<size_t>(config_.repeat_last_n)
                            ? recent.size() - static_cast<size_t>(config_.repeat_last_n) : 0;
    std::unordered_set<int64_t> seen(recent.begin() + static_cast<long>(from), recent.end());
    const auto p = static_cast<float>(config_.repetition_penalty);
    for (int64_t id : seen) {
      if (id < 0 || id >= n) continue;
      w[id] = w[id] > 0 ? w[id] / p : w[id] * p;
    }
  }
  if (config_.temperature <= 0) return l.argmax().item<int64_t>();
  const float* p = l.data_ptr<float>();
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  int64_t keep = config_.top_k > 0 ? std::min(config_.top_k, n) : n;
  std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), [&](int64_t a, int64_t b) {
    return p[a] > p[b] || (p[a] == p[b] && a < b);
  });
  idx.resize(keep);
  std::vector<double> prob(keep);
  const double mx = p[idx[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += prob[i] = std::exp((p[idx[i]] - mx) / config_.temperature);
  double cum = 0;
  int64_t cut = keep;
  for (int64_t i = 0; i < keep; ++i) {
    cum += prob[i] / sum;
    if (cum >= config_.top_p) { cut = i + 1; break; }
  }
  // min-p: relative to the most likely token (prob[0] is its unnormalised probability, exp(0) = 1).
  if (config_.min_p > 0) {
    int64_t m = 1;
    while (m < cut && prob[m] >= config_.min_p * prob[0]) ++m;
    cut = m;
  }
  std::discrete_distribution<int64_t> dist(prob.begin(), prob.begin() + cut);
  return idx[dist(rng_)];
}

std::string Sampler::state() const {
  std::ostringstream out;
  out << rng_;
  return out.str();
}

void Sampler::set_state(const std::string& state) {
  std::istringstream in(state);
  std::mt19937_64 rng;
  in >> rng;
  if (in.fail()) throw std::invalid_argument("sampler state: expected a std::mt19937_64 state, found " +
                                             std::to_string(state.size()) + " bytes that are not one");
  rng_ = rng;
}

}  // namespace sinkflow
