// BERT encoder (post-LN, GELU erf) with Hugging Face BertModel names.
#include "models/nn/bert.h"

#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <stdexcept>

#include "models/io/checkpoint.h"
#include "models/nn/runtime.h"

namespace sinkflow {
namespace {

namespace fs = std::filesystem;
namespace nn = torch::nn;

std::string str(int64_t v) { return std::to_string(v); }

nn::LayerNorm layer_norm(int64_t d, double eps) { return nn::LayerNorm(nn::LayerNormOptions({d}).eps(eps)); }

struct BertEmbeddingsImpl : nn::Module {
  nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  nn::LayerNorm LayerNorm{nullptr};
  explicit BertEmbeddingsImpl(const ModelConfig& c) {
    word_embeddings = register_module("word_embeddings", nn::Embedding(c.vocab_size, c.d_model));
    position_embeddings = register_module("position_embeddings", nn::Embedding(c.max_positions, c.d_model));
    token_type_embeddings = register_module("token_type_embeddings", nn::Embedding(c.type_vocab_size, c.d_model));
    LayerNorm = register_module("LayerNorm", layer_norm(c.d_model, c.norm_eps));
  }
};
TORCH_MODULE(BertEmbeddings);

struct BertSelfAttentionImpl : nn::Module {
  nn::Linear query{nullptr}, key{nullptr}, value{nullptr};
  explicit BertSelfAttentionImpl(const ModelConfig& c) {
    query = register_module("query", nn::Linear(c.d_model, c.d_model));
    key = register_module("key", nn::Linear(c.d_model, c.d_model));
    value = register_module("value", nn::Linear(c.d_model, c.d_model));
  }
};
TORCH_MODULE(BertSelfAttention);

// BertSelfOutput and BertOutput: dense, then LayerNorm of the residual sum.
struct BertResidualOutputImpl : nn::Module {
  nn::Linear dense{nullptr};
  nn::LayerNorm LayerNorm{nullptr};
  BertResidualOutputImpl(const ModelConfig& c, int64_t in) {
    dense = register_module("dense", nn::Linear(in, c.d_model));
    LayerNorm = register_module("LayerNorm", layer_norm(c.d_model, c.norm_eps));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual) {
    return LayerNorm(dense(x) + residual);
  }
};
TORCH_MODULE(BertResidualOutput);

struct BertAttentionImpl : nn::Module {
  BertSelfAttention self{nullptr};
  BertResidualOutput output{nullptr};
  explicit BertAttentionImpl(const ModelConfig& c) {
    self = register_module("self", BertSelfAttention(c));
    output = register_module("output", BertResidualOutput(c, c.d_model));
  }
};
TORCH_MODULE(BertAttention);

struct BertIntermediateImpl : nn::Module {
  nn::Linear dense{nullptr};
  explicit BertIntermediateImpl(const ModelConfig& c) { dense = register_module("dense", nn::Linear(c.d_model, c.d_ff)); }
  torch::Tensor forward(const torch::Tensor& x) { return torch::gelu(dense(x));  /* exact (erf) GELU */ }
};
TORCH_MODULE(BertIntermediate);

struct BertLayerImpl : nn::Module {
  BertAttention attention{nullptr};
  BertIntermediate intermediate{nullptr};
  BertResidualOutput output{nullptr};
  explicit BertLayerImpl(const ModelConfig& c) {
    attention = register_module("attention", BertAttention(c));
    intermediate = register_module("intermediate", BertIntermediate(c));
    output = register_module("output", BertResidualOutput(c, c.d_ff));
  }
};
TORCH_MODULE(BertLayer);

struct BertStackImpl : nn::Module {
  nn::ModuleList layer;
  explicit BertStackImpl(const ModelConfig& c) {
    for (int64_t i = 0; i < c.n_layer; ++i) layer->push_back(BertLayer(c));
    register_module("layer", layer);
  }
};
TORCH_MODULE(BertStack);

struct BertModelImpl : nn::Module {
  BertEmbeddings embeddings{nullptr};
  BertStack encoder{nullptr};
  explicit BertModelImpl(const ModelConfig& c) {
    embeddings = register_module("embeddings", BertEmbeddings(c));
    encoder = register_module("encoder", BertStack(c));
  }
};
TORCH_MODULE(BertModel);

class Bert final : public BertEncoder {
 public:
  Bert(const ModelConfig& c, at::Device device, at::ScalarType dtype) : BertEncoder(c, device, dtype), net_(c) {
    net_->to(device, dtype);
    net_->eval();
    torch::NoGradGuard no_grad;
    for (auto& p : net_->parameters()) p.zero_().set_requires_grad(false);
    for (auto& m : *net_->encoder->layer) layers_.push_back(m->as<BertLayerImpl>());
    scale_ = 1.0 / std::sqrt(static_cast<double>(c.d_head));
  }

  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) const override {
    if (input_ids.dim() != 2 || input_ids.scalar_type() != at::kLong) {
      throw std::invalid_argument("bert: input_ids must be a [B, T] int64 tensor, found " +
                                  std::string(c10::str(input_ids.sizes())) + " " + c10::toString(input_ids.scalar_type()));
    }
    const int64_t b = input_ids.size(0), t = input_ids.size(1);
    const int64_t h = config_.n_head, dh = config_.d_head, d = config_.d_model;
    if (t > config_.max_positions) {
      throw std::invalid_argument("bert: " + str(t) + " tokens exceed the model's max_position_embeddings " +
                                  str(config_.max_positions));
    }
    if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes()) {
      throw std::invalid_argument("bert: attention_mask has shape " + std::string(c10::str(attention_mask.sizes())) +
                                  ", expected the shape of input_ids " + std::string(c10::str(input_ids.sizes())));
    }
    if (input_ids.numel() > 0) {
      const int64_t lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
      if (lo < 0 || hi >= config_.vocab_size) {
        throw std::invalid_argument("bert: token id " + str(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " +
                                    str(config_.vocab_size) + ")");
      }
    }
    const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(device_);
    torch::Tensor ids = input_ids.to(device_);
    auto& emb = *net_->embeddings;
    torch::Tensor x = emb.word_embeddings(ids) + emb.position_embeddings(torch::arange(t, long_opts)) +
                      emb.token_type_embeddings(torch::zeros({t}, long_opts));
    x = emb.LayerNorm(x);  // [B, T, D]

    // Additive key mask [B, 1, 1, T] in float32: 0 for tokens, the lowest float for padding (as Hugging Face).
    torch::Tensor key_mask;
    if (attention_mask.defined()) {
      torch::Tensor pad = attention_mask.to(device_).eq(0).view({b, 1, 1, t});
      key_mask = torch::zeros({b, 1, 1, t}, torch::TensorOptions().dtype(torch::kFloat).device(device_))
                     .masked_fill_(pad, std::numeric_limits<float>::lowest());
    }
    for (BertLayerImpl* layer : layers_) {
      auto& att = *layer->attention;
      auto heads = [&](const torch::Tensor& y) { return y.view({b, t, h, dh}).transpose(1, 2); };  // [B, H, T, dh]
      torch::Tensor q = heads(att.self->query(x));
      torch::Tensor k = heads(att.self->key(x));
      torch::Tensor v = heads(att.self->value(x));
      torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)).to(torch::kFloat).mul_(scale_);
      if (key_mask.defined()) scores.add_(key_mask);
      torch::Tensor probs = torch::softmax(scores, -1).to(v.scalar_type());
      torch::Tensor ctx = torch::matmul(probs, v).transpose(1, 2).reshape({b, t, d});
      x = att.output(ctx, x);
      x = layer->output(layer->intermediate(x), x);
    }
    return x;
  }

  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const override {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& item : net_->named_parameters()) out.emplace_back(item.key(), item.value());
    return out;
  }

 private:
  mutable BertModel net_;  // module calls are non-const; the weights are never written after loading
  std::vector<BertLayerImpl*> layers_;
  double scale_;
};

}  // namespace

