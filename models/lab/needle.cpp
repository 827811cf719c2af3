#include "models/lab/needle.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <stdexcept>

namespace sinkflow {

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> out;
  std::string w;
  for (char c : lower(s) + " ") {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      w += c;
    } else if (!w.empty()) {
      out.push_back(w);
      w.clear();
    }
  }
  return out;
}

const std::set<std::string>& stop_words() {
  static const std::set<std::string> stop = {"a", "an", "and", "the", "in", "on", "of", "to", "is", "at", "for", "with"};
  return stop;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

void check_depth(double depth, const char* task) {
  if (!(depth >= 0 && depth <= 100)) {
    throw std::invalid_argument(std::string(task) + ": depth must be in [0, 100] percent, found " + std::to_string(depth));
  }
}

}  // namespace

NeedleCase build_needle_case(const Tokenizer& tokenizer, int64_t bos, const std::string& haystack,
                             const NeedleSpec& spec, int64_t length, double depth, int64_t n_sink,
                             int64_t max_needle_tokens) {
  if (haystack.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw std::invalid_argument("needle: the haystack is empty");
  }
  check_depth(depth, "needle");
  const int64_t needle_tokens = static_cast<int64_t>(tokenizer.encode(" " + spec.needle).size());
  if (needle_tokens > max_needle_tokens) {
    throw std::invalid_argument("needle: the needle has " + std::to_string(needle_tokens) +
                                " tokens, more than the cache window of " + std::to_string(max_needle_tokens));
  }
  const int64_t lead = bos >= 0 ? 1 : 0;
  const int64_t body = length - lead - needle_tokens;
  if (body < n_sink + 8) {
    throw std::invalid_argument("needle: length " + std::to_string(length) + " cannot hold the sinks (" +
                                std::to_string(n_sink) + ") and the needle (" + std::to_string(needle_tokens) + " tokens)");
  }
  // The haystack repeated up to the length, cut to `body` tokens.
  std::vector<int64_t> hay = tokenizer.encode(haystack);
  std::vector<int64_t> cut;
  while (static_cast<int64_t>(cut.size()) < body) {
    const int64_t take = std::min<int64_t>(body - static_cast<int64_t>(cut.size()), static_cast<int64_t>(hay.size()));
    cut.insert(cut.end(), hay.begin(), hay.begin() + take);
  }
  const std::string text = tokenizer.decode(cut);
  // Insertion at depth% of the text, walked back to just after the previous sentence end.
  size_t at = static_cast<size_t>(depth / 100.0 * static_cast<double>(text.size()));
  at = std::min(at, text.size());
  auto boundary_before = [&](size_t pos) -> size_t {
    for (size_t i = std::min(pos, text.size()); i > 0; --i) {
      if (text[i - 1] == '.' && (i == text.size() || std::isspace(static_cast<unsigned char>(text[i])))) return i;
    }
    return 0;
  };
  at = boundary_before(at);
  // Never inside the sinks: move to the first sentence end past them.
  auto prefix_tokens = [&](size_t pos) { return static_cast<int64_t>(tokenizer.encode(text.substr(0, pos)).size()); };
  if (prefix_tokens(at) < n_sink + 1) {
    size_t next = text.find('.', 0);
    while (next != std::string::npos && prefix_tokens(next + 1) < n_sink + 1) next = text.find('.', next + 1);
    at = next == std::string::npos ? text.size() : next + 1;
  }
  const std::string before = text.substr(0, at);
  const std::string inserted = before + " " + spec.needle;
  NeedleCase c;
  c.length = length;
  c.depth = depth;
  if (bos >= 0) c.tokens.push_back(bos);
  std::vector<int64_t> all = tokenizer.encode(inserted + text.substr(at));
  c.tokens.insert(c.tokens.end(), all.begin(), all.end());
  c.needle_begin = lead + static_cast<int64_t>(tokenizer.encode(before).size());
  c.needle_end = lead + static_cast<int64_t>(tokenizer.encode(inserted).size());
  c.needle_end = std::min<int64_t>(c.needle_end, static_cast<int64_t>(c.tokens.size()));
  return c;
}

std::vector<std::string> needle_keywords(const NeedleSpec& spec) {
  std::string rest = spec.needle;
  const std::string cl = lower(spec.cloze);
  if (lower(rest).rfind(cl, 0) == 0) rest = rest.substr(cl.size());
  std::vector<std::string> keys;
  for (auto& w : words(rest)) {
    if (!stop_words().count(w) && std::find(keys.begin(), keys.end(), w) == keys.end()) keys.push_back(w);
  }
  return keys;
}

double keyword_fraction(const std::string& output, const std::vector<std::string>& keywords) {
  if (keywords.empty()) return 0;
  std::set<std::string> got;
  for (auto& w : words(output)) got.insert(w);
  int64_t hit = 0;
  for (auto& k : keywords) hit += got.count(lower(k));
  return static_cast<double>(hit) / static_cast<double>(keywords.size());
}

double keyword_score(const std::string& output, const NeedleSpec& spec) {
  return keyword_fraction(output, needle_keywords(spec));
}

