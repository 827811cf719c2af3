// Model embedders: the BERT encoder against a second implementation in plain ATen ops (float64, straight from the
// safetensors bytes), sentence-transformers pooling (padding ignored, unit norm, zero vector for empty text),
// truncation, checkpoint layouts, the lm embedder against the decoder's full (cache-free) forward, the factory,
// and the messages of bad input. Random weights: nothing here asserts retrieval quality.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <catch2/catch.hpp>

#include <ctime>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "models/memory/model_embedders.h"
#include "models/io/checkpoint.h"
#include "models/nn/decoder.h"
#include "models/memory/embedder_factory.h"
#include "models/lab/make_model.h"
#include "models/nn/runtime.h"
#include "models/io/safetensors.h"
#include "models/text/tokenizer.h"
#include "tests/test_util.h"

using namespace sinkflow;
namespace fs = std::filesystem;

namespace {

// Fresh directories under the system temp dir, removed when the test binary exits.
struct TempDirs {
  std::vector<fs::path> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (const auto& d : dirs) fs::remove_all(d, ec);
  }
};

fs::path fresh_dir(const std::string& name) {
  static TempDirs temp_dirs;
  const fs::path dir = fs::temp_directory_path() / ("sinkflow_test_embedders_" + std::to_string(::getpid()) + "_" +
                                                    std::to_string(temp_dirs.dirs.size()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  temp_dirs.dirs.push_back(dir);
  return dir;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

// A model folder written by make_model from a shape preset (under <name>/<preset> so the folder name is known).
std::string make_preset(const std::string& name, const std::string& preset, uint64_t seed = 1) {
  const fs::path dir = fresh_dir(name) / preset;
  MakeModelOptions opt;
  opt.config = shape_preset(preset);
  opt.seed = seed;
  make_model(dir.string(), opt);
  return dir.string();
}

// tiny-bert with weights large enough that attention is far from uniform and every layer matters:
// matrices N(0, 0.25), embeddings N(0, 1), biases N(0, 0.1), LayerNorm weights 1 + N(0, 0.1).
std::string make_sharp_bert(const std::string& name) {
  const std::string dir = make_preset(name, "tiny-bert", 3);
  const ModelConfig c = load_model_config(dir);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [tname, shape] : expected_tensors(c)) {
    at::Tensor noise = at::normal(0.0, 1.0, shape, gen);
    const bool norm = tname.find("LayerNorm") != std::string::npos;
    const bool bias = tname.find("bias") != std::string::npos;
    const bool embedding = tname.find("embeddings.") == 0 && !norm;
    at::Tensor t = norm && !bias ? 1.0 + 0.1 * noise : bias ? 0.1 * noise : embedding ? noise : 0.25 * noise;
    tensors.emplace_back(tname, t);
  }
  save_checkpoint(dir, c, tensors);
  return dir;
}

// ---- the reference: a second BERT, float64, explicit matmuls per head, from the raw safetensors tensors ----

at::Tensor layer_norm_ref(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  at::Tensor mean = x.mean(-1, true);
  at::Tensor var = (x - mean).pow(2).mean(-1, true);
  return (x - mean) / (var + eps).sqrt() * w + b;
}

// Last hidden state [T, D] of one unpadded sequence.
at::Tensor bert_reference(const std::string& dir, const std::vector<int64_t>& ids) {
  const ModelConfig c = load_model_config(dir);
  SafetensorsFile file((fs::path(dir) / "model.safetensors").string());
  auto w = [&](const std::string& name) {
    const std::string stored = file.contains(name) ? name : "bert." + name;
    return file.tensor(stored).to(at::kDouble);
  };
  const int64_t t = static_cast<int64_t>(ids.size()), dh = c.d_head;
  at::Tensor x = w("embeddings.word_embeddings.weight").index_select(0, at::tensor(ids)) +
                 w("embeddings.position_embeddings.weight").narrow(0, 0, t) +
                 w("embeddings.token_type_embeddings.weight")[0];
  x = layer_norm_ref(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), c.norm_eps);
  auto linear = [&](const at::Tensor& in, const std::string& p) {
    return at::matmul(in, w(p + ".weight").t()) + w(p + ".bias");
  };
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = "encoder.layer." + std::to_string(l) + ".";
    at::Tensor q = linear(x, p + "attention.self.query");
    at::Tensor k = linear(x, p + "attention.self.key");
    at::Tensor v = linear(x, p + "attention.self.value");
    std::vector<at::Tensor> heads;
    for (int64_t h = 0; h < c.n_head; ++h) {
      at::Tensor qh = q.narrow(1, h * dh, dh), kh = k.narrow(1, h * dh, dh), vh = v.narrow(1, h * dh, dh);
      at::Tensor s = at::matmul(qh, kh.t()) / std::sqrt(static_cast<double>(dh));
      at::Tensor e = (s - std::get<0>(s.max(1, true))).exp();
      heads.push_back(at::matmul(e / e.sum(1, true), vh));
    }
    at::Tensor attn = linear(at::cat(heads, 1), p + "attention.output.dense");
    x = layer_norm_ref(attn + x, w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias"),
                       c.norm_eps);
    at::Tensor i = linear(x, p + "intermediate.dense");
    i = 0.5 * i * (1.0 + (i / std::sqrt(2.0)).erf());
    x = layer_norm_ref(linear(i, p + "output.dense") + x, w(p + "output.LayerNorm.weight"),
                       w(p + "output.LayerNorm.bias"), c.norm_eps);
  }
  return x;
}

