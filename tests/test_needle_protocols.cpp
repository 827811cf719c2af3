// The evaluation protocols of `sinkflow needle --task`: passkey and dialogue cases built as specified (hand-worked
// on a word tokenizer), the prompt placement never re-indexing retrieved text, the cache snapshot the runner
// asks its questions from (oracle: a fresh stream), and the answer-NLL arithmetic.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <map>
#include <set>
#include <sstream>

#include "models/lab/needle.h"
#include "models/lab/needle_run.h"
#include "models/memory/embedder.h"
#include "models/memory/memory_path.h"
#include "models/text/sentencepiece.h"
#include "tests/test_util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;

namespace {

// One token per whitespace-separated word ("\n" is a word of its own); ids are given out on first sight, from 3
// (1 = BOS, 2 = EOS). token_bytes is " word", so a token ends a sentence when its word does.
class WordTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "words"; }
  std::vector<int64_t> encode(std::string_view text) const override {
    std::vector<int64_t> ids;
    std::string word;
    auto emit = [&] {
      if (word.empty()) return;
      auto it = ids_.find(word);
      if (it == ids_.end()) {
        it = ids_.emplace(word, static_cast<int64_t>(words_.size()) + 3).first;
        words_.push_back(word);
      }
      ids.push_back(it->second);
      word.clear();
    };
    for (char c : text) {
      if (c == ' ' || c == '\n') {
        emit();
        if (c == '\n') {
          word = "\n";
          emit();
        }
      } else {
        word += c;
      }
    }
    emit();
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    for (int64_t id : ids) {
      if (id < 3) continue;
      if (!out.empty()) out += ' ';
      out += word(id);
    }
    return out;
  }
  std::string token_bytes(int64_t id) const override { return id < 3 ? "" : " " + word(id); }
  int64_t vocab_size() const override { return static_cast<int64_t>(words_.size()) + 3; }
  int64_t bos_id() const override { return 1; }
  int64_t eos_id() const override { return 2; }
  int64_t token_id(std::string_view token) const override {
    auto it = ids_.find(std::string(token));
    return it == ids_.end() ? -1 : it->second;
  }
  bool is_special(int64_t id) const override { return id < 3; }

 private:
  // Ids never given out (a random model's output) read as "#<id>".
  std::string word(int64_t id) const {
    return id - 3 < static_cast<int64_t>(words_.size()) ? words_[static_cast<size_t>(id - 3)] : "#" + std::to_string(id);
  }
  mutable std::map<std::string, int64_t> ids_;
  mutable std::vector<std::string> words_;
};

// 4 sinks + 32 window, top-2 chunks of `chunk` tokens without overlap, `answer_tokens` greedy tokens.
EvalOptions small_cache(int64_t chunk, int64_t answer_tokens) {
  EvalOptions o;
  o.n_sink = 4;
  o.n_recent = 32;
  o.chunk = chunk;
  o.overlap = 0;
  o.top_k = 2;
  o.max_new_tokens = answer_tokens;
  return o;
}

std::vector<int64_t> slice(const std::vector<int64_t>& v, int64_t b, int64_t e) {
  return std::vector<int64_t>(v.begin() + b, v.begin() + e);
}

}  // namespace

