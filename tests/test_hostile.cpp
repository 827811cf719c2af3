// Hostile input (issue 19): JSON nested 100,000 deep, repeated keys, endless files, sizes past every limit, and
// checkpoints that hold more than their config.json describes. Each is an error naming the file or field, with a
// short message: never a crash, a runaway allocation or a silent partial load.
#include <c10/core/InferenceMode.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/yaml_spec.h"
#include "models/cache/kv_cache.h"
#include "models/io/checkpoint.h"
#include "models/io/config.h"
#include "models/io/field_error.h"
#include "models/io/json_read.h"
#include "models/io/limits.h"
#include "models/io/safetensors.h"
#include "models/lab/make_model.h"
#include "models/memory/chunk_store.h"
#include "models/nn/bert.h"
#include "models/nn/decoder.h"
#include "models/text/tokenizer.h"
#include "nodes/input_stream.h"
#include "tests/test_util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string deep_array(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// The message of what `f` throws (std::exception), or "" when nothing is thrown.
template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

fs::path tiny_llama_dir(const std::string& name) {
  const fs::path dir = test::temp_dir(name);
  MakeModelOptions o;
  o.config = shape_preset("tiny-llama");
  make_model(dir.string(), o);
  return dir;
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

}  // namespace

TEST_CASE("JSON nested 100,000 deep is refused, with a short message, wherever it is read", "[hostile]") {
  const std::string deep = deep_array(100000);
  const std::string m = message_of([&] { parse_json(deep, "x.json"); });
  CHECK(m == "x.json: arrays and objects nested deeper than 64 levels");
  // Objects too, and just past the limit; 64 levels pass.
  std::string objects;
  for (int i = 0; i < 65; ++i) objects += "{\"a\":";
  objects += "1" + std::string(65, '}');
  CHECK(message_of([&] { parse_json(objects, "o.json"); }) == "o.json: arrays and objects nested deeper than 64 levels");
  CHECK(parse_json(deep_array(64), "ok.json").is_array());

  // config.json: at the top and inside a field.
  const fs::path dir = test::temp_dir("hostile_json");
  const std::string config = "{\"model_type\": \"llama\", \"rope_scaling\": " + deep + "}";
  const std::string mc = message_of([&] { ModelConfig::from_json_text(config, "config.json"); });
  CHECK(mc == "config.json: arrays and objects nested deeper than 64 levels");
  // A safetensors header.
  const std::string header = "{\"__metadata__\": " + deep + "}";
  std::string file(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  test::write_file(dir / "model.safetensors", file + header);
  const std::string ms = message_of([&] { SafetensorsFile((dir / "model.safetensors").string()); });
  CHECK_THAT(ms, Catch::Contains("model.safetensors") && Catch::Contains("nested deeper than 64 levels"));
  CHECK(ms.size() < 300);
  // tokenizer.json.
  const fs::path tok = dir / "tok";
  fs::create_directories(tok);
  test::write_file(tok / "tokenizer.json", deep);
  const std::string mt = message_of([&] { load_tokenizer(tok.string()); });
  CHECK_THAT(mt, Catch::Contains("tokenizer.json: arrays and objects nested deeper than 64 levels"));
}

TEST_CASE("a key written twice in one JSON object is an error naming the key", "[hostile]") {
  CHECK(message_of([] { parse_json(R"({"a": 1, "b": {"a": 2}, "a": 3})", "f.json"); }) ==
        "f.json: key 'a' appears twice in one object");
  // The same key in different objects is fine.
  CHECK(parse_json(R"({"a": {"k": 1}, "b": {"k": 2}})", "f.json")["b"]["k"] == 2);
  // In config.json: which num_hidden_layers would win is a guess.
  const std::string config = R"({"model_type": "llama", "num_hidden_layers": 4, "num_hidden_layers": 3})";
  CHECK(message_of([&] { ModelConfig::from_json_text(config, "config.json"); }) ==
        "config.json: key 'num_hidden_layers' appears twice in one object");
}

TEST_CASE("JSON files are read up to a limit: an endless device, a huge file, a directory", "[hostile]") {
  JsonLimits small;
  small.max_bytes = 1 << 20;
  CHECK(message_of([&] { read_json_file("/dev/zero", small); }) ==
        "/dev/zero: more than 1048576 bytes, the limit for a JSON file");
  CHECK(message_of([&] { parse_json(std::string(100, ' '), "big.json", JsonLimits{64, 10}); }) ==
        "big.json: 100 bytes of JSON, more than the limit of 10");
  const fs::path dir = test::temp_dir("hostile_dir");
  fs::create_directories(dir / "config.json");
  CHECK(message_of([&] { read_json_file((dir / "config.json").string()); }) ==
        (dir / "config.json").string() + ": is a directory, expected a JSON file");
}

TEST_CASE("sizes in config.json past their limits are refused before anything is allocated", "[hostile]") {
  json base = {{"model_type", "llama"},      {"vocab_size", 512},          {"hidden_size", 64},
               {"num_hidden_layers", 2},     {"num_attention_heads", 4},   {"num_key_value_heads", 2},
               {"intermediate_size", 128},   {"max_position_embeddings", 512}};
  struct Case {
    const char* field;
    int64_t value;
    const char* limit;
  };
  for (const Case& c : {Case{"vocab_size", int64_t{1} << 40, "16777216"}, Case{"num_hidden_layers", 100000, "1024"},
                        Case{"hidden_size", int64_t{1} << 31, "65536"}, Case{"intermediate_size", 1000000000000, "1048576"},
                        Case{"head_dim", 1000000000, "65536"}}) {
    json j = base;
    j[c.field] = c.value;
    if (std::string(c.field) == "hidden_size") j["head_dim"] = 16;
    const std::string m = message_of([&] { ModelConfig::from_json_text(j.dump(), "config.json"); });
    INFO(c.field << ": " << m);
    CHECK_THAT(m, Catch::Contains("config.json: field '" + std::string(c.field) + "' is " + std::to_string(c.value) +
                                  ", more than the limit of " + c.limit));
  }
  // BERT's token types (found by the fuzz: 10^12 of them asked the allocator for 256 TB).
  json bert = json::parse(shape_preset("tiny-bert").to_json_text());
  bert["type_vocab_size"] = 1000000000000;
  CHECK(message_of([&] { ModelConfig::from_json_text(bert.dump(), "config.json"); }) ==
        "config.json: field 'type_vocab_size' is 1000000000000, more than the limit of 16777216");
  // Within the limits but more than this machine holds: refused by load_decoder from the estimate, no allocation.
  json big = base;
  big["vocab_size"] = int64_t{1} << 24;
  big["hidden_size"] = int64_t{1} << 16;
  big["num_attention_heads"] = 512;
  big["num_key_value_heads"] = 512;
  const fs::path dir = test::temp_dir("hostile_big");
  test::write_file(dir / "config.json", big.dump());
  REQUIRE(physical_memory_bytes() > 0);
  CHECK_THAT(message_of([&] { load_decoder(dir.string(), at::kCPU, at::kFloat); }),
             Catch::Contains("need") && Catch::Contains("GiB as float32, more than this machine's"));
}

TEST_CASE("cache sizes past the limit or past this machine's memory name the field", "[hostile]") {
  CacheConfig c;
  c.n_recent = 1000000000000;
  try {
    c.validate("model");
    FAIL("no error");
  } catch (const FieldError& e) {
    CHECK(e.field() == "n_recent");
    CHECK(std::string(e.what()) == "model: n_recent is 1000000000000, more than the limit of 16777216 tokens");
  }
  c.n_recent = 100;
  c.n_sink = 1000000000;
  CHECK(message_of([&] { c.validate("model"); }) == "model: n_sink is 1000000000, more than the limit of 16777216 tokens");
  // 16M tokens of a 1,024-layer model: terabytes, refused before the cache is allocated.
  ModelConfig m = shape_preset("tiny-llama");
  m.n_layer = 1024;
  c.n_sink = 4;
  c.n_recent = kMaxCacheTokens;
  CHECK_THAT(message_of([&] { c.validate(m, "kv_cache"); }),
             Catch::Contains("kv_cache: a cache of n_sink + n_memory + n_recent = 16777220 tokens needs at least") &&
                 Catch::Contains("more than this machine's"));
}

TEST_CASE("a checkpoint holding tensors its config.json does not describe is refused, naming them", "[hostile]") {
  c10::InferenceMode guard;
  const fs::path dir = tiny_llama_dir("hostile_layers");
  json config = read_json(dir / "config.json");
  const int64_t layers = config["num_hidden_layers"];
  config["num_hidden_layers"] = layers - 1;
  test::write_file(dir / "config.json", config.dump(2));
  const std::string m = message_of([&] { load_decoder(dir.string(), at::kCPU, at::kFloat); });
  CHECK_THAT(m, Catch::Contains("model.safetensors: 9 tensors are not part of the model config.json describes (llama, " +
                                std::to_string(layers - 1) + " layers): 'model.layers." + std::to_string(layers - 1)));
  CHECK_THAT(m, Catch::Contains("and 6 more; the checkpoint and config.json disagree"));
  // Restored, it loads.
  config["num_hidden_layers"] = layers;
  test::write_file(dir / "config.json", config.dump(2));
  CHECK(load_decoder(dir.string(), at::kCPU, at::kFloat)->config().n_layer == layers);

  // A BERT encoder the same way (its pooler, left aside, stays allowed).
  const fs::path bert = test::temp_dir("hostile_bert_layers");
  const ModelConfig tiny_bert = shape_preset("tiny-bert");
  auto tensors = random_tensors(tiny_bert, 5);
  tensors.emplace_back("pooler.dense.weight", at::zeros({tiny_bert.d_model, tiny_bert.d_model}));
  save_checkpoint(bert.string(), tiny_bert, tensors);
  CHECK(load_bert(bert.string(), at::kCPU, at::kFloat)->config().n_layer == tiny_bert.n_layer);
  json bert_config = read_json(bert / "config.json");
  bert_config["num_hidden_layers"] = tiny_bert.n_layer - 1;
  test::write_file(bert / "config.json", bert_config.dump(2));
  CHECK_THAT(message_of([&] { load_bert(bert.string(), at::kCPU, at::kFloat); }),
             Catch::Contains("model.safetensors: 16 tensors are not part of the model config.json describes (bert, 1 "
                             "layers): 'encoder.layer.1."));
}

TEST_CASE("a tied config over an untied lm_head and integer weights are refused naming the tensor", "[hostile]") {
  c10::InferenceMode guard;
  const fs::path dir = test::temp_dir("hostile_tied");
  const ModelConfig untied = shape_preset("tiny-mistral");
  auto tensors = random_tensors(untied, 3);
  save_checkpoint(dir.string(), untied, tensors);
  json config = read_json(dir / "config.json");
  config["tie_word_embeddings"] = true;
  test::write_file(dir / "config.json", config.dump(2));
  const std::string source = (dir / "model.safetensors").string();
  CHECK(message_of([&] { load_decoder(dir.string(), at::kCPU, at::kFloat); }) ==
        source + ": tensor 'lm_head.weight' differs from 'model.embed_tokens.weight', but config.json sets "
                 "tie_word_embeddings (the output matrix is the embedding); the checkpoint and config.json disagree");
  // A stored copy equal to the embedding is the tied model some exporters write: it loads.
  for (auto& [name, t] : tensors)
    if (name == "lm_head.weight") t = tensors.front().second.clone();  // front: model.embed_tokens.weight
  save_checkpoint(dir.string(), untied, tensors);
  test::write_file(dir / "config.json", config.dump(2));
  CHECK(load_decoder(dir.string(), at::kCPU, at::kFloat)->config().tie_word_embeddings);

  // I32 has the width of F32: relabelled, the bytes would load as other numbers.
  const fs::path ints = test::temp_dir("hostile_ints");
  const ModelConfig llama = shape_preset("tiny-llama");
  auto weights = random_tensors(llama, 3);
  weights[1].second = weights[1].second.to(at::kInt);
  save_safetensors((ints / "model.safetensors").string(), weights, {});
  test::write_file(ints / "config.json", llama.to_json_text());
  CHECK(message_of([&] { load_decoder(ints.string(), at::kCPU, at::kFloat); }) ==
        (ints / "model.safetensors").string() + ": tensor '" + weights[1].first +
            "' has dtype I32, expected a floating dtype (F32, F16, BF16, F64)");
}

TEST_CASE("InputStream reads lines and bytes, and a stop wakes a read blocked on a silent pipe", "[hostile]") {
  const fs::path dir = test::temp_dir("hostile_input");
  test::write_file(dir / "lines.txt", "a\nbb\n\nccc");
  {
    InputStream in((dir / "lines.txt").string(), [] { return false; });
    std::string line;
    std::vector<std::string> got;
    while (in.getline(line)) got.push_back(line);
    CHECK(got == std::vector<std::string>{"a", "bb", "", "ccc"});
    CHECK(!in.stopped());
  }
  {
    InputStream in((dir / "lines.txt").string(), [] { return false; });
    char buf[16] = {};
    CHECK(in.read(buf, 4) == 4);
    CHECK(std::string(buf, 4) == "a\nbb");
    CHECK(in.read(buf, 16) == 5);
    CHECK(in.read(buf, 16) == 0);
  }
  test::write_file(dir / "long.txt", "ok\n" + std::string(5000, 'x') + "\n");
  {
    InputStream in((dir / "long.txt").string(), [] { return false; });
    std::string line;
    CHECK(in.getline(line, 1000));
    CHECK(message_of([&] { in.getline(line, 1000); }) == (dir / "long.txt").string() + ":2: a line longer than 1000 bytes");
  }
  CHECK(message_of([&] { InputStream((dir).string(), {}); }) == "path '" + dir.string() + "' is a directory, expected a file");
  CHECK_THAT(message_of([&] { InputStream((dir / "none.txt").string(), {}); }),
             Catch::Contains("path '" + (dir / "none.txt").string() + "' cannot be opened: No such file"));

  // A pipe whose writer stays open and silent, as a terminal nobody types into: the stop flag ends the read.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::atomic<bool> stop{false};
  InputStream in("/proc/self/fd/" + std::to_string(fds[0]), [&] { return stop.load(); });
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    stop = true;
  });
  const auto t0 = std::chrono::steady_clock::now();
  std::string line;
  CHECK(!in.getline(line));
  CHECK(in.stopped());
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  stopper.join();
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("YAML: alias bombs, deep nesting, endless files and empty or repeated parts are refused", "[hostile]") {
  // Nine levels of ten aliases each: 10^9 values once expanded.
  std::string bomb = "name: bomb\nnodes:\n  - {name: src, kind: count-source}\nl0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n";
  for (int i = 1; i < 9; ++i) {
    const std::string prev = "*l" + std::to_string(i - 1);
    bomb += "l" + std::to_string(i) + ": &l" + std::to_string(i) + " [";
    for (int j = 0; j < 10; ++j) bomb += (j ? ", " : "") + prev;
    bomb += "]\n";
  }
  CHECK(message_of([&] { parse_pipeline(bomb, "bomb.yaml"); }) ==
        "bomb.yaml: more than 1000000 values once its aliases are expanded (an alias bomb?)");
  CHECK_THAT(message_of([&] { parse_param_value("[" + bomb.substr(bomb.find("l0:")) + "]", "--set x.y"); }),
             Catch::Contains("--set x.y"));
  // Nesting: yaml-cpp's own parser stops at its depth guard; below it, ours at 64.
  CHECK_THAT(message_of([&] { parse_pipeline(std::string(100000, '[') + std::string(100000, ']'), "deep.yaml"); }),
             Catch::StartsWith("deep.yaml:"));
  CHECK_THAT(message_of([&] { parse_pipeline("x: " + std::string(100, '[') + std::string(100, ']'), "deep.yaml"); }),
             Catch::Contains("nested deeper than 64 levels"));
  CHECK(message_of([&] { parse_pipeline("name: p\nnodes: []\n", "p.yaml"); }) == "p.yaml:2: pipeline 'p' has an empty 'nodes:' list");
  // A config: endless input, a directory, run settings nobody reads, a node's params given twice.
  CHECK(message_of([&] { load_run_spec("/dev/zero", {}); }) ==
        "pipeline or config file '/dev/zero': more than 16777216 bytes, the limit for a YAML file");
  const fs::path dir = test::temp_dir("hostile_yaml");
  CHECK(message_of([&] { load_run_spec(dir.string(), {}); }) ==
        "pipeline or config file '" + dir.string() + "': is a directory, expected a YAML file");
  test::write_file(dir / "run.yaml", "pipeline: count\nrun: {jsn: true}\n");
  CHECK_THAT(message_of([&] { load_run_spec((dir / "run.yaml").string(), {}); }),
             Catch::Contains("run.yaml:2: unknown key 'jsn' in run settings; known keys: json, profile"));
  test::write_file(dir / "twice.yaml", "pipeline: count\nparams:\n  src: {count: 5}\n  src: {count: 6}\n");
  CHECK_THAT(message_of([&] { load_run_spec((dir / "twice.yaml").string(), {}); }),
             Catch::Contains("twice.yaml:4: 'params' names node 'src' twice (first at"));
}