at::Tensor mean_normalized(const at::Tensor& rows) {
  at::Tensor m = rows.to(at::kDouble).mean(0);
  return m / m.norm();
}

at::Tensor as_tensor(const std::vector<float>& v) { return at::tensor(v).to(at::kDouble); }

double norm_of(const std::vector<float>& v) { return as_tensor(v).norm().item<double>(); }

const std::string kShort = "And God said, Let there be light: and there was light.";
const std::string kLong =
    "And God called the dry land Earth; and the gathering together of the waters called he Seas: and God saw "
    "that it was good. The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park.";

}  // namespace

// ---- BertEncoder / BertEmbedder -------------------------------------------------------------------------

TEST_CASE("bert encoder equals a plain-ATen float64 reference", "[embedders][bert]") {
  for (bool sharp : {true, false}) {
    DYNAMIC_SECTION((sharp ? "large random weights" : "make-model weights")) {
      const std::string dir = sharp ? make_sharp_bert("ref_sharp") : make_preset("ref_plain", "tiny-bert");
      BertEmbedder emb(dir);
      c10::InferenceMode guard;
      for (const std::string& text : {kShort, kLong}) {
        const std::vector<int64_t> ids = emb.input_ids(text);
        REQUIRE(ids.size() > 10);
        at::Tensor ours = emb.encoder().forward(at::tensor(ids).view({1, -1}), at::Tensor())[0];
        at::Tensor ref = bert_reference(dir, ids);
        REQUIRE(ours.sizes() == ref.sizes());
        CHECK(test::max_abs_diff(ours, ref) < 1e-5);
        CHECK(ref.abs().max().item<double>() > 0.5);  // not a comparison of zeros
        // The embedding is the normalized mean of that hidden state.
        CHECK(test::max_abs_diff(as_tensor(emb.embed(text)), mean_normalized(ref)) < 1e-5);
      }
      // Random ids over the whole vocabulary, the longest sequence the model takes.
      const auto ids = test::random_tokens(512, 1024, 5);
      at::Tensor ours = emb.encoder().forward(at::tensor(ids).view({1, -1}), at::Tensor())[0];
      CHECK(test::max_abs_diff(ours, bert_reference(dir, ids)) < 1e-5);
    }
  }
}

TEST_CASE("bert parameters carry Hugging Face names in checkpoint order", "[embedders][bert]") {
  const ModelConfig c = shape_preset("tiny-bert");
  auto model = make_bert(c, at::Device(at::kCPU), at::kFloat);
  const auto params = model->named_parameters();
  const auto expected = expected_tensors(c);
  REQUIRE(params.size() == expected.size());
  for (size_t i = 0; i < params.size(); ++i) {
    CHECK(params[i].first == expected[i].first);
    CHECK(params[i].second.sizes().vec() == expected[i].second);
  }
  CHECK(params[5].first == "encoder.layer.0.attention.self.query.weight");
}

