#include "models/memory/embedder.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <map>
#include <unordered_set>

namespace sinkflow {

std::vector<std::vector<float>> Embedder::embed_batch(const std::vector<std::string>& texts) const {
  std::vector<std::vector<float>> out;
  out.reserve(texts.size());
  for (const auto& t : texts) out.push_back(embed(t));
  return out;
}

namespace {

// Function words only: the words a question and its answer share without sharing a topic.
const std::unordered_set<std::string_view>& stop_words() {
  static const std::unordered_set<std::string_view> words = {
      "a",     "an",    "the",   "and",   "or",     "but",   "if",    "then",  "so",    "than",  "as",
      "of",    "in",    "on",    "at",    "to",     "for",   "from",  "by",    "with",  "about", "into",
      "onto",  "over",  "under", "up",    "down",   "out",   "off",   "is",    "are",   "was",   "were",
      "be",    "been",  "being", "am",    "do",     "does",  "did",   "doing", "have",  "has",   "had",
      "having","will",  "would", "shall", "should", "can",   "could", "may",   "might", "must",  "it",
      "its",   "it's",  "this",  "that",  "these",  "those", "there", "here",  "what",  "which", "who",
      "whom",  "whose", "when",  "where", "why",    "how",   "i",     "me",    "my",    "we",    "us",
      "our",   "you",   "your",  "he",    "him",    "his",   "she",   "her",   "they",  "them",  "their",
      "not",   "no",    "nor",   "also",  "just",   "very",  "too",   "s",     "t",     "d",     "ll",
      "re",    "ve",    "m"};
  return words;
}

bool is_word_byte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

void push_word(std::vector<std::string>& out, std::string& w) {
  // Apostrophes only inside words.
  size_t b = w.find_first_not_of('\'');
  size_t e = w.find_last_not_of('\'');
  if (b != std::string::npos) out.push_back(w.substr(b, e - b + 1));
  w.clear();
}

}  // namespace

std::vector<std::string> hash_tokens(std::string_view text) {
  std::vector<std::string> out;
  std::string w;
  for (size_t i = 0; i < text.size(); ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    // U+2018 / U+2019 (E2 80 98 / E2 80 99) -> '\''.
    if (c == 0xE2 && i + 2 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0x80 &&
        (static_cast<unsigned char>(text[i + 2]) == 0x98 || static_cast<unsigned char>(text[i + 2]) == 0x99)) {
      i += 2;
      c = '\'';
    }
    // Unicode punctuation and spaces are separators: U+2000-U+206F (E2 80 xx, E2 81 xx: dashes, quotes, ellipsis,
    // spaces) and U+00A0-U+00BF (C2 A0-BF: no-break space, inverted marks, guillemets, symbols).
    if (c == 0xE2 && i + 2 < text.size() &&
        (static_cast<unsigned char>(text[i + 1]) == 0x80 || static_cast<unsigned char>(text[i + 1]) == 0x81)) {
      i += 2;
      c = ' ';
    } else if (c == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) >= 0xA0) {
      i += 1;
      c = ' ';
    }
    if (c == '\'') {
      if (!w.empty()) w.push_back('\'');
    } else if (is_word_byte(c)) {
      w.push_back(c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : char(c));
    } else if (!w.empty()) {
      push_word(out, w);
    }
  }
  if (!w.empty()) push_word(out, w);
  return out;
}

bool hash_stop_word(std::string_view word) { return stop_words().count(word) > 0; }

uint64_t hash_feature(std::string_view feature) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  for (unsigned char c : feature) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  // splitmix64 finaliser: FNV's low bits are weak for short keys.
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

HashEmbedder::HashEmbedder(int64_t dim) : dim_(dim) {
  if (dim < 1) throw std::invalid_argument("HashEmbedder: dim is " + std::to_string(dim) + ", expected >= 1");
}

std::string HashEmbedder::name() const { return "hash-" + std::to_string(dim_); }

std::vector<float> HashEmbedder::embed(std::string_view text) const {
  std::vector<std::string> words;
  for (auto& w : hash_tokens(text))
    if (!hash_stop_word(w)) words.push_back(std::move(w));
  // Unigrams are words (no space); bigrams are "w1 w2": the two sets of keys cannot collide. An ordered map fixes
  // the summation order, so the vector does not depend on the standard library's hash tables.
  std::map<std::string, int> tf;
  for (size_t i = 0; i < words.size(); ++i) {
    ++tf[words[i]];
    if (i + 1 < words.size()) ++tf[words[i] + ' ' + words[i + 1]];
  }
  std::vector<double> acc(size_t(dim_), 0.0);
  for (const auto& [feature, count] : tf) {
    const uint64_t h = hash_feature(feature);
    const double value = 1.0 + std::log(double(count));
    acc[size_t((h & 0x7fffffffffffffffull) % uint64_t(dim_))] += (h >> 63) ? -value : value;
  }
  double ss = 0.0;
  for (double x : acc) ss += x * x;
  std::vector<float> out(size_t(dim_), 0.0f);
  if (ss > 0.0) {
    const double inv = 1.0 / std::sqrt(ss);
    for (size_t i = 0; i < acc.size(); ++i) out[i] = float(acc[i] * inv);
  }
  return out;
}

}  // namespace sinkflow
