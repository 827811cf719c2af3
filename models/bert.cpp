// BERT encoder (post-LN, GELU erf) with Hugging Face BertModel names, and the bert / lm embedders.
#include "models/bert.h"

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
#include <stdexcept>

#include "models/checkpoint.h"
#include "models/decoder.h"
#include "models/kv_cache.h"
#include "models/tokenizer.h"

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

// max_seq_length of sentence_bert_config.json, or 0 when the folder has none.
int64_t sentence_bert_max_seq_length(const std::string& dir) {
  const fs::path path = fs::path(dir) / "sentence_bert_config.json";
  if (!fs::exists(path)) return 0;
  std::ifstream in(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(path.string() + ": is not valid JSON (" + e.what() + ")");
  }
  auto it = j.find("max_seq_length");
  if (it == j.end() || it->is_null()) return 0;
  if (!it->is_number_integer() || it->get<int64_t>() < 2) {
    throw std::invalid_argument(path.string() + ": field 'max_seq_length' is " + it->dump() +
                                ", expected an integer >= 2");
  }
  return it->get<int64_t>();
}

std::vector<float> to_vector(const at::Tensor& row) {
  at::Tensor r = row.to(at::kCPU, at::kFloat).contiguous();
  return std::vector<float>(r.data_ptr<float>(), r.data_ptr<float>() + r.numel());
}

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
  auto model = make_bert(config, device, dtype);
  CheckpointTensors tensors(dir);
  model->load_weights([&](const std::string& name, const std::vector<int64_t>& shape) {
    return tensors.load(name, shape, dtype, device);
  });
  return model;
}

at::Tensor masked_mean_normalize(const at::Tensor& hidden, const at::Tensor& mask) {
  at::Tensor m = mask.to(hidden.device(), at::kFloat).unsqueeze(-1);        // [B, T, 1]
  at::Tensor sum = (hidden.to(at::kFloat) * m).sum(1);                        // [B, D]
  at::Tensor mean = sum / m.sum(1).clamp_min(1.0);
  return mean / mean.norm(2, {-1}, true).clamp_min(1e-12);  // as torch.nn.functional.normalize
}

std::string folder_name(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  while (!p.empty() && p.filename().empty() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") {
    std::error_code ec;
    fs::path abs = fs::weakly_canonical(fs::absolute(dir), ec);
    if (!ec) name = abs.filename().string();
  }
  return name;
}

// ---- BertEmbedder --------------------------------------------------------------------------------------

BertEmbedder::BertEmbedder(const std::string& dir, at::Device device) : BertEmbedder(dir, device, Options{}) {}

BertEmbedder::BertEmbedder(const std::string& dir, at::Device device, const Options& options) {
  if (options.batch_tokens < 0) {
    throw std::invalid_argument("bert embedder: batch_tokens must be >= 0 (0 = by device), found " +
                                str(options.batch_tokens));
  }
  if (options.max_tokens != 0 && options.max_tokens < 2) {
    throw std::invalid_argument("bert embedder: max_tokens must be 0 (the model's default) or >= 2 ([CLS] and [SEP]), found " +
                                str(options.max_tokens));
  }
  encoder_ = load_bert(dir, device, at::kFloat);
  const ModelConfig& c = encoder_->config();
  auto tokenizer = load_tokenizer(dir);
  if (tokenizer->kind() != "wordpiece") {
    throw std::invalid_argument(dir + ": the tokenizer is " + tokenizer->kind() +
                                ", expected wordpiece (vocab.txt or a WordPiece tokenizer.json) for a bert model");
  }
  cls_id_ = tokenizer->token_id("[CLS]");
  sep_id_ = tokenizer->token_id("[SEP]");
  if (cls_id_ < 0 || sep_id_ < 0) {
    throw std::invalid_argument(dir + ": the WordPiece vocabulary has no " + std::string(cls_id_ < 0 ? "[CLS]" : "[SEP]") +
                                " token, expected both [CLS] and [SEP]");
  }
  pad_id_ = std::max<int64_t>(tokenizer->token_id("[PAD]"), 0);
  if (tokenizer->vocab_size() > c.vocab_size) {
    throw std::invalid_argument(dir + ": the tokenizer has " + str(tokenizer->vocab_size()) +
                                " ids, expected at most vocab_size " + str(c.vocab_size) + " (from config.json)");
  }
  tokenizer_ = std::move(tokenizer);
  const int64_t folder_default = sentence_bert_max_seq_length(dir);
  max_tokens_ = options.max_tokens > 0 ? options.max_tokens : folder_default > 0 ? folder_default : c.max_positions;
  max_tokens_ = std::min(max_tokens_, c.max_positions);
  batch_tokens_ = options.batch_tokens > 0 ? options.batch_tokens : device.is_cpu() ? 512 : 16384;
  name_ = "bert:" + folder_name(dir) + "-" + str(c.d_model);
  const int64_t default_max = std::min(folder_default > 0 ? folder_default : c.max_positions, c.max_positions);
  if (max_tokens_ != default_max) name_ += "-max" + str(max_tokens_);  // other vectors for long texts
  spdlog::info("embedder: {} layers={} d_model={} max_tokens={} batch_tokens={} device={}", name_, c.n_layer,
               c.d_model, max_tokens_, batch_tokens_, device.str());
}

