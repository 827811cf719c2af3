#include "models/io/message_text.h"
#include "models/io/json_read.h"
#include "models/io/limits.h"
#include "models/io/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace sinkflow {
namespace {

using nlohmann::json;
using ordered_json = nlohmann::ordered_json;

const std::vector<std::string> kModelTypes = {"llama",       "mistral", "qwen2", "qwen3", "gemma2",
                                             "gemma3_text", "phi3",    "gpt2",  "bert"};
const std::vector<std::string> kRopeTypes = {"default", "linear", "dynamic", "llama3", "yarn", "longrope", "su"};
const std::vector<std::string> kTorchDtypes = {"float32", "float16", "bfloat16"};

std::string join(const std::vector<std::string>& items, const std::string& separator = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

std::string show(const json& value) { return json_preview(value); }

[[noreturn]] void fail(const std::string& source, const std::string& message) {
  throw std::invalid_argument(source + ": " + message);
}

// Typed access to the fields of one config.json object; every error names the file and the field.
class Fields {
 public:
  Fields(const json& object, std::string source) : object_(object), source_(std::move(source)) {}

  bool has(const std::string& field) const { return object_.contains(field) && !object_.at(field).is_null(); }

  const json& require(const std::string& field, const std::string& expected) const {
    if (!object_.contains(field)) fail(source_, "field '" + field + "' is missing (expected " + expected + ")");
    return object_.at(field);
  }

  int64_t positive_int(const std::string& field) const {
    return check_positive(field, require(field, "a positive integer"));
  }
  int64_t positive_int(const std::string& field, int64_t fallback) const {
    return has(field) ? check_positive(field, object_.at(field)) : fallback;
  }

  double positive_number(const std::string& field, double fallback) const {
    if (!has(field)) return fallback;
    const json& value = object_.at(field);
    if (!value.is_number() || !(value.get<double>() > 0.0) || !std::isfinite(value.get<double>()))
      fail(source_, "field '" + field + "' must be a positive number, found " + show(value));
    return value.get<double>();
  }

  bool boolean(const std::string& field, bool fallback) const {
    if (!has(field)) return fallback;
    const json& value = object_.at(field);
    if (!value.is_boolean()) fail(source_, "field '" + field + "' must be true or false, found " + show(value));
    return value.get<bool>();
  }

  std::string string(const std::string& field, const std::string& fallback) const {
    if (!has(field)) return fallback;
    const json& value = object_.at(field);
    if (!value.is_string()) fail(source_, "field '" + field + "' must be a string, found " + show(value));
    return value.get<std::string>();
  }

  // A string that must be one of `accepted` when present.
  std::string one_of(const std::string& field, const std::vector<std::string>& accepted,
                     const std::string& fallback) const {
    std::string value = string(field, fallback);
    for (const auto& item : accepted)
      if (item == value) return value;
    fail(source_, "field '" + field + "' is \"" + value + "\", expected one of " + join(accepted));
  }

  // bos/eos ids: an integer >= 0, null (-1), or a list of them (the first counts; [] -> -1).
  int64_t token_id(const std::string& field) const {
    if (!has(field)) return -1;
    const json& value = object_.at(field);
    const json* id = &value;
    if (value.is_array()) {
      if (value.empty()) return -1;
      id = &value.at(0);
    }
    if (id->is_null()) return -1;
    if (!id->is_number_integer() || id->get<int64_t>() < 0 ||
        (id->is_number_unsigned() && id->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())))
      fail(source_, "field '" + field + "' must be a token id (an integer >= 0, a list of them, or null), found " +
                        show(value));
    return id->get<int64_t>();
  }

 private:
  int64_t check_positive(const std::string& field, const json& value) const {
    bool ok = value.is_number_integer();
    if (ok && value.is_number_unsigned()) ok = value.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max());
    if (ok) ok = value.get<int64_t>() > 0;
    if (!ok) fail(source_, "field '" + field + "' must be a positive integer, found " + show(value));
    return value.get<int64_t>();
  }

  const json& object_;
  std::string source_;
};

std::string read_dtype(const Fields& fields) {
  // transformers >= 4.56 writes "dtype"; older versions "torch_dtype".
  const std::string field = fields.has("torch_dtype") || !fields.has("dtype") ? "torch_dtype" : "dtype";
  return fields.one_of(field, kTorchDtypes, "float32");
}

// transformers >= 5 writes "rope_parameters" instead of "rope_theta" and "rope_scaling": one object holding
// rope_type, rope_theta and the scaling parameters, or (models with sliding-window layers) one such object per layer
// type, "full_attention" and "sliding_attention". Both null when the config has no "rope_parameters" (the older
// fields are read then).
struct RopeFields {
  const json* global = nullptr;  // the full-attention layers' parameters (every layer's when not per layer type)
  const json* local = nullptr;   // the sliding-window layers' parameters, when given per layer type
  std::string global_name;
};

RopeFields rope_fields(const json& root, const std::string& source) {
  RopeFields out;
  if (!root.contains("rope_parameters") || root.at("rope_parameters").is_null()) return out;
  const json& params = root.at("rope_parameters");
  if (!params.is_object()) fail(source, "field 'rope_parameters' must be an object or null, found " + show(params));
  if (!params.contains("full_attention") && !params.contains("sliding_attention")) {
    out.global = &params;
    out.global_name = "rope_parameters";
    return out;
  }
  for (const auto& [key, value] : params.items()) {
    if (key != "full_attention" && key != "sliding_attention")
      fail(source, "field 'rope_parameters' holds '" + key +
                       "', expected the layer types \"full_attention\" and \"sliding_attention\"");
    if (!value.is_object())
      fail(source, "field 'rope_parameters." + key + "' must be an object, found " + show(value));
  }
  if (!params.contains("full_attention"))
    fail(source, "field 'rope_parameters' gives \"sliding_attention\" without \"full_attention\"");
  out.global = &params.at("full_attention");
  out.global_name = "rope_parameters.full_attention";
  if (params.contains("sliding_attention")) out.local = &params.at("sliding_attention");
  return out;
}

