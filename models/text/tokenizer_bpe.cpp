// BPE from a Hugging Face tokenizer.json: byte-level (GPT-2, SmolLM2, Qwen2/3, Llama-3) or over characters with byte
// fallback (SentencePiece conversions: Llama-2, Mistral, Gemma), and a small trainer that writes a byte-level file.
// Follows the behaviour of `tokenizers` (models/bpe; normalizers NFC/NFD/NFKC/NFKD, Prepend, Replace; pre-tokenizers
// ByteLevel, Digits, Split, Metaspace; decoders ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace; the added
// vocabulary), checked against it id for id by the fixtures of tests/data/tokenizers/.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "models/text/tokenizer_internal.h"

namespace sinkflow::tokenizer_detail {
namespace {
using nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// The "type" of a JSON object; "" when it is not an object or has no string "type".
std::string type_field(const json& v) {
  if (!v.is_object()) return {};
  auto it = v.find("type");
  return it != v.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string type_name_of(const json& v) { return v.is_null() ? "null" : std::string(v.type_name()); }

// Short, printable quote of a JSON value for messages.
std::string quote(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 200) s = s.substr(0, 200) + "...";
  return s;
}

bool get_bool(const json& obj, const char* key, bool fallback, const std::string& source, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    throw std::invalid_argument(source + ": field " + path + "." + key + " is " + quote(*it) +
                                ", expected true or false");
  }
  return it->get<bool>();
}

std::vector<AddedToken> parse_added_tokens(const json& j, const std::string& source) {
  std::vector<AddedToken> out;
  auto it = j.find("added_tokens");
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) {
    throw std::invalid_argument(source + ": field added_tokens is a " + type_name_of(*it) + ", expected an array");
  }
  for (size_t k = 0; k < it->size(); ++k) {
    const json& t = (*it)[k];
    const std::string path = "added_tokens[" + std::to_string(k) + "]";
    if (!t.is_object() || !t.contains("id") || !t.contains("content")) {
      throw std::invalid_argument(source + ": field " + path + " is " + quote(t) +
                                  ", expected an object with id and content");
    }
    if (!t["id"].is_number_integer() || t["id"].get<int64_t>() < 0) {
      throw std::invalid_argument(source + ": field " + path + ".id is " + quote(t["id"]) +
                                  ", expected a non-negative integer");
    }
    if (!t["content"].is_string() || t["content"].get<std::string>().empty()) {
      throw std::invalid_argument(source + ": field " + path + ".content is " + quote(t["content"]) +
                                  ", expected a non-empty string");
    }
    AddedToken a;
    a.id = t["id"].get<int64_t>();
    a.content = t["content"].get<std::string>();
    a.special = get_bool(t, "special", false, source, path);
    a.lstrip = get_bool(t, "lstrip", false, source, path);
    a.rstrip = get_bool(t, "rstrip", false, source, path);
    a.single_word = get_bool(t, "single_word", false, source, path);
    a.normalized = get_bool(t, "normalized", !a.special, source, path);
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace

std::vector<AddedToken> parse_added_tokens_json(const json& j, const std::string& source) {
  return parse_added_tokens(j, source);
}

namespace {

// How a Split pre-tokenizer treats the delimiters it finds (Hugging Face's SplitDelimiterBehavior).
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };
constexpr std::pair<SplitBehavior, const char*> kSplitBehaviorNames[] = {
    {SplitBehavior::removed, "Removed"},
    {SplitBehavior::isolated, "Isolated"},
    {SplitBehavior::merged_with_previous, "MergedWithPrevious"},
    {SplitBehavior::merged_with_next, "MergedWithNext"},
    {SplitBehavior::contiguous, "Contiguous"},
};

// When Metaspace puts the replacement character before a piece that does not start with it.
enum class PrependScheme { always, first, never };
constexpr std::pair<PrependScheme, const char*> kPrependSchemeNames[] = {
    {PrependScheme::always, "always"}, {PrependScheme::first, "first"}, {PrependScheme::never, "never"}};

// The enum value named by field `path`.`key` of `obj` (`fallback` when absent); the message lists the names.
template <typename E, size_t N>
E enum_field(const json& obj, const char* key, E fallback, const std::pair<E, const char*> (&names)[N],
             const std::string& source, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  std::string expected;
  for (const auto& [value, name] : names) {
    if (it->is_string() && it->get<std::string>() == name) return value;
    expected += std::string(expected.empty() ? "" : ", ") + "\"" + name + "\"";
  }
  throw std::invalid_argument(source + ": field " + path + "." + key + " is " + quote(*it) + ", expected one of " +
                              expected);
}

std::string string_field(const json& obj, const char* key, const std::string& source, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string() || it->get<std::string>().empty()) {
    throw std::invalid_argument(source + ": field " + path + "." + key + " is " +
                                (it == obj.end() ? std::string("missing") : quote(*it)) +
                                ", expected a non-empty string");
  }
  return it->get<std::string>();
}

// The String of a {"String": "..."} pattern (Split, Replace); Regex patterns other than the known Split ones are
// not supported.
std::string string_pattern(const json& obj, const std::string& source, const std::string& path) {
  const json pattern = obj.value("pattern", json());
  if (!pattern.is_object() || !pattern.contains("String") || !pattern["String"].is_string() ||
      pattern["String"].get<std::string>().empty()) {
    throw std::invalid_argument(source + ": field " + path + ".pattern is " + quote(pattern) +
                                ", expected {\"String\": <non-empty text>}");
  }
  return pattern["String"].get<std::string>();
}

// One pre-tokenization step, in pipeline order.
struct PreStep {
  enum class Kind { digits, split, split_string, byte_level, metaspace } kind = Kind::byte_level;
  bool individual_digits = false;             // digits
  SplitPattern pattern = SplitPattern::gpt2;  // split
  std::string text;                           // split_string: the delimiter; metaspace: the replacement
  SplitBehavior behavior = SplitBehavior::isolated;  // split_string
  bool add_prefix_space = false;              // byte_level
  bool use_regex = true;                      // byte_level
  PrependScheme prepend_scheme = PrependScheme::always;  // metaspace
  bool metaspace_split = true;                           // metaspace
};

void parse_pre_tokenizer(const json& p, const std::string& source, const std::string& path,
                         std::vector<PreStep>& steps) {
  if (!p.is_object() || !p.contains("type") || !p["type"].is_string()) {
    throw std::invalid_argument(source + ": field " + path + " is " + quote(p) +
                                ", expected a pre-tokenizer object with a type (ByteLevel, Digits, Split, Metaspace, "
                                "Sequence)");
  }
  const std::string type = p["type"].get<std::string>();
  if (type == "Sequence") {
    auto it = p.find("pretokenizers");
    if (it == p.end() || !it->is_array()) {
      throw std::invalid_argument(source + ": field " + path + ".pretokenizers is missing, expected an array");
    }
    for (size_t k = 0; k < it->size(); ++k) {
      parse_pre_tokenizer((*it)[k], source, path + ".pretokenizers[" + std::to_string(k) + "]", steps);
    }
    return;
  }
  PreStep step;
  if (type == "ByteLevel") {
    step.kind = PreStep::Kind::byte_level;
    step.add_prefix_space = get_bool(p, "add_prefix_space", true, source, path);
    step.use_regex = get_bool(p, "use_regex", true, source, path);
  } else if (type == "Digits") {
    step.kind = PreStep::Kind::digits;
    step.individual_digits = get_bool(p, "individual_digits", false, source, path);
  } else if (type == "Metaspace") {
    step.kind = PreStep::Kind::metaspace;
    step.text = string_field(p, "replacement", source, path);
    // Files older than prepend_scheme carry add_prefix_space instead (true = always).
    const bool add_prefix_space = get_bool(p, "add_prefix_space", true, source, path);
    step.prepend_scheme = enum_field(p, "prepend_scheme", add_prefix_space ? PrependScheme::always : PrependScheme::never,
                                     kPrependSchemeNames, source, path);
    step.metaspace_split = get_bool(p, "split", true, source, path);
  } else if (type == "Split") {
    if (get_bool(p, "invert", false, source, path)) {
      throw std::invalid_argument(source + ": field " + path + ".invert is true, expected false");
    }
    const json pattern = p.value("pattern", json());
    step.behavior = enum_field(p, "behavior", SplitBehavior::isolated, kSplitBehaviorNames, source, path);
    if (pattern.is_object() && pattern.contains("String")) {
      step.kind = PreStep::Kind::split_string;
      step.text = string_pattern(p, source, path);
      steps.push_back(step);
      return;
    }
    step.kind = PreStep::Kind::split;
    if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string()) {
      throw std::invalid_argument(source + ": field " + path + ".pattern is " + quote(pattern) +
                                  ", expected {\"String\": ...} or {\"Regex\": <the GPT-2, Llama-3 or Qwen2 pattern>} "
                                  "(other split patterns are not supported)");
    }
    const std::string regex = pattern["Regex"].get<std::string>();
    if (!recognize_split_pattern(regex, step.pattern)) {
      throw std::invalid_argument(source + ": field " + path + ".pattern.Regex is \"" + regex +
                                  "\", expected the GPT-2, Llama-3 or Qwen2 pattern (other regexes are not supported)");
    }
    if (step.behavior != SplitBehavior::isolated) {
      throw std::invalid_argument(source + ": field " + path + ".behavior is " + quote(p["behavior"]) +
                                  ", expected \"Isolated\" for a Regex pattern");
    }
  } else {
    throw std::invalid_argument(source + ": field " + path + ".type is \"" + type +
                                "\", expected ByteLevel, Digits, Split, Metaspace or Sequence for a BPE model");
  }
  steps.push_back(step);
}

