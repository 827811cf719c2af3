// Internals shared by models/tokenizer*.cpp and tests/test_tokenizer.cpp. Not part of the public API.
//
// Unicode classification (tokenizer_unicode.cpp). The pre-tokenizer regexes need \p{L}, \p{N} and \s, BERT needs
// punctuation, lower case and accent stripping. Exactness, documented:
//  - is_letter / is_number / is_punctuation: General Category L / N / P of Unicode 14.0, exact for every assigned
//    code point (range tables); unassigned code points lying between two code points of the same class are
//    counted in that class (they do not occur in real text).
//  - is_whitespace: the White_Space property (what \s matches in Oniguruma and Rust regex), exact.
//  - to_lower: the simple (one code point to one code point) lower-case mapping of every plane, from the Unicode
//    version of unicode_normalization_table.cpp (no context-dependent final sigma).
//  - is_nonspacing_mark: General Category Mn (WordPiece's strip_accents drops them after NFD).
//  - is_other_category, normalize_unicode: exact, from unicode_normalization_table.cpp (see below).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "models/text/tokenizer.h"

namespace sinkflow::tokenizer_detail {

// ---- UTF-8 ----
// Decodes the code point at s[i]; returns its length in bytes (>= 1). An invalid or truncated sequence yields
// kInvalidCodePoint with length 1 (the caller keeps the raw byte).
constexpr uint32_t kInvalidCodePoint = 0x110000;
size_t decode_utf8(std::string_view s, size_t i, uint32_t& cp);
void append_utf8(std::string& out, uint32_t cp);
// Appends `bytes` to `out`, replacing each maximal invalid subpart by U+FFFD (as Rust's String::from_utf8_lossy).
void append_utf8_lossy(std::string& out, std::string_view bytes);
// Length of the longest prefix of `bytes` that holds no incomplete trailing sequence: the bytes after it are the
// valid beginning of a UTF-8 sequence that the next bytes may complete.
size_t utf8_complete_prefix(std::string_view bytes);
bool is_valid_utf8(std::string_view s);

// ---- Unicode classes (see the header comment) ----
bool is_letter(uint32_t cp);
bool is_number(uint32_t cp);
bool is_punctuation(uint32_t cp);
bool is_whitespace(uint32_t cp);
bool is_nonspacing_mark(uint32_t cp);
uint32_t to_lower(uint32_t cp);

// ---- Unicode normalization forms (UAX #15), exact for the Unicode version of unicode_normalization_table.cpp
// (tools/gen_unicode_normalization.py; Hangul algorithmic). Bytes of `text` that are not valid UTF-8 are kept as
// they are and block composition across them.
enum class NormalForm { nfc, nfd, nfkc, nfkd };
std::string normalize_unicode(std::string_view text, NormalForm form);
// General Category Cc, Cf, Cs or Co: control, format, surrogate, private use (not unassigned).
bool is_other_category(uint32_t cp);

// ---- GPT-2 byte-level map ----
// byte_to_unicode(b): the code point GPT-2 spells byte b with (printable bytes stay, others go to U+0100+n).
uint32_t byte_to_unicode(uint8_t b);
// Inverse; -1 when `cp` spells no byte.
int unicode_to_byte(uint32_t cp);
// `bytes` spelled in the byte-level alphabet ("a b" -> "aĠb").
std::string bytes_to_byte_level(std::string_view bytes);
// Inverse of bytes_to_byte_level; false (out untouched) when some character spells no byte.
bool byte_level_to_bytes(std::string_view token, std::string& out);

// ---- Pre-tokenizer regexes, implemented by hand ----
enum class SplitPattern {
  gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  llama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  qwen2,   // the same with \p{N} instead of \p{N}{1,3}
};
// The pattern a Hugging Face Split pre-tokenizer regex string spells, if it is one of the known spellings.
bool recognize_split_pattern(std::string_view regex, SplitPattern& pattern);
// Pieces of `text` under the pattern with behaviour Isolated (matches and the gaps between them, in order,
// none empty), as [begin, end) byte offsets; concatenated they give `text` back. Matching is leftmost-first
// with backtracking semantics, as Oniguruma runs these patterns for Hugging Face.
class SplitIterator {
 public:
  SplitIterator(std::string_view text, SplitPattern pattern) : text_(text), pattern_(pattern) {}
  // The next piece; false when the text is exhausted. `text` must outlive the iterator.
  bool next(size_t& begin, size_t& end);