// RoPE scaling: null, or an object with "rope_type" (or the older "type") and its parameters. `scaling` is
// config.json's "rope_scaling", or (transformers >= 5) the object of "rope_parameters" named by `field`, where
// rope_theta sits beside the scaling parameters.
RopeScaling parse_rope_scaling(const json& root, const json& scaling, const std::string& field,
                               const std::string& source, int64_t max_positions) {
  RopeScaling r;
  if (scaling.is_null()) return r;
  if (!scaling.is_object()) fail(source, "field '" + field + "' must be an object or null, found " + show(scaling));
  const std::string where = source + ": field '" + field + "'";
  Fields f(scaling, where);
  const std::string key = f.has("rope_type") ? "rope_type" : "type";
  r.type = f.one_of(key, kRopeTypes, "");
  if (r.type == "default") r.type.clear();
  if (r.type == "su") r.type = "longrope";  // the name of Phi-3's first configs
  if (r.type.empty()) return r;
  r.factor = f.positive_number("factor", r.type == "longrope" ? 1.0 : 0.0);
  if (r.factor == 0.0) fail(where, "field 'factor' is missing (expected a positive number for rope_type '" + r.type + "')");
  if (r.type == "longrope") {
    // Phi-3: original_max_position_embeddings is a top-level field (newer files also put it here).
    r.original_max_positions = f.positive_int("original_max_position_embeddings", 0);
    if (root.contains("original_max_position_embeddings") && !root.at("original_max_position_embeddings").is_null())
      r.original_max_positions = Fields(root, source).positive_int("original_max_position_embeddings");
    r.attention_factor = f.positive_number("attention_factor", 0.0);
    for (const char* name : {"short_factor", "long_factor"}) {
      if (!scaling.contains(name) || !scaling.at(name).is_array() || scaling.at(name).empty() ||
          scaling.at(name).size() > 4096)
        fail(where, std::string("rope_type 'longrope' needs field '") + name + "', a list of numbers (one per rotated "
                    "frequency), found " + (scaling.contains(name) ? show(scaling.at(name)) : std::string("none")));
      std::vector<double>& out = std::string(name) == "short_factor" ? r.short_factor : r.long_factor;
      for (const json& v : scaling.at(name)) {
        if (!v.is_number() || !(v.get<double>() > 0.0) || !std::isfinite(v.get<double>()))
          fail(where, std::string("field '") + name + "' holds " + show(v) + ", expected positive numbers");
        out.push_back(v.get<double>());
      }
    }
  }
  if (r.type == "llama3") {
    r.low_freq_factor = f.positive_number("low_freq_factor", 0.0);
    r.high_freq_factor = f.positive_number("high_freq_factor", 0.0);
    r.original_max_positions = f.positive_int("original_max_position_embeddings");
    if (r.low_freq_factor == 0.0 || r.high_freq_factor == 0.0)
      fail(where, "rope_type 'llama3' needs the fields 'low_freq_factor' and 'high_freq_factor'");
    if (!(r.high_freq_factor > r.low_freq_factor))
      fail(where, "field 'high_freq_factor' (" + show(scaling.at("high_freq_factor")) +
                      ") must be larger than field 'low_freq_factor' (" + show(scaling.at("low_freq_factor")) + ")");
  } else if (r.type == "yarn") {
    r.original_max_positions = f.positive_int("original_max_position_embeddings", 0);
    r.beta_fast = f.positive_number("beta_fast", 32.0);
    r.beta_slow = f.positive_number("beta_slow", 1.0);
    r.mscale = f.positive_number("mscale", 0.0);
    r.mscale_all_dim = f.positive_number("mscale_all_dim", 0.0);
    r.attention_factor = f.positive_number("attention_factor", 0.0);
    r.truncate = f.boolean("truncate", true);
  } else if (r.type == "dynamic") {
    r.original_max_positions = f.positive_int("original_max_position_embeddings", 0);
  }
  if (r.original_max_positions > max_positions && r.type != "yarn")
    fail(where, "field 'original_max_position_embeddings' (" + std::to_string(r.original_max_positions) +
                    ") exceeds field 'max_position_embeddings' (" + std::to_string(max_positions) + ")");
  return r;
}

// Which layers attend through a sliding window: "layer_types" when given (transformers >= 4.53 writes it),
// else the model type's own rule.
std::vector<uint8_t> parse_sliding_layers(const Fields& f, const json& root, const std::string& source,
                                          const ModelConfig& c) {
  std::vector<uint8_t> out;
  if (c.sliding_window == 0) return out;
  if (f.has("layer_types")) {
    const json& types = root.at("layer_types");
    if (!types.is_array() || static_cast<int64_t>(types.size()) != c.n_layer)
      fail(source, "field 'layer_types' must be a list of " + std::to_string(c.n_layer) +
                       " entries (one per layer), found " + show(types));
    for (const json& t : types) {
      if (t == "sliding_attention") {
        out.push_back(1);
      } else if (t == "full_attention") {
        out.push_back(0);
      } else {
        fail(source, "field 'layer_types' holds " + show(t) + ", expected \"full_attention\" or \"sliding_attention\"");
      }
    }
    return out;
  }
  out.assign(static_cast<size_t>(c.n_layer), 1);  // mistral: every layer
  if (c.model_type == "gemma2") {
    for (int64_t i = 0; i < c.n_layer; ++i) out[i] = i % 2 == 0;  // even layers local, odd layers global
  } else if (c.model_type == "gemma3_text") {
    const int64_t pattern = f.positive_int("sliding_window_pattern", 6);
    for (int64_t i = 0; i < c.n_layer; ++i) out[i] = (i + 1) % pattern != 0;  // every pattern-th layer global
  } else if (c.model_type == "qwen2" || c.model_type == "qwen3") {
    const int64_t from = f.positive_int("max_window_layers", c.n_layer);
    for (int64_t i = 0; i < c.n_layer; ++i) out[i] = i >= from;
  }
  return out;
}

void parse_llama(const Fields& f, const json& root, const std::string& source, ModelConfig& c) {
  c.family = Family::llama;
  const bool gemma = c.gemma();
  c.vocab_size = f.positive_int("vocab_size");
  c.d_model = f.positive_int("hidden_size");
  c.d_ff = f.positive_int("intermediate_size");
  c.n_layer = f.positive_int("num_hidden_layers");
  c.n_head = f.positive_int("num_attention_heads");
  c.n_kv_head = f.positive_int("num_key_value_heads", c.n_head);
  if (f.has("head_dim")) {
    c.d_head = f.positive_int("head_dim");
  } else {
    if (c.d_model % c.n_head != 0)
      fail(source, "field 'hidden_size' (" + std::to_string(c.d_model) +
                       ") must be divisible by field 'num_attention_heads' (" + std::to_string(c.n_head) + ")");
    c.d_head = c.d_model / c.n_head;
  }
  c.max_positions = f.positive_int("max_position_embeddings");
  c.norm_eps = f.positive_number("rms_norm_eps", 1e-6);
  const RopeFields rope = rope_fields(root, source);
  c.rope_theta = rope.global == nullptr ? f.positive_number("rope_theta", 10000.0)
                                        : Fields(*rope.global, source + ": field '" + rope.global_name + "'")
                                              .positive_number("rope_theta", 10000.0);
  c.partial_rotary_factor = f.positive_number("partial_rotary_factor", 1.0);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", gemma);
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2Attention: q/k/v with bias, o_proj without
    c.attention_out_bias = false;
    c.mlp_bias = false;
  } else if (c.model_type == "phi3") {
    c.attention_bias = c.attention_out_bias = c.mlp_bias = false;  // Phi3Attention, Phi3MLP: no biases
  } else if (c.model_type == "llama" || c.model_type == "qwen3" || gemma) {
    // Qwen3Attention and GemmaAttention: attention_bias on q/k/v and o_proj alike (false in every released model).
    c.attention_bias = c.attention_out_bias = f.boolean("attention_bias", false);
    if (c.model_type == "llama") c.mlp_bias = f.boolean("mlp_bias", false);
  }  // mistral: never biases
  if (gemma) {
    // transformers reads hidden_activation (hidden_act is an older alias that Gemma ignores).
    f.one_of("hidden_activation", {"gelu_pytorch_tanh"}, "gelu_pytorch_tanh");
    c.query_pre_attn_scalar = f.positive_number("query_pre_attn_scalar", static_cast<double>(c.d_head));
    c.attn_softcap = f.positive_number("attn_logit_softcapping", 0.0);
    c.final_softcap = f.positive_number("final_logit_softcapping", 0.0);
  } else {
    f.one_of("hidden_act", {"silu"}, "silu");
  }
  c.qk_norm = c.model_type == "qwen3" || c.model_type == "gemma3_text";
  if (c.model_type == "gemma3_text") c.rope_local_theta = f.positive_number("rope_local_base_freq", 10000.0);
  if (rope.local != nullptr) {  // transformers >= 5: the sliding layers' own rope_theta (and no scaling of theirs)
    const std::string where = source + ": field 'rope_parameters.sliding_attention'";
    const double local_theta = Fields(*rope.local, where).positive_number("rope_theta", 10000.0);
    if (!parse_rope_scaling(root, *rope.local, "rope_parameters.sliding_attention", source, c.max_positions)
             .type.empty())
      fail(where, "RoPE scaling of the sliding-window layers is not supported (only of the full-attention layers)");
    if (c.model_type == "gemma3_text")
      c.rope_local_theta = local_theta;
    else if (local_theta != c.rope_theta)
      fail(where, "field 'rope_theta' (" + show(json(local_theta)) +
                      ") differs from the full-attention layers' and model_type '" + c.model_type +
                      "' has one RoPE base for all layers");
  }
  // Sliding-window attention: mistral and gemma whenever sliding_window is set; qwen2/qwen3 only with
  // use_sliding_window (their configs carry a sliding_window that is off by default).
  const bool qwen = c.model_type == "qwen2" || c.model_type == "qwen3";
  if (c.model_type != "llama" && f.has("sliding_window") && (!qwen || f.boolean("use_sliding_window", false)))
    c.sliding_window = f.positive_int("sliding_window");
  else if (gemma && !root.contains("sliding_window"))
    c.sliding_window = 4096;  // Gemma2Config / Gemma3TextConfig default
  c.sliding_layers = parse_sliding_layers(f, root, source, c);
  c.rope_scaling = rope.global != nullptr
                       ? parse_rope_scaling(root, *rope.global, rope.global_name, source, c.max_positions)
                       : parse_rope_scaling(root, root.contains("rope_scaling") ? root.at("rope_scaling") : json(),
                                            "rope_scaling", source, c.max_positions);
}

