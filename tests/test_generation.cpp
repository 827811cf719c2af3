// generation_config.h: which token starts a prompt and which ids end a reply, decided by the folder's files as
// transformers decides them (tokenizer_config.json add_bos_token, tokenizer.json's post-processor,
// generation_config.json and config.json eos_token_id), and the errors for values that cannot be right.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "models/lab/make_model.h"
#include "models/text/generation_config.h"
#include "tests/test_util.h"

// ATen pulls in glog, whose one-argument CHECK macro would replace Catch's: include Catch last.
#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
using nlohmann::json;

namespace {

struct Folder {
  std::string dir;
  std::unique_ptr<Tokenizer> tokenizer;
  int64_t bos = -1, eos = -1;
};

// A tiny Llama-family checkpoint whose trained tokenizer.json has <s> and </s> and no post-processor.
Folder tiny_folder(const std::string& name) {
  Folder f;
  f.dir = test::temp_dir(name).string();
  MakeModelOptions o;
  o.config = shape_preset("tiny-llama3");
  make_model(f.dir, o);
  f.tokenizer = load_tokenizer(f.dir);
  f.bos = f.tokenizer->token_id("<s>");
  f.eos = f.tokenizer->token_id("</s>");
  REQUIRE(f.bos >= 0);
  REQUIRE(f.eos >= 0);
  return f;
}

void set_post_processor(const std::string& dir, const json& processor) {
  json tok = json::parse(test::read_file(dir + "/tokenizer.json"));
  tok["post_processor"] = processor;
  test::write_file(dir + "/tokenizer.json", tok.dump());
}

}  // namespace

TEST_CASE("generation config: BOS from add_bos_token, else the post-processor, else the family", "[generation]") {
  Folder f = tiny_folder("generation-bos");
  GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
  CHECK(g.bos_id == f.tokenizer->bos_id());  // no post-processor, no tokenizer_config.json: the Llama habit
  CHECK(g.bos_from == "family default");
  CHECK(load_generation_config(f.dir, *f.tokenizer, Family::gpt2).bos_id == -1);

  // Llama-3's tokenizer.json: a TemplateProcessing that starts with <|begin_of_text|> (here <s>).
  set_post_processor(f.dir, {{"type", "TemplateProcessing"},
                             {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                         {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                             {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {f.bos}}, {"tokens", {"<s>"}}}}}}});
  g = load_generation_config(f.dir, *f.tokenizer, Family::gpt2);
  CHECK(g.bos_id == f.bos);
  CHECK_THAT(g.bos_from, Catch::Contains("tokenizer.json (post_processor)"));

  // Qwen's: ByteLevel only, so no BOS even for a Llama-family model.
  set_post_processor(f.dir, {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}});
  CHECK(load_generation_config(f.dir, *f.tokenizer, Family::llama).bos_id == -1);

  // tokenizer_config.json's add_bos_token wins over both.
  test::write_file(f.dir + "/tokenizer_config.json", R"({"add_bos_token": true, "bos_token": "<s>"})");
  g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
  CHECK(g.bos_id == f.tokenizer->bos_id());
  test::write_file(f.dir + "/tokenizer_config.json", R"({"add_bos_token": false})");
  CHECK(load_generation_config(f.dir, *f.tokenizer, Family::llama).bos_id == -1);
  test::write_file(f.dir + "/tokenizer_config.json", R"({"add_bos_token": "yes"})");
  REQUIRE_THROWS_WITH(load_generation_config(f.dir, *f.tokenizer, Family::llama),
                      Catch::Contains("tokenizer_config.json: field 'add_bos_token' must be true or false, found \"yes\""));
}