// Pieces of `text` cut at each occurrence of `delimiter`, as Hugging Face's Split with a String pattern and
// `behavior`: (begin, end) byte offsets, none empty.
std::vector<std::pair<size_t, size_t>> split_on_string(std::string_view text, std::string_view delimiter,
                                                       SplitBehavior behavior) {
  struct Segment {
    size_t begin, end;
    bool match;
  };
  std::vector<Segment> segments;  // gaps and matches in order, none empty
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t hit = text.find(delimiter, pos);
    if (hit == std::string_view::npos) break;
    if (hit > pos) segments.push_back({pos, hit, false});
    segments.push_back({hit, hit + delimiter.size(), true});
    pos = hit + delimiter.size();
  }
  if (pos < text.size()) segments.push_back({pos, text.size(), false});
  std::vector<std::pair<size_t, size_t>> out;
  switch (behavior) {
    case SplitBehavior::removed:
      for (const Segment& s : segments) {
        if (!s.match) out.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::isolated:
      for (const Segment& s : segments) out.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::contiguous:
      for (size_t k = 0; k < segments.size(); ++k) {
        if (k > 0 && segments[k].match && segments[k - 1].match) out.back().second = segments[k].end;
        else out.emplace_back(segments[k].begin, segments[k].end);
      }
      break;
    case SplitBehavior::merged_with_previous:
      // A delimiter joins the piece before it, unless that piece is itself a delimiter.
      for (size_t k = 0; k < segments.size(); ++k) {
        if (segments[k].match && k > 0 && !segments[k - 1].match) out.back().second = segments[k].end;
        else out.emplace_back(segments[k].begin, segments[k].end);
      }
      break;
    case SplitBehavior::merged_with_next:
      // A delimiter joins the piece after it, unless that piece is itself a delimiter.
      for (size_t k = segments.size(); k-- > 0;) {
        if (segments[k].match && k + 1 < segments.size() && !segments[k + 1].match) out.back().first = segments[k].begin;
        else out.emplace_back(segments[k].begin, segments[k].end);
      }
      std::reverse(out.begin(), out.end());
      break;
  }
  return out;
}

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text, pos, std::string_view::npos);
  return out;
}

