// Needle in a haystack, streaming edition: build one (length, depth) case and score an answer.
// The protocol follows gkamradt's LLMTest_NeedleInAHaystack: the haystack is repeated up to the length,
// the needle is inserted at depth% of the text, walked back to the previous sentence boundary; for a base
// model the question is asked in cloze form. The needle never lands inside the attention sinks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "models/io/names.h"
#include "models/text/tokenizer.h"

namespace sinkflow {

struct NeedleSpec {
  std::string needle = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.";
  std::string question = "What is the best thing to do in San Francisco?";  // the retrieval query
  std::string cloze = "The best thing to do in San Francisco is";         // what the model continues
  std::string answer = "eat a sandwich";                                   // must appear in the output
};

struct NeedleCase {
  int64_t length = 0;          // requested context length in tokens
  double depth = 0;            // requested depth, percent
  std::vector<int64_t> tokens; // BOS (when the model uses one) + haystack with the needle
  int64_t needle_begin = 0;    // the needle's tokens are tokens[needle_begin, needle_end)
  int64_t needle_end = 0;
};

// Builds one case from the haystack's tokens (`haystack` is its text). Throws std::invalid_argument for an
// empty haystack, a depth outside [0, 100], a needle longer than `max_needle_tokens` (the cache window), or
// a length too small to hold the sinks and the needle.
NeedleCase build_needle_case(const Tokenizer& tokenizer, int64_t bos, const std::string& haystack,
                             const NeedleSpec& spec, int64_t length, double depth, int64_t n_sink,
                             int64_t max_needle_tokens);

// ---- The evaluation protocols of `sinkflow needle --task` -------------------------------------------------
//   needle    the case above, one stream of text, the question in cloze form at the end
//   passkey   Landmark Attention / InfLLM: a filler repeated (as token ids), the pass-key line at a depth, the
//             question "What is the pass key? The pass key is" at the end; exact digits
//   dialogue  seed 001: the needle case cut into ~1,000-token user turns ("User: ...\nAssistant:"), each answered
//             briefly by the model, the question as the last turn
enum class NeedleTask { needle, passkey, dialogue };
inline constexpr NameTable<NeedleTask, 3> kNeedleTaskNames{
    {{{NeedleTask::needle, "needle"}, {NeedleTask::passkey, "passkey"}, {NeedleTask::dialogue, "dialogue"}}}};

// One cell's input for the grid runner (models/lab/needle_run.h), whatever the task.
struct EvalCase {
  NeedleTask task = NeedleTask::needle;
  int64_t length = 0;  // requested context length in tokens (text before the question, role markers excluded)
  double depth = 0;    // requested depth, percent
  // Fed in order. needle, passkey: one segment. dialogue: one per user turn, "User: <text>\nAssistant:", after
  // each of which the model answers briefly (the runner's turn_answer_tokens) and a newline follows.
  std::vector<std::vector<int64_t>> segments;
  int64_t needle_segment = 0;  // the needle's tokens are segments[needle_segment][needle_begin, needle_end)
  int64_t needle_begin = 0;
  int64_t needle_end = 0;
  std::vector<int64_t> turn_end;  // dialogue: fed after each of the model's turn answers (a newline)
  std::vector<int64_t> needle;    // the needle's tokens alone (the oracle feeds them right before the question)
  std::vector<int64_t> question;  // fed last: the question in cloze form (dialogue: the last user turn)
  std::vector<int64_t> answer;    // the expected answer's tokens as they follow the question (answer NLL)
  std::string query;              // the retrieval query
  std::string answer_text;        // must appear in the greedy output (passkey: the digits)
  std::vector<std::string> keywords;  // the keyword score's words
  std::string passkey;            // passkey: the 5 digits of this cell
  int64_t tokens() const;         // all tokens of the segments
};

struct PasskeySpec {
  std::string filler =
      "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
  std::string line = "The pass key is {}. Remember it. {} is the pass key.";  // {} = the digits
  std::string question = "What is the pass key? The pass key is";
  std::string query = "What is the pass key?";  // the retrieval query
  uint64_t seed = 0;                             // the digits' generator (mixed with length and depth)
};

// The cell's 5 digits (first one 1-9) from a generator seeded by (seed, length, depth): reproducible, and
// different from cell to cell.
std::string passkey_digits(uint64_t seed, int64_t length, double depth);

// Tokens at whose end a sentence ends (the decoded piece ends with '.', '!' or '?'), as indices into `tokens`.
std::vector<int64_t> sentence_ends(const Tokenizer& tokenizer, const std::vector<int64_t>& tokens);

// The passkey case: BOS, the filler's token ids repeated (never its text; the ids of the filler as it follows
// itself, so that the seams read as running text) and cut at a sentence end, the pass-key line inserted after the sentence end at or before depth% of the filler (never inside the sinks), length tokens in
// all (at most one sentence fewer); the question last. Throws std::invalid_argument for an empty filler, a depth
// outside [0, 100] or a length that cannot hold the sinks and the line.
EvalCase build_passkey_case(const Tokenizer& tokenizer, int64_t bos, const PasskeySpec& spec, int64_t length,
                            double depth, int64_t n_sink);

// The needle task's EvalCase (build_needle_case's tokens, the cloze as the question).
EvalCase needle_eval_case(const Tokenizer& tokenizer, int64_t bos, const std::string& haystack, const NeedleSpec& spec,
                          int64_t length, double depth, int64_t n_sink, int64_t max_needle_tokens);

// The dialogue case: build_needle_case's haystack (length tokens) cut at sentence ends into user turns of about
// turn_tokens tokens (never inside the needle), each "User: <text>\nAssistant:"; the last turn is
// "User: <question>\nAssistant: <cloze>". turn_tokens >= 16, else std::invalid_argument.
EvalCase build_dialogue_case(const Tokenizer& tokenizer, int64_t bos, const std::string& haystack,
                             const NeedleSpec& spec, int64_t length, double depth, int64_t n_sink,
                             int64_t max_needle_tokens, int64_t turn_tokens);

// The tokens of `answer` as they follow `prompt` ("<prompt> <answer>" encoded, the prompt's own tokens removed;
// when the tokenizer merges across the seam, " <answer>" encoded alone).
std::vector<int64_t> answer_tokens(const Tokenizer& tokenizer, const std::string& prompt, const std::string& answer);

// Mean negative log-likelihood per token of `answer` given logits [n, vocab] (row i predicts answer[i]; n =
// answer.size()), natural log. Throws std::invalid_argument when the counts differ or n = 0.
double mean_answer_nll(const at::Tensor& logits, const std::vector<int64_t>& answer);

// The share of the oracle's likelihood gain that an arm recovers: (nll_none - nll_arm) / (nll_none - nll_oracle);
// NaN when the oracle gains less than 1e-6 nats (nothing to recover).
double oracle_gain_recovered(double nll_none, double nll_arm, double nll_oracle);

// Fraction of `keywords` (lower-cased words) present among the words of `output`; 0 for no keywords.
double keyword_fraction(const std::string& output, const std::vector<std::string>& keywords);
// The default keywords of a needle: its content words after the cloze (stop words dropped), in order.
std::vector<std::string> needle_keywords(const NeedleSpec& spec);

// Fraction of the needle's content words (after the cloze; lower-cased, stop words dropped) that appear in
// `output` (the seed project's keyword score).
double keyword_score(const std::string& output, const NeedleSpec& spec);
// True when spec.answer appears in `output`, case-insensitively.
bool answer_found(const std::string& output, const NeedleSpec& spec);

}  // namespace sinkflow
