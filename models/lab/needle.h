// Needle in a haystack, streaming edition: build one (length, depth) case and score an answer.
// The protocol follows gkamradt's LLMTest_NeedleInAHaystack: the haystack is repeated up to the length,
// the needle is inserted at depth% of the text, walked back to the previous sentence boundary; for a base
// model the question is asked in cloze form. The needle never lands inside the attention sinks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

// Fraction of the needle's content words (after the cloze; lower-cased, stop words dropped) that appear in
// `output` (the seed project's keyword score).
double keyword_score(const std::string& output, const NeedleSpec& spec);
// True when spec.answer appears in `output`, case-insensitively.
bool answer_found(const std::string& output, const NeedleSpec& spec);

}  // namespace sinkflow
