// Needle cases (construction, scoring, bad input) and the memory region's replacement.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <catch2/catch.hpp>

#include "models/lab/copy_check.h"
#include "models/nn/decoder.h"
#include "models/memory/memory_path.h"
#include "models/lab/needle.h"
#include "models/text/sentencepiece.h"
#include "tests/test_util.h"

using namespace sinkflow;

namespace {

std::unique_ptr<Tokenizer> spm() {
  return load_sentencepiece_model(std::string(SINKFLOW_SOURCE_DIR) + "/tests/data/spm/bpe400.model");
}

std::string haystack() {
  std::string s;
  for (int i = 0; i < 40; ++i) s += "The river ran past the old mill and the farmers sold their grain. ";
  return s;
}

// A decoder without weights for the copy check: `oracle` predicts, after a token seen before, the token that
// followed its last earlier occurrence (a perfect induction head), with logit 10; otherwise, and always when
// not oracle, it predicts nothing (all logits 0). Its hidden states are those logits and its head the identity.
class FakeDecoder final : public Decoder {
 public:
  FakeDecoder(int64_t vocab, bool oracle) : Decoder(config_of(vocab), at::kCPU, at::kFloat), oracle_(oracle) {}
  const Rope* rope() const override { return nullptr; }
  at::Tensor forward(const StepPlan&, KvCache&, bool, at::Tensor*) const override { throw std::logic_error("unused"); }
  at::Tensor hidden_full(const at::Tensor& tokens, int64_t) const override {
    const int64_t b = tokens.size(0), t = tokens.size(1);
    at::Tensor logits = at::zeros({b, t, config_.vocab_size});
    for (int64_t i = 0; i < b && oracle_; ++i) {
      for (int64_t j = 1; j < t; ++j) {
        for (int64_t k = j - 1; k >= 0; --k) {
          if (tokens[i][k].item<int64_t>() == tokens[i][j].item<int64_t>()) {
            logits[i][j][tokens[i][k + 1].item<int64_t>()] = 10.0;
            break;
          }
        }
      }
    }
    return logits;
  }
  at::Tensor head_weight() const override { return at::eye(config_.vocab_size); }
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const override { return {}; }

 private:
  static ModelConfig config_of(int64_t vocab) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.max_positions = 128;
    return c;
  }
  bool oracle_;
};

std::vector<int64_t> counting_corpus(int64_t n) {  // no token twice
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = 3 + i;
  return ids;
}

}  // namespace

TEST_CASE("copy cases: the span is written again after the gap, at evenly spaced corpus offsets", "[needle][copy]") {
  CopyCheckOptions o;
  o.cases = 5;
  o.before = 6;
  o.span = 8;
  o.gap = 10;
  o.prefix = 2;
  o.bos = 1;
  const auto ids = counting_corpus(400);
  const auto cases = copy_cases(ids, o);
  REQUIRE(cases.size() == 5);
  for (const auto& c : cases) {
    REQUIRE(static_cast<int64_t>(c.tokens.size()) == o.sequence_length());
    CHECK(c.tokens[0] == 1);
    CHECK(c.first == 7);
    CHECK(c.repeat == 7 + 8 + 10);
    for (int64_t j = 0; j < o.span; ++j) CHECK(c.tokens[c.repeat + j] == c.tokens[c.first + j]);
    CHECK(c.tokens[c.first] == c.tokens[1] + o.before);  // the text's own span
  }
  CHECK(cases[0].tokens[1] == 3);                        // offset 0
  CHECK(cases[4].tokens[1] == 3 + 400 - (6 + 8 + 10));   // the last full window
  o.random = true;
  const auto random = copy_cases(ids, o);
  int64_t replaced = 0;
  for (size_t i = 0; i < random.size(); ++i) {
    for (int64_t j = 0; j < o.span; ++j) {
      CHECK(random[i].tokens[random[i].repeat + j] == random[i].tokens[random[i].first + j]);
      replaced += random[i].tokens[random[i].first + j] != cases[i].tokens[cases[i].first + j];
    }
  }
  CHECK(replaced > 5 * 8 / 2);  // random corpus tokens, not the text's own
}