TEST_CASE("generation config: every eos id of generation_config.json stops, else config.json's, else the tokenizer's",
          "[generation]") {
  Folder f = tiny_folder("generation-eos");
  GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
  CHECK((g.stop_ids == std::vector<int64_t>{f.eos}));  // make-model writes config.json eos_token_id = </s>
  CHECK_THAT(g.stop_from, Catch::EndsWith("config.json"));
  CHECK_FALSE(g.do_sample.has_value());

  // Llama-3.1-Instruct's shape: a list of three ids, and sampling defaults.
  test::write_file(f.dir + "/generation_config.json",
                   R"({"bos_token_id": 1, "do_sample": true, "eos_token_id": [)" + std::to_string(f.eos) +
                       R"(, 7, 9], "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.45.0"})");
  g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
  CHECK((g.stop_ids == std::vector<int64_t>{f.eos, 7, 9}));
  CHECK(g.is_stop(7));
  CHECK(g.is_stop(9));
  CHECK_FALSE(g.is_stop(8));
  CHECK(g.do_sample == true);
  CHECK(g.temperature == 0.6);
  CHECK(g.top_p == 0.9);
  CHECK_FALSE(g.top_k.has_value());

  test::write_file(f.dir + "/generation_config.json", R"({"eos_token_id": [5, 100000]})");
  REQUIRE_THROWS_WITH(load_generation_config(f.dir, *f.tokenizer, Family::llama),
                      Catch::Contains("generation_config.json: field 'eos_token_id' must be a token id in [0, 512)"));
  test::write_file(f.dir + "/generation_config.json", R"({"temperature": "hot"})");
  REQUIRE_THROWS_WITH(load_generation_config(f.dir, *f.tokenizer, Family::llama),
                      Catch::Contains("generation_config.json: field 'temperature' must be a number, found \"hot\""));
  test::write_file(f.dir + "/generation_config.json", "[1, 2]");
  REQUIRE_THROWS_WITH(load_generation_config(f.dir, *f.tokenizer, Family::llama),
                      Catch::Contains("generation_config.json: expected a JSON object"));
}

namespace {

// A folder holding the generation_config.json, tokenizer_config.json and config.json of a real model
// (tests/data/configs/<folder>, SOURCES.md names their origin) beside the tokenizer.json that
// tools/fetch_tokenizers.sh fetched as data/tokenizers/<tokenizer>. Where that is not the model's own tokenizer it
// only stands in for the vocabulary size (every id is checked to lie inside it) and the BOS token, and the model's
// tokenizer_config.json is left out where it names special tokens that the stand-in lacks (`with_tokenizer_config`).
Folder real_folder(const std::string& folder, const std::string& tokenizer, bool with_tokenizer_config = true) {
  namespace fs = std::filesystem;
  const fs::path source = fs::path(SINKFLOW_SOURCE_DIR);
  const fs::path tokenizer_json = source / "data/tokenizers" / tokenizer / "tokenizer.json";
  if (!fs::is_regular_file(tokenizer_json)) {
    FAIL(tokenizer_json.string() << " is missing: run tools/fetch_tokenizers.sh (tools/test.sh runs it)");
  }
  Folder f;
  f.dir = test::temp_dir("generation-real-" + folder).string();
  fs::copy_file(tokenizer_json, fs::path(f.dir) / "tokenizer.json", fs::copy_options::overwrite_existing);
  for (const std::string name : {"generation_config.json", "tokenizer_config.json", "config.json"}) {
    if (name == "tokenizer_config.json" && !with_tokenizer_config) continue;
    const fs::path file = source / "tests/data/configs" / folder / name;
    if (fs::is_regular_file(file)) fs::copy_file(file, fs::path(f.dir) / name, fs::copy_options::overwrite_existing);
  }
  f.tokenizer = load_tokenizer(f.dir);
  return f;
}

}  // namespace

TEST_CASE("generation config: Llama-3.1-8B-Instruct's generation_config.json stops on 128001, 128008 and 128009",
          "[generation]") {
  // The Instruct file (184 bytes, the sha256 of Meta's own, SOURCES.md) with Llama-3.1's real tokenizer.json.
  Folder f = real_folder("meta-llama__Llama-3.1-8B-Instruct", "llama3_1");
  const GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
  CHECK((g.stop_ids == std::vector<int64_t>{128001, 128008, 128009}));
  CHECK_THAT(g.stop_from, Catch::EndsWith("generation_config.json"));
  CHECK(f.tokenizer->token_id("<|end_of_text|>") == 128001);
  // (128008 is <|eom_id|> in Meta's final Llama-3.1 tokenizer; the fetched file still calls it
  // <|reserved_special_token_4|>.)
  CHECK(f.tokenizer->token_id("<|eot_id|>") == 128009);
  CHECK(g.is_stop(128009));
  CHECK_FALSE(g.is_stop(128000));
  CHECK(g.do_sample == true);
  CHECK(g.temperature == 0.6);
  CHECK(g.top_p == 0.9);
  CHECK_FALSE(g.top_k.has_value());
  // No tokenizer_config.json: the post-processor of tokenizer.json puts <|begin_of_text|> first.
  CHECK(g.bos_id == 128000);
  CHECK_THAT(g.bos_from, Catch::Contains("post_processor"));
  // The base model's file (meta-llama__Llama-3.1-8B) stops on 128001 alone.
  Folder base = real_folder("meta-llama__Llama-3.1-8B", "llama3_1");
  CHECK((load_generation_config(base.dir, *base.tokenizer, Family::llama).stop_ids == std::vector<int64_t>{128001}));
}

