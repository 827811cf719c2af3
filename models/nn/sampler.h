// Next-token selection: greedy, or temperature / top-k / top-p / min-p sampling from a seeded generator, with
// an optional repetition penalty. The processors run in transformers' order: repetition penalty on the raw
// logits, then (sampling only) temperature, top-k, top-p, min-p.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "models/text/generation_config.h"

namespace sinkflow {

struct SamplerConfig {
  double temperature = 0.0;        // 0 = greedy (argmax); > 0 samples
  int64_t top_k = 0;               // keep the k most likely tokens, 0 = all; at most kMaxVocab
  double top_p = 1.0;              // nucleus: keep the smallest set with probability >= top_p, (0, 1]
  double min_p = 0.0;              // keep tokens with probability >= min_p x the top one's, [0, 1] (0 = off)
  double repetition_penalty = 1.0; // > 0; a token among the last repeat_last_n: logit / p if > 0, else x p (1 = off)
  int64_t repeat_last_n = 64;      // how many recent tokens the penalty looks at, in [0, 1048576]
  uint64_t seed = 0;               // sampling is reproducible for a seed
  // FieldError (a std::invalid_argument) naming `where` ("" = none), the field and its range.
  void validate(const std::string& where) const;
};

// The sampling a model folder's generation_config.json asks for, over `s`: with do_sample true, its temperature
// (1.0 when absent), top_k (50), top_p (1.0), min_p; its repetition_penalty in any case. transformers' defaults.
SamplerConfig with_model_defaults(SamplerConfig s, const GenerationConfig& g);

class Sampler {
 public:
  explicit Sampler(const SamplerConfig& config);
  // logits: [vocab] or [1, vocab] float. recent: the tokens before this one, oldest first (only the last
  // repeat_last_n count, and only when repetition_penalty != 1).
  int64_t next(const at::Tensor& logits, const std::vector<int64_t>& recent = {});

  const SamplerConfig& config() const { return config_; }
  // The generator's state as text (std::mt19937_64's stream form), to resume a conversation exactly.
  std::string state() const;
  // Restores state(); std::invalid_argument when `state` is not one.
  void set_state(const std::string& state);

 private:
  SamplerConfig config_;
  std::mt19937_64 rng_;
};

}  // namespace sinkflow