// One normalization step (Hugging Face normalizers), in pipeline order.
struct NormStep {
  enum class Kind { unicode, prepend, replace } kind = Kind::unicode;
  NormalForm form = NormalForm::nfc;  // unicode
  std::string from;                   // replace: the String pattern
  std::string to;                     // prepend: the prefix; replace: the content
};
constexpr std::pair<NormalForm, const char*> kNormalFormNames[] = {
    {NormalForm::nfc, "NFC"}, {NormalForm::nfd, "NFD"}, {NormalForm::nfkc, "NFKC"}, {NormalForm::nfkd, "NFKD"}};

void parse_normalizer(const json& n, const std::string& source, const std::string& path, std::vector<NormStep>& steps) {
  if (n.is_null()) return;
  const std::string type = type_field(n);
  for (const auto& [form, name] : kNormalFormNames) {
    if (type == name) {
      steps.push_back({NormStep::Kind::unicode, form, {}, {}});
      return;
    }
  }
  if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    for (size_t k = 0; k < n["normalizers"].size(); ++k) {
      parse_normalizer(n["normalizers"][k], source, path + ".normalizers[" + std::to_string(k) + "]", steps);
    }
    return;
  }
  if (type == "Prepend") {
    steps.push_back({NormStep::Kind::prepend, NormalForm::nfc, {}, string_field(n, "prepend", source, path)});
    return;
  }
  if (type == "Replace") {
    const std::string from = string_pattern(n, source, path);
    auto it = n.find("content");
    if (it == n.end() || !it->is_string()) {
      throw std::invalid_argument(source + ": field " + path + ".content is " +
                                  (it == n.end() ? std::string("missing") : quote(*it)) + ", expected a string");
    }
    steps.push_back({NormStep::Kind::replace, NormalForm::nfc, from, it->get<std::string>()});
    return;
  }
  throw std::invalid_argument(source + ": field " + path + " is " + quote(n) +
                              ", expected null, NFC, NFD, NFKC, NFKD, Prepend, Replace (String pattern) or a "
                              "Sequence of them for a BPE model");
}

std::string normalize(const std::vector<NormStep>& steps, std::string_view text) {
  std::string s(text);
  for (const NormStep& step : steps) {
    switch (step.kind) {
      case NormStep::Kind::unicode: s = normalize_unicode(s, step.form); break;
      case NormStep::Kind::prepend:
        if (!s.empty()) s.insert(0, step.to);
        break;
      case NormStep::Kind::replace: s = replace_all(s, step.from, step.to); break;
    }
  }
  return s;
}

// One decoding step (Hugging Face decoders), in pipeline order: each maps the list of token strings to a new list.
struct DecStep {
  enum class Kind { byte_level, replace, byte_fallback, fuse, strip, metaspace } kind = Kind::byte_level;
  std::string from;  // replace: the String pattern; strip: the character; metaspace: the replacement
  std::string to;    // replace: the content
  int64_t start = 0;  // strip: at most this many leading `from` removed
  int64_t stop = 0;   // strip: at most this many trailing `from` removed
  PrependScheme prepend_scheme = PrependScheme::always;  // metaspace
};

int64_t count_field(const json& obj, const char* key, const std::string& source, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return 0;
  if (!it->is_number_integer() || it->get<int64_t>() < 0) {
    throw std::invalid_argument(source + ": field " + path + "." + key + " is " + quote(*it) +
                                ", expected a non-negative integer");
  }
  return it->get<int64_t>();
}

void parse_decoder(const json& d, const std::string& source, const std::string& path, std::vector<DecStep>& steps) {
  const std::string type = type_field(d);
  DecStep step;
  if (type == "Sequence" && d.contains("decoders") && d["decoders"].is_array() && !d["decoders"].empty()) {
    for (size_t k = 0; k < d["decoders"].size(); ++k) {
      parse_decoder(d["decoders"][k], source, path + ".decoders[" + std::to_string(k) + "]", steps);
    }
    return;
  } else if (type == "ByteLevel") {
    step.kind = DecStep::Kind::byte_level;
  } else if (type == "ByteFallback") {
    step.kind = DecStep::Kind::byte_fallback;
  } else if (type == "Fuse") {
    step.kind = DecStep::Kind::fuse;
  } else if (type == "Replace") {
    step.kind = DecStep::Kind::replace;
    step.from = string_pattern(d, source, path);
    auto it = d.find("content");
    if (it == d.end() || !it->is_string()) {
      throw std::invalid_argument(source + ": field " + path + ".content is " +
                                  (it == d.end() ? std::string("missing") : quote(*it)) + ", expected a string");
    }
    step.to = it->get<std::string>();
  } else if (type == "Strip") {
    step.kind = DecStep::Kind::strip;
    step.from = string_field(d, "content", source, path);
    uint32_t cp = 0;
    if (decode_utf8(step.from, 0, cp) != step.from.size()) {
      throw std::invalid_argument(source + ": field " + path + ".content is " + quote(d["content"]) +
                                  ", expected one character");
    }
    step.start = count_field(d, "start", source, path);
    step.stop = count_field(d, "stop", source, path);
  } else if (type == "Metaspace") {
    step.kind = DecStep::Kind::metaspace;
    step.from = string_field(d, "replacement", source, path);
    const bool add_prefix_space = get_bool(d, "add_prefix_space", true, source, path);
    step.prepend_scheme = enum_field(d, "prepend_scheme", add_prefix_space ? PrependScheme::always : PrependScheme::never,
                                     kPrependSchemeNames, source, path);
  } else {
    throw std::invalid_argument(source + ": field " + path + " is " + quote(d) +
                                ", expected a ByteLevel, Replace, ByteFallback, Fuse, Strip or Metaspace decoder, or "
                                "a Sequence of them");
  }
  steps.push_back(step);
}

