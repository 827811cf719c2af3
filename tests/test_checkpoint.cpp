// config.json parsing, shape presets, expected tensor lists, random weights, and checkpoint folders
// (single file and sharded) with every bad-input path and its message.
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/io/checkpoint.h"
#include "models/io/config.h"
#include "models/io/safetensors.h"
#include "tests/test_util.h"

// ATen pulls in glog, whose one-argument CHECK macro would replace Catch's: include Catch last.
#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    std::random_device device;
    path = fs::temp_directory_path() / ("sinkflow-test-checkpoint-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(counter++) + "-" + std::to_string(device()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code error;
    fs::remove_all(path, error);
  }
  std::string sub(const std::string& name) const { return (path / name).string(); }
};

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.contiguous(), y = b.contiguous();
  return x.scalar_type() == y.scalar_type() && x.sizes() == y.sizes() && x.nbytes() == y.nbytes() &&
         (x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0);
}

ModelConfig parse(const json& j) { return ModelConfig::from_json_text(j.dump(), "config.json"); }

// Published config.json files, as Hugging Face serves them.
const char* kSmolLM2Config = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576,
  "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true,
  "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama", "num_attention_heads": 9,
  "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 49152
})";

const char* kQwen2Config = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
  "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
})";

const char* kGpt2Config = R"({
  "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
  "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
  "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": null,
  "summary_first_dropout": 0.1, "summary_proj_to_labels": true, "summary_type": "cls_index",
  "summary_use_proj": true, "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
  "vocab_size": 50257
})";

const char* kMiniLMConfig = R"({
  "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
  "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": false, "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02, "intermediate_size": 1536,
  "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
  "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute",
  "transformers_version": "4.8.2", "type_vocab_size": 2, "use_cache": true, "vocab_size": 30522
})";

json tiny_llama_json() { return json::parse(shape_preset("tiny-llama").to_json_text()); }

int64_t parameter_count(const ModelConfig& c) {
  int64_t total = 0;
  for (const auto& [name, shape] : expected_tensors(c)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    total += n;
  }
  return total;
}

std::vector<int64_t> shape_of(const ModelConfig& c, const std::string& name) {
  for (const auto& [n, shape] : expected_tensors(c))
    if (n == name) return shape;
  FAIL("no expected tensor " << name);
  return {};
}

}  // namespace

// ---------------------------------------------------------------- config.json

TEST_CASE("config: published config.json files parse to the presets", "[config]") {
  const ModelConfig smol = ModelConfig::from_json_text(kSmolLM2Config, "config.json");
  CHECK(smol == shape_preset("smollm2-135m"));
  CHECK(smol.family == Family::llama);
  CHECK(smol.d_head == 64);
  CHECK(smol.n_kv_head == 3);
  CHECK(smol.rope_theta == 100000.0);
  CHECK(smol.norm_eps == 1e-5);
  CHECK(smol.tie_word_embeddings);
  CHECK(smol.torch_dtype == "bfloat16");
  CHECK(smol.n_rot() == 64);

  const ModelConfig qwen = ModelConfig::from_json_text(kQwen2Config, "config.json");
  CHECK(qwen == shape_preset("qwen2-0.5b"));
  CHECK(qwen.attention_bias);
  CHECK_FALSE(qwen.attention_out_bias);
  CHECK_FALSE(qwen.mlp_bias);
  CHECK(qwen.eos_token_id == 151645);

  const ModelConfig gpt2 = ModelConfig::from_json_text(kGpt2Config, "config.json");
  CHECK(gpt2 == shape_preset("gpt2"));
  CHECK(gpt2.family == Family::gpt2);
  CHECK(gpt2.d_ff == 3072);  // n_inner absent -> 4 * n_embd
  CHECK(gpt2.n_kv_head == 12);
  CHECK(gpt2.max_positions == 1024);
  CHECK(gpt2.tie_word_embeddings);
  CHECK(gpt2.torch_dtype == "float32");

  const ModelConfig minilm = ModelConfig::from_json_text(kMiniLMConfig, "config.json");
  CHECK(minilm == shape_preset("minilm-l6"));
  CHECK(minilm.family == Family::bert);
  CHECK(minilm.norm_eps == 1e-12);
  CHECK(minilm.type_vocab_size == 2);
  CHECK(minilm.d_head == 32);
}

TEST_CASE("config: optional fields and their defaults", "[config]") {
  json j = tiny_llama_json();
  j.erase("num_key_value_heads");
  j.erase("head_dim");
  j.erase("rope_theta");
  j.erase("tie_word_embeddings");
  j["eos_token_id"] = {2, 32000};
  j["bos_token_id"] = nullptr;
  ModelConfig c = parse(j);
  CHECK(c.n_kv_head == 4);
  CHECK(c.d_head == 16);
  CHECK(c.rope_theta == 10000.0);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK(c.eos_token_id == 2);
  CHECK(c.bos_token_id == -1);

  SECTION("explicit head_dim may differ from hidden/heads") {
    j["head_dim"] = 32;
    c = parse(j);
    CHECK(c.d_head == 32);
    CHECK(shape_of(c, "model.layers.0.self_attn.q_proj.weight") == std::vector<int64_t>{128, 64});
    CHECK(shape_of(c, "model.layers.0.self_attn.o_proj.weight") == std::vector<int64_t>{64, 128});
  }
  SECTION("llama attention_bias covers q/k/v and o; mlp_bias the MLP") {
    j["attention_bias"] = true;
    j["mlp_bias"] = true;
    c = parse(j);
    CHECK(c.attention_bias);
    CHECK(c.attention_out_bias);
    CHECK(c.mlp_bias);
    CHECK(shape_of(c, "model.layers.1.self_attn.o_proj.bias") == std::vector<int64_t>{64});
    CHECK(shape_of(c, "model.layers.1.mlp.down_proj.bias") == std::vector<int64_t>{64});
    CHECK(shape_of(c, "model.layers.1.mlp.gate_proj.bias") == std::vector<int64_t>{128});
  }
  SECTION("mistral parses as the llama family without biases") {
    j["model_type"] = "mistral";
    j["sliding_window"] = 4096;
    c = parse(j);
    CHECK(c.family == Family::llama);
    CHECK(c.model_type == "mistral");
    CHECK_FALSE(c.attention_bias);
  }
  SECTION("partial_rotary_factor and newer transformers' 'dtype' field") {
    j["partial_rotary_factor"] = 0.5;
    j.erase("torch_dtype");
    j["dtype"] = "float16";
    c = parse(j);
    CHECK(c.n_rot() == 8);
    CHECK(c.torch_dtype == "float16");
  }
  SECTION("rope_scaling null is plain RoPE") {
    j["rope_scaling"] = nullptr;
    CHECK(parse(j).rope_theta == 10000.0);
  }
}

TEST_CASE("config: unknown model_type", "[config]") {
  json j = tiny_llama_json();
  j["model_type"] = "falcon";
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("config.json: field 'model_type' is \"falcon\", expected one of "
                                                "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, gpt2, bert"));
  REQUIRE_THROWS_AS(parse(j), std::invalid_argument);
  j.erase("model_type");
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("config.json: field 'model_type' is missing"));
}

