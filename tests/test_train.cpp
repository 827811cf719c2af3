// Training loop: loss goes down, the schedule, exact resume, config errors.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "models/io/checkpoint.h"
#include "models/text/tokenizer.h"
#include "models/lab/train.h"
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

// The base config with `extra` (", \"key\": value, ...") replacing or adding fields: a key is written once.
std::string config_json(const fs::path& d, int steps, const std::string& extra = "") {
  std::string base = std::string("{\"model\": {\"d_model\": 32, \"n_layer\": 2, \"n_head\": 4, \"n_kv_head\": 2, \"d_ff\": 64, "
                     "\"max_positions\": 128},") +
         "\"tokenizer\": \"" + (d / "tokenizer.json").string() + "\", \"train_text\": \"" + (d / "train.txt").string() +
         "\", \"heldout_text\": \"" + (d / "heldout.txt").string() + "\", \"seq_len\": 32, \"batch\": 4, \"steps\": " +
         std::to_string(steps) + ", \"warmup\": 5, \"lr\": 0.01, \"min_lr\": 0.001, \"eval_interval\": 0, "
         "\"eval_batches\": 2, \"checkpoint_interval\": 0, \"threads\": 1, \"seed\": 7}";
  if (extra.empty()) return base;
  nlohmann::json j = nlohmann::json::parse(base);
  j.update(nlohmann::json::parse("{" + extra.substr(extra.find(',') + 1) + "}"));
  return j.dump();
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

TEST_CASE("the chunked loss equals cross_entropy of the whole logits, value and gradients", "[train]") {
  at::manual_seed(3);  // drawn on the CPU, run on test::device()
  const at::Device dev = test::device();
  const at::Tensor h0 = at::randn({37, 12}, at::kDouble).to(dev);
  const at::Tensor w0 = at::randn({50, 12}, at::kDouble).to(dev);
  const at::Tensor y = at::randint(0, 50, {37}, at::kLong).to(dev);
  auto reference = [&](at::Tensor* gh, at::Tensor* gw) {
    at::Tensor h = h0.clone().requires_grad_(), w = w0.clone().requires_grad_();
    at::Tensor l = torch::nn::functional::cross_entropy(at::matmul(h, w.t()), y);
    (3.0 * l).backward();  // a scaled incoming gradient reaches both inputs
    *gh = h.grad();
    *gw = w.grad();
    return l.item<double>();
  };
  at::Tensor rh, rw;
  const double want = reference(&rh, &rw);
  for (int64_t chunk : {1, 8, 37, 100, 0}) {
    INFO("chunk_rows " << chunk);
    at::Tensor h = h0.to(at::kFloat).requires_grad_(), w = w0.to(at::kFloat).requires_grad_();
    at::Tensor l = linear_cross_entropy(h, w, y, chunk);
    REQUIRE(l.item<double>() == Approx(want).epsilon(test::tol(1e-6)));
    (3.0 * l).backward();
    REQUIRE(test::max_abs_diff(h.grad(), rh) < test::tol(1e-6));
    REQUIRE(test::max_abs_diff(w.grad(), rw) < test::tol(1e-6));
  }
  {
    torch::NoGradGuard no_grad;  // the held-out loss: no gradients kept
    REQUIRE(linear_cross_entropy(h0.to(at::kFloat), w0.to(at::kFloat), y, 8).item<double>() == Approx(want).epsilon(test::tol(1e-6)));
  }
  REQUIRE_THROWS_WITH(linear_cross_entropy(h0, w0.narrow(1, 0, 11), y),
                      Catch::Contains("expected hidden [N, D], weight [V, D] and int64 targets [N] (N >= 1); found "
                                      "[37, 12], [50, 11] and Long [37]"));
}

TEST_CASE("a tied model's gradients through the chunked loss are those of its full logits", "[train]") {
  // The tied embedding is both the lookup table and the output projection: its gradient sums both paths.
  // A training step's forward and backward, on test::device().
  for (const ModelConfig& config : {test::tiny_llama_config(), test::tiny_gpt2_config()}) {
    INFO(config.model_type);
    auto d = test::random_decoder(config, 11, 0.1, test::device());
    for (auto& [name, p] : d->named_parameters()) p.set_requires_grad(true);
    const at::Tensor tokens =
        at::tensor(test::random_tokens(2 * 17, config.vocab_size, 5)).view({2, 17}).to(test::device());
    const at::Tensor inputs = tokens.narrow(1, 0, 16), targets = tokens.narrow(1, 1, 16).reshape({-1});
    auto grads = [&](bool fused) {
      for (auto& [name, p] : d->named_parameters()) p.mutable_grad() = at::Tensor();
      at::Tensor l;
      if (fused) {
        const at::Tensor hd = d->hidden_full(inputs);
        l = linear_cross_entropy(hd.reshape({-1, hd.size(-1)}), d->head_weight(), targets, 5);
      } else {
        const at::Tensor logits = d->forward_full(inputs);
        l = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets);
      }
      l.backward();
      std::vector<at::Tensor> out{l.detach()};
      for (auto& [name, p] : d->named_parameters()) out.push_back(p.grad().clone());
      return out;
    };
    const auto a = grads(true), b = grads(false);
    REQUIRE(a.size() == b.size());
    REQUIRE(a[0].item<double>() == Approx(b[0].item<double>()).epsilon(test::tol(1e-5)));
    for (size_t i = 1; i < a.size(); ++i) {
      INFO(d->named_parameters()[i - 1].first);
      REQUIRE(b[i].abs().max().item<double>() > 0);
      REQUIRE(test::max_abs_diff(a[i], b[i]) < test::tol(1e-5) * (1 + b[i].abs().max().item<double>()));
    }
    for (auto& [name, p] : d->named_parameters()) p.set_requires_grad(false);
  }
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

TEST_CASE("init_from starts from a model's weights, its MLP grown without changing what it computes", "[train]") {
  fs::path d = make_corpus("grow");
  TrainConfig c = parse_train_config(config_json(d, 12), "test.json", Family::llama);
  TrainOptions o;
  o.out_dir = (d / "src").string();
  train_model(c, o);
  const std::string src = o.out_dir;
  auto source = load_decoder(src, at::Device(at::kCPU), at::kFloat);
  const at::Tensor tokens = at::tensor(test::random_tokens(24, source->config().vocab_size, 3)).view({1, -1});
  const at::Tensor want = source->forward_full(tokens);

  ModelConfig wide = source->config();
  wide.d_ff = 96;  // from 64
  auto grown = make_decoder(wide, at::Device(at::kCPU), at::kFloat);
  {
    auto init = random_tensors(wide, 5);
    std::map<std::string, at::Tensor> by_name(init.begin(), init.end());
    grown->load_weights([&](const std::string& name, const std::vector<int64_t>&) { return by_name.at(name); });
  }
  init_from_model(src, wide, *grown);
  REQUIRE(test::max_abs_diff(grown->forward_full(tokens), want) < 1e-5);
  for (const auto& [name, p] : grown->named_parameters()) {
    if (name == "model.layers.0.mlp.down_proj.weight") {
      REQUIRE(p.sizes().vec() == std::vector<int64_t>{32, 96});
      REQUIRE(p.narrow(1, 64, 32).abs().max().item<double>() == 0);  // new units write nothing yet
    }
    if (name == "model.layers.0.mlp.gate_proj.weight") REQUIRE(p.narrow(0, 64, 32).abs().max().item<double>() > 0);
  }

  // Through the trainer: the first step's loss is the source's loss on that batch, grown or not.
  auto first_loss = [&](int64_t d_ff, const std::string& out) {
    TrainConfig g = parse_train_config(config_json(d, 6, ", \"init_from\": \"" + src + "\""), "grow.json", Family::llama);
    g.model.d_ff = d_ff;
    TrainOptions go;
    go.out_dir = (d / out).string();
    go.write_model = false;
    return train_model(g, go).initial_loss;
  };
  const double same = first_loss(64, "same"), wider = first_loss(96, "wider");
  REQUIRE(same < std::log(static_cast<double>(source->config().vocab_size)) - 1);  // trained, not random (ln V)
  REQUIRE(wider == Approx(same).epsilon(1e-5));

  ModelConfig other = wide;
  other.d_model = 48;
  other.d_head = 12;
  auto bad = make_decoder(other, at::Device(at::kCPU), at::kFloat);
  REQUIRE_THROWS_WITH(init_from_model(src, other, *bad),
                      Catch::Contains("field 'init_from': '" + src + "' has d_model 32, expected the config's 48 "
                                      "(only the MLP width d_ff may grow)"));
  ModelConfig narrow = source->config();
  narrow.d_ff = 32;
  auto small = make_decoder(narrow, at::Device(at::kCPU), at::kFloat);
  REQUIRE_THROWS_WITH(init_from_model(src, narrow, *small),
                      Catch::Contains("has d_ff 64, expected at most the config's 32 (the MLP may grow, not shrink)"));
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
                      Catch::Contains("field 'copy_min_len' must be <= 15 (a span and its repeat fit in seq_len 32 with copy_min_gap 0 between them), found 16"));
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
  REQUIRE_THROWS_WITH(parse_train_config("{", "cfg.json", Family::llama), Catch::Contains("cfg.json: malformed JSON"));
}