int64_t EvalCase::tokens() const {
  int64_t n = 0;
  for (const auto& s : segments) n += static_cast<int64_t>(s.size());
  return n;
}

std::string passkey_digits(uint64_t seed, int64_t length, double depth) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(length),
                    static_cast<uint32_t>(static_cast<uint64_t>(length) >> 32),
                    static_cast<uint32_t>(std::llround(depth * 1000.0))};
  std::mt19937_64 gen(seq);
  std::string digits(1, static_cast<char>('1' + gen() % 9));
  for (int i = 1; i < 5; ++i) digits += static_cast<char>('0' + gen() % 10);
  return digits;
}

std::vector<int64_t> sentence_ends(const Tokenizer& tokenizer, const std::vector<int64_t>& tokens) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::string piece = tokenizer.token_bytes(tokens[i]);
    while (!piece.empty() && std::isspace(static_cast<unsigned char>(piece.back()))) piece.pop_back();
    if (!piece.empty() && (piece.back() == '.' || piece.back() == '!' || piece.back() == '?')) {
      out.push_back(static_cast<int64_t>(i));
    }
  }
  return out;
}

std::vector<int64_t> answer_tokens(const Tokenizer& tokenizer, const std::string& prompt, const std::string& answer) {
  const std::vector<int64_t> p = tokenizer.encode(prompt);
  const std::vector<int64_t> both = tokenizer.encode(prompt + " " + answer);
  if (both.size() > p.size() && std::equal(p.begin(), p.end(), both.begin())) {
    return std::vector<int64_t>(both.begin() + static_cast<int64_t>(p.size()), both.end());
  }
  return tokenizer.encode(" " + answer);
}

EvalCase build_passkey_case(const Tokenizer& tokenizer, int64_t bos, const PasskeySpec& spec, int64_t length,
                            double depth, int64_t n_sink) {
  if (spec.filler.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw std::invalid_argument("passkey: the filler is empty");
  }
  check_depth(depth, "passkey");
  // Everything in running-text form, as it follows the filler (a tokenizer without a dummy prefix would
  // otherwise glue "again." to the next "The").
  const std::vector<int64_t> unit = answer_tokens(tokenizer, spec.filler, spec.filler);
  const int64_t u = static_cast<int64_t>(unit.size());
  EvalCase c;
  c.task = NeedleTask::passkey;
  c.length = length;
  c.depth = depth;
  c.passkey = passkey_digits(spec.seed, length, depth);
  c.answer_text = c.passkey;
  c.keywords = {c.passkey};
  c.query = spec.query;
  c.needle = answer_tokens(tokenizer, spec.filler, replace_all(spec.line, "{}", c.passkey));
  c.question = answer_tokens(tokenizer, spec.filler, spec.question);
  c.answer = answer_tokens(tokenizer, spec.question, c.passkey);
  const int64_t lead = bos >= 0 ? 1 : 0;
  const int64_t body = length - lead - static_cast<int64_t>(c.needle.size());
  if (body < n_sink + 8) {
    throw std::invalid_argument("passkey: length " + std::to_string(length) + " cannot hold the sinks (" +
                                std::to_string(n_sink) + ") and the pass-key line (" + std::to_string(c.needle.size()) +
                                " tokens)");
  }
  // Sentence boundaries of the repeated filler: after each sentence end of the unit, and at each seam.
  std::vector<int64_t> cuts = {0};
  for (int64_t e : sentence_ends(tokenizer, unit)) {
    if (e + 1 < u) cuts.push_back(e + 1);
  }
  auto boundary_at_or_before = [&](int64_t pos) {
    const int64_t rep = pos / u, rest = pos % u;
    int64_t best = 0;
    for (int64_t b : cuts) {
      if (b <= rest) best = b;
    }
    return rep * u + best;
  };
  auto boundary_after = [&](int64_t pos) {  // the first boundary > pos
    const int64_t rep = pos / u, rest = pos % u;
    for (int64_t b : cuts) {
      if (b > rest) return rep * u + b;
    }
    return (rep + 1) * u;
  };
  int64_t filler = boundary_at_or_before(body);
  if (filler < body / 2) filler = body;  // no sentence end in reach: cut anywhere
  int64_t at = boundary_at_or_before(static_cast<int64_t>(depth / 100.0 * static_cast<double>(filler)));
  while (lead + at < n_sink + 1) at = boundary_after(at);
  at = std::min(at, filler);
  std::vector<int64_t> tokens;
  tokens.reserve(static_cast<size_t>(lead + filler) + c.needle.size());
  if (bos >= 0) tokens.push_back(bos);
  for (int64_t i = 0; i < at; ++i) tokens.push_back(unit[static_cast<size_t>(i % u)]);
  c.needle_begin = static_cast<int64_t>(tokens.size());
  tokens.insert(tokens.end(), c.needle.begin(), c.needle.end());
  c.needle_end = static_cast<int64_t>(tokens.size());
  for (int64_t i = at; i < filler; ++i) tokens.push_back(unit[static_cast<size_t>(i % u)]);
  c.segments.push_back(std::move(tokens));
  return c;
}