void parse_gpt2(const Fields& f, const std::string& source, ModelConfig& c) {
  c.family = Family::gpt2;
  c.vocab_size = f.positive_int("vocab_size");
  c.d_model = f.positive_int("n_embd");
  c.n_layer = f.positive_int("n_layer");
  c.n_head = f.positive_int("n_head");
  c.n_kv_head = c.n_head;
  c.max_positions = f.positive_int("n_positions");
  c.d_ff = f.positive_int("n_inner", 4 * c.d_model);
  c.norm_eps = f.positive_number("layer_norm_epsilon", 1e-5);
  f.one_of("activation_function", {"gelu_new", "gelu_pytorch_tanh"}, "gelu_new");
  if (!f.boolean("tie_word_embeddings", true))
    fail(source, "field 'tie_word_embeddings' is false, expected true (gpt2 ties lm_head to transformer.wte)");
  if (f.boolean("scale_attn_by_inverse_layer_idx", false))
    fail(source, "field 'scale_attn_by_inverse_layer_idx' is true, expected false (not supported)");
  if (!f.boolean("scale_attn_weights", true))
    fail(source, "field 'scale_attn_weights' is false, expected true (not supported)");
  c.tie_word_embeddings = true;
  if (c.d_model % c.n_head != 0)
    fail(source, "field 'n_embd' (" + std::to_string(c.d_model) + ") must be divisible by field 'n_head' (" +
                     std::to_string(c.n_head) + ")");
  c.d_head = c.d_model / c.n_head;
}

void parse_bert(const Fields& f, const std::string& source, ModelConfig& c) {
  c.family = Family::bert;
  c.vocab_size = f.positive_int("vocab_size");
  c.d_model = f.positive_int("hidden_size");
  c.n_layer = f.positive_int("num_hidden_layers");
  c.n_head = f.positive_int("num_attention_heads");
  c.n_kv_head = c.n_head;
  c.d_ff = f.positive_int("intermediate_size");
  c.max_positions = f.positive_int("max_position_embeddings");
  c.type_vocab_size = f.positive_int("type_vocab_size", 2);
  c.norm_eps = f.positive_number("layer_norm_eps", 1e-12);
  c.tie_word_embeddings = false;
  f.one_of("hidden_act", {"gelu"}, "gelu");
  f.one_of("position_embedding_type", {"absolute"}, "absolute");
  if (c.d_model % c.n_head != 0)
    fail(source, "field 'hidden_size' (" + std::to_string(c.d_model) +
                     ") must be divisible by field 'num_attention_heads' (" + std::to_string(c.n_head) + ")");
  c.d_head = c.d_model / c.n_head;
}

// The config.json field that holds a ModelConfig member, for error messages.
std::string field_name(const ModelConfig& c, const std::string& member) {
  const bool gpt2 = c.family == Family::gpt2;
  if (member == "d_model") return gpt2 ? "n_embd" : "hidden_size";
  if (member == "n_layer") return gpt2 ? "n_layer" : "num_hidden_layers";
  if (member == "n_head") return gpt2 ? "n_head" : "num_attention_heads";
  if (member == "n_kv_head") return "num_key_value_heads";
  if (member == "d_head") return "head_dim";
  if (member == "d_ff") return gpt2 ? "n_inner" : "intermediate_size";
  if (member == "max_positions") return gpt2 ? "n_positions" : "max_position_embeddings";
  if (member == "norm_eps")
    return gpt2 ? "layer_norm_epsilon" : c.family == Family::bert ? "layer_norm_eps" : "rms_norm_eps";
  return member;
}

json token_json(int64_t id) { return id < 0 ? json(nullptr) : json(id); }

}  // namespace

const char* family_name(Family family) {
  switch (family) {
    case Family::llama: return "llama";
    case Family::gpt2: return "gpt2";
    case Family::bert: return "bert";
  }
  return "?";
}

Family parse_family(const std::string& name) {
  if (name == "llama") return Family::llama;
  if (name == "gpt2") return Family::gpt2;
  if (name == "bert") return Family::bert;
  throw std::invalid_argument("model family '" + name + "' is not known, expected one of llama, gpt2, bert");
}

int64_t ModelConfig::n_rot() const {
  // As transformers: int(head_dim * partial_rotary_factor).
  return static_cast<int64_t>(static_cast<double>(d_head) * partial_rotary_factor);
}

double ModelConfig::parameter_estimate() const {
  const double d = static_cast<double>(d_model), attn = static_cast<double>(n_head * d_head),
               kv = static_cast<double>(n_kv_head * d_head), ff = static_cast<double>(d_ff);
  const double mlp = (family == Family::llama ? 3.0 : 2.0) * d * ff;
  const double per_layer = 2.0 * d * attn + 2.0 * d * kv + mlp;
  const double embeddings = static_cast<double>(vocab_size) * d * (tie_word_embeddings ? 1.0 : 2.0) +
                            (family == Family::llama ? 0.0 : static_cast<double>(max_positions) * d) +
                            (family == Family::bert ? static_cast<double>(type_vocab_size) * d : 0.0);
  return static_cast<double>(n_layer) * per_layer + embeddings;
}