TEST_CASE("bert checkpoints saved from BertFor* heads: bert. prefix, pooler and head ignored", "[embedders][bert]") {
  const std::string dir = make_sharp_bert("prefix_src");
  const fs::path prefixed = fresh_dir("prefix") / "prefixed-bert";
  fs::create_directories(prefixed);
  fs::copy_file(fs::path(dir) / "config.json", prefixed / "config.json");
  fs::copy_file(fs::path(dir) / "vocab.txt", prefixed / "vocab.txt");
  SafetensorsFile src((fs::path(dir) / "model.safetensors").string());
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& name : src.names()) tensors.emplace_back("bert." + name, src.tensor(name));
  tensors.emplace_back("bert.pooler.dense.weight", at::ones({64, 64}));
  tensors.emplace_back("bert.pooler.dense.bias", at::ones({64}));
  tensors.emplace_back("cls.predictions.bias", at::ones({1024}));
  save_safetensors((prefixed / "model.safetensors").string(), tensors);

  BertEmbedder a(dir), b(prefixed.string());
  CHECK(b.name() == "bert:prefixed-bert-64");
  for (const std::string& text : {kShort, kLong}) CHECK(a.embed(text) == b.embed(text));
}

TEST_CASE("bert mean pooling ignores padding: a batch equals its texts embedded alone", "[embedders][bert]") {
  const std::string dir = make_sharp_bert("padding");
  BertEmbedder emb(dir);
  const std::vector<std::string> texts = {kShort, kLong, "", "light", kShort + " " + kShort};
  REQUIRE(emb.input_ids(kShort).size() + 10 < emb.input_ids(kLong).size());  // real padding in the batch
  const auto batch = emb.embed_batch(texts);
  REQUIRE(batch.size() == texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto alone = emb.embed(texts[i]);
    REQUIRE(alone.size() == 64);
    CHECK(test::max_abs_diff(as_tensor(batch[i]), as_tensor(alone)) < 1e-6);
  }
  // Other groupings of the same texts (at most 40 padded tokens per forward) agree too.
  BertEmbedder::Options opt;
  opt.batch_tokens = 40;
  BertEmbedder small(dir, at::Device(at::kCPU), opt);
  CHECK(small.name() == emb.name());
  const auto batch2 = small.embed_batch(texts);
  for (size_t i = 0; i < texts.size(); ++i) CHECK(test::max_abs_diff(as_tensor(batch2[i]), as_tensor(batch[i])) < 1e-6);

  // The mask is what makes it work: the same padded batch without a mask changes the short text's vector.
  c10::InferenceMode guard;
  const auto s = emb.input_ids(kShort), l = emb.input_ids(kLong);
  at::Tensor ids = at::zeros({2, static_cast<int64_t>(l.size())}, at::kLong);
  at::Tensor mask = at::zeros_like(ids);
  ids[0].narrow(0, 0, static_cast<int64_t>(s.size())).copy_(at::tensor(s));
  mask[0].narrow(0, 0, static_cast<int64_t>(s.size())).fill_(1);
  ids[1].copy_(at::tensor(l));
  mask[1].fill_(1);
  at::Tensor masked = masked_mean_normalize(emb.encoder().forward(ids, mask), mask)[0];
  at::Tensor unmasked = masked_mean_normalize(emb.encoder().forward(ids, at::Tensor()), mask)[0];
  CHECK(test::max_abs_diff(masked, as_tensor(emb.embed(kShort))) < 1e-6);
  CHECK(test::max_abs_diff(unmasked, as_tensor(emb.embed(kShort))) > 1e-3);
}

TEST_CASE("bert embeddings: unit norm, deterministic, zero for empty text, name and dim", "[embedders][bert]") {
  const std::string dir = make_preset("basics", "tiny-bert");
  BertEmbedder emb(dir);
  CHECK(emb.name() == "bert:tiny-bert-64");
  CHECK(BertEmbedder(dir + "/").name() == "bert:tiny-bert-64");
  CHECK(emb.dim() == 64);
  CHECK(emb.max_tokens() == 512);
  const auto v = emb.embed(kLong);
  CHECK(std::abs(norm_of(v) - 1.0) < 1e-5);
  CHECK(emb.embed(kLong) == v);           // same call, same bits
  CHECK(BertEmbedder(dir).embed(kLong) == v);  // a second load, same bits
  CHECK(emb.embed(kShort) != v);
  for (const std::string& empty : {std::string(), std::string("   \n\t ")}) {
    CHECK(emb.input_ids(empty).empty());
    CHECK(emb.embed(empty) == std::vector<float>(64, 0.0f));
  }
  const auto ids = emb.input_ids("light");
  REQUIRE(ids.size() == 3);
  CHECK(ids.front() == emb.tokenizer().token_id("[CLS]"));
  CHECK(ids.back() == emb.tokenizer().token_id("[SEP]"));
  CHECK(ids[1] == emb.tokenizer().token_id("light"));
}

