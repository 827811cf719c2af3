#include "models/lab/needle.h"

#include <algorithm>
#include <cctype>
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

}  // namespace

NeedleCase build_needle_case(const Tokenizer& tokenizer, int64_t bos, const std::string& haystack,
                             const NeedleSpec& spec, int64_t length, double depth, int64_t n_sink,
                             int64_t max_needle_tokens) {
  if (haystack.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw std::invalid_argument("needle: the haystack is empty");
  }
  if (!(depth >= 0 && depth <= 100)) {
    throw std::invalid_argument("needle: depth must be in [0, 100] percent, found " + std::to_string(depth));
  }
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

double keyword_score(const std::string& output, const NeedleSpec& spec) {
  static const std::set<std::string> stop = {"a", "an", "and", "the", "in", "on", "of", "to", "is", "at", "for", "with"};
  std::string rest = spec.needle;
  const std::string cl = lower(spec.cloze);
  if (lower(rest).rfind(cl, 0) == 0) rest = rest.substr(cl.size());
  std::set<std::string> keys;
  for (auto& w : words(rest)) {
    if (!stop.count(w)) keys.insert(w);
  }
  if (keys.empty()) return 0;
  std::set<std::string> got;
  for (auto& w : words(output)) got.insert(w);
  int64_t hit = 0;
  for (auto& k : keys) hit += got.count(k);
  return static_cast<double>(hit) / static_cast<double>(keys.size());
}

bool answer_found(const std::string& output, const NeedleSpec& spec) {
  return lower(output).find(lower(spec.answer)) != std::string::npos;
}

}  // namespace sinkflow