BertEmbedder::~BertEmbedder() = default;

int64_t BertEmbedder::dim() const { return encoder_->config().d_model; }

std::vector<int64_t> BertEmbedder::input_ids(std::string_view text) const {
  std::vector<int64_t> body = tokenizer_->encode(text);
  if (body.empty()) return {};
  const size_t room = static_cast<size_t>(max_tokens_ - 2);
  if (body.size() > room) body.resize(room);
  std::vector<int64_t> ids;
  ids.reserve(body.size() + 2);
  ids.push_back(cls_id_);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.push_back(sep_id_);
  return ids;
}

std::vector<float> BertEmbedder::embed(std::string_view text) const {
  return embed_batch({std::string(text)}).front();
}

std::vector<std::vector<float>> BertEmbedder::embed_batch(const std::vector<std::string>& texts) const {
  const int64_t d = dim();
  std::vector<std::vector<float>> out(texts.size(), std::vector<float>(static_cast<size_t>(d), 0.0f));
  std::vector<std::vector<int64_t>> ids(texts.size());
  std::vector<size_t> order;
  for (size_t i = 0; i < texts.size(); ++i) {
    ids[i] = input_ids(texts[i]);
    if (!ids[i].empty()) order.push_back(i);
  }
  // Similar lengths share a batch: less padding.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a].size() < ids[b].size(); });

  std::lock_guard<std::mutex> lock(mutex_);
  c10::InferenceMode guard;
  for (size_t begin = 0, end = 0; begin < order.size(); begin = end) {
    // Sorted by length: the last text of a group is its longest.
    end = begin + 1;
    while (end < order.size() &&
           static_cast<int64_t>((end + 1 - begin) * ids[order[end]].size()) <= batch_tokens_) {
      ++end;
    }
    const int64_t b = static_cast<int64_t>(end - begin);
    const int64_t t = static_cast<int64_t>(ids[order[end - 1]].size());
    at::Tensor batch = at::full({b, t}, pad_id_, at::kLong);
    at::Tensor mask = at::zeros({b, t}, at::kLong);
    auto batch_a = batch.accessor<int64_t, 2>();
    auto mask_a = mask.accessor<int64_t, 2>();
    for (int64_t r = 0; r < b; ++r) {
      const auto& row = ids[order[begin + static_cast<size_t>(r)]];
      for (size_t k = 0; k < row.size(); ++k) {
        batch_a[r][static_cast<int64_t>(k)] = row[k];
        mask_a[r][static_cast<int64_t>(k)] = 1;
      }
    }
    at::Tensor pooled = masked_mean_normalize(encoder_->forward(batch, mask), mask).to(at::kCPU);  // [B, D]
    for (int64_t r = 0; r < b; ++r) out[order[begin + static_cast<size_t>(r)]] = to_vector(pooled[r]);
  }
  return out;
}

// ---- LmEmbedder ----------------------------------------------------------------------------------------

