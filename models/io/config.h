// Model-intrinsic hyper-parameters, read from a Hugging Face config.json (never from YAML).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sinkflow {

enum class Family { llama, gpt2, bert };

const char* family_name(Family family);
// Parses "llama" | "gpt2" | "bert"; throws std::invalid_argument naming the accepted values.
Family parse_family(const std::string& name);

struct ModelConfig {
  Family family = Family::llama;
  std::string model_type = "llama";  // config.json "model_type": llama, mistral, qwen2, gpt2, bert
  int64_t vocab_size = 0;             // rows of the embedding matrix
  int64_t d_model = 0;                // hidden_size (llama, bert) / n_embd (gpt2)
  int64_t n_layer = 0;                // num_hidden_layers / n_layer
  int64_t n_head = 0;                 // num_attention_heads / n_head
  int64_t n_kv_head = 0;              // num_key_value_heads (GQA); = n_head for gpt2, bert
  int64_t d_head = 0;                 // head_dim if given, else d_model / n_head
  int64_t d_ff = 0;                   // intermediate_size / n_inner (gpt2 null -> 4 * d_model)
  int64_t max_positions = 0;          // max_position_embeddings / n_positions
  double rope_theta = 10000.0;        // llama only
  double partial_rotary_factor = 1.0; // fraction of d_head that is rotated (llama only), (0, 1]
  double norm_eps = 1e-5;             // rms_norm_eps / layer_norm_epsilon / layer_norm_eps
  bool tie_word_embeddings = false;   // lm_head shares the token embedding (gpt2: always)
  bool attention_bias = false;        // q/k/v projections carry biases (qwen2; llama's attention_bias)
  bool attention_out_bias = false;    // o_proj carries a bias (llama's attention_bias; not qwen2)
  bool mlp_bias = false;              // gate/up/down projections carry biases (llama's mlp_bias)
  int64_t type_vocab_size = 2;        // bert only
  int64_t bos_token_id = -1;          // -1 = none
  int64_t eos_token_id = -1;          // -1 = none
  std::string torch_dtype = "float32";  // dtype the weights are stored in: float32, float16, bfloat16

  int64_t n_rot() const;  // rotated dims per head (even), llama only
  // About how many parameters the model has (matrices and embeddings; norms and biases left out): what loading it
  // will allocate, known before anything is.
  double parameter_estimate() const;

  // Parses a config.json; throws std::invalid_argument naming the file, the field, what was
  // expected and what was found (missing field, wrong type, unknown model_type, inconsistent sizes).
  static ModelConfig from_json_file(const std::string& path);
  static ModelConfig from_json_text(const std::string& text, const std::string& source_name);
  // Serializes in Hugging Face's own field names for this model_type.
  std::string to_json_text() const;
  // Checks internal consistency; throws std::invalid_argument naming `source_name` and the field.
  void validate(const std::string& source_name) const;

  // Field-by-field equality (doubles compared exactly).
  bool operator==(const ModelConfig& other) const = default;
};

// Named shapes for make-model: "tiny-llama", "tiny-gpt2", "tiny-bert" (test fixtures, a few thousand
// parameters... ~100k), "smollm2-135m", "smollm2-360m", "tinyllama-1.1b", "llama-2-7b", "qwen2-0.5b", "gpt2",
// "distilgpt2", "gpt2-medium", "minilm-l6" (all-MiniLM-L6-v2). Throws std::invalid_argument listing the names.
ModelConfig shape_preset(const std::string& name);
std::vector<std::string> shape_preset_names();

// Every tensor a checkpoint of this config must hold, with its shape, in Hugging Face names
// (model.layers.N.self_attn.q_proj.weight, transformer.h.N.attn.c_attn.weight, ...). Tied
// lm_head weights are not listed.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& config);

}  // namespace sinkflow