// The byte "<0xNN>" spells, or -1.
int byte_fallback_value(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  int v = 0;
  for (char c : token.substr(3, 2)) {
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// Runs the decoder steps over token strings and joins the result (Hugging Face's decode_chain, then concat).
std::string run_decoders(const std::vector<DecStep>& steps, std::vector<std::string> tokens) {
  for (const DecStep& step : steps) {
    switch (step.kind) {
      case DecStep::Kind::byte_level: {
        std::string joined;
        for (const std::string& t : tokens) joined += t;
        std::string bytes;
        if (!byte_level_to_bytes(joined, bytes)) {
          // Characters outside the byte alphabet are kept as they are (as Hugging Face).
          bytes.clear();
          for (size_t i = 0; i < joined.size();) {
            uint32_t cp = 0;
            const size_t len = decode_utf8(joined, i, cp);
            const int b = cp == kInvalidCodePoint ? -1 : unicode_to_byte(cp);
            if (b >= 0) bytes.push_back(static_cast<char>(b));
            else bytes.append(joined, i, len);
            i += len;
          }
        }
        std::string text;
        append_utf8_lossy(text, bytes);
        tokens.assign(1, text);
        break;
      }
      case DecStep::Kind::replace:
        for (std::string& t : tokens) t = replace_all(t, step.from, step.to);
        break;
      case DecStep::Kind::byte_fallback: {
        std::vector<std::string> out;
        std::string pending;  // bytes of consecutive <0xNN> tokens
        size_t n_pending = 0;
        auto flush = [&] {
          if (n_pending == 0) return;
          if (is_valid_utf8(pending)) {
            out.push_back(pending);
          } else {
            for (size_t k = 0; k < n_pending; ++k) out.emplace_back("\xEF\xBF\xBD");  // one U+FFFD per byte
          }
          pending.clear();
          n_pending = 0;
        };
        for (std::string& t : tokens) {
          const int b = byte_fallback_value(t);
          if (b >= 0) {
            pending.push_back(static_cast<char>(b));
            ++n_pending;
            continue;
          }
          flush();
          out.push_back(std::move(t));
        }
        flush();
        tokens.swap(out);
        break;
      }
      case DecStep::Kind::fuse: {
        std::string joined;
        for (const std::string& t : tokens) joined += t;
        tokens.assign(1, joined);
        break;
      }
      case DecStep::Kind::strip:
        for (std::string& t : tokens) {
          size_t begin = 0;
          for (int64_t k = 0; k < step.start && t.compare(begin, step.from.size(), step.from) == 0; ++k) {
            begin += step.from.size();
          }
          size_t end = t.size();
          for (int64_t k = 0; k < step.stop && end >= begin + step.from.size() &&
                              t.compare(end - step.from.size(), step.from.size(), step.from) == 0;
               ++k) {
            end -= step.from.size();
          }
          t = t.substr(begin, end - begin);
        }
        break;
      case DecStep::Kind::metaspace:
        // The replacement becomes a space, except in the first token, where it is dropped (every occurrence, as
        // Hugging Face) unless prepend_scheme is "never".
        for (size_t k = 0; k < tokens.size(); ++k) {
          const bool drop = k == 0 && step.prepend_scheme != PrependScheme::never;
          tokens[k] = replace_all(tokens[k], step.from, drop ? "" : " ");
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

// Symbol of a word during merging (Hugging Face's word.rs).
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  bool alive;
};
struct MergeCandidate {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
};
// Lowest rank first, then leftmost.
struct MergeLater {
  bool operator()(const MergeCandidate& a, const MergeCandidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};

// Lets the word cache be searched with a string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

uint64_t pair_key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

// BPE from tokenizer.json: byte-level (a ByteLevel pre-tokenizer step: words are bytes spelled in GPT-2's alphabet)
// or over characters (SentencePiece conversions: a character missing from the vocabulary falls back to its <0xNN>
// byte tokens, else unk_token).
class BpeTokenizer final : public TokenizerBase {
 public:
  BpeTokenizer(const json& j, const std::string& source);

  std::string kind() const override { return byte_level_ ? "bpe" : "sentencepiece"; }
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  std::string token_bytes(int64_t id) const override {
    return id >= 0 && id < vocab_size() ? id_bytes_[id] : std::string();
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(id_bytes_.size()); }
  int64_t token_id(std::string_view token) const override { return lookup_token_id(added_ids_, vocab_, token); }
  bool is_special(int64_t id) const override { return id >= 0 && id < vocab_size() && special_[id]; }
  bool stream_drops_leading_space() const override { return drops_leading_space_; }

 private:
  // Runs pre-tokenizer steps [step_index, end) on `text` and encodes the resulting words into `out`. `at_start`:
  // `text` begins the input (Metaspace's prepend_scheme "first").
  void pre_tokenize(std::string_view text, size_t step_index, bool at_start, std::vector<int64_t>& out) const;
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;
  void merge_word(std::string_view word, std::vector<int64_t>& out) const;

  std::string source_;
  std::unordered_map<std::string, int64_t> vocab_;      // model.vocab, byte-level spelling
  std::unordered_map<std::string, int64_t> added_ids_;  // added token content -> id
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, merged id)
  std::array<int64_t, 256> byte_id_{};                  // id of each byte's one-character token, -1 = none
  std::array<int64_t, 256> fallback_id_{};              // id of "<0xNN>", -1 = none
  std::vector<std::string> id_bytes_;
  std::vector<std::string> id_token_;  // the token as spelled in the file (decoders start from it)
  std::vector<uint8_t> special_;
  AddedTokenSplitter added_{{}};
  std::vector<NormStep> normalizer_;
  std::vector<PreStep> steps_;
  std::vector<DecStep> decoder_;
  bool byte_level_ = true;
  bool drops_leading_space_ = false;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  int64_t unk_id_ = -1;

  static constexpr size_t kCacheCapacity = 10000;  // as Hugging Face: stop inserting when full
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int64_t>, StringHash, std::equal_to<>> cache_;
};

BpeTokenizer::BpeTokenizer(const json& j, const std::string& source) : source_(source) {
  if (!j.is_object()) {
    throw std::invalid_argument(source + ": top level is a " + type_name_of(j) + ", expected a JSON object");
  }
  auto mit = j.find("model");
  if (mit == j.end() || !mit->is_object()) {
    throw std::invalid_argument(source + ": field model is " + (mit == j.end() ? "missing" : quote(*mit)) +
                                ", expected an object with type, vocab and merges");
  }
  const json& model = *mit;
  const std::string type = model.contains("type") ? (model["type"].is_string() ? model["type"].get<std::string>()
                                                                                : quote(model["type"]))
                                                  : std::string("BPE");
  if (type != "BPE") {
    throw std::invalid_argument(source + ": field model.type is \"" + type +
                                "\", expected BPE or WordPiece (a Unigram SentencePiece conversion needs "
                                "tokenizer.model beside it)");
  }
  // ---- pipeline ----
  if (auto it = j.find("normalizer"); it != j.end()) parse_normalizer(*it, source, "normalizer", normalizer_);
  const json pre = j.value("pre_tokenizer", json());
  if (!pre.is_null()) parse_pre_tokenizer(pre, source, "pre_tokenizer", steps_);
  const json decoder = j.value("decoder", json());
  if (!decoder.is_null()) parse_decoder(decoder, source, "decoder", decoder_);
  auto has_pre = [&](PreStep::Kind k) {
    return std::any_of(steps_.begin(), steps_.end(), [&](const PreStep& s) { return s.kind == k; });
  };
  auto has_dec = [&](DecStep::Kind k) {
    return std::any_of(decoder_.begin(), decoder_.end(), [&](const DecStep& s) { return s.kind == k; });
  };
  byte_level_ = has_pre(PreStep::Kind::byte_level) || has_dec(DecStep::Kind::byte_level);
  if (byte_level_) {
    if (pre.is_null()) {
      throw std::invalid_argument(source + ": field pre_tokenizer is null, expected ByteLevel (possibly inside a "
                                           "Sequence) for a byte-level BPE");
    }
    for (size_t k = 0; k < steps_.size(); ++k) {
      const bool is_byte_level = steps_[k].kind == PreStep::Kind::byte_level;
      if (is_byte_level != (k + 1 == steps_.size()) || steps_[k].kind == PreStep::Kind::metaspace) {
        throw std::invalid_argument(source + ": field pre_tokenizer is " + quote(pre) +
                                    ", expected exactly one ByteLevel step, placed last (and no Metaspace)");
      }
    }
    for (const DecStep& d : decoder_) {
      if (d.kind != DecStep::Kind::byte_level) {
        throw std::invalid_argument(source + ": field decoder is " + quote(decoder) +
                                    ", expected a ByteLevel decoder for a byte-level BPE");
      }
    }
    if (decoder_.empty()) {
      throw std::invalid_argument(source + ": field decoder is null, expected a ByteLevel decoder for a byte-level "
                                           "BPE");
    }
  }
  for (const DecStep& d : decoder_) {
    if ((d.kind == DecStep::Kind::strip && d.from == " " && d.start > 0) ||
        (d.kind == DecStep::Kind::metaspace && d.prepend_scheme != PrependScheme::never)) {
      drops_leading_space_ = true;
    }
  }
  // ---- vocab ----
  auto vit = model.find("vocab");
  if (vit == model.end() || !vit->is_object()) {
    throw std::invalid_argument(source + ": field model.vocab is " +
                                (vit == model.end() ? std::string("missing") : "a " + type_name_of(*vit)) +
                                ", expected an object mapping token -> id");
  }
  const std::vector<AddedToken> added = parse_added_tokens(j, source);
  const int64_t id_limit = static_cast<int64_t>(vit->size() + added.size());
  std::vector<const std::string*> id_token(static_cast<size_t>(id_limit), nullptr);
  vocab_.reserve(vit->size());
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    const json& v = it.value();
    if (!v.is_number_integer()) {
      throw std::invalid_argument(source + ": field model.vocab[\"" + it.key() + "\"] is " + quote(v) +
                                  ", expected an integer id");
    }
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= id_limit) {
      throw std::invalid_argument(source + ": field model.vocab[\"" + it.key() + "\"] is " + std::to_string(id) +
                                  ", expected an id in [0, " + std::to_string(id_limit) +
                                  ") (vocab entries + added tokens)");
    }
    auto [pos, inserted] = vocab_.emplace(it.key(), id);
    if (id_token[id] != nullptr) {
      throw std::invalid_argument(source + ": field model.vocab has id " + std::to_string(id) + " twice (\"" +
                                  *id_token[id] + "\" and \"" + it.key() + "\"), expected unique ids");
    }
    id_token[id] = &pos->first;
  }
  int64_t n_ids = 0;
  for (const auto& [tok, id] : vocab_) n_ids = std::max(n_ids, id + 1);
  for (const AddedToken& a : added) {
    if (a.id >= id_limit) {
      throw std::invalid_argument(source + ": field added_tokens (\"" + a.content + "\") has id " +
                                  std::to_string(a.id) + ", expected an id in [0, " + std::to_string(id_limit) + ")");
    }
    n_ids = std::max(n_ids, a.id + 1);
  }
  id_bytes_.assign(static_cast<size_t>(n_ids), std::string());
  id_token_.assign(static_cast<size_t>(n_ids), std::string());
  special_.assign(static_cast<size_t>(n_ids), 0);
  // The bytes a token adds to the text stream: byte-level tokens spell bytes; otherwise "<0xNN>" is that byte and
  // other tokens pass through the decoder's per-token replacements (U+2581 -> ' ').
  auto spell = [&](const std::string& token) {
    std::string bytes;
    if (byte_level_) {
      if (!byte_level_to_bytes(token, bytes)) bytes = token;  // as the ByteLevel decoder: raw text when unmapped
      return bytes;
    }
    if (const int b = byte_fallback_value(token); b >= 0 && has_dec(DecStep::Kind::byte_fallback)) {
      return std::string(1, static_cast<char>(b));
    }
    bytes = token;
    for (const DecStep& d : decoder_) {
      if (d.kind == DecStep::Kind::replace) bytes = replace_all(bytes, d.from, d.to);
      if (d.kind == DecStep::Kind::metaspace) bytes = replace_all(bytes, d.from, " ");
    }
    return bytes;
  };
  for (const auto& [tok, id] : vocab_) {
    id_bytes_[id] = spell(tok);
    id_token_[id] = tok;
  }
  for (const AddedToken& a : added) {
    added_ids_[a.content] = a.id;
    id_bytes_[a.id] = spell(a.content);
    id_token_[a.id] = a.content;
    special_[a.id] = a.special;
  }
  added_ = AddedTokenSplitter(added);
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(ch, byte_to_unicode(static_cast<uint8_t>(b)));
    auto it = vocab_.find(ch);
    byte_id_[b] = it == vocab_.end() ? -1 : it->second;
    static const char* hex = "0123456789ABCDEF";
    const std::string fb = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
    auto fit = vocab_.find(fb);
    fallback_id_[b] = fit == vocab_.end() ? -1 : fit->second;
  }
  // ---- options ----
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    if (it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty())) {
      throw std::invalid_argument(source + ": field model." + key + " is " + quote(*it) +
                                  ", expected null or \"\" (subword prefixes and suffixes are not supported)");
    }
  }
  ignore_merges_ = get_bool(model, "ignore_merges", false, source, "model");
  byte_fallback_ = get_bool(model, "byte_fallback", false, source, "model");
  fuse_unk_ = get_bool(model, "fuse_unk", false, source, "model");
  // model.dropout is ignored: BPE-dropout is a training-time regularizer; encoding here is deterministic.
  if (auto it = model.find("unk_token"); it != model.end() && !it->is_null()) {
    if (!it->is_string() || !vocab_.count(it->get<std::string>())) {
      throw std::invalid_argument(source + ": field model.unk_token is " + quote(*it) +
                                  ", expected null or a token of model.vocab");
    }
    unk_id_ = vocab_.at(it->get<std::string>());
  }
  // ---- merges ----
  auto git = model.find("merges");
  if (git == model.end() || !git->is_array()) {
    throw std::invalid_argument(source + ": field model.merges is " +
                                (git == model.end() ? std::string("missing") : "a " + type_name_of(*git)) +
                                ", expected an array of \"a b\" strings or [\"a\", \"b\"] pairs");
  }
  merges_.reserve(git->size());
  int32_t rank = 0;
  for (size_t k = 0; k < git->size(); ++k) {
    const json& m = (*git)[k];
    const std::string path = "model.merges[" + std::to_string(k) + "]";
    std::string a;
    std::string b;
    if (m.is_string()) {
      const std::string line = m.get<std::string>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos) {
        throw std::invalid_argument(source + ": field " + path + " is " + quote(m) +
                                    ", expected two tokens separated by one space");
      }
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      throw std::invalid_argument(source + ": field " + path + " is " + quote(m) +
                                  ", expected \"a b\" or [\"a\", \"b\"]");
    }
    for (const auto* part : {&a, &b}) {
      if (!vocab_.count(*part)) {
        throw std::invalid_argument(source + ": field " + path + " is " + quote(m) + " and names token \"" + *part +
                                    "\", which is not in model.vocab");
      }
    }
    const int64_t ia = vocab_.at(a);
    const int64_t ib = vocab_.at(b);
    auto in = vocab_.find(a + b);
    if (in == vocab_.end()) {
      throw std::invalid_argument(source + ": field " + path + " is " + quote(m) + ", whose merged token \"" + a + b +
                                  "\" is not in model.vocab");
    }
    // A later duplicate overrides an earlier one, as Hugging Face's map construction does.
    merges_[pair_key(ia, ib)] = {rank, static_cast<int32_t>(in->second)};
    ++rank;
  }
}