EvalCase needle_eval_case(const Tokenizer& tokenizer, int64_t bos, const std::string& haystack, const NeedleSpec& spec,
                          int64_t length, double depth, int64_t n_sink, int64_t max_needle_tokens) {
  NeedleCase nc = build_needle_case(tokenizer, bos, haystack, spec, length, depth, n_sink, max_needle_tokens);
  EvalCase c;
  c.task = NeedleTask::needle;
  c.length = length;
  c.depth = depth;
  c.needle_begin = nc.needle_begin;
  c.needle_end = nc.needle_end;
  c.needle.assign(nc.tokens.begin() + nc.needle_begin, nc.tokens.begin() + nc.needle_end);
  c.segments.push_back(std::move(nc.tokens));
  c.question = tokenizer.encode("\n" + spec.cloze);
  c.answer = answer_tokens(tokenizer, "\n" + spec.cloze, spec.answer);
  c.query = spec.question;
  c.answer_text = spec.answer;
  c.keywords = needle_keywords(spec);
  return c;
}

EvalCase build_dialogue_case(const Tokenizer& tokenizer, int64_t bos, const std::string& haystack,
                             const NeedleSpec& spec, int64_t length, double depth, int64_t n_sink,
                             int64_t max_needle_tokens, int64_t turn_tokens) {
  if (turn_tokens < 16) {
    throw std::invalid_argument("dialogue: turn_tokens must be >= 16, found " + std::to_string(turn_tokens));
  }
  EvalCase c = needle_eval_case(tokenizer, bos, haystack, spec, length, depth, n_sink, max_needle_tokens);
  c.task = NeedleTask::dialogue;
  const std::vector<int64_t> all = std::move(c.segments.front());
  c.segments.clear();
  const int64_t lead = bos >= 0 ? 1 : 0;
  const std::vector<int64_t> body(all.begin() + lead, all.end());
  const int64_t n = static_cast<int64_t>(body.size());
  const int64_t nb = c.needle_begin - lead, ne = c.needle_end - lead;
  const std::vector<int64_t> ends = sentence_ends(tokenizer, body);
  const std::vector<int64_t> user = tokenizer.encode("User:");
  const std::vector<int64_t> assistant = tokenizer.encode("\nAssistant:");
  int64_t start = 0;
  while (start < n) {
    int64_t cut = std::min(n, start + turn_tokens);
    if (cut < n) {
      // The last sentence end in the turn's second half, else a cut mid-sentence; never inside the needle.
      for (auto it = ends.rbegin(); it != ends.rend(); ++it) {
        if (*it + 1 <= start + turn_tokens && *it + 1 > start + turn_tokens / 2) {
          cut = *it + 1;
          break;
        }
      }
      if (cut > nb && cut < ne) cut = ne;
    }
    std::vector<int64_t> turn;
    if (start == 0 && bos >= 0) turn.push_back(bos);
    turn.insert(turn.end(), user.begin(), user.end());
    if (nb >= start && nb < cut) {
      c.needle_segment = static_cast<int64_t>(c.segments.size());
      c.needle_begin = static_cast<int64_t>(turn.size()) + nb - start;
      c.needle_end = c.needle_begin + (ne - nb);
    }
    turn.insert(turn.end(), body.begin() + start, body.begin() + cut);
    turn.insert(turn.end(), assistant.begin(), assistant.end());
    c.segments.push_back(std::move(turn));
    start = cut;
  }
  c.turn_end = tokenizer.encode("\n");
  const std::string last = "User: " + spec.question + "\nAssistant: " + spec.cloze;
  c.question = tokenizer.encode(last);
  c.answer = answer_tokens(tokenizer, last, spec.answer);
  return c;
}

double mean_answer_nll(const at::Tensor& logits, const std::vector<int64_t>& answer) {
  if (answer.empty() || logits.dim() != 2 || logits.size(0) != static_cast<int64_t>(answer.size())) {
    throw std::invalid_argument("answer nll: expected logits [" + std::to_string(answer.size()) +
                                ", vocab] for a non-empty answer, found " + std::to_string(logits.dim()) + "-d with " +
                                std::to_string(logits.dim() > 0 ? logits.size(0) : 0) + " rows");
  }
  const at::Tensor logp = at::log_softmax(logits.to(at::kDouble), -1);
  double sum = 0;
  for (size_t i = 0; i < answer.size(); ++i) sum -= logp[static_cast<int64_t>(i)][answer[i]].item<double>();
  return sum / static_cast<double>(answer.size());
}

double oracle_gain_recovered(double nll_none, double nll_arm, double nll_oracle) {
  const double gain = nll_none - nll_oracle;
  if (!(gain >= 1e-6)) return std::numeric_limits<double>::quiet_NaN();
  return (nll_none - nll_arm) / gain;
}

bool answer_found(const std::string& output, const NeedleSpec& spec) {
  return lower(output).find(lower(spec.answer)) != std::string::npos;
}

}  // namespace sinkflow
