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

// config.json "rope_scaling" as transformers reads it (modeling_rope_utils.py): how the RoPE frequencies of a
// context-extended model are derived from the plain ones.
struct RopeScaling {
  std::string type;                     // "" (none), "linear", "dynamic", "llama3", "yarn", "longrope" (or "su")
  double factor = 1.0;                  // every type
  double low_freq_factor = 1.0;         // llama3
  double high_freq_factor = 4.0;        // llama3
  int64_t original_max_positions = 0;   // llama3 (required), yarn (optional: then factor = max / original); 0 = none
  double beta_fast = 32.0, beta_slow = 1.0;  // yarn
  double mscale = 0.0, mscale_all_dim = 0.0;  // yarn (0 = absent)
  double attention_factor = 0.0;        // yarn, longrope: explicit cos/sin scale (0 = derived from factor)
  std::vector<double> short_factor, long_factor;  // longrope: per rotated frequency, [n_rot / 2] each; long beyond
                                                  // original_max_position_embeddings (phi3: a top-level field)
  bool truncate = true;                 // yarn: correction range rounded to whole dims
  bool operator==(const RopeScaling& other) const = default;
};

struct ModelConfig {
  Family family = Family::llama;
  // config.json "model_type": llama, mistral, qwen2, qwen3, gemma2, gemma3_text (llama family: RoPE decoders),
  // gpt2, bert
  std::string model_type = "llama";
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
  RopeScaling rope_scaling;           // llama only
  double rope_local_theta = 0.0;      // sliding-window layers' RoPE base (gemma3 rope_local_base_freq); 0 = rope_theta
  int64_t sliding_window = 0;         // keys a sliding-window layer sees, the query included; 0 = none
  std::vector<uint8_t> sliding_layers;  // per layer: 1 = sliding-window attention (empty: none)
  bool qk_norm = false;               // RMSNorm over each head of q and k before RoPE (qwen3, gemma3)
  double query_pre_attn_scalar = 0.0; // attention scale = this^-0.5 (gemma); 0 = head_dim
  double attn_softcap = 0.0;          // scores -> cap * tanh(scores / cap) before the mask (gemma2); 0 = none
  double final_softcap = 0.0;         // logits -> cap * tanh(logits / cap) (gemma2); 0 = none
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
  // Gemma (gemma2, gemma3_text): embeddings scaled by sqrt(hidden_size), (1 + w) RMSNorm, a norm after attention
  // and around the MLP, GeGLU (tanh-approximated GELU) instead of SwiGLU.
  bool gemma() const { return model_type == "gemma2" || model_type == "gemma3_text"; }
  bool is_sliding(int64_t layer) const {
    return layer >= 0 && layer < static_cast<int64_t>(sliding_layers.size()) && sliding_layers[layer] != 0;
  }
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

// Named shapes for make-model, with the real config.json fields of the model named: test fixtures "tiny-llama",
// "tiny-gpt2", "tiny-bert", "tiny-llama3" (llama3 rope scaling), "tiny-qwen3", "tiny-gemma2", "tiny-gemma3",
// "tiny-mistral" (sliding window), "tiny-yarn" (a few thousand parameters... ~100k); real shapes "smollm2-135m",
// "smollm2-360m", "tinyllama-1.1b", "llama-2-7b", "llama-3.2-1b", "llama-3.1-8b", "qwen2-0.5b", "qwen3-0.6b",
// "gemma-2-2b", "gemma-3-1b", "mistral-7b", "gpt2", "distilgpt2", "gpt2-medium", "minilm-l6" (all-MiniLM-L6-v2),
// "bge-small" (BAAI/bge-small-en-v1.5).
// Throws std::invalid_argument listing the names.
ModelConfig shape_preset(const std::string& name);
std::vector<std::string> shape_preset_names();

// Every tensor a checkpoint of this config must hold, with its shape, in Hugging Face names
// (model.layers.N.self_attn.q_proj.weight, transformer.h.N.attn.c_attn.weight, ...). Tied
// lm_head weights are not listed.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& config);

// Where a llama-family decoder parameter (q_proj, gate_proj, ... as the decoder names them) is stored in a
// checkpoint of `config`: under its own name (rows = -1), or (phi3) as rows [begin, begin + rows) of a fused matrix
// of `total` rows: self_attn.qkv_proj (q, k, v) and mlp.gate_up_proj (gate, up).
struct StoredSlice {
  std::string name;
  int64_t begin = 0, rows = -1, total = -1;
};
StoredSlice stored_slice(const ModelConfig& config, const std::string& param);

}  // namespace sinkflow