void BpeTokenizer::pre_tokenize(std::string_view text, size_t step_index, bool at_start,
                                std::vector<int64_t>& out) const {
  if (text.empty()) return;
  if (step_index == steps_.size()) {
    encode_word(text, out);
    return;
  }
  const PreStep& step = steps_[step_index];
  switch (step.kind) {
    case PreStep::Kind::digits: {
      // Digits: each digit alone (individual_digits) or runs of digits, between the other runs.
      size_t i = 0;
      size_t start = 0;
      bool in_digits = false;
      while (i < text.size()) {
        uint32_t cp = 0;
        const size_t len = decode_utf8(text, i, cp);
        const bool digit = cp != kInvalidCodePoint && is_number(cp);
        if (i > start && (digit != in_digits || (digit && step.individual_digits))) {
          pre_tokenize(text.substr(start, i - start), step_index + 1, at_start && start == 0, out);
          start = i;
        }
        in_digits = digit;
        i += len;
      }
      pre_tokenize(text.substr(start), step_index + 1, at_start && start == 0, out);
      break;
    }
    case PreStep::Kind::split: {
      SplitIterator it(text, step.pattern);
      size_t b = 0;
      size_t e = 0;
      while (it.next(b, e)) pre_tokenize(text.substr(b, e - b), step_index + 1, at_start && b == 0, out);
      break;
    }
    case PreStep::Kind::split_string:
      for (const auto& [b, e] : split_on_string(text, step.text, step.behavior)) {
        pre_tokenize(text.substr(b, e - b), step_index + 1, at_start && b == 0, out);
      }
      break;
    case PreStep::Kind::metaspace: {
      std::string replaced = replace_all(text, " ", step.text);
      const bool prepend = step.prepend_scheme == PrependScheme::always ||
                           (step.prepend_scheme == PrependScheme::first && at_start);
      if (prepend && replaced.compare(0, step.text.size(), step.text) != 0) replaced.insert(0, step.text);
      if (!step.metaspace_split) {
        pre_tokenize(replaced, step_index + 1, at_start, out);
        break;
      }
      for (const auto& [b, e] : split_on_string(replaced, step.text, SplitBehavior::merged_with_next)) {
        pre_tokenize(std::string_view(replaced).substr(b, e - b), step_index + 1, at_start && b == 0, out);
      }
      break;
    }
    case PreStep::Kind::byte_level: {
      std::string prefixed;
      if (step.add_prefix_space && text[0] != ' ') {
        prefixed.reserve(text.size() + 1);
        prefixed += ' ';
        prefixed += text;
        text = prefixed;
      }
      if (!step.use_regex) {
        pre_tokenize(text, step_index + 1, at_start, out);
        break;
      }
      SplitIterator it(text, SplitPattern::gpt2);
      size_t b = 0;
      size_t e = 0;
      while (it.next(b, e)) pre_tokenize(text.substr(b, e - b), step_index + 1, at_start && b == 0, out);
      break;
    }
  }
}

