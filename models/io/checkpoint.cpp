#include "models/io/message_text.h"
#include "models/io/json_read.h"
#include "models/io/checkpoint.h"
#include "models/io/limits.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

#include <unistd.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "models/io/safetensors.h"

namespace sinkflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* kSingleFile = "model.safetensors";
const char* kIndexFile = "model.safetensors.index.json";
const std::regex kShardPattern(R"(model-\d{5}-of-\d{5}\.safetensors)");


std::string show(const json& value) { return json_preview(value); }

// Writes `text` to `path` through a temporary file in the same folder and a rename.
void write_text_atomically(const std::string& path, const std::string& text) {
  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(temp + ": cannot create the file");
    out << text;
    out.flush();
    if (!out) throw std::runtime_error(temp + ": writing the file failed");
  }
  std::error_code error;
  fs::rename(temp, path, error);
  if (error) {
    fs::remove(temp);
    throw std::runtime_error(path + ": renaming " + temp + " into place failed (" + error.message() + ")");
  }
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_floating_dtype(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64";
}

bool is_norm_weight(const std::string& name) {
  return ends_with(name, "norm.weight") || ends_with(name, "Norm.weight") || ends_with(name, "ln_1.weight") ||
         ends_with(name, "ln_2.weight") || ends_with(name, "ln_f.weight");
}

bool is_residual_projection(const std::string& name) {
  return ends_with(name, "o_proj.weight") || ends_with(name, "down_proj.weight") || ends_with(name, "c_proj.weight");
}

std::string torch_dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return "";
  }
}

}  // namespace

CheckpointTensors::CheckpointTensors(const std::string& dir) : dir_(dir) {
  const fs::path folder(dir);
  std::error_code error;
  if (!fs::is_directory(folder, error))
    throw std::invalid_argument(dir + ": the checkpoint folder does not exist (expected a folder with " +
                                kSingleFile + " or " + kIndexFile + ")");
  const fs::path single = folder / kSingleFile;
  const fs::path index = folder / kIndexFile;

  if (fs::exists(single, error)) {
    source_ = single.string();
    files_.push_back(std::make_shared<SafetensorsFile>(source_));
    for (const auto& name : files_.back()->names()) where_[name] = 0;
  } else if (fs::exists(index, error)) {
    source_ = index.string();
    sharded_ = true;
    auto fail = [&](const std::string& message) { throw std::invalid_argument(source_ + ": " + message); };
    const json root = read_json_file(source_);
    if (!root.is_object()) fail("expected a JSON object, found " + show(root));
    if (!root.contains("weight_map")) fail("field 'weight_map' is missing (expected an object: tensor -> shard)");
    const json& weight_map = root.at("weight_map");
    if (!weight_map.is_object()) fail("field 'weight_map' must be an object (tensor -> shard), found " + show(weight_map));
    std::map<std::string, size_t> shard_index;
    for (const auto& [name, shard_value] : weight_map.items()) {
      if (!shard_value.is_string())
        fail("field 'weight_map' gives tensor '" + name + "' the shard " + show(shard_value) +
             ", expected a file name");
      const std::string shard = shard_value.get<std::string>();
      if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos)
        fail("field 'weight_map' gives tensor '" + name + "' the shard '" + shard +
             "', expected a plain file name inside " + dir);
      auto it = shard_index.find(shard);
      if (it == shard_index.end()) {
        const fs::path shard_path = folder / shard;
        if (!fs::is_regular_file(shard_path, error))
          fail("shard '" + shard + "' (holding tensor '" + name + "') does not exist in " + dir);
        files_.push_back(std::make_shared<SafetensorsFile>(shard_path.string()));
        it = shard_index.emplace(shard, files_.size() - 1).first;
      }
      if (!files_[it->second]->contains(name))
        fail("tensor '" + name + "' is assigned to shard '" + shard + "', but " + files_[it->second]->path() +
             " does not hold it");
      where_[name] = it->second;
    }
  } else {
    std::string message = dir + ": the checkpoint folder has neither " + kSingleFile + " nor " + kIndexFile;
    if (fs::exists(folder / "pytorch_model.bin", error))
      message += " (pytorch_model.bin is not supported: convert it to safetensors)";
    throw std::invalid_argument(message);
  }
  spdlog::info("checkpoint: {} tensors={} files={}", source_, where_.size(), files_.size());
}