TEST_CASE("generation config: real Phi-3, Phi-4-mini, Gemma-2/3-it, Mistral, SmolLM2 files decide BOS and stop ids",
          "[generation]") {
  {  // Phi-3-mini-128k-instruct: stop on <|endoftext|>, <|assistant|> and <|end|>.
    Folder f = real_folder("microsoft__Phi-3-mini-128k-instruct", "llama3_1", false);  // stands in for 32,064 ids
    const GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
    CHECK((g.stop_ids == std::vector<int64_t>{32000, 32001, 32007}));
    CHECK_FALSE(g.do_sample.has_value());
  }
  {  // Phi-4-mini-instruct: stop on <|end|> (200020) and <|endoftext|> (199999).
    Folder f = real_folder("microsoft__Phi-4-mini-instruct", "gemma3", false);  // stands in for 200,064 ids
    const GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
    CHECK((g.stop_ids == std::vector<int64_t>{200020, 199999}));
  }
  {  // Gemma-2-2b-it: add_bos_token true (<bos> = 2 in Gemma 2 and 3 alike), stop on <eos> and <end_of_turn>.
    Folder f = real_folder("google__gemma-2-2b-it", "gemma3");
    const GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
    CHECK(g.bos_id == 2);
    CHECK_THAT(g.bos_from, Catch::Contains("add_bos_token"));
    CHECK((g.stop_ids == std::vector<int64_t>{1, 107}));
  }
  {  // Gemma-3-270m-it: add_bos_token true, stop on <eos> (1) and <end_of_turn> (106), its sampling defaults.
    Folder f = real_folder("google__gemma-3-270m-it", "gemma3");
    const GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
    CHECK(g.bos_id == 2);
    CHECK(f.tokenizer->token_id("<bos>") == 2);
    CHECK_THAT(g.bos_from, Catch::Contains("add_bos_token"));
    CHECK((g.stop_ids == std::vector<int64_t>{1, 106}));
    CHECK(f.tokenizer->token_id("<end_of_turn>") == 106);
    CHECK(g.do_sample == true);
    CHECK(g.top_k == 64);
    CHECK(g.top_p == 0.95);
    CHECK_FALSE(g.temperature.has_value());
  }
  {  // Mistral-7B-v0.1 (base) with its own tokenizer.json: add_bos_token true, stop on </s>.
    Folder f = real_folder("mistralai__Mistral-7B-v0.1", "mistral");
    const GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
    CHECK(g.bos_id == 1);
    CHECK_THAT(g.bos_from, Catch::Contains("add_bos_token"));
    CHECK((g.stop_ids == std::vector<int64_t>{2}));
    CHECK_FALSE(g.do_sample.has_value());
  }
  {  // SmolLM2-360M-Instruct: stop on <|im_end|> (2); GPT-2's tokenizer.json stands in for its 49,152 ids.
    Folder f = real_folder("HuggingFaceTB__SmolLM2-360M-Instruct", "gpt2", false);
    const GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
    CHECK((g.stop_ids == std::vector<int64_t>{2}));
    CHECK_THAT(g.stop_from, Catch::EndsWith("generation_config.json"));
  }
  {  // Mistral-7B-Instruct-v0.2 with the Mistral tokenizer.json (v0.1's: the same 32,000 pieces).
    Folder f = real_folder("mistralai__Mistral-7B-Instruct-v0.2", "mistral");
    const GenerationConfig g = load_generation_config(f.dir, *f.tokenizer, Family::llama);
    CHECK(g.bos_id == 1);
    CHECK(f.tokenizer->token_id("<s>") == 1);
    CHECK_THAT(g.bos_from, Catch::Contains("add_bos_token"));
    CHECK((g.stop_ids == std::vector<int64_t>{2}));
  }
}