TEST_CASE("copy check: a perfect induction head copies every cued span, a blank model none", "[needle][copy]") {
  CopyCheckOptions o;
  o.cases = 6;
  o.before = 5;
  o.span = 10;
  o.gap = 20;
  o.prefix = 3;
  o.bos = 1;
  o.batch = 4;  // two forwards, the second partial
  const auto cases = copy_cases(counting_corpus(300), o);
  const int64_t vocab = 500;
  const CopyReport oracle = copy_check(FakeDecoder(vocab, true), cases, o);
  CHECK(oracle.cases == 6);
  CHECK(oracle.scored == 6 * 7);
  CHECK(oracle.top1_repeat == 1.0);
  CHECK(oracle.exact_repeat == 1.0);
  CHECK(oracle.top1_first == 0.0);  // nothing earlier to copy: argmax is token 0
  CHECK(oracle.nll_first == Approx(std::log(static_cast<double>(vocab))));
  CHECK(oracle.nll_repeat == Approx(std::log(1.0 + (vocab - 1) * std::exp(-10.0))).epsilon(1e-3));  // float32 softmax
  const CopyReport blank = copy_check(FakeDecoder(vocab, false), cases, o);
  CHECK(blank.top1_repeat == 0.0);
  CHECK(blank.exact_repeat == 0.0);
  CHECK(blank.nll_repeat == Approx(std::log(static_cast<double>(vocab))));
}

TEST_CASE("copy check bad input: messages name the field and what was expected", "[needle][copy]") {
  CopyCheckOptions o;
  o.span = 8;
  o.prefix = 8;
  REQUIRE_THROWS_WITH(copy_cases(counting_corpus(500), o), Catch::Contains("copy check: prefix must be in [0, span) with span 8, found 8"));
  o.prefix = 2;
  REQUIRE_THROWS_WITH(copy_cases(counting_corpus(50), o),
                      Catch::Contains("the corpus has 50 tokens, expected at least 136 (before + span + gap)"));
  const auto cases = copy_cases(counting_corpus(500), o);  // 32 + 2 x 8 + 96 = 144 tokens
  REQUIRE_THROWS_WITH(copy_check(FakeDecoder(1000, true), cases, o),
                      Catch::Contains("sequences of 144 tokens exceed the model's 128 positions"));
  o.gap = 60;
  REQUIRE_THROWS_WITH(copy_check(FakeDecoder(100, true), copy_cases(counting_corpus(500), o), o),
                      Catch::Contains("is outside the model's vocabulary (100)"));
}

TEST_CASE("needle case: the needle sits at a sentence boundary, past the sinks, at the requested depth", "[needle]") {
  auto tok = spm();
  NeedleSpec spec;
  for (double depth : {0.0, 50.0, 100.0}) {
    NeedleCase c = build_needle_case(*tok, tok->bos_id(), haystack(), spec, 1000, depth, 4, 252);
    INFO("depth " << depth);
    CHECK(c.tokens.front() == tok->bos_id());
    CHECK(c.needle_begin >= 5);
    CHECK(c.needle_end > c.needle_begin);
    const std::vector<int64_t> needle(c.tokens.begin() + c.needle_begin, c.tokens.begin() + c.needle_end);
    CHECK(tok->decode(needle).find("San Francisco") != std::string::npos);
    CHECK(std::abs(static_cast<int64_t>(c.tokens.size()) - 1000) < 20);
    const std::vector<int64_t> before(c.tokens.begin() + 1, c.tokens.begin() + c.needle_begin);
    const std::string text = tok->decode(before);
    if (!text.empty()) CHECK(text.find_last_not_of(' ') == text.rfind('.'));  // right after a sentence end
    // Depth is measured over the haystack without the needle; walking back costs at most one sentence.
    const double body = static_cast<double>(c.tokens.size() - (c.needle_end - c.needle_begin));
    const double at = static_cast<double>(c.needle_begin) / body;
    if (depth == 50.0) CHECK(std::abs(at - 0.5) < 0.06);
    if (depth == 100.0) CHECK(at > 0.93);
  }
}