TEST_CASE("config: malformed config.json", "[config]") {
  REQUIRE_THROWS_WITH(ModelConfig::from_json_text("{\"model_type\": \"llama\",, }", "config.json"),
                      Catch::Contains("config.json: malformed JSON at byte 24") && Catch::Contains("parse error"));
  REQUIRE_THROWS_WITH(ModelConfig::from_json_text("[1, 2]", "config.json"),
                      Catch::Contains("config.json: expected a JSON object, found [1,2]"));
  REQUIRE_THROWS_WITH(ModelConfig::from_json_text("", "my/config.json"), Catch::Contains("my/config.json: malformed JSON"));
}

TEST_CASE("config: missing field", "[config]") {
  json j = tiny_llama_json();
  j.erase("intermediate_size");
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("config.json: field 'intermediate_size' is missing (expected a "
                                                "positive integer)"));
  json g = json::parse(kGpt2Config);
  g.erase("n_embd");
  REQUIRE_THROWS_WITH(parse(g), Catch::Contains("field 'n_embd' is missing"));
  json b = json::parse(kMiniLMConfig);
  b.erase("max_position_embeddings");
  REQUIRE_THROWS_WITH(parse(b), Catch::Contains("field 'max_position_embeddings' is missing"));
}

TEST_CASE("config: wrong field type", "[config]") {
  json j = tiny_llama_json();
  j["hidden_size"] = "abc";
  REQUIRE_THROWS_WITH(parse(j),
                      Catch::Contains("config.json: field 'hidden_size' must be a positive integer, found \"abc\""));
  j = tiny_llama_json();
  j["num_hidden_layers"] = -2;
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'num_hidden_layers' must be a positive integer, found -2"));
  j = tiny_llama_json();
  j["vocab_size"] = 512.5;
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'vocab_size' must be a positive integer, found 512.5"));
  j = tiny_llama_json();
  j["rms_norm_eps"] = "small";
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'rms_norm_eps' must be a positive number, found \"small\""));
  j = tiny_llama_json();
  j["tie_word_embeddings"] = 1;
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'tie_word_embeddings' must be true or false, found 1"));
  j = tiny_llama_json();
  j["eos_token_id"] = "</s>";
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'eos_token_id' must be a token id"));
  j = tiny_llama_json();
  j["torch_dtype"] = "float64";
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'torch_dtype' is \"float64\", expected one of float32, "
                                                "float16, bfloat16"));
}

TEST_CASE("config: inconsistent sizes", "[config]") {
  json j = tiny_llama_json();
  j.erase("head_dim");
  j["num_attention_heads"] = 5;
  j["num_key_value_heads"] = 5;
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'hidden_size' (64) must be divisible by field "
                                                "'num_attention_heads' (5)"));
  j = tiny_llama_json();
  j["num_key_value_heads"] = 3;
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'num_attention_heads' (4) must be divisible by field "
                                                "'num_key_value_heads' (3)"));
  j = tiny_llama_json();
  j["partial_rotary_factor"] = 0.25;
  j["head_dim"] = 12;  // 12 * 0.25 = 3 rotated dims: odd
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("must give an even number of rotated dims, found 3"));
  j = tiny_llama_json();
  j["partial_rotary_factor"] = 1.5;
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'partial_rotary_factor' must be in (0, 1], found 1.5"));
  json g = json::parse(kGpt2Config);
  g["n_head"] = 7;
  REQUIRE_THROWS_WITH(parse(g), Catch::Contains("field 'n_embd' (768) must be divisible by field 'n_head' (7)"));
}

TEST_CASE("config: unsupported features are refused by name", "[config]") {
  json j = tiny_llama_json();
  j["rope_scaling"] = {{"type", "mrope"}, {"factor", 2.0}};
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("config.json: field 'rope_scaling': field 'type' is \"mrope\", "
                                                "expected one of default, linear, dynamic, llama3, yarn, longrope, su"));
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("config.json: field 'rope_scaling': field "
                                                "'original_max_position_embeddings' is missing"));
  j["rope_scaling"] = {{"rope_type", "linear"}};
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'rope_scaling': field 'factor' is missing"));
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 4}};
  CHECK(parse(j).rope_scaling.factor == 4.0);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 1e308}};
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'rope_scaling.factor' must be in (0, 1024]"));
  j["rope_scaling"] = {{"rope_type", "default"}};
  CHECK(parse(j).rope_scaling.type.empty());
  j = tiny_llama_json();
  j["model_type"] = "gemma3";
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("the multimodal Gemma3ForConditionalGeneration"));
  j = tiny_llama_json();
  j["model_type"] = "mistral";
  j["sliding_window"] = 16;
  j["layer_types"] = {"sliding_attention"};
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'layer_types' must be a list of 2 entries"));
  j["layer_types"] = {"sliding_attention", "chunked_attention"};
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'layer_types' holds \"chunked_attention\""));
  j.erase("layer_types");
  CHECK(parse(j).sliding_layers == std::vector<uint8_t>{1, 1});
  j["model_type"] = "qwen2";
  CHECK(parse(j).sliding_window == 0);  // qwen2: off unless use_sliding_window
  j = tiny_llama_json();
  j["hidden_act"] = "gelu";
  REQUIRE_THROWS_WITH(parse(j), Catch::Contains("field 'hidden_act' is \"gelu\", expected one of silu"));
  json g = json::parse(kGpt2Config);
  g["activation_function"] = "relu";
  REQUIRE_THROWS_WITH(parse(g), Catch::Contains("field 'activation_function' is \"relu\", expected one of gelu_new, "
                                                "gelu_pytorch_tanh"));
  g = json::parse(kGpt2Config);
  g["n_inner"] = nullptr;
  CHECK(parse(g).d_ff == 3072);
  g["n_inner"] = 1000;
  CHECK(parse(g).d_ff == 1000);
}

TEST_CASE("config: every preset survives to_json_text -> from_json_text", "[config]") {
  for (const auto& name : shape_preset_names()) {
    INFO(name);
    const ModelConfig c = shape_preset(name);
    const std::string text = c.to_json_text();
    const ModelConfig back = ModelConfig::from_json_text(text, name + "/config.json");
    CHECK(back == c);
    const json j = json::parse(text);
    CHECK(j.at("model_type") == c.model_type);
    REQUIRE(j.at("architectures").size() == 1);
  }
  CHECK(json::parse(shape_preset("qwen2-0.5b").to_json_text()).at("architectures")[0] == "Qwen2ForCausalLM");
  CHECK(json::parse(shape_preset("gpt2").to_json_text()).at("architectures")[0] == "GPT2LMHeadModel");
  CHECK(json::parse(shape_preset("minilm-l6").to_json_text()).at("architectures")[0] == "BertModel");
  const json llama = json::parse(shape_preset("tinyllama-1.1b").to_json_text());
  CHECK(llama.at("architectures")[0] == "LlamaForCausalLM");
  CHECK(llama.at("num_key_value_heads") == 4);
  CHECK(llama.at("rms_norm_eps") == 1e-5);
  ModelConfig mistral = shape_preset("tiny-llama");
  mistral.model_type = "mistral";
  CHECK(json::parse(mistral.to_json_text()).at("architectures")[0] == "MistralForCausalLM");
  CHECK(ModelConfig::from_json_text(mistral.to_json_text(), "config.json") == mistral);
  ModelConfig biased = shape_preset("tiny-llama");
  biased.attention_bias = biased.attention_out_bias = biased.mlp_bias = true;
  CHECK(ModelConfig::from_json_text(biased.to_json_text(), "config.json") == biased);
}