// ---- BertEncoder ---------------------------------------------------------------------------------------

void BertEncoder::load_weights(
    const std::function<at::Tensor(const std::string&, const std::vector<int64_t>&)>& fetch) {
  fill_parameters(named_parameters(), fetch);
}

std::shared_ptr<BertEncoder> make_bert(const ModelConfig& config, at::Device device, at::ScalarType dtype) {
  if (config.family != Family::bert) {
    throw std::invalid_argument("model_type '" + config.model_type + "' is not a bert model (expected a bert model)");
  }
  config.validate("bert");
  return std::make_shared<Bert>(config, device, dtype);
}

std::shared_ptr<BertEncoder> load_bert(const std::string& dir, at::Device device, at::ScalarType dtype) {
  if (!fs::is_directory(dir)) {
    throw std::invalid_argument(dir + ": the model folder does not exist (expected a bert model folder with "
                                "config.json and model.safetensors)");
  }
  ModelConfig config = load_model_config(dir);
  if (config.family != Family::bert) {
    throw std::invalid_argument((fs::path(dir) / "config.json").string() + ": model_type '" + config.model_type +
                                "' is not a bert model (expected a bert model)");
  }
  if (device.is_cpu()) check_model_fits(dir, config, static_cast<double>(c10::elementSize(dtype)), dtype_name(dtype));
  auto model = make_bert(config, device, dtype);
  CheckpointTensors tensors(dir);
  std::set<std::string> used;
  model->load_weights([&](const std::string& name, const std::vector<int64_t>& shape) {
    used.insert(tensors.resolve(name));
    return tensors.load(name, shape, dtype, device);
  });
  check_all_used(tensors, used, config);
  return model;
}

}  // namespace sinkflow