void BpeTokenizer::merge_word(std::string_view word, std::vector<int64_t>& out) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool last_was_unk = false;
  auto add = [&](int64_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({static_cast<int32_t>(id), n - 1, n + 1, true});
  };
  // A character the vocabulary lacks: its UTF-8 bytes as <0xNN> tokens (byte_fallback, when all exist), else
  // unk_token (one for a run of unknown characters with fuse_unk); without unk_token Hugging Face drops it.
  auto fallback_or_unk = [&](std::string_view ch) {
    bool all = byte_fallback_;
    for (char x : ch) all = all && fallback_id_[static_cast<uint8_t>(x)] >= 0;
    if (all) {
      for (char x : ch) add(fallback_id_[static_cast<uint8_t>(x)]);
      last_was_unk = false;
      return;
    }
    if (unk_id_ >= 0 && !(fuse_unk_ && last_was_unk)) add(unk_id_);
    last_was_unk = unk_id_ >= 0;
  };
  if (!byte_level_) {
    // Characters: each is a token of the vocabulary, else its UTF-8 bytes as <0xNN> tokens (byte_fallback, when
    // all exist), else unk_token (one for a run of unknown characters with fuse_unk), else dropped.
    std::string ch;
    for (size_t i = 0; i < word.size();) {
      uint32_t cp = 0;
      const size_t len = decode_utf8(word, i, cp);
      ch.assign(word.substr(i, len));
      i += len;
      if (auto it = vocab_.find(ch); it != vocab_.end()) {
        add(it->second);
        last_was_unk = false;
        continue;
      }
      fallback_or_unk(ch);
    }
  }
  for (char c : byte_level_ ? word : std::string_view()) {
    const auto b = static_cast<uint8_t>(c);
    if (byte_id_[b] >= 0) {
      add(byte_id_[b]);
      last_was_unk = false;
      continue;
    }
    // Hugging Face falls back to the UTF-8 bytes of the (byte-level) character.
    std::string ch;
    append_utf8(ch, byte_to_unicode(b));
    fallback_or_unk(ch);
  }
  if (!symbols.empty()) symbols.back().next = -1;

  std::priority_queue<MergeCandidate, std::vector<MergeCandidate>, MergeLater> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    auto it = merges_.find(pair_key(symbols[i].id, symbols[i + 1].id));
    if (it != merges_.end()) queue.push({it->second.first, static_cast<int32_t>(i), it->second.second});
  }
  while (!queue.empty()) {
    const MergeCandidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.second != top.new_id) continue;  // an expired candidate
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) {
      auto p = merges_.find(pair_key(symbols[left.prev].id, left.id));
      if (p != merges_.end()) queue.push({p->second.first, left.prev, p->second.second});
    }
    if (left.next >= 0) {
      auto p = merges_.find(pair_key(left.id, symbols[left.next].id));
      if (p != merges_.end()) queue.push({p->second.first, top.pos, p->second.second});
    }
  }
  for (const Symbol& s : symbols) {
    if (s.alive) out.push_back(s.id);
  }
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  if (ignore_merges_) {
    auto it = vocab_.find(byte_level_ ? bytes_to_byte_level(word) : std::string(word));
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int64_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() < kCacheCapacity) cache_.emplace(word, std::move(ids));
}