TEST_CASE("config: preset names and families", "[config]") {
  REQUIRE_THROWS_WITH(shape_preset("gpt5"), Catch::Contains("shape preset 'gpt5' is not known, expected one of "
                                                            "tiny-llama, tiny-gpt2, tiny-bert"));
  CHECK(parse_family("gpt2") == Family::gpt2);
  CHECK(std::string(family_name(Family::bert)) == "bert");
  REQUIRE_THROWS_WITH(parse_family("t5"), Catch::Contains("expected one of llama, gpt2, bert"));
  const ModelConfig tiny = shape_preset("tiny-llama");
  CHECK(tiny.vocab_size == 512);
  CHECK(tiny.d_model == 64);
  CHECK(tiny.n_kv_head == 2);
  CHECK(tiny.d_ff == 128);
  CHECK(tiny.max_positions == 2048);
  CHECK(tiny.tie_word_embeddings);
  CHECK(shape_preset("distilgpt2").n_layer == 6);
  CHECK(shape_preset("gpt2-medium").n_head == 16);
}

TEST_CASE("config: validate() names the field", "[config]") {
  ModelConfig c = shape_preset("tiny-gpt2");
  c.tie_word_embeddings = false;
  REQUIRE_THROWS_WITH(c.validate("x.yaml"), Catch::Contains("x.yaml: field 'tie_word_embeddings' is false"));
  c = shape_preset("tiny-gpt2");
  c.max_positions = 0;
  REQUIRE_THROWS_WITH(c.validate("x"), Catch::Contains("field 'n_positions' must be a positive integer, found 0"));
  c = shape_preset("qwen2-0.5b");
  c.attention_bias = false;
  REQUIRE_THROWS_WITH(c.validate("x"), Catch::Contains("qwen2 has q/k/v biases only"));
  c = shape_preset("tiny-bert");
  c.family = Family::llama;
  REQUIRE_THROWS_WITH(c.validate("x"), Catch::Contains("belongs to family bert"));
}

// ---------------------------------------------------------------- expected tensors

TEST_CASE("expected_tensors: counts and names of the tiny presets", "[config]") {
  // llama: embed + 2 x (2 norms + q,k,v,o + gate,up,down) + final norm; tied, so no lm_head.
  const auto llama = expected_tensors(shape_preset("tiny-llama"));
  CHECK(llama.size() == 1 + 2 * 9 + 1);
  CHECK(llama.front().first == "model.embed_tokens.weight");
  CHECK(llama.back().first == "model.norm.weight");
  CHECK(shape_of(shape_preset("tiny-llama"), "model.layers.1.self_attn.k_proj.weight") ==
        std::vector<int64_t>{32, 64});
  CHECK(shape_of(shape_preset("tiny-llama"), "model.layers.0.mlp.down_proj.weight") == std::vector<int64_t>{64, 128});
  ModelConfig untied = shape_preset("tiny-llama");
  untied.tie_word_embeddings = false;
  CHECK(expected_tensors(untied).size() == 21);
  CHECK(expected_tensors(untied).back().first == "lm_head.weight");
  // qwen2 adds q/k/v biases: 3 per layer.
  CHECK(expected_tensors(shape_preset("qwen2-0.5b")).size() == 1 + 24 * 12 + 1);

  // gpt2: wte, wpe + 2 x 12 + ln_f weight and bias.
  const ModelConfig g = shape_preset("tiny-gpt2");
  CHECK(expected_tensors(g).size() == 2 + 2 * 12 + 2);
  CHECK(shape_of(g, "transformer.h.1.attn.c_attn.weight") == std::vector<int64_t>{64, 192});
  CHECK(shape_of(g, "transformer.h.0.mlp.c_fc.weight") == std::vector<int64_t>{64, 256});
  CHECK(shape_of(g, "transformer.h.0.mlp.c_proj.weight") == std::vector<int64_t>{256, 64});
  CHECK(shape_of(g, "transformer.wpe.weight") == std::vector<int64_t>{512, 64});

  // bert: 5 embedding tensors + 2 x 16.
  const ModelConfig b = shape_preset("tiny-bert");
  CHECK(expected_tensors(b).size() == 5 + 2 * 16);
  CHECK(shape_of(b, "encoder.layer.1.attention.self.value.bias") == std::vector<int64_t>{64});
  CHECK(shape_of(b, "encoder.layer.0.intermediate.dense.weight") == std::vector<int64_t>{128, 64});
  CHECK(shape_of(b, "embeddings.token_type_embeddings.weight") == std::vector<int64_t>{2, 64});
}

TEST_CASE("expected_tensors: parameter counts match the published models", "[config]") {
  CHECK(parameter_count(shape_preset("smollm2-135m")) == 134515008);
  CHECK(parameter_count(shape_preset("smollm2-360m")) == 361821120);
  CHECK(parameter_count(shape_preset("tinyllama-1.1b")) == 1100048384);
  CHECK(parameter_count(shape_preset("llama-2-7b")) == 6738415616);
  CHECK(parameter_count(shape_preset("qwen2-0.5b")) == 494032768);
  CHECK(parameter_count(shape_preset("gpt2")) == 124439808);
  CHECK(parameter_count(shape_preset("distilgpt2")) == 81912576);
  CHECK(parameter_count(shape_preset("gpt2-medium")) == 354823168);
  CHECK(parameter_count(shape_preset("minilm-l6")) == 22713216 - 147840);  // all-MiniLM-L6-v2 minus its pooler
}

// ---------------------------------------------------------------- random weights

TEST_CASE("random_tensors: deterministic per seed, different across seeds", "[checkpoint]") {
  const ModelConfig c = shape_preset("tiny-llama");
  const auto a = random_tensors(c, 7);
  const auto b = random_tensors(c, 7);
  const auto other = random_tensors(c, 8);
  const auto expected = expected_tensors(c);
  REQUIRE(a.size() == expected.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    CHECK(a[i].first == expected[i].first);
    CHECK(a[i].second.sizes().vec() == expected[i].second);
    CHECK(a[i].second.scalar_type() == at::kFloat);
    CHECK(same_bytes(a[i].second, b[i].second));
    CHECK_FALSE(at::equal(a[i].second, other[i].second));
  }
  const at::Tensor embed = a[0].second;
  CHECK(std::abs(embed.std().item<double>() - 0.02) < 0.002);
  CHECK(std::abs(embed.mean().item<double>()) < 0.002);
  const at::Tensor norm = a.back().second;  // model.norm.weight
  CHECK(std::abs(norm.mean().item<double>() - 1.0) < 0.02);

  const auto half = random_tensors(c, 7, at::kBFloat16);
  CHECK(half[3].second.scalar_type() == at::kBFloat16);
  CHECK(at::equal(half[3].second, a[3].second.to(at::kBFloat16)));

  const auto gpt2 = random_tensors(shape_preset("tiny-gpt2"), 1);
  for (const auto& [name, t] : gpt2)
    if (name.size() > 5 && name.substr(name.size() - 5) == ".bias") {
      INFO(name);
      CHECK(t.abs().sum().item<double>() > 0.0);  // biases are exercised, not zero
    }
}

