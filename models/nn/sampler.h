// Next-token selection: greedy, or temperature / top-k / top-p sampling from a seeded generator.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <random>
#include <string>

namespace sinkflow {

struct SamplerConfig {
  double temperature = 0.0;  // 0 = greedy (argmax); > 0 samples
  int64_t top_k = 0;         // keep the k most likely tokens, 0 = all
  double top_p = 1.0;        // nucleus: keep the smallest set with probability >= top_p, (0, 1]
  uint64_t seed = 0;         // sampling is reproducible for a seed
  // FieldError (a std::invalid_argument) naming `where` ("" = none), the field and its range.
  void validate(const std::string& where) const;
};

class Sampler {
 public:
  explicit Sampler(const SamplerConfig& config);
  // logits: [vocab] or [1, vocab] float.
  int64_t next(const at::Tensor& logits);

 private:
  SamplerConfig config_;
  std::mt19937_64 rng_;
};

}  // namespace sinkflow
