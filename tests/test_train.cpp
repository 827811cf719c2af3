// Training loop: loss goes down, the schedule, exact resume, config errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "models/checkpoint.h"
#include "models/tokenizer.h"
#include "models/train.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace sinkflow;

namespace {

const char* kText =
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "All that glitters is not gold. The early bird catches the worm.\n\n";

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("sinkflow_test_train_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A folder with a small byte-level BPE tokenizer (with <s> as BOS) and a corpus of repeated text.
fs::path make_corpus(const std::string& name) {
  fs::path d = fresh_dir(name);
  std::string text;
  for (int i = 0; i < 40; ++i) text += kText;
  train_byte_bpe(text, 60, {"<s>", "</s>"}, (d / "tokenizer.json").string());
  std::ofstream(d / "train.txt") << text;
  std::ofstream(d / "heldout.txt") << text;
  return d;
}

std::string config_json(const fs::path& d, int steps, const std::string& extra = "") {
  return std::string("{\"model\": {\"d_model\": 32, \"n_layer\": 2, \"n_head\": 4, \"n_kv_head\": 2, \"d_ff\": 64, "
                     "\"max_positions\": 128},") +
         "\"tokenizer\": \"" + (d / "tokenizer.json").string() + "\", \"train_text\": \"" + (d / "train.txt").string() +
         "\", \"heldout_text\": \"" + (d / "heldout.txt").string() + "\", \"seq_len\": 32, \"batch\": 4, \"steps\": " +
         std::to_string(steps) + ", \"warmup\": 5, \"lr\": 0.01, \"min_lr\": 0.001, \"eval_interval\": 0, "
         "\"eval_batches\": 2, \"checkpoint_interval\": 0, \"threads\": 1, \"seed\": 7" + extra + "}";
}

}  // namespace

TEST_CASE("cosine schedule with linear warm-up", "[train]") {
  TrainConfig c;
  c.lr = 1e-3;
  c.min_lr = 1e-4;
  c.warmup = 10;
  c.steps = 110;
  REQUIRE(scheduled_lr(c, 0) == Approx(1e-4));     // 1e-3 * 1/10
  REQUIRE(scheduled_lr(c, 4) == Approx(5e-4));     // 1e-3 * 5/10
  REQUIRE(scheduled_lr(c, 9) == Approx(1e-3));     // end of warm-up
  REQUIRE(scheduled_lr(c, 10) == Approx(1e-3));    // cosine at progress 0
  // progress = (step - 10) / 99; at step 59.5 it is 0.5: (1e-3 + 1e-4) / 2
  REQUIRE(scheduled_lr(c, 109) == Approx(1e-4));   // last step: min_lr
  REQUIRE(scheduled_lr(c, 500) == Approx(1e-4));
  // step 43: progress 1/3, cos(pi/3) = 0.5 -> 1e-4 + 0.5 * 9e-4 * 1.5
  REQUIRE(scheduled_lr(c, 43) == Approx(1e-4 + 0.5 * 9e-4 * 1.5));
  // step 76: progress 2/3, cos(2pi/3) = -0.5 -> 1e-4 + 0.5 * 9e-4 * 0.5
  REQUIRE(scheduled_lr(c, 76) == Approx(1e-4 + 0.5 * 9e-4 * 0.5));
}

TEST_CASE("training a tiny llama on repeated text lowers the loss", "[train]") {
  fs::path d = make_corpus("loss");
  TrainConfig c = parse_train_config(config_json(d, 40), "test.json", Family::llama);
  TrainOptions o;
  o.out_dir = (d / "out").string();
  TrainResult r = train_model(c, o);
  REQUIRE(r.steps_done == 40);
  REQUIRE(r.step_losses.size() == 40);
  REQUIRE(r.initial_loss > 4.0);  // ~ln(vocab) at random init
  REQUIRE(r.final_loss < 0.5 * r.initial_loss);
  REQUIRE(r.heldout_loss < 0.5 * r.initial_loss);
  // The final model folder is a loadable float16 Hugging Face checkpoint with its tokenizer and log.
  REQUIRE(fs::exists(d / "out" / "model.safetensors"));
  REQUIRE(fs::exists(d / "out" / "tokenizer.json"));
  REQUIRE(fs::exists(d / "out" / "train_log.json"));
  auto dec = load_decoder((d / "out").string(), at::Device(at::kCPU), at::kFloat);
  REQUIRE(dec->config().torch_dtype == "float16");
  REQUIRE(dec->config().bos_token_id == load_tokenizer(d.string())->bos_id());
  fs::remove_all(d);
}

TEST_CASE("gpt2 family trains too", "[train]") {
  fs::path d = make_corpus("gpt2");
  std::string js = config_json(d, 40);
  js.replace(js.find("\"n_kv_head\": 2, "), std::string("\"n_kv_head\": 2, ").size(), "");
  TrainConfig c = parse_train_config(js, "test.json", Family::gpt2);
  TrainOptions o;
  o.out_dir = (d / "out").string();
  TrainResult r = train_model(c, o);
  REQUIRE(r.final_loss < 0.5 * r.initial_loss);
  auto dec = load_decoder((d / "out").string(), at::Device(at::kCPU), at::kFloat);
  REQUIRE(dec->config().family == Family::gpt2);
  fs::remove_all(d);
}

TEST_CASE("a llama with attention biases trains and saves them (Hugging Face attention_bias)", "[train]") {
  fs::path d = make_corpus("bias");
  std::string js = config_json(d, 12);
  js.replace(js.find("\"max_positions\": 128}"), std::string("\"max_positions\": 128}").size(),
             "\"max_positions\": 128, \"attention_bias\": true}");
  TrainConfig c = parse_train_config(js, "test.json", Family::llama);
  REQUIRE(c.model.attention_bias);
  REQUIRE(c.model.attention_out_bias);
  TrainOptions o;
  o.out_dir = (d / "out").string();
  TrainResult r = train_model(c, o);
  REQUIRE(r.final_loss < r.initial_loss);
  auto dec = load_decoder((d / "out").string(), at::Device(at::kCPU), at::kFloat);
  REQUIRE(dec->config().attention_bias);
  int64_t biases = 0;
  for (const auto& [name, p] : dec->named_parameters()) biases += name.find("_proj.bias") != std::string::npos;
  REQUIRE(biases == 2 * 4);  // q, k, v, o per layer
  fs::remove_all(d);
}

TEST_CASE("checkpoint and resume give the weights of an uninterrupted run", "[train]") {
  fs::path d = make_corpus("resume");
  TrainConfig c = parse_train_config(config_json(d, 12, ", \"copy_fraction\": 0.5"), "test.json", Family::llama);
  TrainOptions full;
  full.out_dir = (d / "full").string();
  full.write_model = false;
  train_model(c, full);

  TrainOptions part = full;
  part.out_dir = (d / "part").string();
  part.stop_after = 5;
  TrainResult r1 = train_model(c, part);
  REQUIRE(r1.steps_done == 5);
  REQUIRE(fs::exists(d / "part" / "checkpoint" / "optimizer.pt"));
  part.stop_after = -1;
  part.resume = true;
  TrainResult r2 = train_model(c, part);
  REQUIRE(r2.steps_done == 12);
  REQUIRE(r2.step_losses.size() == 12);

  const std::string ca = (d / "full" / "checkpoint").string(), cb = (d / "part" / "checkpoint").string();
  auto a = read_weights_f32(ca, load_model_config(ca));
  auto b = read_weights_f32(cb, load_model_config(cb));
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    REQUIRE(a[i].first == b[i].first);
    REQUIRE(a[i].second == b[i].second);  // bit-identical
  }
  fs::remove_all(d);
}