// ---------------------------------------------------------------- checkpoint folders

TEST_CASE("checkpoint: save -> load round trip, single file", "[checkpoint]") {
  TempDir dir;
  const ModelConfig c = shape_preset("tiny-llama");
  for (at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    INFO(c10::toString(dtype));
    const std::string folder = dir.sub(std::string("m-") + c10::toString(dtype));
    const auto tensors = random_tensors(c, 3, dtype);
    save_checkpoint(folder, c, tensors);
    CHECK(fs::exists(folder + "/config.json"));
    CHECK(fs::exists(folder + "/model.safetensors"));
    CHECK_FALSE(fs::exists(folder + "/model.safetensors.index.json"));

    const ModelConfig loaded = load_model_config(folder);
    ModelConfig expected = c;
    expected.torch_dtype = dtype == at::kFloat ? "float32" : dtype == at::kHalf ? "float16" : "bfloat16";
    CHECK(loaded == expected);

    CheckpointTensors ckpt(folder);
    CHECK_FALSE(ckpt.sharded());
    CHECK(ckpt.source() == folder + "/model.safetensors");
    CHECK(ckpt.names().size() == tensors.size());
    check_checkpoint(ckpt, loaded);
    CHECK(SafetensorsFile(folder + "/model.safetensors").metadata().at("format") == "pt");
    for (const auto& [name, t] : tensors) {
      INFO(name);
      CHECK(same_bytes(ckpt.load(name, t.sizes().vec(), dtype, at::kCPU), t));
    }
  }
}

TEST_CASE("checkpoint: load converts dtype and device", "[checkpoint]") {
  TempDir dir;
  const ModelConfig c = shape_preset("tiny-gpt2");
  const auto tensors = random_tensors(c, 5);
  save_checkpoint(dir.sub("g"), c, tensors);
  CheckpointTensors ckpt(dir.sub("g"));
  const at::Tensor w = ckpt.load("transformer.wte.weight", {512, 64}, at::kBFloat16, at::kCPU);
  CHECK(w.scalar_type() == at::kBFloat16);
  CHECK(at::equal(w, tensors[0].second.to(at::kBFloat16)));
  const at::Tensor f = ckpt.load("transformer.wte.weight", {512, 64}, at::kFloat, at::Device("cpu"));
  CHECK(f.scalar_type() == at::kFloat);
  CHECK(at::equal(f, tensors[0].second));
  CHECK(ckpt.dtype("transformer.wte.weight") == "F32");
  CHECK(ckpt.shape("transformer.wpe.weight") == std::vector<int64_t>{512, 64});
}

TEST_CASE("checkpoint: a sharded checkpoint loads the same tensors as a single file", "[checkpoint]") {
  TempDir dir;
  const ModelConfig c = shape_preset("tiny-llama");
  const auto tensors = random_tensors(c, 11);
  int64_t total = 0;
  for (const auto& [name, t] : tensors) total += t.numel() * 4;
  const std::string single = dir.sub("single"), sharded = dir.sub("sharded");
  save_checkpoint(single, c, tensors);
  save_checkpoint(sharded, c, tensors, 100 * 1024);  // embed 128 KiB alone, then the rest

  CHECK_FALSE(fs::exists(sharded + "/model.safetensors"));
  const json index = json::parse(test::read_file(sharded + "/model.safetensors.index.json"));
  CHECK(index.at("metadata").at("total_size") == total);
  CHECK(index.at("weight_map").size() == tensors.size());
  // Greedy in order with a 102400-byte limit: embed_tokens (131072 bytes) alone, then shards of 82432,
  // 98560, 82176 and 33024 bytes (a layer is 147968 bytes; gate/up/down 32768 each).
  CHECK(total == 427264);
  CHECK(index.at("weight_map").at("model.embed_tokens.weight") == "model-00001-of-00005.safetensors");
  CHECK(index.at("weight_map").at("model.layers.0.mlp.gate_proj.weight") == "model-00002-of-00005.safetensors");
  CHECK(index.at("weight_map").at("model.layers.0.mlp.up_proj.weight") == "model-00003-of-00005.safetensors");
  CHECK(index.at("weight_map").at("model.layers.1.self_attn.o_proj.weight") == "model-00004-of-00005.safetensors");
  CHECK(index.at("weight_map").at("model.norm.weight") == "model-00005-of-00005.safetensors");
  for (int k = 1; k <= 5; ++k) CHECK(fs::exists(sharded + "/model-0000" + std::to_string(k) + "-of-00005.safetensors"));
  CHECK(fs::file_size(sharded + "/model-00003-of-00005.safetensors") > 98560);

  CheckpointTensors a(single), b(sharded);
  CHECK(b.sharded());
  CHECK(b.source() == sharded + "/model.safetensors.index.json");
  CHECK(a.names() == b.names());
  check_checkpoint(b, load_model_config(sharded));
  for (const auto& [name, shape] : expected_tensors(c)) {
    INFO(name);
    CHECK(same_bytes(a.load(name, shape, at::kFloat, at::kCPU), b.load(name, shape, at::kFloat, at::kCPU)));
  }

  // Saving again as one file removes the shards and the index.
  save_checkpoint(sharded, c, tensors);
  CHECK(fs::exists(sharded + "/model.safetensors"));
  CHECK_FALSE(fs::exists(sharded + "/model.safetensors.index.json"));
  CHECK_FALSE(fs::exists(sharded + "/model-00001-of-00005.safetensors"));
  // A limit above the total writes one file.
  save_checkpoint(sharded, c, tensors, total);
  CHECK(fs::exists(sharded + "/model.safetensors"));
  CHECK_FALSE(fs::exists(sharded + "/model.safetensors.index.json"));
}

