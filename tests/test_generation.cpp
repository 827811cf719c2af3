// generation_config.h: which token starts a prompt and which ids end a reply, decided by the folder's files as
// transformers decides them (tokenizer_config.json add_bos_token, tokenizer.json's post-processor,
// generation_config.json and config.json eos_token_id), and the errors for values that cannot be right.
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