TEST_CASE("needle scores", "[needle]") {
  NeedleSpec spec;
  CHECK(answer_found(" Eat a sandwich and sit", spec));
  CHECK_FALSE(answer_found(" to go home", spec));
  // content words after the cloze: eat, sandwich, sit, dolores, park, sunny, day
  CHECK(keyword_score("eat a sandwich and sit in Dolores Park on a sunny day", spec) == Approx(1.0));
  CHECK(keyword_score("eat a sandwich", spec) == Approx(2.0 / 7.0));
  CHECK(keyword_score("nothing here", spec) == Approx(0.0));
}

TEST_CASE("needle bad input fails with a clear message", "[needle][errors]") {
  auto tok = spm();
  NeedleSpec spec;
  REQUIRE_THROWS_WITH(build_needle_case(*tok, 1, "  \n ", spec, 300, 50, 4, 252), Catch::Contains("the haystack is empty"));
  REQUIRE_THROWS_WITH(build_needle_case(*tok, 1, haystack(), spec, 300, 120, 4, 252),
                      Catch::Contains("depth must be in [0, 100] percent, found 120"));
  REQUIRE_THROWS_WITH(build_needle_case(*tok, 1, haystack(), spec, 300, -1, 4, 252), Catch::Contains("depth must be in [0, 100]"));
  REQUIRE_THROWS_WITH(build_needle_case(*tok, 1, haystack(), spec, 300, 50, 4, 10),
                      Catch::Contains("more than the cache window of 10"));
  REQUIRE_THROWS_WITH(build_needle_case(*tok, 1, haystack(), spec, 20, 50, 4, 252), Catch::Contains("cannot hold the sinks"));
}

TEST_CASE("memory region: lowest score or least recently used chunk leaves when full", "[memory]") {
  c10::InferenceMode guard;
  auto d = test::random_decoder(test::tiny_llama_config(), 91);
  auto chunk = [](int64_t id, float score) {
    Retrieved r;
    r.score = score;
    r.chunk.id = id;
    r.chunk.tokens = {1 + id, 2 + id, 3 + id, 4 + id};
    r.chunk.positions = {10 * id, 10 * id + 1, 10 * id + 2, 10 * id + 3};
    return r;
  };
  for (ReplacePolicy policy : {ReplacePolicy::score, ReplacePolicy::lru}) {
    StreamConfig sc;
    sc.cache.n_sink = 2;
    sc.cache.n_memory = 8;  // two chunks of 4
    sc.cache.n_recent = 8;
    StreamSession s(d, sc);
    s.feed(test::random_tokens(10, 97, 92));
    MemoryRegion region(policy);
    CHECK(region.inject(s, {chunk(0, 0.9f), chunk(1, 0.2f)}, InjectMode::text, 1) == std::vector<int64_t>{0, 1});
    CHECK(region.inject(s, {chunk(0, 0.9f)}, InjectMode::text, 2).empty());  // already resident: refreshed only
    CHECK(region.inject(s, {chunk(2, 0.5f)}, InjectMode::text, 3) == std::vector<int64_t>{2});
    // score: chunk 1 (0.2) leaves; lru: chunk 1 (last used at step 1) leaves too, chunk 0 was used at step 2.
    CHECK(region.contains(0));
    CHECK_FALSE(region.contains(1));
    CHECK(region.contains(2));
    CHECK(s.cache().n_memory_used() == 8);
    CHECK(region.resident_positions().size() == 8);
  }
  REQUIRE_THROWS_WITH(parse_replace_policy("fifo"), Catch::Contains("expected score or lru"));
}