TEST_CASE("checkpoint: gpt2 names without 'transformer.' and bert names with 'bert.' load", "[checkpoint]") {
  TempDir dir;
  const ModelConfig g = shape_preset("tiny-gpt2");
  const auto tensors = random_tensors(g, 2);
  std::vector<std::pair<std::string, at::Tensor>> stripped;
  for (const auto& [name, t] : tensors) stripped.emplace_back(name.substr(std::string("transformer.").size()), t);
  fs::create_directories(dir.sub("gpt2"));
  test::write_file(dir.sub("gpt2/config.json"), g.to_json_text());
  save_safetensors(dir.sub("gpt2/model.safetensors"), stripped);
  CheckpointTensors ckpt(dir.sub("gpt2"));
  CHECK(ckpt.contains("transformer.h.0.attn.c_attn.weight"));
  CHECK(ckpt.resolve("transformer.h.0.attn.c_attn.weight") == "h.0.attn.c_attn.weight");
  check_checkpoint(ckpt, load_model_config(dir.sub("gpt2")));
  CHECK(same_bytes(ckpt.load("transformer.h.0.attn.c_attn.weight", {64, 192}, at::kFloat, at::kCPU),
                   tensors[4].second));
  CHECK(tensors[4].first == "transformer.h.0.attn.c_attn.weight");

  const ModelConfig b = shape_preset("tiny-bert");
  const auto bert = random_tensors(b, 2);
  std::vector<std::pair<std::string, at::Tensor>> prefixed;
  for (const auto& [name, t] : bert) prefixed.emplace_back("bert." + name, t);
  fs::create_directories(dir.sub("bert"));
  test::write_file(dir.sub("bert/config.json"), b.to_json_text());
  save_safetensors(dir.sub("bert/model.safetensors"), prefixed);
  CheckpointTensors bert_ckpt(dir.sub("bert"));
  check_checkpoint(bert_ckpt, b);
  CHECK(same_bytes(bert_ckpt.load("embeddings.word_embeddings.weight", {1024, 64}, at::kFloat, at::kCPU),
                   bert[0].second));
}

TEST_CASE("checkpoint: missing model.safetensors", "[checkpoint]") {
  TempDir dir;
  test::write_file(dir.sub("config.json"), shape_preset("tiny-llama").to_json_text());
  REQUIRE_THROWS_WITH(CheckpointTensors(dir.path.string()),
                      Catch::Contains(dir.path.string() + ": the checkpoint folder has neither model.safetensors "
                                                          "nor model.safetensors.index.json"));
  test::write_file(dir.sub("pytorch_model.bin"), "x");
  REQUIRE_THROWS_WITH(CheckpointTensors(dir.path.string()), Catch::Contains("pytorch_model.bin is not supported"));
  REQUIRE_THROWS_WITH(CheckpointTensors(dir.sub("absent")),
                      Catch::Contains("absent: the checkpoint folder does not exist"));
  REQUIRE_THROWS_AS(CheckpointTensors(dir.sub("absent")), std::invalid_argument);
}

TEST_CASE("checkpoint: missing config.json", "[checkpoint]") {
  TempDir dir;
  REQUIRE_THROWS_WITH(load_model_config(dir.path.string()),
                      Catch::Contains(dir.path.string() + ": config.json is missing"));
  test::write_file(dir.sub("config.json"), "{\"model_type\": \"gpt2\"}");
  REQUIRE_THROWS_WITH(load_model_config(dir.path.string()),
                      Catch::Contains(dir.sub("config.json") + ": field 'vocab_size' is missing"));
}

TEST_CASE("checkpoint: tensor name missing", "[checkpoint]") {
  TempDir dir;
  const ModelConfig c = shape_preset("tiny-llama");
  auto tensors = random_tensors(c, 1);
  tensors.pop_back();  // model.norm.weight
  fs::create_directories(dir.sub("m"));
  test::write_file(dir.sub("m/config.json"), c.to_json_text());
  save_safetensors(dir.sub("m/model.safetensors"), tensors);
  CheckpointTensors ckpt(dir.sub("m"));
  REQUIRE_THROWS_WITH(check_checkpoint(ckpt, c),
                      Catch::Contains(dir.sub("m/model.safetensors") +
                                      ": tensor 'model.norm.weight' is missing (expected shape [64] from config.json)"));
  REQUIRE_THROWS_WITH(ckpt.load("model.norm.weight", {64}, at::kFloat, at::kCPU),
                      Catch::Contains("model.safetensors: tensor 'model.norm.weight' is missing (expected shape [64] "
                                      "from config.json)"));
  CHECK_FALSE(ckpt.contains("model.norm.weight"));
  // save_checkpoint refuses to write an incomplete checkpoint.
  REQUIRE_THROWS_WITH(save_checkpoint(dir.sub("n"), c, tensors),
                      Catch::Contains("tensor 'model.norm.weight' is missing"));
}

TEST_CASE("checkpoint: tensor shape not matching config.json", "[checkpoint]") {
  TempDir dir;
  const ModelConfig c = shape_preset("tiny-llama");
  save_checkpoint(dir.sub("m"), c, random_tensors(c, 1));
  // config.json now claims another intermediate size than the weights have.
  json j = json::parse(test::read_file(dir.sub("m/config.json")));
  j["intermediate_size"] = 96;
  test::write_file(dir.sub("m/config.json"), j.dump());
  const ModelConfig wrong = load_model_config(dir.sub("m"));
  CheckpointTensors ckpt(dir.sub("m"));
  REQUIRE_THROWS_WITH(check_checkpoint(ckpt, wrong),
                      Catch::Contains("model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape "
                                      "[128, 64], expected [96, 64] (from config.json)"));
  REQUIRE_THROWS_WITH(ckpt.load("model.layers.0.self_attn.q_proj.weight", {64, 32}, at::kFloat, at::kCPU),
                      Catch::Contains(dir.sub("m/model.safetensors") +
                                      ": tensor 'model.layers.0.self_attn.q_proj.weight' has shape [64, 64], "
                                      "expected [64, 32] (from config.json)"));
  ModelConfig other = c;
  other.d_ff = 96;
  REQUIRE_THROWS_WITH(save_checkpoint(dir.sub("n"), other, random_tensors(c, 1)),
                      Catch::Contains("has shape [128, 64], expected [96, 64]"));
}

TEST_CASE("checkpoint: a non-floating weight is refused", "[checkpoint]") {
  TempDir dir;
  const ModelConfig c = shape_preset("tiny-llama");
  auto tensors = random_tensors(c, 1);
  tensors.back().second = at::ones({64}, at::kLong);
  fs::create_directories(dir.sub("m"));
  save_safetensors(dir.sub("m/model.safetensors"), tensors);
  REQUIRE_THROWS_WITH(check_checkpoint(CheckpointTensors(dir.sub("m")), c),
                      Catch::Contains("tensor 'model.norm.weight' has dtype I64, expected a floating dtype"));
}