TEST_CASE("passkey case: filler ids repeated, the line at a sentence end near the depth, digits recorded", "[needle][passkey]") {
  WordTokenizer tok;
  PasskeySpec spec;
  spec.filler = "a b. c d e.";  // 5 tokens; sentences end after tokens 1 and 4: boundaries at 0 and 2 of each unit
  const std::vector<int64_t> unit = tok.encode(spec.filler);
  REQUIRE(unit.size() == 5);
  // Length 30 = BOS + 12 line tokens + 17 filler tokens (3 units and "a b.", which ends a sentence).
  EvalCase c = build_passkey_case(tok, 1, spec, 30, 50, 4);
  REQUIRE(c.segments.size() == 1);
  const std::vector<int64_t>& t = c.segments[0];
  CHECK(t.size() == 30);
  CHECK(t[0] == 1);
  // 50% of 17 = 8.5 -> 8, walked back to the boundary at 5 + 2 = 7: the line starts at 1 + 7.
  CHECK(c.needle_begin == 8);
  CHECK(c.needle_end == 20);
  CHECK(c.passkey.size() == 5);
  CHECK(c.passkey[0] != '0');
  CHECK(tok.decode(slice(t, 8, 20)) == "The pass key is " + c.passkey + ". Remember it. " + c.passkey + " is the pass key.");
  CHECK(slice(t, 8, 20) == c.needle);
  for (int64_t i = 0; i < 7; ++i) CHECK(t[static_cast<size_t>(1 + i)] == unit[static_cast<size_t>(i % 5)]);
  for (int64_t i = 7; i < 17; ++i) CHECK(t[static_cast<size_t>(13 + i)] == unit[static_cast<size_t>(i % 5)]);
  CHECK(tok.decode(c.question) == "What is the pass key? The pass key is");
  CHECK(c.answer == tok.encode(c.passkey));
  CHECK(c.answer_text == c.passkey);
  CHECK(c.query == "What is the pass key?");
  // Depth 0: never inside the 4 sinks: the first boundary at or past position 5 (unit boundary 5 -> token 6).
  CHECK(build_passkey_case(tok, 1, spec, 30, 0, 4).needle_begin == 6);
  // Depth 100: after the whole filler, last before the question.
  const EvalCase end = build_passkey_case(tok, 1, spec, 30, 100, 4);
  CHECK(end.needle_begin == 18);
  CHECK(end.needle_end == static_cast<int64_t>(end.segments[0].size()));
  // The digits: reproducible for a cell, different between cells, and a function of the seed.
  CHECK(build_passkey_case(tok, 1, spec, 30, 50, 4).passkey == c.passkey);
  std::set<std::string> keys;
  for (double d : {10.0, 50.0, 90.0}) {
    for (int64_t len : {30, 40}) keys.insert(build_passkey_case(tok, 1, spec, len, d, 4).passkey);
  }
  CHECK(keys.size() == 6);
  spec.seed = 7;
  CHECK(build_passkey_case(tok, 1, spec, 30, 50, 4).passkey != c.passkey);
}

TEST_CASE("passkey case with the shipped tokenizer (no dummy prefix): the seams read as running text", "[needle][passkey]") {
  auto tok = load_sentencepiece_model(std::string(SINKFLOW_SOURCE_DIR) + "/data/models/sinkflow-llama/tokenizer.model");
  const PasskeySpec spec;
  const EvalCase c = build_passkey_case(*tok, tok->bos_id(), spec, 300, 50, 4);
  const std::string text = tok->decode(c.segments[0]) + tok->decode(c.question);
  CHECK(text.find("again. The grass is green.") != std::string::npos);
  CHECK(text.find("again.The") == std::string::npos);
  CHECK(text.find(". The pass key is " + c.passkey + ". Remember it. " + c.passkey + " is the pass key.") != std::string::npos);
  CHECK(tok->decode(c.question) == " What is the pass key? The pass key is");
  CHECK(tok->decode(c.answer) == " " + c.passkey);
}

TEST_CASE("passkey case bad input names the problem", "[needle][passkey][errors]") {
  WordTokenizer tok;
  PasskeySpec spec;
  REQUIRE_THROWS_WITH(build_passkey_case(tok, 1, spec, 1000, 101, 4), Catch::Contains("passkey: depth must be in [0, 100] percent, found 101"));
  REQUIRE_THROWS_WITH(build_passkey_case(tok, 1, spec, 20, 50, 4), Catch::Contains("length 20 cannot hold the sinks (4) and the pass-key line"));
  spec.filler = " \n";
  REQUIRE_THROWS_WITH(build_passkey_case(tok, 1, spec, 1000, 50, 4), Catch::Contains("passkey: the filler is empty"));
}