std::vector<int64_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> out;
  out.reserve(text.size() / 3 + 1);
  for (const TextPiece& piece : added_.split_pass(text, false)) {
    if (piece.id >= 0) {
      out.push_back(piece.id);
      continue;
    }
    // Hugging Face's order: normalize each piece between the normalized=false added tokens, then cut the
    // normalized=true added tokens out of the normalized text.
    const bool piece_at_start = piece.text.data() == text.data();
    if (normalizer_.empty()) {
      for (const TextPiece& p : added_.split_pass(piece.text, true)) {
        if (p.id >= 0) out.push_back(p.id);
        else pre_tokenize(p.text, 0, piece_at_start && p.text.data() == piece.text.data(), out);
      }
      continue;
    }
    const std::string normalized = normalize(normalizer_, piece.text);
    for (const TextPiece& p : added_.split_pass(normalized, true)) {
      if (p.id >= 0) out.push_back(p.id);
      else pre_tokenize(p.text, 0, piece_at_start && p.text.data() == normalized.data(), out);
    }
  }
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  if (!byte_level_) {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int64_t id : ids) {
      if (id >= 0 && id < vocab_size() && !special_[id]) tokens.push_back(id_token_[id]);
    }
    std::string text = run_decoders(decoder_, std::move(tokens));
    std::string out;
    append_utf8_lossy(out, text);
    return out;
  }
  std::string bytes;
  for (int64_t id : ids) {
    if (id >= 0 && id < vocab_size() && !special_[id]) bytes += id_bytes_[id];
  }
  std::string out;
  append_utf8_lossy(out, bytes);
  return out;
}

}  // namespace

std::unique_ptr<TokenizerBase> make_bpe(const json& j, const std::string& source) {
  return std::make_unique<BpeTokenizer>(j, source);
}

}  // namespace sinkflow::tokenizer_detail

// ---- train_byte_bpe ----