TEST_CASE("checkpoint: inconsistent shard index", "[checkpoint]") {
  TempDir dir;
  const ModelConfig c = shape_preset("tiny-llama");
  const std::string m = dir.sub("m");
  save_checkpoint(m, c, random_tensors(c, 1), 100 * 1024);
  const std::string index_path = m + "/model.safetensors.index.json";
  const json good = json::parse(test::read_file(index_path));

  json index = good;
  index["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors";
  test::write_file(index_path, index.dump());
  REQUIRE_THROWS_WITH(CheckpointTensors(m), Catch::Contains(index_path + ": shard 'model-00009-of-00009.safetensors' "
                                                                         "(holding tensor 'model.norm.weight') does "
                                                                         "not exist"));
  index = good;
  index["weight_map"]["model.norm.weight"] = "model-00001-of-00005.safetensors";
  test::write_file(index_path, index.dump());
  REQUIRE_THROWS_WITH(CheckpointTensors(m), Catch::Contains("tensor 'model.norm.weight' is assigned to shard "
                                                            "'model-00001-of-00005.safetensors', but") &&
                                                Catch::Contains("does not hold it"));
  index = good;
  index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors";
  test::write_file(index_path, index.dump());
  REQUIRE_THROWS_WITH(CheckpointTensors(m), Catch::Contains("expected a plain file name"));
  test::write_file(index_path, "{\"weight_map\": 3}");
  REQUIRE_THROWS_WITH(CheckpointTensors(m), Catch::Contains("field 'weight_map' must be an object"));
  test::write_file(index_path, "{\"weight_map\": ");
  REQUIRE_THROWS_WITH(CheckpointTensors(m), Catch::Contains(index_path + ": malformed JSON"));
  // A shard that is itself corrupt is named.
  test::write_file(index_path, good.dump());
  test::write_file(m + "/model-00002-of-00005.safetensors", "abc");
  REQUIRE_THROWS_WITH(CheckpointTensors(m), Catch::Contains("model-00002-of-00005.safetensors: file is 3 bytes"));
}

TEST_CASE("config: real config.json files parse to the make-model preset of the same model, field for field",
          "[config]") {
  // tests/data/configs/SOURCES.md names the public repository each file was copied from.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"meta-llama__Llama-3.2-1B", "llama-3.2-1b"},
      {"meta-llama__Llama-3.1-8B", "llama-3.1-8b"},
      {"Qwen__Qwen3-0.6B", "qwen3-0.6b"},
      {"mistralai__Mistral-7B-v0.1", "mistral-7b"},
      {"HuggingFaceTB__SmolLM2-135M", "smollm2-135m"}};  // transformers 5's rope_parameters and dtype
  for (const auto& [folder, preset] : cases) {
    INFO(folder << " vs preset " << preset);
    const ModelConfig real =
        ModelConfig::from_json_file(std::string(SINKFLOW_SOURCE_DIR) + "/tests/data/configs/" + folder + "/config.json");
    CHECK(real == shape_preset(preset));
  }
  const ModelConfig llama32 = shape_preset("llama-3.2-1b");
  CHECK(llama32.rope_scaling.type == "llama3");
  CHECK(llama32.rope_scaling.factor == 32.0);
  CHECK(llama32.rope_scaling.original_max_positions == 8192);
  const ModelConfig qwen3 = shape_preset("qwen3-0.6b");
  CHECK(qwen3.qk_norm);
  CHECK(qwen3.d_head == 128);
  CHECK(qwen3.sliding_window == 0);  // use_sliding_window: false
}

namespace {
ModelConfig fixture_config(const std::string& folder) {
  return ModelConfig::from_json_file(std::string(SINKFLOW_SOURCE_DIR) + "/tests/data/configs/" + folder +
                                     "/config.json");
}
}  // namespace

TEST_CASE("config: gemma-2-2b-it's config.json (a re-saved copy) is the gemma-2-2b shape, local layers even",
          "[config]") {
  // tests/data/configs/SOURCES.md: a fine-tune of google/gemma-2-2b-it saved by save_pretrained (torch_dtype,
  // transformers_version and _name_or_path are the saver's), the architecture fields as Google published them.
  const ModelConfig real = fixture_config("google__gemma-2-2b-it");
  ModelConfig expected = shape_preset("gemma-2-2b");
  expected.torch_dtype = "bfloat16";  // the copy's, not google/gemma-2-2b's float32
  CHECK(real == expected);            // eos_token_id [1, 107]: the first id is config.json's (the list: generation)
  // The fields the preset shares with it, spelled out: head_dim 256 = query_pre_attn_scalar, soft-caps 50 and 30,
  // a 4,096-key window, one RoPE base for both kinds of layer.
  CHECK((real.d_head == 256 && real.query_pre_attn_scalar == 256.0));
  CHECK((real.attn_softcap == 50.0 && real.final_softcap == 30.0));
  CHECK((real.sliding_window == 4096 && real.rope_theta == 10000.0 && real.rope_local_theta == 0.0));
  CHECK_FALSE(real.qk_norm);
  REQUIRE(real.sliding_layers.size() == 26);
  for (int64_t i = 0; i < 26; ++i) {
    INFO("layer " << i);
    CHECK(real.is_sliding(i) == (i % 2 == 0));
  }
  CHECK(real.eos_token_id == 1);
  CHECK(real.bos_token_id == 2);
}

TEST_CASE("config: Mistral-7B-Instruct-v0.2's sliding_window null means full attention on every layer, rope_theta 1e6",
          "[config]") {
  // Re-saved copy (SOURCES.md): torch_dtype float32 and _name_or_path are the saver's.
  const ModelConfig real = fixture_config("mistralai__Mistral-7B-Instruct-v0.2");
  CHECK(real.model_type == "mistral");
  CHECK(real.sliding_window == 0);
  for (int64_t i = 0; i < real.n_layer; ++i) CHECK_FALSE(real.is_sliding(i));
  CHECK(real.rope_theta == 1000000.0);
  // Everything else is Mistral-7B-v0.1's shape (the make-model preset), which slides every layer over 4,096 keys.
  ModelConfig expected = shape_preset("mistral-7b");
  CHECK(expected.sliding_window == 4096);
  CHECK(expected.is_sliding(0));
  CHECK(expected.is_sliding(31));
  expected.sliding_window = 0;
  expected.sliding_layers = real.sliding_layers;
  expected.rope_theta = 1000000.0;
  expected.torch_dtype = "float32";
  CHECK(real == expected);
  CHECK_FALSE(real.attention_bias);
  CHECK_FALSE(real.mlp_bias);
}

TEST_CASE("config: Mistral-7B-v0.1's config.json slides every one of its 32 layers over 4,096 keys", "[config]") {
  // Mistral's own file (SOURCES.md: a mirror of the Hugging Face repository's history, revision 26bca36b).
  const ModelConfig real = fixture_config("mistralai__Mistral-7B-v0.1");
  CHECK(real.model_type == "mistral");
  CHECK(real.sliding_window == 4096);
  REQUIRE(real.sliding_layers.size() == 32);
  for (int64_t i = 0; i < real.n_layer; ++i) CHECK(real.is_sliding(i));
  CHECK(real.rope_theta == 10000.0);
  CHECK(real.max_positions == 32768);
  CHECK(real.vocab_size == 32000);
  CHECK(real.n_kv_head == 8);
  CHECK_FALSE(real.tie_word_embeddings);
  CHECK((real.bos_token_id == 1 && real.eos_token_id == 2));
  // The Instruct-v0.2 file differs from it only where v0.2 changed the model (sliding_window null, rope_theta 1e6)
  // and where its copy was re-saved (torch_dtype).
  ModelConfig v02 = fixture_config("mistralai__Mistral-7B-Instruct-v0.2");
  v02.sliding_window = real.sliding_window;
  v02.sliding_layers = real.sliding_layers;
  v02.rope_theta = real.rope_theta;
  v02.torch_dtype = real.torch_dtype;
  CHECK(v02 == real);
}