TEST_CASE("resume without a checkpoint is an error", "[train]") {
  fs::path d = make_corpus("noresume");
  TrainConfig c = parse_train_config(config_json(d, 10), "test.json", Family::llama);
  TrainOptions o;
  o.out_dir = (d / "empty").string();
  o.resume = true;
  REQUIRE_THROWS_WITH(train_model(c, o), Catch::Contains("--resume: no checkpoint"));
  fs::remove_all(d);
}

TEST_CASE("a tokenizer file must bear a name the model folder's loader reads", "[train]") {
  fs::path d = make_corpus("tokname");
  fs::copy_file(d / "tokenizer.json", d / "tok300.json");
  std::string text = config_json(d, 10);
  text.replace(text.find("tokenizer.json"), 14, "tok300.json");
  TrainConfig c = parse_train_config(text, "test.json", Family::llama);
  TrainOptions o;
  o.out_dir = (d / "out").string();
  REQUIRE_THROWS_WITH(train_model(c, o), Catch::Contains("field 'tokenizer': '" + (d / "tok300.json").string() +
                                                         "' must be a folder or a file named tokenizer.model") &&
                                             Catch::Contains("found a file named 'tok300.json'"));
  REQUIRE_FALSE(fs::exists(d / "out"));
  fs::remove_all(d);
}