namespace {

// The longest run of tokens in `row` equal to an earlier run (the copy: the corpus below never repeats itself),
// and the number of tokens between that earlier run's end and the repeat's start.
struct Repeat {
  int64_t length = 0, gap = -1;
};
Repeat longest_repeat(const at::Tensor& row_tensor) {
  const auto row = row_tensor.accessor<int64_t, 1>();
  const int64_t n_tok = row_tensor.size(0);
  Repeat best;
  for (int64_t i = 1; i < n_tok; ++i) {
    for (int64_t j = i + 1; j < n_tok; ++j) {
      int64_t n = 0;
      while (j + n < n_tok && i + n < j && row[i + n] == row[j + n]) ++n;
      if (n > best.length) best = {n, j - i - n};
    }
  }
  return best;
}

}  // namespace

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
    const int64_t best = longest_repeat(row).length;
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

  // copy_substitute: some tokens of a text span are replaced (breaking the corpus's run of consecutive ids)
  // before the span is repeated, and the repeat still equals the altered span.
  c.copy_random = 0.0;
  c.copy_substitute = 0.5;
  const at::Tensor sub_batch = training_batch(ids, c, 1, 17);
  int64_t substituted = 0;
  for (int64_t b = 0; b < c.batch; ++b) {
    const at::Tensor row_t = sub_batch[b];
    const auto row = row_t.accessor<int64_t, 1>();
    // Places where the row's text stops running through consecutive ids (4002 -> 3 is the corpus wrapping).
    for (int64_t i = 2; i < 33; ++i) substituted += row[i] != row[i - 1] + 1 && !(row[i - 1] == 4002 && row[i] == 3);
    INFO("row " << b);
    CHECK(longest_repeat(row_t).length >= 6);  // the altered span is repeated whole
  }
  // A plain copy breaks the consecutive run at most 2 times (into and out of the repeat), plus the span's own
  // substitutions, twice each where the span and its repeat are; half of 6-9 tokens per row are substituted.
  CHECK(substituted > 4 * c.batch);

  // copy_min_gap: the repeat starts at least copy_min_gap + 1 tokens after the span's end.
  c.copy_substitute = 0.0;
  c.copy_min_gap = 10;
  const at::Tensor far_batch = training_batch(ids, c, 1, 17);
  std::set<int64_t> gaps;
  for (int64_t b = 0; b < c.batch; ++b) {
    const Repeat r = longest_repeat(far_batch[b]);
    INFO("row " << b << ": span " << r.length << ", gap " << r.gap);
    REQUIRE(r.length >= 6);
    CHECK(r.gap >= 11);
    gaps.insert(r.gap);
  }
  CHECK(gaps.size() >= 3);  // still drawn, not fixed
  REQUIRE_THROWS_WITH(parse_train_config(config_json(d, 10, ", \"copy_fraction\": 1.0, \"copy_min_len\": 6, \"copy_min_gap\": 20"),
                                         "cfg.json", Family::llama),
                      Catch::Contains("cfg.json: field 'copy_min_len' must be <= 5 (a span and its repeat fit in seq_len 32 "
                                      "with copy_min_gap 20 between them), found 6"));
}