TEST_CASE("config: SmolLM2-135M/360M-Instruct's config.json files are the base shapes with bos 1 and eos 2",
          "[config]") {
  // HuggingFaceTB's files (SOURCES.md; the 360M one is the sha256 an independent manifest pins), which carry
  // "transformers.js_config" and pad_token_id beside the base models' fields.
  for (const auto& [folder, preset] : std::vector<std::pair<std::string, std::string>>{
           {"HuggingFaceTB__SmolLM2-135M-Instruct", "smollm2-135m"},
           {"HuggingFaceTB__SmolLM2-360M-Instruct", "smollm2-360m"}}) {
    INFO(folder << " vs preset " << preset);
    const ModelConfig real = fixture_config(folder);
    ModelConfig expected = shape_preset(preset);
    CHECK(expected.bos_token_id == 0);  // the base models: <|endoftext|>
    expected.bos_token_id = 1;          // <|im_start|>
    expected.eos_token_id = 2;          // <|im_end|>
    CHECK(real == expected);
  }
  const ModelConfig m360 = fixture_config("HuggingFaceTB__SmolLM2-360M-Instruct");
  CHECK((m360.d_model == 960 && m360.n_layer == 32 && m360.n_head == 15 && m360.n_kv_head == 5 && m360.d_head == 64));
  CHECK(m360.rope_theta == 100000.0);
  CHECK(m360.tie_word_embeddings);
}

TEST_CASE("config: gemma-3-270m-it's config.json (gemma3_text): layer_types, local RoPE base, 512-key window",
          "[config]") {
  // Google's file as the Hugging Face repository holds it (SOURCES.md), written by transformers 4.55.0.dev0:
  // "layer_types" lists the 18 layers, "_sliding_window_pattern" (with an underscore) is informative only.
  const ModelConfig real = fixture_config("google__gemma-3-270m-it");
  // The gemma-3-1b shape scaled down: 640 wide, 18 layers, a 2,048-wide MLP; all else as Gemma-3-1B.
  ModelConfig expected = shape_preset("gemma-3-1b");
  expected.d_model = 640;
  expected.n_layer = 18;
  expected.d_ff = 2048;
  expected.sliding_layers.assign(18, 0);
  for (int64_t i = 0; i < 18; ++i) expected.sliding_layers[i] = (i + 1) % 6 != 0;  // layers 5, 11, 17 global
  CHECK(real == expected);
  CHECK(real.model_type == "gemma3_text");
  CHECK((real.n_head == 4 && real.n_kv_head == 1 && real.d_head == 256));
  CHECK(real.query_pre_attn_scalar == 256.0);
  CHECK((real.rope_theta == 1000000.0 && real.rope_local_theta == 10000.0));
  CHECK(real.sliding_window == 512);
  CHECK(real.qk_norm);
  CHECK((real.attn_softcap == 0.0 && real.final_softcap == 0.0));  // null in the file
  CHECK(real.rope_scaling.type.empty());
  CHECK(real.tie_word_embeddings);  // absent: Gemma's default
  CHECK((real.bos_token_id == 2 && real.eos_token_id == 1));
  CHECK_FALSE(real.is_sliding(5));
  CHECK(real.is_sliding(16));
  CHECK_FALSE(real.is_sliding(17));
  // The older spelling of the same layout (sliding_window_pattern 6, no layer_types) gives the same layers.
  json j = json::parse(test::read_file(std::string(SINKFLOW_SOURCE_DIR) +
                                       "/tests/data/configs/google__gemma-3-270m-it/config.json"));
  j.erase("layer_types");
  j["sliding_window_pattern"] = 6;
  CHECK(ModelConfig::from_json_text(j.dump(), "gemma-3-270m-it/config.json").sliding_layers == real.sliding_layers);
}

TEST_CASE("config: Phi-3-mini-128k-instruct, longrope with its 48 short and long factors, every layer windowed",
          "[config]") {
  const ModelConfig real = fixture_config("microsoft__Phi-3-mini-128k-instruct");
  // The 4k model's shapes (its make-model preset), with a longer context, another window and rope scaling.
  ModelConfig short_context = shape_preset("phi-3-mini-4k");
  short_context.max_positions = 131072;
  short_context.sliding_window = 262144;
  short_context.rope_scaling = real.rope_scaling;
  CHECK(real == short_context);
  CHECK(real.model_type == "phi3");
  CHECK(real.d_head == 96);
  CHECK(real.n_rot() == 96);
  // "type": "longrope" (the older key), original_max_position_embeddings at the top level.
  CHECK(real.rope_scaling.type == "longrope");
  CHECK(real.rope_scaling.original_max_positions == 4096);
  CHECK(real.rope_scaling.factor == 1.0);
  REQUIRE(real.rope_scaling.short_factor.size() == 48);
  REQUIRE(real.rope_scaling.long_factor.size() == 48);
  CHECK(real.rope_scaling.short_factor.front() == 1.1);
  CHECK(real.rope_scaling.short_factor.back() == 3.049999999999997);
  CHECK(real.rope_scaling.long_factor.front() == 1.0700000524520874);
  CHECK(real.rope_scaling.long_factor.back() == 64.76000213623047);
  CHECK(real.sliding_window == 262144);
  CHECK(real.is_sliding(0));
  CHECK(real.is_sliding(31));
  // Fused q/k/v and gate/up as Phi3ForCausalLM stores them.
  const StoredSlice v = stored_slice(real, "model.layers.3.self_attn.v_proj.weight");
  CHECK(v.name == "model.layers.3.self_attn.qkv_proj.weight");
  CHECK(v.begin == 2 * 3072);
  CHECK(v.rows == 3072);
  CHECK(v.total == 3 * 3072);
  const StoredSlice up = stored_slice(real, "model.layers.0.mlp.up_proj.weight");
  CHECK(up.name == "model.layers.0.mlp.gate_up_proj.weight");
  CHECK(up.begin == 8192);
  CHECK(up.rows == 8192);
  CHECK(up.total == 2 * 8192);
}