 private:
  std::string_view text_;
  SplitPattern pattern_;
  size_t pos_ = 0;  // where the next match is searched
  size_t gap_ = 0;  // start of the unmatched stretch before pos_
  bool has_pending_ = false;
  size_t pending_begin_ = 0;
  size_t pending_end_ = 0;
};
std::vector<std::pair<size_t, size_t>> split_pattern(std::string_view text, SplitPattern pattern);
// Convenience for tests: the pieces as strings.
std::vector<std::string> split_pattern_strings(std::string_view text, SplitPattern pattern);

// ---- Added tokens ----
struct AddedToken {
  std::string content;
  int64_t id = -1;
  bool special = false;
  bool lstrip = false;       // swallows the whitespace before it
  bool rstrip = false;       // swallows the whitespace after it
  bool single_word = false;  // matches only between non-word characters (word = letter, number or '_')
  bool normalized = true;    // matched in the second pass (Hugging Face matches it after normalization)
};
// A piece of text: plain text (id -1) or an added token (its id).
struct TextPiece {
  std::string_view text;
  int64_t id = -1;
};
// Cuts added tokens out of text as Hugging Face's AddedVocabulary does: first the tokens with normalized=false,
// then, inside the remaining plain text, those with normalized=true (matched on the raw text: every normalizer
// supported here keeps added tokens as they are, except WordPiece lower-casing, an accepted approximation).
// Leftmost-longest: at the first position where some token matches, the longest one wins.
class AddedTokenSplitter {
 public:
  explicit AddedTokenSplitter(std::vector<AddedToken> tokens);
  bool empty() const { return tokens_.empty(); }
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  // Pieces in text order; plain pieces are never empty.
  std::vector<TextPiece> split(std::string_view text) const;
  // One of split()'s two passes alone: the tokens with normalized=false (`normalized` false), to be run on the raw
  // text, or those with normalized=true, to be run on the normalized plain pieces (Hugging Face's order).
  std::vector<TextPiece> split_pass(std::string_view text, bool normalized) const {
    std::vector<TextPiece> out;
    split_pass(text, normalized ? 1 : 0, out);
    return out;
  }

 private:
  void split_pass(std::string_view text, int pass, std::vector<TextPiece>& out) const;
  std::vector<AddedToken> tokens_;
  std::array<std::vector<int32_t>, 256> by_first_byte_[2];  // per pass, longest first
};

// The id of a token string in the tokenizer.json kinds: an added token first, then the model's vocabulary; -1
// when neither has it.
inline int64_t lookup_token_id(const std::unordered_map<std::string, int64_t>& added,
                               const std::unordered_map<std::string, int64_t>& vocab, std::string_view token) {
  const std::string key(token);
  if (auto it = added.find(key); it != added.end()) return it->second;
  if (auto it = vocab.find(key); it != vocab.end()) return it->second;
  return -1;
}

// ---- Concrete tokenizers (constructors throw std::invalid_argument naming `source`) ----
// Base of the three kinds: bos/eos are set by load_tokenizer once the tokenizer exists.
class TokenizerBase : public Tokenizer {
 public:
  int64_t bos_id() const override { return bos_id_; }
  int64_t eos_id() const override { return eos_id_; }
  void set_bos_eos(int64_t bos, int64_t eos) {
    bos_id_ = bos;
    eos_id_ = eos;
  }
  // The model's own bos/eos (SentencePiece), or -1: used when no config file names them.
  virtual int64_t native_bos_id() const { return -1; }
  virtual int64_t native_eos_id() const { return -1; }

 private:
  int64_t bos_id_ = -1;
  int64_t eos_id_ = -1;
};

// `j` is a parsed tokenizer.json with model.type BPE, `source` its path: byte-level BPE when the pre-tokenizer has a
// ByteLevel step (kind "bpe"), else SentencePiece-style BPE over characters with Metaspace / Prepend+Replace and
// byte fallback (kind "sentencepiece": Llama-2, Mistral, Gemma).
std::unique_ptr<TokenizerBase> make_bpe(const nlohmann::json& j, const std::string& source);
// A parsed tokenizer.json with model.type WordPiece.
std::unique_ptr<TokenizerBase> make_wordpiece_from_json(const nlohmann::json& j, const std::string& source);
// The added_tokens array of a parsed tokenizer.json (empty when absent).
std::vector<AddedToken> parse_added_tokens_json(const nlohmann::json& j, const std::string& source);
// vocab.txt (one token per line, id = line number); BERT basic tokenizer with `lower_case` (and strip accents).
std::unique_ptr<TokenizerBase> make_wordpiece_from_vocab(const std::string& vocab_text, const std::string& source,
                                                         bool lower_case, bool strip_accents);
// tokenizer.model at `path`, read by models/sentencepiece.h; bos/eos default to the model's own.
std::unique_ptr<TokenizerBase> make_sentencepiece(const std::string& path);

}  // namespace sinkflow::tokenizer_detail
