// Needle cases (construction, scoring, bad input) and the memory region's replacement.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <catch2/catch.hpp>

#include "models/memory_path.h"
#include "models/needle.h"
#include "models/sentencepiece.h"
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

}  // namespace

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