TEST_CASE("config: Phi-4-mini-instruct (model_type phi3), GQA, 3/4 of each head rotated, longrope over 48 frequencies",
          "[config]") {
  const ModelConfig real = fixture_config("microsoft__Phi-4-mini-instruct");
  CHECK(real.model_type == "phi3");
  CHECK(real.d_model == 3072);
  CHECK(real.n_layer == 32);
  CHECK(real.n_head == 24);
  CHECK(real.n_kv_head == 8);
  CHECK(real.d_head == 128);
  CHECK(real.partial_rotary_factor == 0.75);
  CHECK(real.n_rot() == 96);
  CHECK(real.d_ff == 8192);
  CHECK(real.vocab_size == 200064);
  CHECK(real.max_positions == 131072);
  CHECK(real.tie_word_embeddings);
  CHECK(real.bos_token_id == 199999);
  CHECK(real.eos_token_id == 199999);
  CHECK(real.rope_scaling.type == "longrope");
  CHECK(real.rope_scaling.original_max_positions == 4096);
  CHECK(real.rope_scaling.short_factor.size() == 48);
  CHECK(real.rope_scaling.long_factor.size() == 48);
  CHECK(real.rope_scaling.long_factor.front() == 1.0);
  CHECK(real.sliding_window == 262144);
  // q (24 heads) then k and v (8 heads each) in one fused matrix.
  const StoredSlice k = stored_slice(real, "model.layers.0.self_attn.k_proj.weight");
  CHECK(k.name == "model.layers.0.self_attn.qkv_proj.weight");
  CHECK(k.begin == 24 * 128);
  CHECK(k.rows == 8 * 128);
  CHECK(k.total == (24 + 2 * 8) * 128);
  // What make-model would write for it parses back to the same config.
  CHECK(ModelConfig::from_json_text(real.to_json_text(), "phi-4-mini round trip") == real);
}

TEST_CASE("config: transformers 5's rope_parameters, one for all layers or one per layer type, read as rope_theta and rope_scaling",
          "[config]") {
  // transformers >= 5 writes rope_theta and the scaling parameters into one "rope_parameters" object (SmolLM2-135M's
  // fixture above has {"rope_theta": 100000, "rope_type": "default"}), per layer type where layers differ.
  const ModelConfig llama = shape_preset("llama-3.2-1b");
  json j = json::parse(llama.to_json_text());
  json params = j["rope_scaling"];
  params["rope_theta"] = j["rope_theta"];
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = params;
  CHECK(ModelConfig::from_json_text(j.dump(), "c.json") == llama);
  // It wins over the older fields when both are present, as in transformers 5.
  j["rope_theta"] = 10000.0;
  CHECK(ModelConfig::from_json_text(j.dump(), "c.json").rope_theta == 500000.0);

  // Gemma 3: the full-attention layers' base and linear scaling, the sliding layers' own base.
  const ModelConfig gemma = shape_preset("tiny-gemma3");
  j = json::parse(gemma.to_json_text());
  json full = j["rope_scaling"];
  full["rope_theta"] = j["rope_theta"];
  j["rope_parameters"] = {{"full_attention", full},
                          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", j["rope_local_base_freq"]}}}};
  for (const char* old : {"rope_scaling", "rope_theta", "rope_local_base_freq"}) j.erase(old);
  CHECK(ModelConfig::from_json_text(j.dump(), "c.json") == gemma);

  json bad = j;
  bad["rope_parameters"]["sliding_attention"]["rope_type"] = "linear";
  bad["rope_parameters"]["sliding_attention"]["factor"] = 2.0;
  CHECK_THROWS_WITH(ModelConfig::from_json_text(bad.dump(), "c.json"),
                    Catch::Contains("c.json: field 'rope_parameters.sliding_attention': RoPE scaling of the "
                                    "sliding-window layers is not supported"));
  bad = j;
  bad["rope_parameters"]["chunked_attention"] = json::object();
  CHECK_THROWS_WITH(ModelConfig::from_json_text(bad.dump(), "c.json"),
                    Catch::Contains("field 'rope_parameters' holds 'chunked_attention'"));
  bad = j;
  bad["rope_parameters"].erase("full_attention");
  CHECK_THROWS_WITH(ModelConfig::from_json_text(bad.dump(), "c.json"),
                    Catch::Contains("\"sliding_attention\" without \"full_attention\""));
  bad = j;
  bad["rope_parameters"]["full_attention"]["rope_theta"] = "big";
  CHECK_THROWS_WITH(ModelConfig::from_json_text(bad.dump(), "c.json"),
                    Catch::Contains("c.json: field 'rope_parameters.full_attention': field 'rope_theta' must be a "
                                    "positive number"));
  bad = j;
  bad["rope_parameters"] = 3;
  CHECK_THROWS_WITH(ModelConfig::from_json_text(bad.dump(), "c.json"),
                    Catch::Contains("field 'rope_parameters' must be an object or null"));

  // Gemma 2 has one base for both kinds of layer: the same value is fine, another is refused.
  const ModelConfig gemma2 = shape_preset("tiny-gemma2");
  j = json::parse(gemma2.to_json_text());
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", j["rope_theta"]}}},
                          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", j["rope_theta"]}}}};
  j.erase("rope_theta");
  CHECK(ModelConfig::from_json_text(j.dump(), "c.json") == gemma2);
  j["rope_parameters"]["sliding_attention"]["rope_theta"] = 5000.0;
  CHECK_THROWS_WITH(ModelConfig::from_json_text(j.dump(), "c.json"),
                    Catch::Contains("model_type 'gemma2' has one RoPE base for all layers"));
}

TEST_CASE("config: Phi-3-mini-4k-instruct's fields parse to the phi-3-mini-4k preset, longrope is checked", "[config]") {
  // The fields of microsoft/Phi-3-mini-4k-instruct's config.json as NVIDIA/TensorRT-LLM's test carries them
  // (tests/unittest/_torch/modeling/test_modeling_phi3.py @ cb4c622c, PHI3_MINI_4K_CONFIG; no verbatim copy of
  // the file was found, so this is not a byte-for-byte fixture).
  const std::string phi3 = R"({"_name_or_path": "Phi-3-mini-4k-instruct", "architectures": ["Phi3ForCausalLM"],
    "attention_dropout": 0.0, "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config",
    "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}, "bos_token_id": 1, "embd_pdrop": 0.0,
    "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "original_max_position_embeddings": 4096, "pad_token_id": 32000,
    "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0, "sliding_window": 2047,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.40.2", "use_cache": true,
    "attention_bias": false, "vocab_size": 32064})";
  const ModelConfig real = ModelConfig::from_json_text(phi3, "Phi-3-mini-4k-instruct/config.json");
  CHECK(real == shape_preset("phi-3-mini-4k"));
  CHECK(real.is_sliding(0));
  CHECK(real.is_sliding(31));
  // What make-model writes parses back to the same config (longrope with its factors, the top-level original context).
  const ModelConfig tiny = shape_preset("tiny-phi3");
  CHECK(ModelConfig::from_json_text(tiny.to_json_text(), "tiny-phi3") == tiny);
  // Factors that do not match the rotated dims, and the older "su" name.
  nlohmann::json j = nlohmann::json::parse(tiny.to_json_text());
  j["rope_scaling"]["short_factor"] = {1.0, 2.0};
  CHECK_THROWS_WITH(ModelConfig::from_json_text(j.dump(), "c.json"),
                    Catch::Contains("one number per rotated frequency (6), found 2 and 6"));
  j = nlohmann::json::parse(tiny.to_json_text());
  j["rope_scaling"].erase("rope_type");
  j["rope_scaling"]["type"] = "su";
  CHECK(ModelConfig::from_json_text(j.dump(), "c.json") == tiny);
  j["rope_scaling"]["long_factor"] = "many";
  CHECK_THROWS_WITH(ModelConfig::from_json_text(j.dump(), "c.json"), Catch::Contains("needs field 'long_factor'"));
}