CheckpointTensors::~CheckpointTensors() = default;
CheckpointTensors::CheckpointTensors(CheckpointTensors&&) noexcept = default;
CheckpointTensors& CheckpointTensors::operator=(CheckpointTensors&&) noexcept = default;

std::vector<std::string> CheckpointTensors::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

std::string CheckpointTensors::resolve(const std::string& name) const {
  if (where_.count(name)) return name;
  const std::string gpt2_prefix = "transformer.";
  if (name.rfind(gpt2_prefix, 0) == 0 && where_.count(name.substr(gpt2_prefix.size())))
    return name.substr(gpt2_prefix.size());
  if (where_.count("bert." + name)) return "bert." + name;
  return "";
}

bool CheckpointTensors::contains(const std::string& name) const { return !resolve(name).empty(); }

const SafetensorsFile& CheckpointTensors::file_of(const std::string& stored_name) const {
  auto it = where_.find(stored_name);
  if (it == where_.end()) throw std::invalid_argument(source_ + ": tensor '" + stored_name + "' is missing");
  return *files_[it->second];
}

std::string CheckpointTensors::dtype(const std::string& name) const {
  const std::string stored = resolve(name);
  return file_of(stored.empty() ? name : stored).entry(stored.empty() ? name : stored).dtype;
}

std::vector<int64_t> CheckpointTensors::shape(const std::string& name) const {
  const std::string stored = resolve(name);
  return file_of(stored.empty() ? name : stored).entry(stored.empty() ? name : stored).shape;
}

at::Tensor CheckpointTensors::load(const std::string& name, const std::vector<int64_t>& expected_shape,
                                   at::ScalarType dtype, at::Device device) const {
  const std::string stored = resolve(name);
  if (stored.empty())
    throw std::invalid_argument(source_ + ": tensor '" + name + "' is missing (expected shape " +
                                shape_text(expected_shape) + " from config.json)");
  const SafetensorsFile& file = file_of(stored);
  const TensorEntry& entry = file.entry(stored);
  if (entry.shape != expected_shape)
    throw std::invalid_argument(file.path() + ": tensor '" + stored + "' has shape " + shape_text(entry.shape) +
                                ", expected " + shape_text(expected_shape) + " (from config.json)");
  // Integers of the same width as the weights (I32 for F32) would convert, silently, into other numbers.
  if (!is_floating_dtype(entry.dtype))
    throw std::invalid_argument(file.path() + ": tensor '" + stored + "' has dtype " + entry.dtype +
                                ", expected a floating dtype (F32, F16, BF16, F64)");
  at::Tensor t = file.tensor(stored);
  if (t.scalar_type() != dtype || t.device() != device) t = t.to(device, dtype);
  return t;
}

void CheckpointTensors::release(const std::string& name) const {
  const std::string stored = resolve(name);
  if (!stored.empty()) file_of(stored).release(stored);
}

ModelConfig load_model_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / "config.json";
  std::error_code error;
  if (!fs::is_regular_file(path, error))
    throw std::invalid_argument(dir + ": config.json is missing (expected a Hugging Face config.json in the folder)");
  return ModelConfig::from_json_file(path.string());
}

void check_checkpoint(const CheckpointTensors& tensors, const ModelConfig& config) {
  for (const auto& [name, shape] : expected_tensors(config)) {
    const std::string stored = tensors.resolve(name);
    if (stored.empty())
      throw std::invalid_argument(tensors.source() + ": tensor '" + name + "' is missing (expected shape " +
                                  shape_text(shape) + " from config.json)");
    const std::vector<int64_t> found = tensors.shape(stored);
    if (found != shape)
      throw std::invalid_argument(tensors.source() + ": tensor '" + stored + "' has shape " + shape_text(found) +
                                  ", expected " + shape_text(shape) + " (from config.json)");
    const std::string dtype = tensors.dtype(stored);
    if (!is_floating_dtype(dtype))
      throw std::invalid_argument(tensors.source() + ": tensor '" + stored + "' has dtype " + dtype +
                                  ", expected a floating dtype (F32, F16, BF16, F64)");
  }
}