TEST_CASE("bert embeddings from several threads equal the single-threaded ones", "[embedders][bert]") {
  const std::string dir = make_preset("threads", "tiny-bert");
  BertEmbedder emb(dir);
  const auto expected_short = emb.embed(kShort), expected_long = emb.embed(kLong);
  std::vector<int> ok(4, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      bool good = true;
      for (int r = 0; r < 5; ++r) good = good && emb.embed(i % 2 ? kShort : kLong) == (i % 2 ? expected_short : expected_long);
      ok[i] = good ? 1 : 0;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(ok == std::vector<int>(4, 1));
}

TEST_CASE("bert truncates to max_tokens, keeping [CLS] and [SEP]", "[embedders][bert]") {
  const std::string dir = make_sharp_bert("truncate");
  std::string huge;
  for (int i = 0; i < 300; ++i) huge += "and the earth ";  // 900 WordPiece tokens
  {
    BertEmbedder emb(dir);
    const auto ids = emb.input_ids(huge);
    REQUIRE(ids.size() == 512);
    CHECK(ids.front() == emb.tokenizer().token_id("[CLS]"));
    CHECK(ids.back() == emb.tokenizer().token_id("[SEP]"));
    CHECK(std::abs(norm_of(emb.embed(huge)) - 1.0) < 1e-5);
  }
  // sentence_bert_config.json sets the folder's default (all-MiniLM-L6-v2 has 256): same name.
  write_file(fs::path(dir) / "sentence_bert_config.json", R"({"max_seq_length": 16, "do_lower_case": false})");
  BertEmbedder emb16(dir);
  CHECK(emb16.max_tokens() == 16);
  CHECK(emb16.name() == "bert:tiny-bert-64");
  const auto ids = emb16.input_ids(huge);
  REQUIRE(ids.size() == 16);
  {
    c10::InferenceMode guard;
    CHECK(test::max_abs_diff(as_tensor(emb16.embed(huge)), mean_normalized(bert_reference(dir, ids))) < 1e-5);
  }
  // An explicit max_tokens that differs from the folder's default changes the vectors, so the name says so.
  BertEmbedder::Options opt;
  opt.max_tokens = 8;
  BertEmbedder emb8(dir, at::Device(at::kCPU), opt);
  CHECK(emb8.input_ids(huge).size() == 8);
  CHECK(emb8.name() == "bert:tiny-bert-64-max8");
  opt.max_tokens = 100000;  // capped at max_position_embeddings
  CHECK(BertEmbedder(dir, at::Device(at::kCPU), opt).max_tokens() == 512);
}

TEST_CASE("bert bad input: messages name the file and what was expected", "[embedders][bert]") {
  const std::string missing = (fresh_dir("missing") / "no-such-model").string();
  REQUIRE_THROWS_WITH(BertEmbedder(missing), Catch::Contains(missing) && Catch::Contains("does not exist"));

  const std::string llama = make_preset("decoder_given", "tiny-llama");
  REQUIRE_THROWS_WITH(BertEmbedder(llama), Catch::Contains("config.json: model_type 'llama' is not a bert model") &&
                                               Catch::Contains("expected a bert model"));
  REQUIRE_THROWS_WITH(make_bert(shape_preset("tiny-gpt2"), at::Device(at::kCPU), at::kFloat),
                      Catch::Contains("expected a bert model"));

  const std::string dir = make_preset("bad_bert", "tiny-bert");
  SECTION("a tensor is missing") {
    SafetensorsFile src((fs::path(dir) / "model.safetensors").string());
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& name : src.names()) {
      if (name != "encoder.layer.1.output.dense.weight") tensors.emplace_back(name, src.tensor(name).clone());
    }
    save_safetensors((fs::path(dir) / "model.safetensors").string(), tensors);
    REQUIRE_THROWS_WITH(BertEmbedder(dir), Catch::Contains("model.safetensors: tensor 'encoder.layer.1.output.dense.weight' is missing"));
  }
  SECTION("a malformed sentence_bert_config.json") {
    write_file(fs::path(dir) / "sentence_bert_config.json", R"({"max_seq_length": "long"})");
    REQUIRE_THROWS_WITH(BertEmbedder(dir), Catch::Contains("sentence_bert_config.json: field 'max_seq_length' is \"long\", expected an integer >= 2"));
  }
  SECTION("no vocabulary") {
    fs::remove(fs::path(dir) / "vocab.txt");
    REQUIRE_THROWS_WITH(BertEmbedder(dir), Catch::Contains("vocab.txt"));
  }
  SECTION("a vocabulary larger than the model's") {
    std::ofstream out(fs::path(dir) / "vocab.txt", std::ios::app);
    for (int i = 0; i < 1100; ++i) out << "extra" << i << "\n";
    out.close();
    REQUIRE_THROWS_WITH(BertEmbedder(dir), Catch::Contains("expected at most vocab_size 1024 (from config.json)"));
  }
  SECTION("bad options") {
    BertEmbedder::Options opt;
    opt.max_tokens = 1;
    REQUIRE_THROWS_WITH(BertEmbedder(dir, at::Device(at::kCPU), opt), Catch::Contains("max_tokens must be 0"));
    opt = {};
    opt.batch_tokens = -1;
    REQUIRE_THROWS_WITH(BertEmbedder(dir, at::Device(at::kCPU), opt),
                        Catch::Contains("batch_tokens must be >= 0 (0 = by device), found -1"));
  }
  SECTION("encoder input out of range") {
    BertEmbedder emb(dir);
    c10::InferenceMode guard;
    REQUIRE_THROWS_WITH(emb.encoder().forward(at::full({1, 3}, 1024, at::kLong), at::Tensor()),
                        Catch::Contains("token id 1024 is outside the vocabulary [0, 1024)"));
    REQUIRE_THROWS_WITH(emb.encoder().forward(at::zeros({1, 513}, at::kLong), at::Tensor()),
                        Catch::Contains("513 tokens exceed the model's max_position_embeddings 512"));
    REQUIRE_THROWS_WITH(emb.encoder().forward(at::zeros({1, 3}, at::kLong), at::ones({1, 4}, at::kLong)),
                        Catch::Contains("attention_mask has shape [1, 4], expected the shape of input_ids [1, 3]"));
  }
}