ModelConfig ModelConfig::from_json_file(const std::string& path) {
  std::string text;
  try {
    text = read_json_text(path);
  } catch (const std::runtime_error&) {
    throw std::invalid_argument(path + ": cannot open the file (expected a Hugging Face config.json)");
  }
  return from_json_text(text, path);
}

ModelConfig ModelConfig::from_json_text(const std::string& text, const std::string& source_name) {
  const json root = parse_json(text, source_name);
  if (!root.is_object()) fail(source_name, "expected a JSON object, found " + show(root));
  Fields fields(root, source_name);

  ModelConfig c;
  const json& type = fields.require("model_type", "one of " + join(kModelTypes));
  if (!type.is_string()) fail(source_name, "field 'model_type' must be a string, found " + show(type));
  c.model_type = type.get<std::string>();
  if (c.model_type == "gemma3") {
    fail(source_name, "field 'model_type' is \"gemma3\" (the multimodal Gemma3ForConditionalGeneration); sinkflow "
                      "runs its language model: a config with model_type \"gemma3_text\" (the fields of text_config)");
  } else if (c.model_type != "gpt2" && c.model_type != "bert" &&
             std::find(kModelTypes.begin(), kModelTypes.end(), c.model_type) != kModelTypes.end()) {
    parse_llama(fields, root, source_name, c);
  } else if (c.model_type == "gpt2") {
    parse_gpt2(fields, source_name, c);
  } else if (c.model_type == "bert") {
    parse_bert(fields, source_name, c);
  } else {
    fail(source_name, "field 'model_type' is \"" + c.model_type + "\", expected one of " + join(kModelTypes));
  }
  c.bos_token_id = fields.token_id("bos_token_id");
  c.eos_token_id = fields.token_id("eos_token_id");
  c.torch_dtype = read_dtype(fields);
  c.validate(source_name);
  return c;
}

void ModelConfig::validate(const std::string& source_name) const {
  const auto& s = source_name;
  auto positive = [&](int64_t value, const std::string& member) {
    if (value <= 0)
      fail(s, "field '" + field_name(*this, member) + "' must be a positive integer, found " + std::to_string(value));
  };
  const Family expected_family =
      model_type == "gpt2" ? Family::gpt2 : model_type == "bert" ? Family::bert : Family::llama;
  bool known_type = false;
  for (const auto& t : kModelTypes) known_type = known_type || t == model_type;
  if (!known_type) fail(s, "field 'model_type' is \"" + model_type + "\", expected one of " + join(kModelTypes));
  if (family != expected_family)
    fail(s, "field 'model_type' is \"" + model_type + "\", which belongs to family " +
                family_name(expected_family) + ", but the family is " + family_name(family));
  positive(vocab_size, "vocab_size");
  positive(d_model, "d_model");
  positive(n_layer, "n_layer");
  positive(n_head, "n_head");
  positive(n_kv_head, "n_kv_head");
  positive(d_head, "d_head");
  positive(d_ff, "d_ff");
  positive(max_positions, "max_positions");
  auto at_most = [&](int64_t value, const std::string& member, int64_t limit) {
    if (value > limit)
      fail(s, "field '" + field_name(*this, member) + "' is " + std::to_string(value) + ", more than the limit of " +
                  std::to_string(limit));
  };
  at_most(vocab_size, "vocab_size", kMaxVocab);
  at_most(d_model, "d_model", kMaxWidth);
  at_most(n_layer, "n_layer", kMaxLayers);
  at_most(n_head, "n_head", kMaxHeads);
  at_most(n_kv_head, "n_kv_head", kMaxHeads);
  at_most(d_head, "d_head", kMaxWidth);
  at_most(d_ff, "d_ff", kMaxFeedForward);
  at_most(max_positions, "max_positions", kMaxPositions);
  if (!(norm_eps > 0.0) || !std::isfinite(norm_eps))
    fail(s, "field '" + field_name(*this, "norm_eps") + "' must be a positive number, found " +
                std::to_string(norm_eps));
  if (n_head % n_kv_head != 0)
    fail(s, "field 'num_attention_heads' (" + std::to_string(n_head) +
                ") must be divisible by field 'num_key_value_heads' (" + std::to_string(n_kv_head) + ")");
  bool known_dtype = false;
  for (const auto& t : kTorchDtypes) known_dtype = known_dtype || t == torch_dtype;
  if (!known_dtype) fail(s, "field 'torch_dtype' is \"" + torch_dtype + "\", expected one of " + join(kTorchDtypes));
  if (bos_token_id < -1) fail(s, "field 'bos_token_id' must be >= 0 or null, found " + std::to_string(bos_token_id));
  if (eos_token_id < -1) fail(s, "field 'eos_token_id' must be >= 0 or null, found " + std::to_string(eos_token_id));

  if (family == Family::llama) {
    if (!(rope_theta > 0.0) || !std::isfinite(rope_theta))
      fail(s, "field 'rope_theta' must be a positive number, found " + std::to_string(rope_theta));
    if (!(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0))
      fail(s, "field 'partial_rotary_factor' must be in (0, 1], found " + std::to_string(partial_rotary_factor));
    const int64_t rot = n_rot();
    if (rot <= 0 || rot % 2 != 0)
      fail(s, "field 'partial_rotary_factor' (" + std::to_string(partial_rotary_factor) + ") times head_dim (" +
                  std::to_string(d_head) + ") must give an even number of rotated dims, found " +
                  std::to_string(rot));
    const RopeScaling& r = rope_scaling;
    if (!r.type.empty()) {
      if (r.type != "linear" && r.type != "dynamic" && r.type != "llama3" && r.type != "yarn" && r.type != "longrope")
        fail(s, "field 'rope_scaling' has rope_type '" + r.type +
                    "', expected one of linear, dynamic, llama3, yarn, longrope");
      if (r.type == "longrope" && (static_cast<int64_t>(r.short_factor.size()) != rot / 2 ||
                                   static_cast<int64_t>(r.long_factor.size()) != rot / 2))
        fail(s, "fields 'rope_scaling.short_factor' and 'long_factor' must hold one number per rotated frequency (" +
                    std::to_string(rot / 2) + "), found " + std::to_string(r.short_factor.size()) + " and " +
                    std::to_string(r.long_factor.size()));
      for (const std::vector<double>* v : {&r.short_factor, &r.long_factor})
        for (double x : *v)
          if (!(x > 0.0) || !std::isfinite(x)) fail(s, "longrope factors must be positive numbers, found " + std::to_string(x));
      if (!(r.factor > 0.0) || !(r.factor <= 1024.0))  // released models: 4 (Qwen3 yarn) .. 32 (Llama-3.2)
        fail(s, "field 'rope_scaling.factor' must be in (0, 1024], found " + std::to_string(r.factor));
      if (r.type == "llama3" && (r.original_max_positions <= 0 || !(r.high_freq_factor > r.low_freq_factor) ||
                                 !(r.low_freq_factor > 0.0)))
        fail(s, "field 'rope_scaling' of type llama3 needs original_max_position_embeddings > 0 and "
                "0 < low_freq_factor < high_freq_factor");
      if (r.original_max_positions < 0 || r.original_max_positions > kMaxPositions)
        fail(s, "field 'rope_scaling.original_max_position_embeddings' is " + std::to_string(r.original_max_positions) +
                    ", expected 0 (absent) .. " + std::to_string(kMaxPositions));
    }
    if (!(rope_local_theta >= 0.0) || !std::isfinite(rope_local_theta))
      fail(s, "field 'rope_local_base_freq' must be a positive number, found " + std::to_string(rope_local_theta));
    if (sliding_window < 0 || sliding_window > kMaxPositions)
      fail(s, "field 'sliding_window' is " + std::to_string(sliding_window) + ", expected 1 .. " +
                  std::to_string(kMaxPositions) + " or null");
    if (!sliding_layers.empty() && static_cast<int64_t>(sliding_layers.size()) != n_layer)
      fail(s, "field 'layer_types' has " + std::to_string(sliding_layers.size()) + " entries, expected one per layer (" +
                  std::to_string(n_layer) + ")");
    if (sliding_window == 0 && !sliding_layers.empty())
      fail(s, "sliding-window layers are listed but field 'sliding_window' is null");
    for (double v : {query_pre_attn_scalar, attn_softcap, final_softcap})
      if (!(v >= 0.0) || !std::isfinite(v))
        fail(s, "fields 'query_pre_attn_scalar', 'attn_logit_softcapping' and 'final_logit_softcapping' must be "
                "positive numbers or null, found " + std::to_string(v));
    if (!gemma() && (query_pre_attn_scalar != 0.0 || attn_softcap != 0.0 || final_softcap != 0.0))
      fail(s, "query_pre_attn_scalar and logit soft-capping belong to gemma models, not " + model_type);
    if (qk_norm != (model_type == "qwen3" || model_type == "gemma3_text"))
      fail(s, "per-head q/k norms belong to qwen3 and gemma3_text, not " + model_type);
    if (model_type == "qwen2" && (!attention_bias || attention_out_bias || mlp_bias))
      fail(s, "qwen2 has q/k/v biases only, found attention_bias=" + std::to_string(attention_bias) +
                  " attention_out_bias=" + std::to_string(attention_out_bias) + " mlp_bias=" + std::to_string(mlp_bias));
    if ((model_type == "qwen3" || gemma()) && mlp_bias)
      fail(s, model_type + " has no MLP biases, found mlp_bias=1");
    if (model_type == "mistral" && (attention_bias || attention_out_bias || mlp_bias))
      fail(s, "mistral has no biases, found attention_bias=" + std::to_string(attention_bias) +
                  " attention_out_bias=" + std::to_string(attention_out_bias) + " mlp_bias=" + std::to_string(mlp_bias));
    if ((model_type == "llama" || model_type == "qwen3" || gemma()) && attention_bias != attention_out_bias)
      fail(s, "field 'attention_bias' of " + model_type + " covers q/k/v and o_proj alike, found attention_bias=" +
                  std::to_string(attention_bias) + " attention_out_bias=" + std::to_string(attention_out_bias));
  } else {
    if (n_kv_head != n_head)
      fail(s, "field 'num_key_value_heads' is not supported for " + model_type + ": expected " +
                  std::to_string(n_head) + " (= heads), found " + std::to_string(n_kv_head));
    if (d_head * n_head != d_model)
      fail(s, "field '" + field_name(*this, "d_model") + "' (" + std::to_string(d_model) +
                  ") must equal heads times head size (" + std::to_string(n_head) + " x " + std::to_string(d_head) +
                  ")");
    if (attention_bias || attention_out_bias || mlp_bias)
      fail(s, model_type + " has fixed biases: attention_bias, attention_out_bias and mlp_bias must stay false");
    if (family == Family::gpt2 && !tie_word_embeddings)
      fail(s, "field 'tie_word_embeddings' is false, expected true (gpt2 ties lm_head to transformer.wte)");
    if (family == Family::bert) {
      positive(type_vocab_size, "type_vocab_size");
      at_most(type_vocab_size, "type_vocab_size", kMaxVocab);
    }
    if (!rope_scaling.type.empty() || sliding_window != 0 || !sliding_layers.empty() || qk_norm ||
        rope_local_theta != 0.0 || query_pre_attn_scalar != 0.0 || attn_softcap != 0.0 || final_softcap != 0.0)
      fail(s, model_type + " has learned positions and plain attention: rope_scaling, sliding_window, q/k norms and "
                           "soft-capping do not apply");
  }
}