namespace {

// A tied model's lm_head is its token embedding: a stored lm_head.weight (some exporters save the tied copy) must
// equal it, else config.json's tie_word_embeddings would silently replace the checkpoint's own output matrix.
void check_tied_head(const CheckpointTensors& tensors, const ModelConfig& config) {
  const std::string embed = tensors.resolve(config.family == Family::gpt2 ? "transformer.wte.weight"
                                                                           : "model.embed_tokens.weight");
  if (embed.empty()) return;
  const std::vector<int64_t> shape = {config.vocab_size, config.d_model};
  const at::ScalarType stored = safetensors_scalar_type(tensors.dtype(embed));
  if (!at::equal(tensors.load("lm_head.weight", shape, stored, at::kCPU), tensors.load(embed, shape, stored, at::kCPU)))
    throw std::invalid_argument(tensors.source() + ": tensor 'lm_head.weight' differs from '" + embed +
                                "', but config.json sets tie_word_embeddings (the output matrix is the embedding); "
                                "the checkpoint and config.json disagree");
}

}  // namespace

void check_model_fits(const std::string& dir, const ModelConfig& config, double bytes_per_parameter,
                      const std::string& dtype) {
  const double params = config.parameter_estimate(), bytes = params * bytes_per_parameter;
  const int64_t memory = physical_memory_bytes();
  if (memory > 0 && bytes > static_cast<double>(memory))
    throw std::invalid_argument(dir + ": about " + std::to_string(static_cast<int64_t>(params / 1e6)) +
                                "M parameters need " + gib_text(bytes) + " as " + dtype + ", more than this machine's " +
                                gib_text(static_cast<double>(memory)));
}

void check_all_used(const CheckpointTensors& tensors, const std::set<std::string>& used, const ModelConfig& config) {
  std::vector<std::string> extra;
  for (const std::string& name : tensors.names()) {
    if (config.tie_word_embeddings && name == "lm_head.weight" && !used.count(name)) check_tied_head(tensors, config);
    const bool bert_extra = config.family == Family::bert &&
                            (name.rfind("pooler.", 0) == 0 || name.rfind("bert.pooler.", 0) == 0 ||
                             name.rfind("cls.", 0) == 0 || ends_with(name, "position_ids"));
    if (used.count(name) || ends_with(name, "rotary_emb.inv_freq") || ends_with(name, ".attn.bias") ||
        ends_with(name, ".attn.masked_bias") || bert_extra || (config.tie_word_embeddings && name == "lm_head.weight"))
      continue;
    extra.push_back(name);
  }
  if (extra.empty()) return;
  std::string list;
  for (size_t i = 0; i < extra.size() && i < 3; ++i) list += (i ? ", '" : "'") + extra[i] + "'";
  if (extra.size() > 3) list += " and " + std::to_string(extra.size() - 3) + " more";
  throw std::invalid_argument(tensors.source() + ": " + std::to_string(extra.size()) + " tensor" +
                              (extra.size() == 1 ? " is" : "s are") + " not part of the model config.json describes (" +
                              config.model_type + ", " + std::to_string(config.n_layer) + " layers): " + list +
                              "; the checkpoint and config.json disagree");
}

std::vector<std::pair<std::string, at::Tensor>> random_tensors(const ModelConfig& config, uint64_t seed,
                                                               at::ScalarType dtype) {
  config.validate("random_tensors");
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double residual_scale = 1.0 / std::sqrt(2.0 * static_cast<double>(config.n_layer));
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, shape] : expected_tensors(config)) {
    double std = 0.02;
    if (is_residual_projection(name)) std *= residual_scale;
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
    t.normal_(0.0, std, generator);
    if (is_norm_weight(name) && !config.gemma()) t.add_(1.0);  // gemma scales by (1 + w)
    if (dtype != at::kFloat) t = t.to(dtype);
    out.emplace_back(name, std::move(t));
  }
  return out;
}

