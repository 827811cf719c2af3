// Copy check: does a model repeat what is in its context? A span of corpus text (or of random corpus
// tokens, which only copying can predict) is written twice, `gap` tokens apart; after the first `prefix`
// tokens of the repeat (the cue), each further token of the repeat is scored against the model's prediction,
// and compared with the same tokens at their first occurrence (where only the language prior helps).
// Induction heads make the repeat cheap; the needle benchmark's answers need them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sinkflow {

class Decoder;

struct CopyCheckOptions {
  int64_t cases = 64;    // sequences, taken at evenly spaced offsets of the corpus
  int64_t before = 32;   // text tokens before the span
  int64_t span = 24;     // tokens written twice
  int64_t gap = 96;      // text tokens between the span and its repeat
  int64_t prefix = 4;    // tokens of the repeat given as the cue, not scored; 0 <= prefix < span
  bool random = false;   // span of tokens drawn at random from the corpus instead of the text's own span
  uint64_t seed = 1;     // random spans
  int64_t bos = -1;      // put first when >= 0
  int64_t batch = 16;    // sequences per forward

  // Throws std::invalid_argument naming the field, e.g. "copy check: prefix must be < span (24), found 30".
  void validate() const;
  int64_t sequence_length() const { return (bos >= 0 ? 1 : 0) + before + 2 * span + gap; }
};

// One sequence: the span at [first, first + span) and again at [repeat, repeat + span).
struct CopyCase {
  std::vector<int64_t> tokens;
  int64_t first = 0;
  int64_t repeat = 0;
};

// The cases over `ids` (a tokenized corpus). Throws std::invalid_argument when the corpus is shorter than
// one sequence.
std::vector<CopyCase> copy_cases(const std::vector<int64_t>& ids, const CopyCheckOptions& options);

struct CopyReport {
  int64_t cases = 0;
  int64_t scored = 0;         // tokens scored per occurrence: cases x (span - prefix)
  double nll_first = 0;       // mean NLL of the scored tokens at their first occurrence (nats)
  double nll_repeat = 0;      // ... at the repeat
  double top1_first = 0;      // fraction predicted exactly (argmax) at the first occurrence
  double top1_repeat = 0;     // ... at the repeat
  double exact_repeat = 0;    // fraction of cases whose whole scored repeat is argmax-exact (greedy decoding
                              // from the cue reproduces the span)
};

// Scores `cases` (from copy_cases with the same options) with the model's full causal forward. Throws
// std::invalid_argument when a sequence is longer than the model's positions or holds a token outside its
// vocabulary.
CopyReport copy_check(const Decoder& model, const std::vector<CopyCase>& cases, const CopyCheckOptions& options);

}  // namespace sinkflow