// ---- LmEmbedder -----------------------------------------------------------------------------------------

namespace {

// The oracle: the full causal forward (no cache) gives logits = hidden @ E^T with E the tied embedding
// [V, D], V > D and E of full column rank, so hidden = logits E (E^T E)^-1 exactly (in float64). Pool as the
// embedder says: the text's tokens only (not the BOS), mean, normalize.
at::Tensor lm_reference(const Decoder& d, const std::vector<int64_t>& ids, int64_t n_prefix) {
  at::Tensor logits = d.forward_full(at::tensor(ids).view({1, -1}))[0].to(at::kDouble);  // [T, V]
  at::Tensor e;
  const std::string name = d.config().family == Family::llama ? "model.embed_tokens.weight" : "transformer.wte.weight";
  for (const auto& [n, p] : d.named_parameters()) {
    if (n == name) e = p.to(at::kDouble);
  }
  REQUIRE(e.defined());
  at::Tensor hidden = at::linalg_solve(at::matmul(e.t(), e), at::matmul(logits, e).t()).t();  // [T, D]
  return mean_normalized(hidden.narrow(0, n_prefix, hidden.size(0) - n_prefix));
}

}  // namespace

TEST_CASE("lm embedder equals the pooled hidden states of the full forward", "[embedders][lm]") {
  for (const std::string preset : {"tiny-llama", "tiny-gpt2"}) {
    DYNAMIC_SECTION(preset) {
      const std::string dir = make_preset("lm_" + preset, preset, 7);
      std::shared_ptr<const Decoder> decoder = load_decoder(dir, at::Device(at::kCPU), at::kFloat);
      std::shared_ptr<const Tokenizer> tok = load_tokenizer(dir);
      REQUIRE(decoder->config().tie_word_embeddings);
      LmEmbedder emb(decoder, tok, preset);
      CHECK(emb.name() == "lm:" + preset + "-64");
      CHECK(emb.dim() == 64);
      const auto ids = emb.input_ids(kLong);
      if (preset == "tiny-llama") {
        REQUIRE(emb.n_prefix() == 1);
        CHECK(ids.front() == decoder->config().bos_token_id);
        CHECK(ids.front() == tok->token_id("<s>"));
      } else {
        CHECK(emb.n_prefix() == 0);
        CHECK(ids == tok->encode(kLong));
      }
      const auto v = emb.embed(kLong);
      CHECK(std::abs(norm_of(v) - 1.0) < 1e-5);
      {
        c10::InferenceMode guard;
        at::Tensor ref = lm_reference(*decoder, ids, emb.n_prefix());
        CHECK(test::max_abs_diff(as_tensor(v), ref) < 1e-5);
      }
      // Other prefill block sizes (one token at a time, blocks that split the BOS from the text) agree.
      for (int64_t block : {1, 3, 17}) {
        LmEmbedder::Options opt;
        opt.prefill_block = block;
        LmEmbedder blocked(decoder, tok, preset, opt);
        CHECK(blocked.name() == emb.name());
        CHECK(test::max_abs_diff(as_tensor(blocked.embed(kLong)), as_tensor(v)) < 1e-5);
      }
      CHECK(emb.embed(kLong) == v);  // deterministic
      CHECK(emb.embed(kShort) != v);
      CHECK(emb.embed("") == std::vector<float>(64, 0.0f));
      // Truncation to the first max_tokens text tokens.
      LmEmbedder::Options opt;
      opt.max_tokens = 5;
      LmEmbedder five(decoder, tok, preset, opt);
      CHECK(five.name() == "lm:" + preset + "-64-max5");
      const auto five_ids = five.input_ids(kLong);
      CHECK(five_ids.size() == static_cast<size_t>(5 + five.n_prefix()));
      c10::InferenceMode guard;
      CHECK(test::max_abs_diff(as_tensor(five.embed(kLong)), lm_reference(*decoder, five_ids, five.n_prefix())) < 1e-5);
    }
  }
}

