#include "models/text/generation_config.h"

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#include "models/io/json_read.h"
#include "models/io/message_text.h"

namespace sinkflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

[[noreturn]] void fail(const std::string& file, const std::string& message) {
  throw std::invalid_argument(file + ": " + message);
}

// The file's JSON object, or null when the file does not exist.
json read_optional(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return nullptr;
  json j = read_json_file(path);
  if (!j.is_object()) fail(path, "expected a JSON object, found " + json_preview(j));
  return j;
}

// An id or a list of ids (null: none), each in [0, vocab).
std::vector<int64_t> read_ids(const json& value, const std::string& file, const std::string& field, int64_t vocab) {
  std::vector<int64_t> out;
  if (value.is_null()) return out;
  const json list = value.is_array() ? value : json::array({value});
  for (const json& v : list) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab)
      fail(file, "field '" + field + "' must be a token id in [0, " + std::to_string(vocab) +
                     ") or a list of them, found " + json_preview(value));
    out.push_back(v.get<int64_t>());
  }
  return out;
}

template <typename T>
std::optional<T> optional_number(const json& object, const std::string& file, const std::string& field) {
  if (!object.contains(field) || object.at(field).is_null()) return std::nullopt;
  const json& v = object.at(field);
  if (std::is_integral_v<T> ? !v.is_number_integer() : !v.is_number())
    fail(file, "field '" + field + "' must be a number, found " + json_preview(v));
  return v.get<T>();
}

// The special token a TemplateProcessing's single-sequence template starts with (-1: none; looks inside a
// Sequence of processors).
int64_t template_bos(const json& processor, const std::string& file) {
  if (!processor.is_object()) return -1;
  const std::string type = processor.value("type", "");
  if (type == "Sequence" && processor.contains("processors") && processor.at("processors").is_array()) {
    for (const json& p : processor.at("processors")) {
      const int64_t id = template_bos(p, file);
      if (id >= 0) return id;
    }
    return -1;
  }
  if (type != "TemplateProcessing" || !processor.contains("single") || !processor.at("single").is_array() ||
      processor.at("single").empty())
    return -1;
  const json& first = processor.at("single").at(0);
  if (!first.is_object() || !first.contains("SpecialToken")) return -1;
  const json& special = first.at("SpecialToken");
  const std::string name = special.is_object() ? special.value("id", "") : "";
  const json& table = processor.value("special_tokens", json::object());
  if (!table.is_object() || !table.contains(name) || !table.at(name).is_object() || !table.at(name).contains("ids") ||
      !table.at(name).at("ids").is_array() || table.at(name).at("ids").size() != 1 ||
      !table.at(name).at("ids").at(0).is_number_integer())
    fail(file, "field 'post_processor': the template's first token '" + name +
                   "' has no single id under 'special_tokens'");
  return table.at(name).at("ids").at(0).get<int64_t>();
}

}  // namespace

bool GenerationConfig::is_stop(int64_t id) const {
  return std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end();
}

GenerationConfig load_generation_config(const std::string& dir, const Tokenizer& tokenizer, Family family) {
  GenerationConfig g;
  const int64_t vocab = tokenizer.vocab_size();
  const std::string gen_path = (fs::path(dir) / "generation_config.json").string();
  const std::string tok_config_path = (fs::path(dir) / "tokenizer_config.json").string();
  const std::string tok_json_path = (fs::path(dir) / "tokenizer.json").string();
  const std::string config_path = (fs::path(dir) / "config.json").string();
  const json gen = read_optional(gen_path);
  const json tok_config = read_optional(tok_config_path);

  // BOS.
  if (tok_config.is_object() && tok_config.contains("add_bos_token") && !tok_config.at("add_bos_token").is_null()) {
    const json& v = tok_config.at("add_bos_token");
    if (!v.is_boolean()) fail(tok_config_path, "field 'add_bos_token' must be true or false, found " + json_preview(v));
    g.bos_from = tok_config_path + " (add_bos_token)";
    if (v.get<bool>()) {
      g.bos_id = tokenizer.bos_id();
      if (g.bos_id < 0) fail(tok_config_path, "field 'add_bos_token' is true but the tokenizer has no BOS token");
    }
  } else if (const json tok_json = tokenizer.kind() == "sentencepiece" ? json() : read_optional(tok_json_path);
             tok_json.is_object()) {
    g.bos_id = template_bos(tok_json.value("post_processor", json()), tok_json_path);
    if (g.bos_id >= vocab)
      fail(tok_json_path, "field 'post_processor' starts with id " + std::to_string(g.bos_id) +
                              ", outside the vocabulary of " + std::to_string(vocab));
    g.bos_from = tok_json_path + " (post_processor)";
    if (g.bos_id < 0 && tok_json.value("post_processor", json()).is_null()) {  // no post-processor at all
      g.bos_id = family == Family::llama ? tokenizer.bos_id() : -1;
      g.bos_from = "family default";
    }
  } else {
    g.bos_id = family == Family::llama ? tokenizer.bos_id() : -1;
    g.bos_from = "family default";
  }

  // Stop ids.
  if (gen.is_object() && gen.contains("eos_token_id") && !gen.at("eos_token_id").is_null()) {
    g.stop_ids = read_ids(gen.at("eos_token_id"), gen_path, "eos_token_id", vocab);
    g.stop_from = gen_path;
  } else {
    const json config = read_optional(config_path);
    if (config.is_object() && config.contains("eos_token_id") && !config.at("eos_token_id").is_null()) {
      g.stop_ids = read_ids(config.at("eos_token_id"), config_path, "eos_token_id", vocab);
      g.stop_from = config_path;
    }
  }
  if (g.stop_ids.empty() && tokenizer.eos_id() >= 0) {
    g.stop_ids = {tokenizer.eos_id()};
    g.stop_from = "tokenizer";
  }

  // Sampling defaults.
  if (gen.is_object()) {
    if (gen.contains("do_sample") && !gen.at("do_sample").is_null()) {
      if (!gen.at("do_sample").is_boolean())
        fail(gen_path, "field 'do_sample' must be true or false, found " + json_preview(gen.at("do_sample")));
      g.do_sample = gen.at("do_sample").get<bool>();
    }
    g.temperature = optional_number<double>(gen, gen_path, "temperature");
    g.top_p = optional_number<double>(gen, gen_path, "top_p");
    g.min_p = optional_number<double>(gen, gen_path, "min_p");
    g.repetition_penalty = optional_number<double>(gen, gen_path, "repetition_penalty");
    g.top_k = optional_number<int64_t>(gen, gen_path, "top_k");
    g.max_new_tokens = optional_number<int64_t>(gen, gen_path, "max_new_tokens");
  }
  return g;
}

}  // namespace sinkflow
