#include "models/nn/sampler.h"

#include "models/io/field_error.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace sinkflow {

void SamplerConfig::validate(const std::string& where) const {
  if (!(temperature >= 0)) throw FieldError("temperature", at_where(where, "temperature must be >= 0, found " + std::to_string(temperature)));
  if (top_k < 0) throw FieldError("top_k", at_where(where, "top_k must be >= 0, found " + std::to_string(top_k)));
  if (!(top_p > 0 && top_p <= 1)) throw FieldError("top_p", at_where(where, "top_p must be in (0, 1], found " + std::to_string(top_p)));
}

Sampler::Sampler(const SamplerConfig& config) : config_(config), rng_(config.seed) { config_.validate("sampler"); }

int64_t Sampler::next(const at::Tensor& logits) {
  at::Tensor l = logits.reshape({-1}).to(at::kCPU, at::kFloat).contiguous();
  if (config_.temperature <= 0) return l.argmax().item<int64_t>();
  const float* p = l.data_ptr<float>();
  const int64_t n = l.numel();
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
  std::discrete_distribution<int64_t> dist(prob.begin(), prob.begin() + cut);
  return idx[dist(rng_)];
}

}  // namespace sinkflow