TEST_CASE("lm embedder bad input", "[embedders][lm]") {
  const std::string dir = make_preset("lm_bad", "tiny-gpt2");
  std::shared_ptr<const Decoder> decoder = load_decoder(dir, at::Device(at::kCPU), at::kFloat);
  std::shared_ptr<const Tokenizer> tok = load_tokenizer(dir);
  REQUIRE_THROWS_WITH(LmEmbedder(nullptr, tok, "m"), Catch::Contains("needs a decoder and its tokenizer"));
  LmEmbedder::Options opt;
  opt.prefill_block = 0;
  REQUIRE_THROWS_WITH(LmEmbedder(decoder, tok, "m", opt), Catch::Contains("prefill_block must be >= 1, found 0"));
  // A tokenizer from a model with a larger vocabulary.
  const fs::path big = fresh_dir("lm_bad_vocab");
  {
    std::ofstream out(big / "vocab.txt");
    out << "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
    for (int i = 0; i < 600; ++i) out << "w" << i << "\n";
  }
  std::shared_ptr<const Tokenizer> big_tok = load_tokenizer(big.string());
  REQUIRE(big_tok->vocab_size() == 605);
  REQUIRE_THROWS_WITH(LmEmbedder(decoder, big_tok, "m"),
                      Catch::Contains("the tokenizer of 'm' has 605 ids, expected at most the model's vocab_size 512"));
}

// ---- the factory ----------------------------------------------------------------------------------------

TEST_CASE("make_embedder builds each kind", "[embedders][factory]") {
  EmbedderConfig hash;
  CHECK(make_embedder(hash)->name() == "hash-384");
  hash.dim = 64;
  CHECK(make_embedder(hash)->dim() == 64);

  EmbedderConfig bert;
  bert.kind = "bert";
  bert.model = make_preset("factory_bert", "tiny-bert");
  auto b = make_embedder(bert);
  CHECK(b->name() == "bert:tiny-bert-64");
  CHECK(b->embed(kShort) == BertEmbedder(bert.model).embed(kShort));

  EmbedderConfig lm;
  lm.kind = "lm";
  lm.model = make_preset("factory_lm", "tiny-llama");
  auto l = make_embedder(lm);
  CHECK(l->name() == "lm:tiny-llama-64");
  CHECK(std::abs(norm_of(l->embed(kShort)) - 1.0) < 1e-5);
  // Sharing the stream's decoder gives the same vectors.
  std::shared_ptr<const Decoder> decoder = load_decoder(lm.model, at::Device(at::kCPU), at::kFloat);
  std::shared_ptr<const Tokenizer> tok = load_tokenizer(lm.model);
  auto shared = make_embedder(lm, decoder, tok);
  CHECK(shared->name() == l->name());
  CHECK(shared->embed(kShort) == l->embed(kShort));
  REQUIRE_THROWS_WITH(make_embedder(lm, decoder, nullptr), Catch::Contains("kind lm was given no tokenizer"));
}