LmEmbedder::LmEmbedder(std::shared_ptr<const Decoder> decoder, std::shared_ptr<const Tokenizer> tokenizer,
                       const std::string& model_name)
    : LmEmbedder(std::move(decoder), std::move(tokenizer), model_name, Options{}) {}

LmEmbedder::LmEmbedder(std::shared_ptr<const Decoder> decoder, std::shared_ptr<const Tokenizer> tokenizer,
                       const std::string& model_name, const Options& options)
    : decoder_(std::move(decoder)), tokenizer_(std::move(tokenizer)), options_(options) {
  if (!decoder_ || !tokenizer_) throw std::invalid_argument("lm embedder: needs a decoder and its tokenizer, found none");
  if (options_.prefill_block < 1) {
    throw std::invalid_argument("lm embedder: prefill_block must be >= 1, found " + str(options_.prefill_block));
  }
  if (options_.max_tokens < 0) {
    throw std::invalid_argument("lm embedder: max_tokens must be >= 0 (0 = the model's positions), found " +
                                str(options_.max_tokens));
  }
  const ModelConfig& c = decoder_->config();
  if (tokenizer_->vocab_size() > c.vocab_size) {
    throw std::invalid_argument("lm embedder: the tokenizer of '" + model_name + "' has " + str(tokenizer_->vocab_size()) +
                                " ids, expected at most the model's vocab_size " + str(c.vocab_size));
  }
  if (c.family == Family::llama) bos_id_ = c.bos_token_id >= 0 ? c.bos_token_id : tokenizer_->bos_id();
  const int64_t room = c.max_positions - n_prefix();
  if (room < 1) throw std::invalid_argument("lm embedder: the model has no position left for text tokens");
  max_tokens_ = options_.max_tokens > 0 ? std::min(options_.max_tokens, room) : room;
  name_ = "lm:" + model_name + "-" + str(c.d_model);
  if (options_.max_tokens > 0 && max_tokens_ != room) name_ += "-max" + str(max_tokens_);
  spdlog::info("embedder: {} family={} bos={} max_tokens={} prefill_block={}", name_, family_name(c.family), bos_id_,
               max_tokens_, options_.prefill_block);
}

int64_t LmEmbedder::dim() const { return decoder_->config().d_model; }

std::vector<int64_t> LmEmbedder::input_ids(std::string_view text) const {
  std::vector<int64_t> body = tokenizer_->encode(text);
  if (body.empty()) return {};
  if (static_cast<int64_t>(body.size()) > max_tokens_) body.resize(static_cast<size_t>(max_tokens_));
  if (bos_id_ < 0) return body;
  std::vector<int64_t> ids{bos_id_};
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::vector<float> LmEmbedder::embed(std::string_view text) const {
  const std::vector<int64_t> ids = input_ids(text);
  const int64_t d = dim();
  if (ids.empty()) return std::vector<float>(static_cast<size_t>(d), 0.0f);
  c10::InferenceMode guard;
  CacheConfig cc;
  cc.n_sink = 0;
  cc.n_memory = 0;
  cc.n_recent = static_cast<int64_t>(ids.size());
  cc.allow_evict = false;  // dense
  auto cache = decoder_->make_cache(cc);
  at::Tensor sum = at::zeros({d}, at::TensorOptions().dtype(at::kFloat).device(decoder_->device()));
  const int64_t n = static_cast<int64_t>(ids.size()), skip = n_prefix();
  for (int64_t begin = 0; begin < n; begin += options_.prefill_block) {
    const int64_t end = std::min(n, begin + options_.prefill_block);
    StepPlan plan = plan_step(*cache, std::vector<int64_t>(ids.begin() + begin, ids.begin() + end));
    cache->apply(plan);
    at::Tensor hidden;
    decoder_->forward(plan, *cache, false, &hidden);  // hidden: [T, d_model]
    const int64_t from = std::max<int64_t>(0, skip - begin);
    if (from < end - begin) sum += hidden.narrow(0, from, end - begin - from).to(at::kFloat).sum(0);
  }
  at::Tensor mean = sum / static_cast<double>(n - skip);
  return to_vector(mean / mean.norm().clamp_min(1e-12));
}

}  // namespace sinkflow
