// Hugging Face checkpoint folders: config.json + model.safetensors, or config.json +
// model.safetensors.index.json + model-0000K-of-0000N.safetensors shards. Reading, checking against
// config.json, writing, and random weights for test and benchmark checkpoints.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "models/io/config.h"

namespace sinkflow {

class SafetensorsFile;

// The tensors of one checkpoint folder, memory-mapped.
class CheckpointTensors {
 public:
  // Opens dir/model.safetensors, or else dir/model.safetensors.index.json and every shard its
  // "weight_map" names (each shard must exist and hold the tensors the index assigns to it).
  // Throws std::invalid_argument naming the folder and both file names when neither exists, or naming
  // the file on any inconsistency; std::runtime_error when a file cannot be read.
  explicit CheckpointTensors(const std::string& dir);
  ~CheckpointTensors();
  CheckpointTensors(CheckpointTensors&&) noexcept;
  CheckpointTensors& operator=(CheckpointTensors&&) noexcept;

  const std::string& dir() const { return dir_; }
  // "<dir>/model.safetensors" or "<dir>/model.safetensors.index.json": the file errors name.
  const std::string& source() const { return source_; }
  bool sharded() const { return sharded_; }
  // Stored names, sorted.
  std::vector<std::string> names() const;
  // True when `name` is stored, directly or under an alias (see resolve()).
  bool contains(const std::string& name) const;
  // The stored name that holds `name`: `name` itself; else, for "transformer.X", "X" (original GPT-2
  // checkpoints); else "bert." + name (BERT checkpoints saved from BertFor* heads). "" when none.
  std::string resolve(const std::string& name) const;
  // The stored dtype ("F32", ...) and shape of `name` (after resolve()); throw when missing.
  std::string dtype(const std::string& name) const;
  std::vector<int64_t> shape(const std::string& name) const;

  // Loads `name` (after resolve()), checks its shape against `expected_shape` and returns it converted
  // to `dtype` on `device`. When dtype and device already match (CPU), the result views the mapped file
  // without a copy. Throws std::invalid_argument:
  //   "<dir>/model.safetensors: tensor 'X' is missing (expected shape [..] from config.json)"
  //   "<dir>/model.safetensors: tensor 'X' has shape [64, 32], expected [64, 64] (from config.json)"
  //   "<dir>/model.safetensors: tensor 'X' has dtype I32, expected a floating dtype (F32, F16, BF16, F64)"
  at::Tensor load(const std::string& name, const std::vector<int64_t>& expected_shape, at::ScalarType dtype,
                  at::Device device) const;
  // SafetensorsFile::release of `name` (after resolve()) in its file.
  void release(const std::string& name) const;

 private:
  const SafetensorsFile& file_of(const std::string& stored_name) const;
  std::string dir_;
  std::string source_;
  bool sharded_ = false;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // stored name -> index into files_
};

// Reads dir/config.json; throws std::invalid_argument naming the folder when it is missing, and as
// ModelConfig::from_json_file otherwise.
ModelConfig load_model_config(const std::string& dir);

// Fills every parameter with fetch(name, its shape), without recording gradients. Throws
// std::invalid_argument naming the tensor when a fetched tensor's shape differs.
using TensorFetch = std::function<at::Tensor(const std::string&, const std::vector<int64_t>&)>;
void fill_parameters(const std::vector<std::pair<std::string, at::Tensor>>& params, const TensorFetch& fetch);

// Checks that every tensor of expected_tensors(config) is present with its shape and a floating dtype;
// throws std::invalid_argument for the first problem (same messages as CheckpointTensors::load).
void check_checkpoint(const CheckpointTensors& tensors, const ModelConfig& config);

// Throws std::invalid_argument naming `dir` when config's weights (parameter_estimate() at bytes_per_parameter, as
// `dtype`) would take more than this machine's memory: checked before anything is allocated.
void check_model_fits(const std::string& dir, const ModelConfig& config, double bytes_per_parameter,
                      const std::string& dtype);

// Throws std::invalid_argument when `tensors` holds a tensor that is not in `used` (stored names, as resolve() gives
// them): a checkpoint with more layers (or other tensors) than its config.json describes would otherwise load,
// silently, as another model. The message names the first three. Left aside on purpose: buffers some exporters
// save (RoPE's inv_freq, GPT-2's attn.bias and attn.masked_bias, BERT's position_ids), BERT's pooler and
// pre-training heads (cls.*), and a tied lm_head.weight equal to the embedding (one that differs is an error
// naming it).
void check_all_used(const CheckpointTensors& tensors, const std::set<std::string>& used, const ModelConfig& config);

// Every tensor of expected_tensors(config), in that order, deterministic from `seed` (one CPU generator
// seeded with it): weights ~ normal(0, 0.02), residual output projections (o_proj, down_proj, c_proj)
// scaled by 1/sqrt(2 n_layer), biases ~ normal(0, 0.02), norm weights ~ 1 + normal(0, 0.02) (not exactly 1,
// so that a test notices two norms loaded into each other's place). Drawn in float32, then cast to `dtype`.
std::vector<std::pair<std::string, at::Tensor>> random_tensors(const ModelConfig& config, uint64_t seed,
                                                               at::ScalarType dtype = at::kFloat);

// Writes a checkpoint folder as Hugging Face's save_pretrained does: creates `dir`, writes config.json
// (config.to_json_text(), torch_dtype set from the tensors' floating dtype) and model.safetensors, or, when
// max_shard_bytes > 0 and the tensors total more, model-00001-of-0000N.safetensors shards (greedy in the
// given order; a tensor larger than the limit gets a shard of its own) and model.safetensors.index.json
// {"metadata": {"total_size": bytes}, "weight_map": {name: shard}}. Files of the other layout (and stale
// shards) left in `dir` by an earlier save are removed. The tensors need not be on the CPU. Throws
// std::invalid_argument when a tensor of expected_tensors(config) is missing or has another shape, or when
// the first floating tensor is not float32, float16 or bfloat16; std::runtime_error when writing fails.
void save_checkpoint(const std::string& dir, const ModelConfig& config,
                     const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t max_shard_bytes = 0);

}  // namespace sinkflow