TEST_CASE("dialogue case: ~turn_tokens user turns cut at sentence ends, the needle whole, the question last", "[needle][dialogue]") {
  WordTokenizer tok;
  std::string hay;
  for (int i = 0; i < 200; ++i) hay += "x y z. ";  // sentences of 3 tokens
  NeedleSpec spec;
  const int64_t length = 400, turn = 64;
  const EvalCase flat = needle_eval_case(tok, 1, hay, spec, length, 50, 4, 252);
  const EvalCase c = build_dialogue_case(tok, 1, hay, spec, length, 50, 4, 252, turn);
  const std::vector<int64_t> user = tok.encode("User:"), assistant = tok.encode("\nAssistant:");
  REQUIRE(assistant.size() == 2);
  std::vector<int64_t> bodies;
  for (size_t s = 0; s < c.segments.size(); ++s) {
    const std::vector<int64_t>& seg = c.segments[s];
    const int64_t lead = s == 0 ? 1 : 0;
    if (s == 0) CHECK(seg[0] == 1);
    CHECK(slice(seg, lead, lead + 1) == user);
    CHECK(slice(seg, static_cast<int64_t>(seg.size()) - 2, static_cast<int64_t>(seg.size())) == assistant);
    const std::vector<int64_t> body = slice(seg, lead + 1, static_cast<int64_t>(seg.size()) - 2);
    bodies.insert(bodies.end(), body.begin(), body.end());
    const bool holds_needle = static_cast<int64_t>(s) == c.needle_segment;
    if (s + 1 < c.segments.size() && !holds_needle) {
      // The last sentence end within 64 tokens: 63 = 21 sentences of 3.
      CHECK(body.size() == 63);
      CHECK(tok.token_bytes(body.back()).back() == '.');
    }
  }
  // The turns hold exactly the needle case's text, and the needle, whole, in its turn.
  CHECK(bodies == slice(flat.segments[0], 1, static_cast<int64_t>(flat.segments[0].size())));
  CHECK(c.segments.size() >= 6);
  const std::vector<int64_t>& ns = c.segments[static_cast<size_t>(c.needle_segment)];
  CHECK(tok.decode(slice(ns, c.needle_begin, c.needle_end)) == spec.needle);
  CHECK(tok.decode(c.question) == "User: " + spec.question + " \n Assistant: " + spec.cloze);
  CHECK(tok.decode(c.answer) == spec.answer);
  CHECK(c.turn_end == tok.encode("\n"));
  REQUIRE_THROWS_WITH(build_dialogue_case(tok, 1, hay, spec, length, 50, 4, 252, 8),
                      Catch::Contains("dialogue: turn_tokens must be >= 16, found 8"));
}

TEST_CASE("prompt placement: retrieved text fed into the stream is never indexed again once evicted", "[needle][memory]") {
  c10::InferenceMode guard;
  auto decoder = test::random_decoder(test::tiny_llama_config(), 5);
  WordTokenizer tok;
  HashEmbedder embedder(64);
  StoreOptions so;
  so.embedder_name = embedder.name();
  so.dim = embedder.dim();
  // 20 stream tokens, a 12-token retrieved block, 30 stream tokens: sinks 2 + window 16, so 62 - 18 = 44 tokens
  // leave the window, the whole block among them.
  const std::vector<int64_t> before = test::random_tokens(20, 90, 1), block = test::random_tokens(12, 90, 2),
                             after = test::random_tokens(30, 90, 3);
  for (bool mark : {true, false}) {
    const auto dir = test::temp_dir(mark ? "prompt_marked" : "prompt_unmarked");
    auto store = ChunkStore::open(dir.string(), so);
    EvictionIndexer indexer(*store, embedder, tok, 4, 0);
    StreamConfig sc;
    sc.cache.n_sink = 2;
    sc.cache.n_recent = 16;
    StreamSession s(decoder, sc);
    auto feed = [&](const std::vector<int64_t>& t) {
      std::vector<EvictedSpan> ev;
      s.feed(t, &ev);
      indexer.add(ev);
    };
    feed(before);
    const int64_t b = s.position();
    if (mark) indexer.mark(b, b + 12);
    feed(block);
    feed(after);
    indexer.flush();
    INFO("marked " << mark);
    CHECK(indexer.evicted() == 44);
    CHECK(indexer.dropped() == (mark ? 12 : 0));
    CHECK(store->size() == (mark ? 8 : 11));  // 32 or 44 tokens in chunks of 4
    int64_t block_tokens = 0;
    for (int64_t id = 0; id < store->size(); ++id) {
      for (int64_t p : store->get(id, false).positions) block_tokens += p >= b && p < b + 12;
    }
    CHECK(block_tokens == (mark ? 0 : 12));
    store.reset();
    std::filesystem::remove_all(dir);
  }
}