TEST_CASE("embedder config bad input: messages name the field", "[embedders][factory]") {
  EmbedderConfig c;
  c.kind = "sbert";
  REQUIRE_THROWS_WITH(make_embedder(c), Catch::Contains("embedder.kind: unknown embedder kind 'sbert', expected hash, bert or lm"));
  REQUIRE_THROWS_WITH(c.validate("memory.embedder"), Catch::Contains("memory.embedder.kind: unknown embedder kind"));
  c.kind = "bert";
  REQUIRE_THROWS_WITH(make_embedder(c), Catch::Contains("embedder.model: bert needs a model folder"));
  c.kind = "lm";
  REQUIRE_THROWS_WITH(make_embedder(c), Catch::Contains("embedder.model: lm needs a model folder"));
  c.model = "some/folder";
  c.device = "gpu";
  REQUIRE_THROWS_WITH(make_embedder(c), Catch::Contains("embedder.device: unknown device 'gpu', expected cpu, cuda, cuda:N or mps"));
  c.device = "cuda:x";
  REQUIRE_THROWS_WITH(c.validate("embedder"), Catch::Contains("embedder.device"));
  c.device = "cpu";
  c.model = (fresh_dir("factory_missing") / "absent").string();
  REQUIRE_THROWS_WITH(make_embedder(c), Catch::Contains("embedder.model: '" + c.model + "' is not a folder"));
  c.model = make_preset("factory_lm_bert", "tiny-bert");  // an encoder given to lm
  REQUIRE_THROWS_WITH(make_embedder(c), Catch::Contains("model_type 'bert' is not a decoder"));
  c.kind = "bert";
  c.model = make_preset("factory_bert_llama", "tiny-llama");  // a decoder given to bert
  REQUIRE_THROWS_WITH(make_embedder(c), Catch::Contains("expected a bert model"));
  EmbedderConfig h;
  h.dim = 0;
  REQUIRE_THROWS_WITH(make_embedder(h), Catch::Contains("embedder.dim: must be >= 1, found 0"));
  h.dim = 384;
  h.device = "anything";  // hash has no device
  CHECK_NOTHROW(h.validate("embedder"));
}

// ---- throughput (prints; asserts nothing about speed) ---------------------------------------------------

TEST_CASE("embed throughput for 100-token chunks", "[.slow][embedders][bench]") {
  configure_threads(1);
  std::vector<std::string> words;
  {
    std::string w;
    for (char ch : builtin_tokenizer_text()) {
      if (std::isalpha(static_cast<unsigned char>(ch))) {
        w += ch;
      } else if (!w.empty()) {
        words.push_back(w);
        w.clear();
      }
    }
  }
  for (const std::string preset : {"tiny-bert", "minilm-l6"}) {
    const std::string dir = make_preset("bench_" + preset, preset);
    BertEmbedder emb(dir);
    // 64 texts of exactly 100 ids ([CLS] + 98 + [SEP]).
    std::vector<std::string> texts;
    for (size_t k = 0; texts.size() < 64; ++k) {
      std::string text;
      for (size_t i = k; emb.input_ids(text + " " + words[i % words.size()]).size() <= 100; ++i) {
        text += " " + words[i % words.size()];
      }
      while (emb.input_ids(text).size() < 100) text += " 7";
      if (emb.input_ids(text).size() == 100) texts.push_back(text);
    }
    emb.embed_batch({texts[0], texts[1]});  // warm-up
    // Seconds of this thread's CPU time (the build machine is shared: wall time would measure the neighbours;
    // with one intra-op thread every operation runs on the calling thread).
    auto time = [](auto&& f) {
      timespec t0{}, t1{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
      f();
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
      return static_cast<double>(t1.tv_sec - t0.tv_sec) + 1e-9 * static_cast<double>(t1.tv_nsec - t0.tv_nsec);
    };
    double one = 1e9;
    for (int rep = 0; rep < 3; ++rep) {
      one = std::min(one, time([&] {
        for (const auto& t : texts) emb.embed(t);
      }));
    }
    auto rate = [&](double seconds) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(texts.size()) / seconds);
      return std::string(buf);
    };
    std::string line = "embed() " + rate(one);
    for (int64_t budget : {512, 1600, 6400}) {
      BertEmbedder::Options opt;
      opt.batch_tokens = budget;
      BertEmbedder batched(dir, at::Device(at::kCPU), opt);
      double best = 1e9;
      for (int rep = 0; rep < 3; ++rep) best = std::min(best, time([&] { batched.embed_batch(texts); }));
      line += ", embed_batch(" + std::to_string(budget / 100) + " texts/forward) " + rate(best);
    }
    std::printf("bench %s d_model=%lld layers=%lld, 100-token texts, 1 thread, texts per CPU second (best of 3): %s\n",
                preset.c_str(), static_cast<long long>(emb.dim()),
                static_cast<long long>(emb.encoder().config().n_layer), line.c_str());
  }
}