std::string ModelConfig::to_json_text() const {
  ordered_json j;
  if (family == Family::llama) {
    const char* arch = model_type == "qwen2"         ? "Qwen2ForCausalLM"
                       : model_type == "qwen3"       ? "Qwen3ForCausalLM"
                       : model_type == "mistral"     ? "MistralForCausalLM"
                       : model_type == "phi3"        ? "Phi3ForCausalLM"
                       : model_type == "gemma2"      ? "Gemma2ForCausalLM"
                       : model_type == "gemma3_text" ? "Gemma3ForCausalLM"
                                                     : "LlamaForCausalLM";
    j["architectures"] = {arch};
    j["model_type"] = model_type;
    j["vocab_size"] = vocab_size;
    j["hidden_size"] = d_model;
    j["intermediate_size"] = d_ff;
    j["num_hidden_layers"] = n_layer;
    j["num_attention_heads"] = n_head;
    j["num_key_value_heads"] = n_kv_head;
    j["head_dim"] = d_head;
    j["max_position_embeddings"] = max_positions;
    if (gemma()) {
      j["hidden_activation"] = "gelu_pytorch_tanh";
      j["query_pre_attn_scalar"] = query_pre_attn_scalar;
      j["attn_logit_softcapping"] = attn_softcap > 0.0 ? json(attn_softcap) : json(nullptr);
      j["final_logit_softcapping"] = final_softcap > 0.0 ? json(final_softcap) : json(nullptr);
    } else {
      j["hidden_act"] = "silu";
    }
    j["rms_norm_eps"] = norm_eps;
    j["rope_theta"] = rope_theta;
    if (rope_local_theta > 0.0) j["rope_local_base_freq"] = rope_local_theta;
    if (rope_scaling.type.empty()) {
      j["rope_scaling"] = nullptr;
    } else {
      const RopeScaling& r = rope_scaling;
      ordered_json rs;
      rs["rope_type"] = r.type;
      if (r.type != "longrope" || r.factor != 1.0) rs["factor"] = r.factor;
      if (r.type == "longrope") {
        rs["short_factor"] = r.short_factor;
        rs["long_factor"] = r.long_factor;
        if (r.attention_factor > 0.0) rs["attention_factor"] = r.attention_factor;
      }
      if (r.type == "llama3") {
        rs["low_freq_factor"] = r.low_freq_factor;
        rs["high_freq_factor"] = r.high_freq_factor;
      }
      if (r.type == "yarn") {
        rs["beta_fast"] = r.beta_fast;
        rs["beta_slow"] = r.beta_slow;
        if (r.mscale > 0.0) rs["mscale"] = r.mscale;
        if (r.mscale_all_dim > 0.0) rs["mscale_all_dim"] = r.mscale_all_dim;
        if (r.attention_factor > 0.0) rs["attention_factor"] = r.attention_factor;
        if (!r.truncate) rs["truncate"] = false;
      }
      if (r.original_max_positions > 0 && model_type != "phi3")
        rs["original_max_position_embeddings"] = r.original_max_positions;
      j["rope_scaling"] = rs;
    }
    if (model_type == "phi3")  // a top-level field of Phi3Config
      j["original_max_position_embeddings"] =
          rope_scaling.original_max_positions > 0 ? rope_scaling.original_max_positions : max_positions;
    if (partial_rotary_factor != 1.0) j["partial_rotary_factor"] = partial_rotary_factor;
    j["tie_word_embeddings"] = tie_word_embeddings;
    if (model_type == "llama" || model_type == "qwen3" || gemma()) j["attention_bias"] = attention_bias;
    if (model_type == "llama") j["mlp_bias"] = mlp_bias;
    if (model_type == "qwen2" || model_type == "qwen3") {
      j["use_sliding_window"] = sliding_window > 0;
      j["max_window_layers"] = n_layer;  // layer_types below says which layers slide
    }
    j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
    if (model_type == "gemma3_text" && sliding_window > 0) {
      int64_t pattern = 1;  // the older field: every pattern-th layer is global
      while (pattern <= n_layer && is_sliding(pattern - 1)) ++pattern;
      j["sliding_window_pattern"] = pattern;
    }
    if (!sliding_layers.empty()) {
      json types = json::array();
      for (uint8_t sl : sliding_layers) types.push_back(sl ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
    }
    j["attention_dropout"] = 0.0;
    j["initializer_range"] = 0.02;
    j["use_cache"] = true;
  } else if (family == Family::gpt2) {
    j["architectures"] = {"GPT2LMHeadModel"};
    j["model_type"] = "gpt2";
    j["vocab_size"] = vocab_size;
    j["n_embd"] = d_model;
    j["n_layer"] = n_layer;
    j["n_head"] = n_head;
    j["n_positions"] = max_positions;
    j["n_ctx"] = max_positions;
    j["n_inner"] = d_ff;
    j["activation_function"] = "gelu_new";
    j["layer_norm_epsilon"] = norm_eps;
    j["resid_pdrop"] = 0.0;
    j["embd_pdrop"] = 0.0;
    j["attn_pdrop"] = 0.0;
    j["initializer_range"] = 0.02;
    j["tie_word_embeddings"] = true;
    j["use_cache"] = true;
  } else {
    j["architectures"] = {"BertModel"};
    j["model_type"] = "bert";
    j["vocab_size"] = vocab_size;
    j["hidden_size"] = d_model;
    j["num_hidden_layers"] = n_layer;
    j["num_attention_heads"] = n_head;
    j["intermediate_size"] = d_ff;
    j["max_position_embeddings"] = max_positions;
    j["type_vocab_size"] = type_vocab_size;
    j["layer_norm_eps"] = norm_eps;
    j["hidden_act"] = "gelu";
    j["position_embedding_type"] = "absolute";
    j["hidden_dropout_prob"] = 0.0;
    j["attention_probs_dropout_prob"] = 0.0;
    j["initializer_range"] = 0.02;
    j["pad_token_id"] = 0;
  }
  j["bos_token_id"] = token_json(bos_token_id);
  j["eos_token_id"] = token_json(eos_token_id);
  j["torch_dtype"] = torch_dtype;
  return j.dump(2) + "\n";
}

std::vector<std::string> shape_preset_names() {
  return {"tiny-llama",   "tiny-gpt2",     "tiny-bert",      "tiny-llama3",  "tiny-yarn",   "tiny-qwen3",
          "tiny-gemma2",  "tiny-gemma3",   "tiny-mistral",   "tiny-phi3",    "smollm2-135m", "smollm2-360m",
          "tinyllama-1.1b", "phi-3-mini-4k",
          "llama-2-7b",   "llama-3.2-1b",  "llama-3.1-8b",   "qwen2-0.5b",   "qwen3-0.6b",   "gemma-2-2b",
          "gemma-3-1b",   "mistral-7b",    "gpt2",           "distilgpt2",   "gpt2-medium",  "minilm-l6",
          "bge-small"};
}

ModelConfig shape_preset(const std::string& name) {
  ModelConfig c;
  auto llama = [&](int64_t vocab, int64_t d, int64_t layers, int64_t heads, int64_t kv, int64_t ff,
                   int64_t max_pos, double theta, double eps, bool tied) {
    c.family = Family::llama;
    c.model_type = "llama";
    c.vocab_size = vocab;
    c.d_model = d;
    c.n_layer = layers;
    c.n_head = heads;
    c.n_kv_head = kv;
    c.d_head = d / heads;
    c.d_ff = ff;
    c.max_positions = max_pos;
    c.rope_theta = theta;
    c.norm_eps = eps;
    c.tie_word_embeddings = tied;
  };
  auto gpt2 = [&](int64_t vocab, int64_t d, int64_t layers, int64_t heads, int64_t max_pos) {
    c.family = Family::gpt2;
    c.model_type = "gpt2";
    c.vocab_size = vocab;
    c.d_model = d;
    c.n_layer = layers;
    c.n_head = heads;
    c.n_kv_head = heads;
    c.d_head = d / heads;
    c.d_ff = 4 * d;
    c.max_positions = max_pos;
    c.norm_eps = 1e-5;
    c.tie_word_embeddings = true;
  };
  auto bert = [&](int64_t vocab, int64_t d, int64_t layers, int64_t heads, int64_t ff, int64_t max_pos) {
    c.family = Family::bert;
    c.model_type = "bert";
    c.vocab_size = vocab;
    c.d_model = d;
    c.n_layer = layers;
    c.n_head = heads;
    c.n_kv_head = heads;
    c.d_head = d / heads;
    c.d_ff = ff;
    c.max_positions = max_pos;
    c.type_vocab_size = 2;
    c.norm_eps = 1e-12;
  };

  auto llama3_scaling = [&](double factor, int64_t original) {
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = factor;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_positions = original;
  };
  auto gemma = [&](const std::string& type, int64_t head_dim, double scalar, int64_t window) {
    c.model_type = type;
    c.d_head = head_dim;
    c.query_pre_attn_scalar = scalar;
    c.sliding_window = window;
    c.sliding_layers.assign(static_cast<size_t>(c.n_layer), 0);
    for (int64_t i = 0; i < c.n_layer; ++i)  // gemma2: even layers local; gemma3: five local, then one global
      c.sliding_layers[i] = type == "gemma2" ? i % 2 == 0 : (i + 1) % 6 != 0;
    c.qk_norm = type == "gemma3_text";
    if (type == "gemma3_text") c.rope_local_theta = 10000.0;
  };
  auto sliding_everywhere = [&](int64_t window) {
    c.sliding_window = window;
    c.sliding_layers.assign(static_cast<size_t>(c.n_layer), 1);
  };

  if (name == "tiny-llama") {
    llama(512, 64, 2, 4, 2, 128, 2048, 10000.0, 1e-5, true);
    c.bos_token_id = 1;  // sentencepiece's defaults: <unk>=0, <s>=1, </s>=2
    c.eos_token_id = 2;
  } else if (name == "tiny-llama3") {  // Llama-3.x's rope scaling with a short original context (64 positions)
    llama(512, 64, 2, 4, 2, 128, 2048, 500000.0, 1e-5, true);
    llama3_scaling(8.0, 64);
  } else if (name == "tiny-yarn") {  // YaRN as Qwen3's long-context setting (factor 4 over 512 positions)
    llama(512, 64, 2, 4, 2, 128, 2048, 1000000.0, 1e-6, true);
    c.rope_scaling.type = "yarn";
    c.rope_scaling.factor = 4.0;
    c.rope_scaling.original_max_positions = 512;
  } else if (name == "tiny-qwen3") {  // q/k norms, head_dim 32 != hidden / heads
    llama(512, 64, 2, 4, 2, 128, 2048, 1000000.0, 1e-6, true);
    c.model_type = "qwen3";
    c.d_head = 32;
    c.qk_norm = true;
  } else if (name == "tiny-gemma2") {  // soft-capping, local/global layers with an 8-token window
    llama(512, 64, 3, 4, 2, 128, 2048, 10000.0, 1e-6, true);
    gemma("gemma2", 16, 32.0, 8);
    c.attn_softcap = 50.0;
    c.final_softcap = 30.0;
  } else if (name == "tiny-gemma3") {  // q/k norms, local RoPE base, linear scaling of the global layers
    llama(512, 64, 4, 4, 1, 128, 2048, 1000000.0, 1e-6, true);
    gemma("gemma3_text", 16, 16.0, 8);
    for (int64_t i = 0; i < c.n_layer; ++i) c.sliding_layers[i] = i % 2 == 0;  // pattern 2: both kinds in 4 layers
    c.rope_scaling.type = "linear";
    c.rope_scaling.factor = 8.0;
  } else if (name == "tiny-mistral") {  // every layer through an 8-token window
    llama(512, 64, 2, 4, 2, 128, 2048, 10000.0, 1e-5, false);
    c.model_type = "mistral";
    sliding_everywhere(8);
  } else if (name == "llama-3.2-1b") {  // meta-llama/Llama-3.2-1B
    llama(128256, 2048, 16, 32, 8, 8192, 131072, 500000.0, 1e-5, true);
    llama3_scaling(32.0, 8192);
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
    c.torch_dtype = "bfloat16";
  } else if (name == "llama-3.1-8b") {  // meta-llama/Llama-3.1-8B
    llama(128256, 4096, 32, 32, 8, 14336, 131072, 500000.0, 1e-5, false);
    llama3_scaling(8.0, 8192);
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
    c.torch_dtype = "bfloat16";
  } else if (name == "qwen3-0.6b") {  // Qwen/Qwen3-0.6B
    llama(151936, 1024, 28, 16, 8, 3072, 40960, 1000000.0, 1e-6, true);
    c.model_type = "qwen3";
    c.d_head = 128;
    c.qk_norm = true;
    c.bos_token_id = 151643;
    c.eos_token_id = 151645;
    c.torch_dtype = "bfloat16";
  } else if (name == "gemma-2-2b") {  // google/gemma-2-2b
    llama(256000, 2304, 26, 8, 4, 9216, 8192, 10000.0, 1e-6, true);
    gemma("gemma2", 256, 256.0, 4096);
    c.attn_softcap = 50.0;
    c.final_softcap = 30.0;
    c.bos_token_id = 2;
    c.eos_token_id = 1;
  } else if (name == "gemma-3-1b") {  // google/gemma-3-1b-pt
    llama(262144, 1152, 26, 4, 1, 6912, 32768, 1000000.0, 1e-6, true);
    gemma("gemma3_text", 256, 256.0, 512);
    c.bos_token_id = 2;
    c.eos_token_id = 1;
    c.torch_dtype = "bfloat16";
  } else if (name == "mistral-7b") {  // mistralai/Mistral-7B-v0.1
    llama(32000, 4096, 32, 32, 8, 14336, 32768, 10000.0, 1e-5, false);
    c.model_type = "mistral";
    sliding_everywhere(4096);
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.torch_dtype = "bfloat16";
  } else if (name == "tiny-phi3") {  // fused qkv and gate_up, 3/4 of each head rotated, longrope, a 16-token window
    llama(512, 64, 2, 4, 2, 128, 256, 10000.0, 1e-5, false);
    c.model_type = "phi3";
    c.partial_rotary_factor = 0.75;
    c.rope_scaling.type = "longrope";
    c.rope_scaling.original_max_positions = 64;
    c.rope_scaling.short_factor = {1.0, 1.05, 1.1, 1.3, 1.6, 2.0};
    c.rope_scaling.long_factor = {1.0, 1.25, 1.9, 3.2, 5.5, 9.0};
    sliding_everywhere(16);
  } else if (name == "phi-3-mini-4k") {  // microsoft/Phi-3-mini-4k-instruct
    llama(32064, 3072, 32, 32, 32, 8192, 4096, 10000.0, 1e-5, false);
    c.model_type = "phi3";
    sliding_everywhere(2047);
    c.bos_token_id = 1;
    c.eos_token_id = 32000;
    c.torch_dtype = "bfloat16";
  } else if (name == "tiny-gpt2") {
    gpt2(512, 64, 2, 4, 512);
  } else if (name == "tiny-bert") {
    bert(1024, 64, 2, 4, 128, 512);
  } else if (name == "smollm2-135m") {  // HuggingFaceTB/SmolLM2-135M
    llama(49152, 576, 30, 9, 3, 1536, 8192, 100000.0, 1e-5, true);
    c.bos_token_id = 0;
    c.eos_token_id = 0;
    c.torch_dtype = "bfloat16";
  } else if (name == "smollm2-360m") {  // HuggingFaceTB/SmolLM2-360M
    llama(49152, 960, 32, 15, 5, 2560, 8192, 100000.0, 1e-5, true);
    c.bos_token_id = 0;
    c.eos_token_id = 0;
    c.torch_dtype = "bfloat16";
  } else if (name == "tinyllama-1.1b") {  // TinyLlama/TinyLlama-1.1B-Chat-v1.0
    llama(32000, 2048, 22, 32, 4, 5632, 2048, 10000.0, 1e-5, false);
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.torch_dtype = "bfloat16";
  } else if (name == "llama-2-7b") {  // meta-llama/Llama-2-7b-hf
    llama(32000, 4096, 32, 32, 32, 11008, 4096, 10000.0, 1e-5, false);
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.torch_dtype = "float16";
  } else if (name == "qwen2-0.5b") {  // Qwen/Qwen2-0.5B-Instruct
    llama(151936, 896, 24, 14, 2, 4864, 32768, 1000000.0, 1e-6, true);
    c.model_type = "qwen2";
    c.attention_bias = true;
    c.bos_token_id = 151643;
    c.eos_token_id = 151645;
    c.torch_dtype = "bfloat16";
  } else if (name == "gpt2") {  // openai-community/gpt2
    gpt2(50257, 768, 12, 12, 1024);
    c.bos_token_id = c.eos_token_id = 50256;
  } else if (name == "distilgpt2") {  // distilbert/distilgpt2
    gpt2(50257, 768, 6, 12, 1024);
    c.bos_token_id = c.eos_token_id = 50256;
  } else if (name == "gpt2-medium") {  // openai-community/gpt2-medium
    gpt2(50257, 1024, 24, 16, 1024);
    c.bos_token_id = c.eos_token_id = 50256;
  } else if (name == "minilm-l6") {  // sentence-transformers/all-MiniLM-L6-v2
    bert(30522, 384, 6, 12, 1536, 512);
  } else if (name == "bge-small") {  // BAAI/bge-small-en-v1.5
    bert(30522, 384, 12, 12, 1536, 512);
  } else {
    throw std::invalid_argument("shape preset '" + name + "' is not known, expected one of " +
                                join(shape_preset_names()));
  }
  c.validate("shape preset '" + name + "'");
  return c;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  auto add = [&](std::string name, std::vector<int64_t> shape) { out.emplace_back(std::move(name), std::move(shape)); };
  const int64_t D = c.d_model, F = c.d_ff, V = c.vocab_size;

  if (c.family == Family::llama) {
    const int64_t q_dim = c.n_head * c.d_head, kv_dim = c.n_kv_head * c.d_head;
    add("model.embed_tokens.weight", {V, D});
    for (int64_t n = 0; n < c.n_layer; ++n) {
      const std::string p = "model.layers." + std::to_string(n) + ".";
      add(p + "input_layernorm.weight", {D});
      if (c.model_type == "phi3") {  // fused: q, k, v rows in one matrix
        add(p + "self_attn.qkv_proj.weight", {q_dim + 2 * kv_dim, D});
      } else {
        add(p + "self_attn.q_proj.weight", {q_dim, D});
        if (c.attention_bias) add(p + "self_attn.q_proj.bias", {q_dim});
        add(p + "self_attn.k_proj.weight", {kv_dim, D});
        if (c.attention_bias) add(p + "self_attn.k_proj.bias", {kv_dim});
        add(p + "self_attn.v_proj.weight", {kv_dim, D});
        if (c.attention_bias) add(p + "self_attn.v_proj.bias", {kv_dim});
      }
      add(p + "self_attn.o_proj.weight", {D, q_dim});
      if (c.attention_out_bias) add(p + "self_attn.o_proj.bias", {D});
      if (c.qk_norm) {
        add(p + "self_attn.q_norm.weight", {c.d_head});
        add(p + "self_attn.k_norm.weight", {c.d_head});
      }
      add(p + "post_attention_layernorm.weight", {D});
      if (c.gemma()) {
        add(p + "pre_feedforward_layernorm.weight", {D});
        add(p + "post_feedforward_layernorm.weight", {D});
      }
      if (c.model_type == "phi3") {  // fused: gate rows, then up rows
        add(p + "mlp.gate_up_proj.weight", {2 * F, D});
      } else {
        add(p + "mlp.gate_proj.weight", {F, D});
        if (c.mlp_bias) add(p + "mlp.gate_proj.bias", {F});
        add(p + "mlp.up_proj.weight", {F, D});
        if (c.mlp_bias) add(p + "mlp.up_proj.bias", {F});
      }
      add(p + "mlp.down_proj.weight", {D, F});
      if (c.mlp_bias) add(p + "mlp.down_proj.bias", {D});
    }
    add("model.norm.weight", {D});
    if (!c.tie_word_embeddings) add("lm_head.weight", {V, D});
  } else if (c.family == Family::gpt2) {
    add("transformer.wte.weight", {V, D});
    add("transformer.wpe.weight", {c.max_positions, D});
    for (int64_t n = 0; n < c.n_layer; ++n) {
      const std::string p = "transformer.h." + std::to_string(n) + ".";
      add(p + "ln_1.weight", {D});
      add(p + "ln_1.bias", {D});
      add(p + "attn.c_attn.weight", {D, 3 * D});  // Conv1D: [in, out]
      add(p + "attn.c_attn.bias", {3 * D});
      add(p + "attn.c_proj.weight", {D, D});
      add(p + "attn.c_proj.bias", {D});
      add(p + "ln_2.weight", {D});
      add(p + "ln_2.bias", {D});
      add(p + "mlp.c_fc.weight", {D, F});
      add(p + "mlp.c_fc.bias", {F});
      add(p + "mlp.c_proj.weight", {F, D});
      add(p + "mlp.c_proj.bias", {D});
    }
    add("transformer.ln_f.weight", {D});
    add("transformer.ln_f.bias", {D});
  } else {
    add("embeddings.word_embeddings.weight", {V, D});
    add("embeddings.position_embeddings.weight", {c.max_positions, D});
    add("embeddings.token_type_embeddings.weight", {c.type_vocab_size, D});
    add("embeddings.LayerNorm.weight", {D});
    add("embeddings.LayerNorm.bias", {D});
    for (int64_t n = 0; n < c.n_layer; ++n) {
      const std::string p = "encoder.layer." + std::to_string(n) + ".";
      for (const char* proj : {"query", "key", "value"}) {
        add(p + "attention.self." + proj + ".weight", {D, D});
        add(p + "attention.self." + proj + ".bias", {D});
      }
      add(p + "attention.output.dense.weight", {D, D});
      add(p + "attention.output.dense.bias", {D});
      add(p + "attention.output.LayerNorm.weight", {D});
      add(p + "attention.output.LayerNorm.bias", {D});
      add(p + "intermediate.dense.weight", {F, D});
      add(p + "intermediate.dense.bias", {F});
      add(p + "output.dense.weight", {D, F});
      add(p + "output.dense.bias", {D});
      add(p + "output.LayerNorm.weight", {D});
      add(p + "output.LayerNorm.bias", {D});
    }
  }
  return out;
}

}  // namespace sinkflow