void save_checkpoint(const std::string& dir, const ModelConfig& config,
                     const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t max_shard_bytes) {
  const fs::path folder(dir);
  config.validate((folder / "config.json").string());

  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [name, tensor] : tensors) by_name[name] = &tensor;
  for (const auto& [name, shape] : expected_tensors(config)) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw std::invalid_argument(dir + ": cannot save the checkpoint: tensor '" + name +
                                  "' is missing (expected shape " + shape_text(shape) + " from the config)");
    const std::vector<int64_t> found = it->second->sizes().vec();
    if (found != shape)
      throw std::invalid_argument(dir + ": cannot save the checkpoint: tensor '" + name + "' has shape " +
                                  shape_text(found) + ", expected " + shape_text(shape) + " (from the config)");
  }

  ModelConfig written = config;
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined() || !at::isFloatingType(tensor.scalar_type())) continue;
    written.torch_dtype = torch_dtype_name(tensor.scalar_type());
    if (written.torch_dtype.empty())
      throw std::invalid_argument(dir + ": cannot save the checkpoint: tensor '" + name + "' has dtype " +
                                  c10::toString(tensor.scalar_type()) +
                                  ", expected float32, float16 or bfloat16 (config.json torch_dtype)");
    break;
  }

  std::error_code error;
  fs::create_directories(folder, error);
  if (error) throw std::runtime_error(dir + ": cannot create the folder (" + error.message() + ")");
  write_text_atomically((folder / "config.json").string(), written.to_json_text());

  uint64_t total = 0;
  for (const auto& [name, tensor] : tensors) total += tensor.numel() * tensor.element_size();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};

  std::set<std::string> keep;  // files of the layout just written
  if (max_shard_bytes <= 0 || total <= static_cast<uint64_t>(max_shard_bytes)) {
    save_safetensors((folder / kSingleFile).string(), tensors, metadata);
    keep.insert(kSingleFile);
    fs::remove(folder / kIndexFile, error);
  } else {
    // Greedy, in order, as transformers' shard_checkpoint: a new shard when the next tensor would overflow.
    std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
    uint64_t shard_bytes = 0;
    for (const auto& item : tensors) {
      const uint64_t bytes = item.second.numel() * item.second.element_size();
      if (!shards.back().empty() && shard_bytes + bytes > static_cast<uint64_t>(max_shard_bytes)) {
        shards.emplace_back();
        shard_bytes = 0;
      }
      shards.back().push_back(item);
      shard_bytes += bytes;
    }
    json weight_map = json::object();
    for (size_t k = 0; k < shards.size(); ++k) {
      char file_name[64];
      std::snprintf(file_name, sizeof file_name, "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
      save_safetensors((folder / file_name).string(), shards[k], metadata);
      keep.insert(file_name);
      for (const auto& [name, tensor] : shards[k]) weight_map[name] = file_name;
    }
    json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    write_text_atomically((folder / kIndexFile).string(), index.dump(2) + "\n");
    keep.insert(kIndexFile);
    fs::remove(folder / kSingleFile, error);
  }
  // Shards of an earlier save that the new layout does not use.
  for (const auto& item : fs::directory_iterator(folder, error)) {
    const std::string file_name = item.path().filename().string();
    if (std::regex_match(file_name, kShardPattern) && !keep.count(file_name)) fs::remove(item.path(), error);
  }
  spdlog::info("checkpoint: wrote {} model_type={} tensors={} bytes={} shards={}", dir, written.model_type,
               tensors.size(), total, keep.count(kIndexFile) ? keep.size() - 1 : 1);
}

void fill_parameters(const std::vector<std::pair<std::string, at::Tensor>>& params, const TensorFetch& fetch) {
  at::NoGradGuard no_grad;
  for (const auto& [name, param] : params) {
    at::Tensor src = fetch(name, param.sizes().vec());
    if (src.sizes() != param.sizes()) {
      throw std::invalid_argument("tensor '" + name + "' has shape " + std::string(c10::str(src.sizes())) +
                                  ", expected " + std::string(c10::str(param.sizes())));
    }
    at::Tensor dst = param;
    dst.copy_(src.to(param.device(), param.scalar_type()));
  }
}

}  // namespace sinkflow