TEST_CASE("bert embeddings pool as the folder's sentence-transformers modules say (cls, mean, max, lasttoken, "
          "with or without Normalize)", "[embedders][bert]") {
  const fs::path dir = fresh_dir("pooling") / "bge";
  MakeModelOptions opt;
  opt.config = shape_preset("tiny-bert");
  opt.seed = 5;
  opt.pooling = "cls";  // as make-model --shape bge-small writes it
  make_model(dir.string(), opt);
  const std::string text = "the evening and the morning were the first day";
  auto hidden_of = [&](const BertEmbedder& emb) {
    c10::InferenceMode guard;
    const auto ids = emb.input_ids(text);
    return emb.encoder().forward(at::tensor(ids).view({1, -1}), at::Tensor())[0].to(at::kDouble);  // [T, D]
  };
  auto unit = [](const at::Tensor& v) { return v / v.norm(); };

  BertEmbedder cls(dir.string());
  CHECK(cls.name() == "bert:bge-64-cls");
  const at::Tensor h = hidden_of(cls);
  const at::Tensor v_cls = as_tensor(cls.embed(text));
  CHECK(test::max_abs_diff(v_cls, unit(h[0])) < 1e-5);
  CHECK(test::max_abs_diff(v_cls, unit(h.mean(0))) > 1e-3);  // not the mean

  auto set_mode = [&](const std::string& mode) {
    test::write_file(dir / "1_Pooling" / "config.json",
                     "{\"word_embedding_dimension\": 64, \"pooling_mode_" + mode + "\": true}");
  };
  set_mode("max_tokens");
  CHECK(test::max_abs_diff(as_tensor(BertEmbedder(dir.string()).embed(text)), unit(std::get<0>(h.max(0)))) < 1e-5);
  set_mode("lasttoken");
  CHECK(test::max_abs_diff(as_tensor(BertEmbedder(dir.string()).embed(text)), unit(h[-1])) < 1e-5);
  set_mode("mean_tokens");
  const BertEmbedder mean(dir.string());
  CHECK(mean.name() == "bert:bge-64");
  CHECK(test::max_abs_diff(as_tensor(mean.embed(text)), unit(h.mean(0))) < 1e-5);

  // Without a Normalize module the vector keeps its length, as sentence-transformers gives it.
  const std::string modules = test::read_file(dir / "modules.json");
  test::write_file(dir / "modules.json", R"([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])");
  CHECK(test::max_abs_diff(as_tensor(BertEmbedder(dir.string()).embed(text)), h.mean(0)) < 1e-4);

  // Bad folders name the file and field.
  set_mode("cls_token");
  test::write_file(dir / "1_Pooling" / "config.json",
                   R"({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true})");
  REQUIRE_THROWS_WITH(BertEmbedder(dir.string()),
                      Catch::Contains("1_Pooling/config.json: expected exactly one pooling_mode_* true, found 2"));
  test::write_file(dir / "modules.json", R"([{"idx": 1, "path": "../../etc", "type": "sentence_transformers.models.Pooling"}])");
  REQUIRE_THROWS_WITH(BertEmbedder(dir.string()), Catch::Contains("modules.json: the Pooling module's field 'path' must name a subfolder"));
  test::write_file(dir / "modules.json", R"([{"idx": 1, "path": "x", "type": "sentence_transformers.models.Dense"}])");
  REQUIRE_THROWS_WITH(BertEmbedder(dir.string()), Catch::Contains("module type \"sentence_transformers.models.Dense\" is not supported"));
  test::write_file(dir / "modules.json", modules);
}