namespace sinkflow {

StoredSlice stored_slice(const ModelConfig& c, const std::string& param) {
  StoredSlice s{param};
  if (c.model_type != "phi3") return s;
  auto ends_with = [&](const std::string& tail) {
    return param.size() >= tail.size() && param.compare(param.size() - tail.size(), tail.size(), tail) == 0;
  };
  const int64_t q_dim = c.n_head * c.d_head, kv_dim = c.n_kv_head * c.d_head;
  const size_t layer_end = param.rfind('.', param.rfind('.', param.rfind('.') - 1) - 1);  // "model.layers.N"
  const std::string prefix = param.substr(0, layer_end + 1);
  if (ends_with(".self_attn.q_proj.weight")) return {prefix + "self_attn.qkv_proj.weight", 0, q_dim, q_dim + 2 * kv_dim};
  if (ends_with(".self_attn.k_proj.weight")) return {prefix + "self_attn.qkv_proj.weight", q_dim, kv_dim, q_dim + 2 * kv_dim};
  if (ends_with(".self_attn.v_proj.weight"))
    return {prefix + "self_attn.qkv_proj.weight", q_dim + kv_dim, kv_dim, q_dim + 2 * kv_dim};
  if (ends_with(".mlp.gate_proj.weight")) return {prefix + "mlp.gate_up_proj.weight", 0, c.d_ff, 2 * c.d_ff};
  if (ends_with(".mlp.up_proj.weight")) return {prefix + "mlp.gate_up_proj.weight", c.d_ff, c.d_ff, 2 * c.d_ff};
  return s;
}

}  // namespace sinkflow
