// The bert and lm embedders (sentence-transformers pooling over BertEncoder; pooled decoder hidden states).
#include "models/memory/model_embedders.h"

#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "models/cache/kv_cache.h"
#include "models/io/json_read.h"
#include "models/io/message_text.h"
#include "models/nn/decoder.h"
#include "models/text/tokenizer.h"

namespace sinkflow {
namespace {

namespace fs = std::filesystem;

std::string str(int64_t v) { return std::to_string(v); }

// max_seq_length of sentence_bert_config.json, or 0 when the folder has none.
int64_t sentence_bert_max_seq_length(const std::string& dir) {
  const fs::path path = fs::path(dir) / "sentence_bert_config.json";
  if (!fs::exists(path)) return 0;
  const nlohmann::json j = read_json_file(path.string());
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

SentencePooling read_sentence_pooling(const std::string& dir) {
  SentencePooling p;
  const fs::path modules_path = fs::path(dir) / "modules.json";
  if (!fs::exists(modules_path)) return p;
  const std::string mp = modules_path.string();
  const nlohmann::json modules = read_json_file(mp);
  if (!modules.is_array()) throw std::invalid_argument(mp + ": expected a list of modules, found " + json_preview(modules));
  std::string pooling_dir;
  p.normalize = false;
  for (const nlohmann::json& m : modules) {
    const std::string type = m.is_object() && m.contains("type") && m.at("type").is_string() ? m.at("type").get<std::string>() : "";
    const std::string path = m.is_object() && m.contains("path") && m.at("path").is_string() ? m.at("path").get<std::string>() : "";
    if (type == "sentence_transformers.models.Pooling") {
      if (path.empty() || path.find("..") != std::string::npos || path.front() == '/')
        throw std::invalid_argument(mp + ": the Pooling module's field 'path' must name a subfolder, found " + json_preview(m));
      pooling_dir = path;
    } else if (type == "sentence_transformers.models.Normalize") {
      p.normalize = true;
    } else if (type != "sentence_transformers.models.Transformer") {
      throw std::invalid_argument(mp + ": module type " + json_preview(m.is_object() ? m.value("type", nlohmann::json()) : m) +
                                  " is not supported (expected Transformer, Pooling and Normalize)");
    }
  }
  if (pooling_dir.empty()) throw std::invalid_argument(mp + ": no sentence_transformers.models.Pooling module");
  const std::string cp = (fs::path(dir) / pooling_dir / "config.json").string();
  const nlohmann::json c = read_json_file(cp);
  if (!c.is_object()) throw std::invalid_argument(cp + ": expected a JSON object, found " + json_preview(c));
  std::vector<std::string> modes;
  for (const char* mode : {"cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                           "lasttoken"}) {
    const std::string field = std::string("pooling_mode_") + mode;
    if (!c.contains(field) || c.at(field).is_null()) continue;
    if (!c.at(field).is_boolean())
      throw std::invalid_argument(cp + ": field '" + field + "' must be true or false, found " + json_preview(c.at(field)));
    if (c.at(field).get<bool>()) modes.push_back(mode);
  }
  if (modes.size() != 1)
    throw std::invalid_argument(cp + ": expected exactly one pooling_mode_* true, found " + std::to_string(modes.size()) +
                                " (sinkflow pools one way; several modes would concatenate vectors)");
  const std::string& m = modes.front();
  if (m == "weightedmean_tokens")
    throw std::invalid_argument(cp + ": field 'pooling_mode_weightedmean_tokens' is not supported");
  p.mode = m == "cls_token" ? "cls" : m == "mean_tokens" ? "mean" : m == "max_tokens" ? "max"
         : m == "lasttoken" ? "lasttoken" : "mean_sqrt_len";
  return p;
}

at::Tensor pool_sentence(const at::Tensor& hidden, const at::Tensor& mask, const SentencePooling& pooling) {
  const at::Tensor h = hidden.to(at::kFloat);
  const at::Tensor m = mask.to(hidden.device(), at::kFloat).unsqueeze(-1);  // [B, T, 1]
  const at::Tensor count = m.sum(1).clamp_min(1.0);                          // [B, 1]
  at::Tensor v;
  if (pooling.mode == "cls") {
    v = h.select(1, 0);
  } else if (pooling.mode == "max") {
    v = h.masked_fill(m == 0, -1e9).amax(1);  // as sentence-transformers: padding set to -1e9
  } else if (pooling.mode == "lasttoken") {
    const at::Tensor last = (count.squeeze(-1).to(at::kLong) - 1).clamp_min(0);  // right padding
    v = h.index({at::arange(h.size(0), last.options()), last});
  } else {
    v = (h * m).sum(1) / (pooling.mode == "mean_sqrt_len" ? count.sqrt() : count);
  }
  return pooling.normalize ? v / v.norm(2, {-1}, true).clamp_min(1e-12) : v;
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
  pooling_ = read_sentence_pooling(dir);
  const int64_t folder_default = sentence_bert_max_seq_length(dir);
  max_tokens_ = options.max_tokens > 0 ? options.max_tokens : folder_default > 0 ? folder_default : c.max_positions;
  max_tokens_ = std::min(max_tokens_, c.max_positions);
  batch_tokens_ = options.batch_tokens > 0 ? options.batch_tokens : device.is_cpu() ? 512 : 16384;
  name_ = "bert:" + folder_name(dir) + "-" + str(c.d_model);
  const int64_t default_max = std::min(folder_default > 0 ? folder_default : c.max_positions, c.max_positions);
  if (max_tokens_ != default_max) name_ += "-max" + str(max_tokens_);  // other vectors for long texts
  if (pooling_.mode != "mean" || !pooling_.normalize)
    name_ += "-" + pooling_.mode + (pooling_.normalize ? "" : "-raw");  // other vectors than mean + normalize
  spdlog::info("embedder: {} layers={} d_model={} max_tokens={} batch_tokens={} pooling={}{} device={}", name_,
               c.n_layer, c.d_model, max_tokens_, batch_tokens_, pooling_.mode, pooling_.normalize ? "+normalize" : "",
               device.str());
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
    at::Tensor pooled = pool_sentence(encoder_->forward(batch, mask), mask, pooling_).to(at::kCPU);  // [B, D]
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