TEST_CASE("bad training configs name the field", "[train]") {
  const fs::path d = "/nonexistent";
  REQUIRE_THROWS_WITH(parse_train_config(config_json(d, 10, ", \"batch\": 0"), "cfg.json", Family::llama),
                      Catch::Contains("cfg.json: field 'batch' must be an integer >= 1, found 0"));
  REQUIRE_THROWS_WITH(parse_train_config(config_json(d, 10, ", \"lr\": \"fast\""), "cfg.json", Family::llama),
                      Catch::Contains("field 'lr' must be a number") && Catch::Contains("found \"fast\""));
  REQUIRE_THROWS_WITH(parse_train_config(config_json(d, 10, ", \"lr_max\": 1"), "cfg.json", Family::llama),
                      Catch::Contains("cfg.json: unknown field 'lr_max'"));
  REQUIRE_THROWS_WITH(parse_train_config(config_json(d, 4), "cfg.json", Family::llama),
                      Catch::Contains("field 'warmup' must be < steps (4), found 5"));
  REQUIRE_THROWS_WITH(parse_train_config(config_json(d, 10, ", \"seq_len\": 4096"), "cfg.json", Family::llama),
                      Catch::Contains("field 'seq_len' must be <= model.max_positions (128), found 4096"));
  {
    std::string js = config_json(d, 10);
    js.replace(js.find("\"n_kv_head\": 2, "), std::string("\"n_kv_head\": 2, ").size(), "\"attention_bias\": false, ");
    REQUIRE_THROWS_WITH(parse_train_config(js, "cfg.json", Family::gpt2),
                        Catch::Contains("field 'model.attention_bias' is for the llama family (gpt2 always has biases), found false"));
  }
  REQUIRE_THROWS_WITH(parse_train_config(config_json(d, 10, ", \"copy_min_len\": 9, \"copy_max_len\": 8"), "cfg.json",
                                         Family::llama),
                      Catch::Contains("field 'copy_max_len' must be >= copy_min_len (9), found 8"));
  // seq_len 32 after BOS leaves 32 tokens: a span and its repeat (one token apart at least) fit up to 15.
  REQUIRE_THROWS_WITH(parse_train_config(config_json(d, 10, ", \"copy_fraction\": 0.5, \"copy_min_len\": 16"), "cfg.json",
                                         Family::llama),
                      Catch::Contains("field 'copy_min_len' must be <= 15 (a span and its repeat fit in seq_len 32), found 16"));
  REQUIRE_THROWS_WITH(parse_train_config("{\"tokenizer\": \"t\", \"train_text\": \"a\", \"heldout_text\": \"b\"}", "cfg.json",
                                         Family::llama),
                      Catch::Contains("cfg.json: field 'model' must be an object"));
  REQUIRE_THROWS_WITH(parse_train_config("{\"model\": {\"n_layer\": 2, \"n_head\": 2}, \"tokenizer\": \"t\", "
                                         "\"train_text\": \"a\", \"heldout_text\": \"b\"}",
                                         "cfg.json", Family::llama),
                      Catch::Contains("cfg.json: field 'model.d_model' is required"));
  REQUIRE_THROWS_WITH(parse_train_config("{\"model\": {\"d_model\": 30, \"n_layer\": 2, \"n_head\": 4}, \"tokenizer\": \"t\", "
                                         "\"train_text\": \"a\", \"heldout_text\": \"b\"}",
                                         "cfg.json", Family::llama),
                      Catch::Contains("field 'model.n_head' must divide model.d_model (30), found 4"));
  REQUIRE_THROWS_WITH(parse_train_config("{\"model\": {\"d_model\": 32, \"n_layer\": 2, \"n_head\": 4}, \"tokenizer\": \"t\", "
                                         "\"heldout_text\": \"b\"}",
                                         "cfg.json", Family::llama),
                      Catch::Contains("exactly one of the fields 'train_text' and 'train_ids' must be given, found neither"));
  REQUIRE_THROWS_WITH(parse_train_config("[1, 2]", "cfg.json", Family::llama), Catch::Contains("cfg.json: expected a JSON object"));
  REQUIRE_THROWS_WITH(parse_train_config("{", "cfg.json", Family::llama), Catch::Contains("cfg.json: not valid JSON"));
}

TEST_CASE("copy task: every row repeats one span of the configured length later in the row", "[train]") {
  const fs::path d = "/nonexistent";
  TrainConfig c = parse_train_config(config_json(d, 10, ", \"copy_fraction\": 1.0, \"copy_min_len\": 6, \"copy_max_len\": 9"),
                                     "cfg.json", Family::llama);
  c.batch = 64;
  std::vector<int32_t> ids(5000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(3 + i % 4000);  // no natural repeats
  const at::Tensor batch = training_batch(ids, c, 1, 17);
  REQUIRE(batch.sizes() == at::IntArrayRef({64, 33}));
  REQUIRE(at::equal(batch, training_batch(ids, c, 1, 17)));  // a function of the step alone
  std::set<int64_t> lengths;
  for (int64_t b = 0; b < c.batch; ++b) {
    const at::Tensor row = batch[b];
    REQUIRE(row[0].item<int64_t>() == 1);  // BOS
    // The longest run of tokens equal to an earlier run, at its start: the copy.
    int64_t best = 0;
    for (int64_t i = 1; i < 33; ++i) {
      for (int64_t j = i + 1; j < 33; ++j) {
        int64_t n = 0;
        while (j + n < 33 && i + n < j && row[i + n].item<int64_t>() == row[j + n].item<int64_t>()) ++n;
        best = std::max(best, n);
      }
    }
    INFO("row " << b);
    REQUIRE(best >= 6);
    REQUIRE(best <= 9);  // the corpus never repeats itself: the longest repeat is the copy
    lengths.insert(best);
  }
  CHECK(lengths.size() >= 3);  // lengths are drawn, not fixed

  // copy_random: the repeated span is drawn from the corpus, not taken from the row's own text.
  c.copy_random = 1.0;
  const at::Tensor random_batch = training_batch(ids, c, 1, 17);
  CHECK_FALSE(at::equal(random_batch, batch));
}