TEST_CASE("grid runner, dialogue always:prompt: the text placed before each turn leaves the window unindexed", "[needle][memory][run]") {
  c10::InferenceMode guard;
  auto decoder = test::random_decoder(test::tiny_llama_config(), 12);
  WordTokenizer tok;
  GenerationConfig gen;
  std::string hay;
  for (int i = 0; i < 60; ++i) hay += "x y z. ";
  const EvalCase c = build_dialogue_case(tok, 1, hay, NeedleSpec{}, 160, 50, 4, 32, 16);
  REQUIRE(c.segments.size() >= 8);
  EvalOptions o = small_cache(8, 2);
  o.turn_answer_tokens = 2;
  const auto dir = test::temp_dir("dialogue_prompt");
  const std::vector<EvalArm> arms = {{MemoryMode::always, Placement::prompt}, {MemoryMode::always, Placement::region}};
  const CellResult r = run_eval_cell(decoder, tok, gen, c, arms, o, (dir / "mem").string());
  const ArmResult& prompt = r.arms[0];
  const ArmResult& region = r.arms[1];
  CHECK(prompt.retrievals >= 7);        // every turn after the first, and the question
  CHECK(prompt.not_indexed > 0);        // blocks of retrieved text left the window ...
  CHECK(region.not_indexed == 0);       // (the region placement feeds nothing into the stream)
  // ... and the store holds exactly the rest, in chunks of 8 (the last one partial).
  CHECK(prompt.chunks == (prompt.evicted - prompt.not_indexed + 7) / 8);
  CHECK(region.chunks == (region.evicted + 7) / 8);
  std::filesystem::remove_all(dir);
}

TEST_CASE("cache snapshot: a question asked after restore sees exactly the stream before it", "[needle][snapshot]") {
  c10::InferenceMode guard;
  auto decoder = test::random_decoder(test::tiny_llama_config(), 6);
  StreamConfig sc;
  sc.cache.n_sink = 2;
  sc.cache.n_recent = 16;
  sc.prefill_block = 8;
  const std::vector<int64_t> stream = test::random_tokens(50, 97, 7), q = test::random_tokens(12, 97, 8),
                             other = test::random_tokens(12, 97, 9);
  StreamSession s(decoder, sc);
  s.feed(stream);
  const CacheSnapshot snap(s);
  s.feed(other);  // slides the window past the snapshot's
  snap.restore(s);
  const at::Tensor restored = s.feed(q, nullptr, true);
  StreamSession fresh(decoder, sc);
  fresh.feed(stream);
  const at::Tensor expected = fresh.feed(q, nullptr, true);
  CHECK(test::max_abs_diff(restored, expected) < 1e-5);
  CHECK(test::max_abs_diff(s.feed(other, nullptr, true), expected) > 1e-3);  // the check can fail
  // An unused memory region is masked: the none and prompt arms may share the region arm's stream.
  StreamConfig with_region = sc;
  with_region.cache.n_memory = 8;
  StreamSession r(decoder, with_region);
  r.feed(stream);
  CHECK(test::max_abs_diff(r.feed(q, nullptr, true), expected) < 1e-5);
  sc.policy = Policy::cluster;
  sc.cache.n_memory = 4;
  StreamSession cl(decoder, sc);
  REQUIRE_THROWS_WITH(CacheSnapshot(cl), Catch::Contains("cache snapshot: expected the sink policy, found cluster"));
}

