// BERT-family encoders (BERT, MiniLM: all-MiniLM-L6-v2) in LibTorch. The embedders built on them are in
// models/memory/model_embedders.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "models/io/config.h"

namespace sinkflow {

// A BERT encoder: embeddings (word + absolute position + token type 0, LayerNorm), then n_layer post-LN blocks
// (self-attention -> dense -> LayerNorm(x + .), intermediate dense -> GELU (erf) -> dense -> LayerNorm(x + .)).
// Parameters carry Hugging Face BertModel names (embeddings.word_embeddings.weight,
// encoder.layer.N.attention.self.query.weight, ...); the pooler is not part of it. Weights are read-only once
// loaded; forward() keeps no state, so one encoder may serve several threads.
class BertEncoder {
 public:
  virtual ~BertEncoder() = default;

  const ModelConfig& config() const { return config_; }
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }

  // input_ids: [B, T] int64 (any device), every id in [0, vocab_size); attention_mask: [B, T] (1 = token,
  // 0 = padding; any integer/bool/float dtype), or undefined for no padding. T <= max_positions.
  // Returns the last hidden state [B, T, d_model] in the model dtype on the model device. Padding keys get no
  // attention; padding rows hold values that mean nothing. Throws std::invalid_argument for bad shapes,
  // T > max_positions or an id out of range.
  virtual at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) const = 0;

  // Parameters under their Hugging Face names, in expected_tensors(config) order.
  virtual std::vector<std::pair<std::string, at::Tensor>> named_parameters() const = 0;

  // Fills every parameter from `fetch(name, expected_shape)` (which must return a tensor of that shape).
  void load_weights(const std::function<at::Tensor(const std::string&, const std::vector<int64_t>&)>& fetch);

 protected:
  BertEncoder(ModelConfig config, at::Device device, at::ScalarType dtype)
      : config_(std::move(config)), device_(device), dtype_(dtype) {}
  ModelConfig config_;
  at::Device device_;
  at::ScalarType dtype_;
};

// An encoder of `config` (family bert) with zero weights on device/dtype. Throws std::invalid_argument when
// config is not a bert model.
std::shared_ptr<BertEncoder> make_bert(const ModelConfig& config, at::Device device, at::ScalarType dtype);

// Loads a Hugging Face BERT folder (config.json + model.safetensors or a sharded index). Tensor names may carry
// a "bert." prefix (checkpoints saved from BertFor* heads); pooler and head tensors are ignored. Throws
// std::invalid_argument: "<dir>: the model folder does not exist"; "<dir>/config.json: model_type 'llama' is
// not a bert model (expected a bert model)"; and CheckpointTensors' messages for missing or misshapen tensors.
std::shared_ptr<BertEncoder> load_bert(const std::string& dir, at::Device device, at::ScalarType dtype);

}  // namespace sinkflow