namespace sinkflow {
namespace {
using namespace tokenizer_detail;

struct Word {
  std::vector<int32_t> symbols;
  int64_t count = 0;
};

struct PairCount {
  int64_t count;
  int32_t left;
  int32_t right;
};
}  // namespace

void train_byte_bpe(const std::string& text, int n_merges, const std::vector<std::string>& special_tokens,
                    const std::string& out_path) {
  if (n_merges < 0) {
    throw std::invalid_argument("train_byte_bpe: n_merges is " + std::to_string(n_merges) + ", expected >= 0");
  }
  std::vector<AddedToken> specials;
  {
    std::unordered_set<std::string> seen;
    for (const std::string& s : special_tokens) {
      if (s.empty() || !is_valid_utf8(s) || !seen.insert(s).second) {
        throw std::invalid_argument("train_byte_bpe: special token \"" + s +
                                    "\" is empty, not valid UTF-8 or repeated; expected distinct non-empty UTF-8 "
                                    "strings");
      }
      AddedToken a;
      a.content = s;
      a.special = true;
      a.normalized = false;
      specials.push_back(a);
    }
  }
  // ---- words and their counts ----
  std::unordered_map<std::string, int64_t> word_counts;
  std::vector<AddedToken> cut = specials;  // special tokens in the text are never part of a word
  for (size_t k = 0; k < cut.size(); ++k) cut[k].id = static_cast<int64_t>(k);
  const AddedTokenSplitter splitter(cut);
  for (const TextPiece& piece : splitter.split(text)) {
    if (piece.id >= 0) continue;
    for (const auto& [b, e] : split_pattern(piece.text, SplitPattern::gpt2)) {
      ++word_counts[std::string(piece.text.substr(b, e - b))];
    }
  }
  std::vector<std::pair<std::string, int64_t>> sorted_words(word_counts.begin(), word_counts.end());
  std::sort(sorted_words.begin(), sorted_words.end());
  std::vector<Word> words(sorted_words.size());
  for (size_t w = 0; w < sorted_words.size(); ++w) {
    for (char c : sorted_words[w].first) words[w].symbols.push_back(static_cast<uint8_t>(c));
    words[w].count = sorted_words[w].second;
  }
  // ---- tokens: the 256 bytes, then merges ----
  std::vector<std::string> token_bytes;
  std::unordered_map<std::string, int32_t> token_index;
  for (int b = 0; b < 256; ++b) {
    token_bytes.emplace_back(1, static_cast<char>(b));
    token_index.emplace(token_bytes.back(), b);
  }
  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;  // words holding the pair (may hold stale ones)
  auto key = [](int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); };
  // Heap order: highest count first; ties by the smaller (left bytes, right bytes).
  auto lower_priority = [&](const PairCount& x, const PairCount& y) {
    if (x.count != y.count) return x.count < y.count;
    const int c = token_bytes[x.left].compare(token_bytes[y.left]);
    if (c != 0) return c > 0;
    return token_bytes[x.right].compare(token_bytes[y.right]) > 0;
  };
  std::priority_queue<PairCount, std::vector<PairCount>, decltype(lower_priority)> heap(lower_priority);
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t k = key(s[i], s[i + 1]);
      pair_counts[k] += words[w].count;
      auto& list = pair_words[k];
      if (list.empty() || list.back() != static_cast<int32_t>(w)) list.push_back(static_cast<int32_t>(w));
    }
  }
  for (const auto& [k, c] : pair_counts) {
    heap.push({c, static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xFFFFFFFFu)});
  }

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<uint32_t> visited(words.size(), 0);  // merge number that last rewrote each word
  std::unordered_map<uint64_t, int64_t> delta;
  while (static_cast<int>(merges.size()) < n_merges && !heap.empty()) {
    const PairCount top = heap.top();
    heap.pop();
    const uint64_t k = key(top.left, top.right);
    auto cit = pair_counts.find(k);
    if (cit == pair_counts.end() || cit->second != top.count) continue;  // stale entry
    if (top.count <= 0) break;
    const std::string merged = token_bytes[top.left] + token_bytes[top.right];
    int32_t new_id = 0;
    if (auto it = token_index.find(merged); it != token_index.end()) {
      new_id = it->second;
    } else {
      new_id = static_cast<int32_t>(token_bytes.size());
      token_bytes.push_back(merged);
      token_index.emplace(merged, new_id);
    }
    merges.emplace_back(top.left, top.right);
    const uint32_t stamp = static_cast<uint32_t>(merges.size());
    delta.clear();
    const std::vector<int32_t> holders = std::move(pair_words[k]);
    pair_words.erase(k);
    for (int32_t w : holders) {
      if (visited[w] == stamp) continue;
      visited[w] = stamp;
      auto& s = words[w].symbols;
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == top.left && s[i + 1] == top.right;
      if (!has) continue;
      const int64_t c = words[w].count;
      for (size_t i = 0; i + 1 < s.size(); ++i) delta[key(s[i], s[i + 1])] -= c;
      std::vector<int32_t> t;
      t.reserve(s.size());
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == top.left && s[i + 1] == top.right) {
          t.push_back(new_id);
          i += 2;
        } else {
          t.push_back(s[i++]);
        }
      }
      s.swap(t);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t nk = key(s[i], s[i + 1]);
        delta[nk] += c;
        auto& list = pair_words[nk];
        if (list.empty() || list.back() != w) list.push_back(w);
      }
    }
    for (const auto& [dk, dc] : delta) {
      if (dc == 0) continue;
      int64_t& count = pair_counts[dk];
      count += dc;
      if (count > 0) heap.push({count, static_cast<int32_t>(dk >> 32), static_cast<int32_t>(dk & 0xFFFFFFFFu)});
    }
  }

  // ---- tokenizer.json ----
  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < token_bytes.size(); ++id) vocab[bytes_to_byte_level(token_bytes[id])] = id;
  ordered_json merge_list = ordered_json::array();
  for (const auto& [a, b] : merges) {
    merge_list.push_back(bytes_to_byte_level(token_bytes[a]) + " " + bytes_to_byte_level(token_bytes[b]));
  }
  ordered_json added = ordered_json::array();
  for (size_t k = 0; k < specials.size(); ++k) {
    added.push_back({{"id", token_bytes.size() + k},
                     {"content", specials[k].content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const ordered_json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  ordered_json doc;
  doc["version"] = "1.0";
  doc["truncation"] = nullptr;
  doc["padding"] = nullptr;
  doc["added_tokens"] = added;
  doc["normalizer"] = nullptr;
  doc["pre_tokenizer"] = byte_level;
  doc["post_processor"] = nullptr;
  doc["decoder"] = byte_level;
  doc["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"ignore_merges", false},
                  {"vocab", vocab},
                  {"merges", merge_list}};
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(out_path + ": cannot open the file for writing");
  out << doc.dump(2) << '\n';
  out.close();
  if (!out) throw std::runtime_error(out_path + ": write failed");
  spdlog::info("train_byte_bpe: words={} merges={} vocab={} specials={} -> {}", words.size(), merges.size(),
               token_bytes.size(), specials.size(), out_path);
}

}  // namespace sinkflow