TEST_CASE("answer NLL and the oracle gain recovered, by hand", "[needle][nll]") {
  // Row 0: uniform over 4 -> ln 4. Row 1: logits (ln 3, 0, 0, 0) -> p(0) = 3/6 -> ln 2. Mean 1.5 ln 2.
  const at::Tensor logits = at::tensor({0.0, 0.0, 0.0, 0.0, std::log(3.0), 0.0, 0.0, 0.0}, at::kFloat).view({2, 4});
  CHECK(mean_answer_nll(logits, {2, 0}) == Approx(1.5 * std::log(2.0)).epsilon(1e-6));
  CHECK(mean_answer_nll(logits, {2, 1}) == Approx((std::log(4.0) + std::log(6.0)) / 2).epsilon(1e-6));
  REQUIRE_THROWS_WITH(mean_answer_nll(logits, {2}), Catch::Contains("expected logits [1, vocab]"));
  REQUIRE_THROWS_WITH(mean_answer_nll(logits, {}), Catch::Contains("non-empty answer"));
  CHECK(oracle_gain_recovered(3.0, 2.0, 1.0) == Approx(0.5));
  CHECK(oracle_gain_recovered(3.0, 3.0, 1.0) == Approx(0.0));
  CHECK(oracle_gain_recovered(3.0, 1.0, 1.0) == Approx(1.0));
  CHECK(oracle_gain_recovered(3.0, 4.0, 1.0) == Approx(-0.5));
  CHECK(std::isnan(oracle_gain_recovered(3.0, 2.0, 3.0)));  // the oracle gains nothing
  WordTokenizer tok;
  CHECK(tok.decode(answer_tokens(tok, "The pass key is", "12345")) == "12345");
  CHECK(keyword_fraction("Eat a SANDWICH, then sit.", {"eat", "sandwich", "park", "day"}) == Approx(0.5));
}

TEST_CASE("grid runner: the none arm's NLL equals a fresh stream's; the oracle and prompt arms see the key", "[needle][run]") {
  c10::InferenceMode guard;
  auto decoder = test::random_decoder(test::tiny_llama_config(), 11);
  WordTokenizer tok;
  GenerationConfig gen;
  PasskeySpec spec;
  EvalOptions o = small_cache(16, 4);
  const EvalCase c = build_passkey_case(tok, 1, spec, 160, 10, 4);
  REQUIRE(tok.vocab_size() < 97);
  const auto dir = test::temp_dir("grid_runner");
  int64_t progressed = 0;
  const std::vector<EvalArm> arms = {{MemoryMode::none, Placement::region},
                                     {MemoryMode::evicted, Placement::region},
                                     {MemoryMode::evicted, Placement::prompt}};
  const CellResult r = run_eval_cell(decoder, tok, gen, c, arms, o, (dir / "mem").string(), [&](int64_t n) { progressed += n; });
  REQUIRE(r.arms.size() == 3);
  CHECK(r.arms[0].arm == "none");
  CHECK(r.arms[1].arm == "evicted:region");
  CHECK(r.arms[2].arm == "evicted:prompt");
  CHECK(progressed == c.tokens());
  CHECK(r.ingest_tokens == c.tokens());
  CHECK_FALSE(r.arms[0].hit);  // 160 tokens through a 36-token cache: the key at 10% left it
  CHECK(r.oracle.hit);
  // The prompt arm's retrieved text is fed before the question; the region arm's goes to 32 memory slots.
  CHECK(r.arms[2].prompt_tokens > 0);
  CHECK(r.arms[1].prompt_tokens == 0);
  // Oracle for the snapshot path: a fresh stream, the question, the answer teacher-forced.
  StreamConfig sc;
  sc.cache.n_sink = 4;
  sc.cache.n_recent = 32;
  sc.cache.n_memory = o.memory_slots();
  sc.prefill_block = o.prefill_block;
  StreamSession fresh(decoder, sc);
  fresh.feed(c.segments[0]);
  at::Tensor rows = fresh.feed(c.question);
  if (c.answer.size() > 1) rows = at::cat({rows, fresh.feed(slice(c.answer, 0, static_cast<int64_t>(c.answer.size()) - 1), nullptr, true)}, 0);
  CHECK(r.none.nll == Approx(mean_answer_nll(rows, c.answer)).epsilon(1e-5));
  CHECK(std::isfinite(r.oracle.nll));
  CHECK(r.oracle.nll != Approx(r.none.nll).epsilon(1e-6));
  // always:prompt belongs to the dialogue task.
  REQUIRE_THROWS_WITH(run_eval_cell(decoder, tok, gen, c, {{MemoryMode::always, Placement::prompt}}, o, (dir / "mem").string()),
                      Catch::Contains("--placement prompt with --memory always needs --task dialogue"));
  o.overlap = 16;
  REQUIRE_THROWS_WITH(run_eval_cell(decoder, tok, gen, c, arms, o, (dir / "mem").string()),
                      Catch::Contains("--overlap: expected in [0, 16), found 16"));
  std::filesystem::remove_all(dir);
}
