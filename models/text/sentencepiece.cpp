// SentencePiece tokenizer.model without libsentencepiece: a bounds-checked protobuf reader for ModelProto, the
// normalizer (precompiled charsmap), BPE and unigram encoders, and the decoder. See models/sentencepiece.h.
#include "models/text/sentencepiece.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "models/text/tokenizer_internal.h"

namespace sinkflow {

namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581, how SentencePiece spells ' '
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";
constexpr int32_t kUnkRun = -2;  // an unknown symbol without byte fallback: a run of them gives one unk_id

[[noreturn]] void fail(const std::string& source, const std::string& what) {
  throw std::invalid_argument(source + ": cannot load the SentencePiece model: " + what);
}

// ---- Protobuf wire format ----
enum WireType : int { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kStartGroup = 3, kEndGroup = 4, kFixed32 = 5 };

const char* wire_type_name(int wire_type) {
  switch (wire_type) {
    case kVarint:
      return "0 (varint)";
    case kFixed64:
      return "1 (64-bit)";
    case kLengthDelimited:
      return "2 (length-delimited)";
    case kStartGroup:
      return "3 (start group)";
    case kEndGroup:
      return "4 (end group)";
    case kFixed32:
      return "5 (32-bit)";
    default:
      return "an invalid wire type";
  }
}

// Reads one message of the buffer [begin, end); never reads outside it. Offsets in messages are from the start of
// the file (`file_begin`). `path` names the message being read ("trainer_spec", "pieces[12]").
class WireReader {
 public:
  WireReader(const uint8_t* file_begin, const uint8_t* begin, const uint8_t* end, const std::string& source,
             std::string path)
      : file_begin_(file_begin), p_(begin), end_(end), source_(source), path_(std::move(path)) {}

  bool done() const { return p_ >= end_; }

  // Reads the next field's tag. Field numbers are 1 .. 2^29-1.
  void read_tag(uint32_t& field, int& wire_type) {
    const size_t at = offset();
    const uint64_t tag = read_varint("a field tag");
    field = static_cast<uint32_t>(tag >> 3);
    wire_type = static_cast<int>(tag & 7);
    if (tag >> 3 == 0 || tag >> 3 > 0x1FFFFFFF) {
      error("field tag " + std::to_string(tag) + " at byte " + std::to_string(at) + " has field number " +
            std::to_string(tag >> 3) + ", expected 1 to 536870911");
    }
    if (wire_type > kFixed32) {
      error("field " + std::to_string(field) + " at byte " + std::to_string(at) + " has wire type " +
            std::to_string(wire_type) + ", expected 0 to 5");
    }
  }

  uint64_t read_varint(const std::string& what) {
    const size_t at = offset();
    uint64_t value = 0;
    for (int i = 0; i < 10; ++i) {
      if (p_ >= end_) {
        error(what + ": varint at byte " + std::to_string(at) + " runs past the end of the " + extent() +
              " (the file may be truncated)");
      }
      const uint8_t b = *p_++;
      value |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
      if ((b & 0x80) == 0) return value;
    }
    error(what + ": varint at byte " + std::to_string(at) + " is longer than 10 bytes, expected at most 10");
  }

  uint32_t read_fixed32(const std::string& what) {
    need(4, what);
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p_[i]) << (8 * i);
    p_ += 4;
    return v;
  }

  void skip_fixed64(const std::string& what) {
    need(8, what);
    p_ += 8;
  }

  // The payload of a length-delimited field.
  std::pair<const uint8_t*, const uint8_t*> read_bytes(const std::string& what) {
    const size_t at = offset();
    const uint64_t length = read_varint(what + " (length)");
    const auto left = static_cast<uint64_t>(end_ - p_);
    if (length > left) {
      error(what + " at byte " + std::to_string(at) + " has length " + std::to_string(length) +
            ", expected at most the " + std::to_string(left) + " bytes left in the " + extent() +
            " (the file may be truncated)");
    }
    const uint8_t* begin = p_;
    p_ += length;
    return {begin, p_};
  }

  std::string_view read_string(const std::string& what) {
    const auto [b, e] = read_bytes(what);
    return std::string_view(reinterpret_cast<const char*>(b), static_cast<size_t>(e - b));
  }

  // Skips the value of a field that is not read (every wire type; groups nest at most 64 deep).
  void skip(uint32_t field, int wire_type, int depth = 0) {
    const std::string what = "field " + std::to_string(field);
    switch (wire_type) {
      case kVarint:
        read_varint(what);
        return;
      case kFixed64:
        skip_fixed64(what);
        return;
      case kLengthDelimited:
        read_bytes(what);
        return;
      case kFixed32:
        read_fixed32(what);
        return;
      case kStartGroup: {
        if (depth >= 64) error("groups nest more than 64 deep at byte " + std::to_string(offset()));
        for (;;) {
          if (done())
            error("group of field " + std::to_string(field) + " has no end-group tag before the end of the " +
                  extent());
          uint32_t f = 0;
          int wt = 0;
          read_tag(f, wt);
          if (wt == kEndGroup) {
            if (f != field) {
              error("end-group tag of field " + std::to_string(f) + " at byte " + std::to_string(offset()) +
                    ", expected the end of group " + std::to_string(field));
            }
            return;
          }
          skip(f, wt, depth + 1);
        }
      }
      case kEndGroup:
        error("unexpected end-group tag of field " + std::to_string(field) + " before byte " +
              std::to_string(offset()) + ", expected no open group");
      default:
        error(what + " has an invalid wire type");
    }
  }

  // Throws unless `wire_type` is `expected` for field `name`.
  void expect(int wire_type, int expected, const std::string& name) {
    if (wire_type != expected) {
      error(name + " has wire type " + wire_type_name(wire_type) + ", expected " + wire_type_name(expected));
    }
  }

  // "field trainer_spec.bos_id (41)"
  std::string field_name(const char* name, uint32_t number) const {
    return "field " + (path_.empty() ? std::string() : path_ + ".") + name + " (" + std::to_string(number) + ")";
  }

  const uint8_t* file_begin() const { return file_begin_; }
  const std::string& path() const { return path_; }

  [[noreturn]] void error(const std::string& what) const { fail(source_, what); }

 private:
  size_t offset() const { return static_cast<size_t>(p_ - file_begin_); }
  std::string extent() const {
    return path_.empty() ? "file"
                         : "message " + path_ + " (which ends at byte " + std::to_string(end_ - file_begin_) + ")";
  }
  void need(size_t n, const std::string& what) {
    if (static_cast<size_t>(end_ - p_) < n) {
      error(what + ": " + std::to_string(n) + "-byte value at byte " + std::to_string(offset()) +
            " runs past the end of the " + extent() + " (the file may be truncated)");
    }
  }

  const uint8_t* file_begin_;
  const uint8_t* p_;
  const uint8_t* end_;
  const std::string& source_;
  std::string path_;
};

int32_t as_int32(uint64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v)); }

float as_float(uint32_t bits) {
  float f = 0.0f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// ---- UTF-8 as sentencepiece's string_util sees it ----
// Length of the character starting with byte `c`, from its first byte only (string_util::OneCharLen).
size_t one_char_len(uint8_t c) { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[c >> 4]; }

bool is_trail(uint8_t c) { return (c & 0xC0) == 0x80; }
bool is_valid_code_point(uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

// string_util::IsValidDecodeUTF8: whether `s` starts with a well-formed character; its length in `mblen` (1 when not).
bool valid_utf8_prefix(std::string_view s, size_t& mblen) {
  const auto* b = reinterpret_cast<const uint8_t*>(s.data());
  const size_t len = s.size();
  mblen = 1;
  if (b[0] < 0x80) return true;
  if (len >= 2 && (b[0] & 0xE0) == 0xC0) {
    const uint32_t cp = ((b[0] & 0x1Fu) << 6) | (b[1] & 0x3Fu);
    if (is_trail(b[1]) && cp >= 0x80 && is_valid_code_point(cp)) {
      mblen = 2;
      return true;
    }
  } else if (len >= 3 && (b[0] & 0xF0) == 0xE0) {
    const uint32_t cp = ((b[0] & 0x0Fu) << 12) | ((b[1] & 0x3Fu) << 6) | (b[2] & 0x3Fu);
    if (is_trail(b[1]) && is_trail(b[2]) && cp >= 0x800 && is_valid_code_point(cp)) {
      mblen = 3;
      return true;
    }
  } else if (len >= 4 && (b[0] & 0xF8) == 0xF0) {
    const uint32_t cp = ((b[0] & 0x07u) << 18) | ((b[1] & 0x3Fu) << 12) | ((b[2] & 0x3Fu) << 6) | (b[3] & 0x3Fu);
    if (is_trail(b[1]) && is_trail(b[2]) && is_trail(b[3]) && cp >= 0x10000 && is_valid_code_point(cp)) {
      mblen = 4;
      return true;
    }
  }
  return false;
}

// "<0x41>" -> 0x41; -1 when `piece` is not spelled so.
int parse_byte_piece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = piece[i];
    int digit = -1;
    if (c >= '0' && c <= '9')
      digit = c - '0';
    else if (c >= 'A' && c <= 'F')
      digit = c - 'A' + 10;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

std::string byte_piece(uint8_t b) {
  static const char* hex = "0123456789ABCDEF";
  return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// A byte trie over a set of strings, each with a value (a piece id).
class ByteTrie {
 public:
  void build(const std::vector<std::pair<std::string, int32_t>>& entries) {
    // Nested maps first, then flattened breadth-first into arrays.
    struct Tmp {
      int32_t value = -1;
      std::map<uint8_t, size_t> kids;
    };
    std::vector<Tmp> tmp(1);
    for (const auto& [key, value] : entries) {
      size_t node = 0;
      for (char ch : key) {
        const auto c = static_cast<uint8_t>(ch);
        auto it = tmp[node].kids.find(c);
        if (it == tmp[node].kids.end()) {
          tmp.emplace_back();
          it = tmp[node].kids.emplace(c, tmp.size() - 1).first;
        }
        node = it->second;
      }
      tmp[node].value = value;
    }
    nodes_.assign(tmp.size(), Node{});
    std::vector<size_t> order{0};
    std::vector<uint32_t> index(tmp.size(), 0);
    for (size_t i = 0; i < order.size(); ++i) {
      const size_t t = order[i];
      index[t] = static_cast<uint32_t>(i);
      for (const auto& [c, kid] : tmp[t].kids) order.push_back(kid);
    }
    for (size_t i = 0; i < order.size(); ++i) {
      const Tmp& t = tmp[order[i]];
      Node& n = nodes_[i];
      n.value = t.value;
      n.first_edge = static_cast<uint32_t>(labels_.size());
      n.n_edges = static_cast<uint32_t>(t.kids.size());
      for (const auto& [c, kid] : t.kids) {
        labels_.push_back(c);
        targets_.push_back(index[kid]);
      }
    }
  }

  bool empty() const { return nodes_.size() <= 1; }

  // Calls f(length, value) for every key that is a prefix of `s`, shortest first.
  template <class F>
  void for_each_prefix(std::string_view s, F&& f) const {
    if (nodes_.empty()) return;
    uint32_t node = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const Node& n = nodes_[node];
      const auto c = static_cast<uint8_t>(s[i]);
      const uint8_t* lb = labels_.data() + n.first_edge;
      const uint8_t* le = lb + n.n_edges;
      const uint8_t* it = std::lower_bound(lb, le, c);
      if (it == le || *it != c) return;
      node = targets_[n.first_edge + static_cast<uint32_t>(it - lb)];
      if (nodes_[node].value >= 0) f(i + 1, nodes_[node].value);
    }
  }

  // Length of the longest key that is a prefix of `s` (0 when none).
  size_t longest_prefix(std::string_view s) const {
    size_t longest = 0;
    for_each_prefix(s, [&](size_t length, int32_t) { longest = length; });
    return longest;
  }

 private:
  struct Node {
    int32_t value = -1;
    uint32_t first_edge = 0;
    uint32_t n_edges = 0;
  };
  std::vector<Node> nodes_;
  std::vector<uint8_t> labels_;
  std::vector<uint32_t> targets_;
};

// The precompiled charsmap: <uint32 trie size><Darts double-array units><NUL-terminated replacement strings>.
class CharsMap {
 public:
  void load(std::string_view blob, const std::string& source) {
    const std::string field = "field normalizer_spec.precompiled_charsmap (2)";
    if (blob.size() <= 4) {
      fail(source, field + " has " + std::to_string(blob.size()) + " bytes, expected more than 4");
    }
    uint32_t trie_size = 0;
    for (int i = 0; i < 4; ++i) trie_size |= static_cast<uint32_t>(static_cast<uint8_t>(blob[i])) << (8 * i);
    if (trie_size >= blob.size() || trie_size < 4) {
      fail(source, field + " declares a trie of " + std::to_string(trie_size) + " bytes, expected 4 to " +
                       std::to_string(blob.size() - 1) + " (the blob has " + std::to_string(blob.size()) + " bytes)");
    }
    blob.remove_prefix(4);
    units_.resize(trie_size / 4);
    for (size_t i = 0; i < units_.size(); ++i) {
      uint32_t u = 0;
      for (int k = 0; k < 4; ++k) u |= static_cast<uint32_t>(static_cast<uint8_t>(blob[4 * i + k])) << (8 * k);
      units_[i] = u;
    }
    normalized_.assign(blob.substr(trie_size));
    source_ = source;
  }

  bool empty() const { return units_.empty(); }

  // The longest rule matching a prefix of `s`: its replacement in `out` and its length in bytes (0 when none).
  // Darts-clone's commonPrefixSearch, bounds-checked.
  size_t longest_match(std::string_view s, std::string_view& out) const {
    size_t longest = 0;
    uint32_t value = 0;
    size_t node = 0;
    uint32_t unit = at(node);
    node ^= offset(unit);
    for (size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<uint8_t>(s[i]);
      node ^= c;
      if (node >= units_.size()) break;  // no such transition
      unit = units_[node];
      if ((unit & ((1u << 31) | 0xFFu)) != c) break;  // label mismatch
      node ^= offset(unit);
      if ((unit >> 8) & 1) {  // has a leaf: a rule ends here
        longest = i + 1;
        value = at(node) & ((1u << 31) - 1);
      }
    }
    if (longest == 0) return 0;
    if (value >= normalized_.size()) {
      throw std::invalid_argument(source_ +
                                  ": field normalizer_spec.precompiled_charsmap (2) is corrupt: a rule points "
                                  "at byte " +
                                  std::to_string(value) + " of the replacement strings, expected less than " +
                                  std::to_string(normalized_.size()));
    }
    const size_t end = normalized_.find('\0', value);
    out = std::string_view(normalized_).substr(value, (end == std::string::npos ? normalized_.size() : end) - value);
    return longest;
  }

 private:
  static uint32_t offset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }
  uint32_t at(size_t node) const {
    if (node >= units_.size()) {
      throw std::invalid_argument(source_ +
                                  ": field normalizer_spec.precompiled_charsmap (2) is corrupt: the trie "
                                  "refers to unit " +
                                  std::to_string(node) + ", expected less than " + std::to_string(units_.size()));
    }
    return units_[node];
  }

  std::vector<uint32_t> units_;
  std::string normalized_;
  std::string source_;
};

const char* model_type_name(int type) {
  switch (type) {
    case 1:
      return "UNIGRAM";
    case 2:
      return "BPE";
    case 3:
      return "WORD";
    case 4:
      return "CHAR";
    default:
      return "unknown";
  }
}

}  // namespace

// ---- Lookup structures ----
struct SentencePieceModel::Impl {
  PieceMap mergeable;                   // NORMAL, USER_DEFINED, UNUSED pieces (sentencepiece's pieces_)
  PieceMap reserved;                    // UNKNOWN, CONTROL, BYTE pieces (sentencepiece's reserved_id_map_)
  ByteTrie user_defined;                // USER_DEFINED pieces, matched first and never merged
  ByteTrie unigram_pieces;              // mergeable pieces, for the unigram lattice
  CharsMap charsmap;                    // empty for "identity"
  std::vector<std::string> bytes;       // token_bytes of each id
  std::vector<uint8_t> special;         // control or unknown
  std::array<int32_t, 256> byte_ids{};  // PieceToId("<0xNN>")
  bool split_at_space = false;          // no mergeable piece has U+2581 after its first character
  float min_score = FLT_MAX;            // over NORMAL pieces (unigram)
  float max_score = FLT_MIN;
  int32_t unk_id = -1;
  std::vector<SentencePieceModel::PieceType> types;
  std::vector<float> scores;

  int32_t piece_to_id(std::string_view piece) const {
    if (auto it = reserved.find(piece); it != reserved.end()) return it->second;
    if (auto it = mergeable.find(piece); it != mergeable.end()) return it->second;
    return unk_id;
  }
  bool is_unused(int32_t id) const { return id >= 0 && types[id] == SentencePieceModel::PieceType::unused; }
  bool is_unknown(int32_t id) const { return id >= 0 && types[id] == SentencePieceModel::PieceType::unknown; }

  // Normalizer::NormalizePrefix: the replacement of the first character(s) of `input` and how many bytes it takes.
  std::pair<std::string_view, size_t> normalize_prefix(std::string_view input) const {
    if (!user_defined.empty()) {
      const size_t n = user_defined.longest_prefix(input);
      if (n > 0) return {input.substr(0, n), n};
    }
    if (!charsmap.empty()) {
      std::string_view out;
      const size_t n = charsmap.longest_match(input, out);
      if (n > 0) return {out, n};
    }
    size_t mblen = 1;
    if (!valid_utf8_prefix(input, mblen)) return {kReplacementChar, 1};
    return {input.substr(0, mblen), mblen};
  }
};

// ---- Loading ----
SentencePieceModel::SentencePieceModel(SentencePieceModel&&) noexcept = default;
SentencePieceModel& SentencePieceModel::operator=(SentencePieceModel&&) noexcept = default;
SentencePieceModel::~SentencePieceModel() = default;

SentencePieceModel::SentencePieceModel(std::string_view bytes, std::string source) : source_(std::move(source)) {
  auto impl = std::make_unique<Impl>();
  const auto* file_begin = reinterpret_cast<const uint8_t*>(bytes.data());
  const std::string& src = source_;

  int model_type = 1;  // proto defaults
  bool treat_whitespace_as_suffix = false;
  std::string bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
  bool has_trainer_spec = false, has_normalizer_spec = false;
  std::string_view charsmap_blob;
  bool charsmap_set = false;

  WireReader top(file_begin, file_begin, file_begin + bytes.size(), src, "");
  while (!top.done()) {
    uint32_t field = 0;
    int wt = 0;
    top.read_tag(field, wt);
    if (field == 1) {  // pieces
      const std::string path = "pieces[" + std::to_string(pieces_.size()) + "]";
      top.expect(wt, kLengthDelimited, "field " + path + " (1)");
      const auto [b, e] = top.read_bytes("field " + path + " (1)");
      WireReader r(file_begin, b, e, src, path);
      Piece piece;
      while (!r.done()) {
        uint32_t f = 0;
        int w = 0;
        r.read_tag(f, w);
        if (f == 1) {
          r.expect(w, kLengthDelimited, r.field_name("piece", 1));
          piece.text = std::string(r.read_string(r.field_name("piece", 1)));
        } else if (f == 2) {
          r.expect(w, kFixed32, r.field_name("score", 2));
          piece.score = as_float(r.read_fixed32(r.field_name("score", 2)));
        } else if (f == 3) {
          r.expect(w, kVarint, r.field_name("type", 3));
          const int32_t type = as_int32(r.read_varint(r.field_name("type", 3)));
          if (type < 1 || type > 6) {
            r.error(r.field_name("type", 3) + " is " + std::to_string(type) +
                    ", expected 1 to 6 (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)");
          }
          piece.type = static_cast<PieceType>(type);
        } else {
          r.skip(f, w);
        }
      }
      pieces_.push_back(std::move(piece));
    } else if (field == 2 || field == 3 || field == 5) {  // trainer_spec, normalizer_spec, denormalizer_spec
      const char* name = field == 2 ? "trainer_spec" : field == 3 ? "normalizer_spec" : "denormalizer_spec";
      const std::string what = "field " + std::string(name) + " (" + std::to_string(field) + ")";
      top.expect(wt, kLengthDelimited, what);
      const auto [b, e] = top.read_bytes(what);
      WireReader r(file_begin, b, e, src, name);
      if (field == 2) has_trainer_spec = true;
      if (field == 3) has_normalizer_spec = true;
      while (!r.done()) {
        uint32_t f = 0;
        int w = 0;
        r.read_tag(f, w);
        auto read_varint_field = [&](const char* fname) {
          r.expect(w, kVarint, r.field_name(fname, f));
          return r.read_varint(r.field_name(fname, f));
        };
        if (field == 2) {
          switch (f) {
            case 3:
              model_type = as_int32(read_varint_field("model_type"));
              break;
            case 24:
              treat_whitespace_as_suffix = read_varint_field("treat_whitespace_as_suffix") != 0;
              break;
            case 25:
              read_varint_field("split_digits");
              break;  // training only
            case 35:
              byte_fallback_ = read_varint_field("byte_fallback") != 0;
              break;
            // bos_id (41), eos_id (42), pad_id (43) say where spm_train put the pieces named by bos_piece (46),
            // eos_piece (47), pad_piece (48); like SentencePieceProcessor::bos_id(), use the names. The unknown
            // piece is the one of type UNKNOWN (unk_id (40) is where spm_train put it).
            case 46:
            case 47:
            case 48: {
              static const char* const names[] = {"bos_piece", "eos_piece", "pad_piece"};
              const char* fname = names[f - 46];
              r.expect(w, kLengthDelimited, r.field_name(fname, f));
              std::string value(r.read_string(r.field_name(fname, f)));
              (f == 46 ? bos_piece : f == 47 ? eos_piece : pad_piece) = std::move(value);
              break;
            }
            default:
              r.skip(f, w);
          }
        } else {
          switch (f) {
            case 1:
              r.expect(w, kLengthDelimited, r.field_name("name", 1));
              if (field == 3)
                normalizer_name_ = std::string(r.read_string(r.field_name("name", 1)));
              else
                r.read_string(r.field_name("name", 1));
              break;
            case 2: {
              r.expect(w, kLengthDelimited, r.field_name("precompiled_charsmap", 2));
              const std::string_view blob = r.read_string(r.field_name("precompiled_charsmap", 2));
              if (field == 3) {
                charsmap_blob = blob;
                charsmap_set = true;
              } else if (!blob.empty()) {
                fail(src, "field denormalizer_spec.precompiled_charsmap (2) holds " + std::to_string(blob.size()) +
                              " bytes of rules, expected none (denormalization is not supported)");
              }
              break;
            }
            case 3: {
              const bool v = read_varint_field("add_dummy_prefix") != 0;
              if (field == 3) add_dummy_prefix_ = v;
              break;
            }
            case 4: {
              const bool v = read_varint_field("remove_extra_whitespaces") != 0;
              if (field == 3) remove_extra_whitespaces_ = v;
              break;
            }
            case 5: {
              const bool v = read_varint_field("escape_whitespaces") != 0;
              if (field == 3) escape_whitespaces_ = v;
              break;
            }
            default:
              r.skip(f, w);
          }
        }
      }
    } else {
      top.skip(field, wt);
    }
  }

  // ---- Checks ----
  if (!has_trainer_spec) {
    fail(src,
         "field trainer_spec (2) is missing, expected a TrainerSpec (the file may be truncated or not a "
         "SentencePiece model)");
  }
  if (!has_normalizer_spec) {
    fail(src,
         "field normalizer_spec (3) is missing, expected a NormalizerSpec (the file may be truncated or not a "
         "SentencePiece model)");
  }
  if (pieces_.empty()) fail(src, "field pieces (1) is empty, expected at least one piece");
  if (model_type != 1 && model_type != 2) {
    fail(src, std::string("field trainer_spec.model_type (3) is ") + std::to_string(model_type) + " (" +
                  model_type_name(model_type) + "), expected 1 (UNIGRAM) or 2 (BPE)");
  }
  model_type_ = static_cast<ModelType>(model_type);
  if (treat_whitespace_as_suffix) {
    fail(src, "field trainer_spec.treat_whitespace_as_suffix (24) is true, expected false (not supported)");
  }
  impl->types.resize(pieces_.size());
  impl->scores.resize(pieces_.size());
  impl->bytes.resize(pieces_.size());
  impl->special.resize(pieces_.size());
  std::vector<std::pair<std::string, int32_t>> user_defined, mergeable;
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const Piece& p = pieces_[i];
    const auto id = static_cast<int32_t>(i);
    const std::string name = "field pieces[" + std::to_string(i) + "].piece (1)";
    if (p.text.empty()) fail(src, name + " is empty, expected a non-empty piece");
    const bool is_mergeable =
        p.type == PieceType::normal || p.type == PieceType::user_defined || p.type == PieceType::unused;
    PieceMap& map = is_mergeable ? impl->mergeable : impl->reserved;
    if (!map.emplace(p.text, id).second) {
      fail(src, name + " is '" + p.text + "', expected a piece not already defined (by pieces[" +
                    std::to_string(map.find(p.text)->second) + "])");
    }
    impl->types[i] = p.type;
    impl->scores[i] = p.score;
    impl->special[i] = p.type == PieceType::control || p.type == PieceType::unknown;
    if (p.type == PieceType::unknown) {
      if (impl->unk_id >= 0) {
        fail(src, "field pieces[" + std::to_string(i) +
                      "].type (3) is UNKNOWN, expected a single UNKNOWN piece (pieces[" + std::to_string(impl->unk_id) +
                      "] is one)");
      }
      impl->unk_id = id;
    }
    if (p.type == PieceType::byte) {
      const int b = parse_byte_piece(p.text);
      if (!byte_fallback_) {
        fail(src, "field pieces[" + std::to_string(i) +
                      "].type (3) is BYTE, expected no BYTE piece since "
                      "trainer_spec.byte_fallback (35) is false");
      }
      if (b < 0) fail(src, name + " is '" + p.text + "' of type BYTE, expected the form <0xNN>");
      impl->bytes[i] = std::string(1, static_cast<char>(b));
    } else if (impl->special[i]) {
      impl->bytes[i] = p.text;
    } else {
      std::string text;
      for (size_t k = 0; k < p.text.size();) {
        if (p.text.compare(k, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
          text += ' ';
          k += kSpaceSymbol.size();
        } else {
          text += p.text[k++];
        }
      }
      impl->bytes[i] = std::move(text);
    }
    if (p.type == PieceType::user_defined) user_defined.emplace_back(p.text, id);
    if (p.type == PieceType::normal) {
      impl->min_score = std::min(impl->min_score, p.score);
      impl->max_score = std::max(impl->max_score, p.score);
    }
    if (is_mergeable) mergeable.emplace_back(p.text, id);
  }
  if (impl->unk_id < 0) {
    fail(src, "field pieces (1) has no piece of type UNKNOWN (2), expected exactly one");
  }
  unk_id_ = impl->unk_id;
  // SentencePieceProcessor::bos_id() etc.: the piece of that name if it has the expected type, else none.
  auto special_id = [&](const std::string& name, PieceType type) -> int64_t {
    const int32_t id = impl->piece_to_id(name);
    return id >= 0 && pieces_[static_cast<size_t>(id)].type == type ? id : -1;
  };
  bos_id_ = special_id(bos_piece, PieceType::control);
  eos_id_ = special_id(eos_piece, PieceType::control);
  pad_id_ = special_id(pad_piece, PieceType::control);
  for (int b = 0; b < 256; ++b) impl->byte_ids[b] = impl->piece_to_id(byte_piece(static_cast<uint8_t>(b)));
  impl->user_defined.build(user_defined);
  if (model_type_ == ModelType::unigram) impl->unigram_pieces.build(mergeable);

  // A merge result is a NORMAL or UNUSED piece (a USER_DEFINED one is matched whole before merging). When none has
  // U+2581 after its first character, no merge crosses the position before a U+2581.
  impl->split_at_space = true;
  for (const auto& [text, id] : mergeable) {
    if (pieces_[id].type != PieceType::user_defined && text.find(kSpaceSymbol, 1) != std::string::npos) {
      impl->split_at_space = false;
      break;
    }
  }

  if (charsmap_set && !charsmap_blob.empty()) impl->charsmap.load(charsmap_blob, src);
  drop_leading_space_ = add_dummy_prefix_ || remove_extra_whitespaces_;
  impl_ = std::move(impl);

  spdlog::info(
      "sentencepiece: {} model_type={} pieces={} normalizer={} byte_fallback={} add_dummy_prefix={} "
      "remove_extra_whitespaces={} unk={} bos={} eos={}",
      source_, model_type_name(model_type), pieces_.size(), normalizer_name_.empty() ? "(none)" : normalizer_name_,
      byte_fallback_, add_dummy_prefix_, remove_extra_whitespaces_, unk_id_, bos_id_, eos_id_);
}

// ---- Normalization (Normalizer::Normalize) ----
std::string SentencePieceModel::normalize(std::string_view input) const {
  std::string out;
  if (input.empty()) return out;
  const Impl& im = *impl_;
  if (remove_extra_whitespaces_) {
    while (!input.empty()) {
      const auto [sp, consumed] = im.normalize_prefix(input);
      if (sp != " ") break;
      input.remove_prefix(consumed);
    }
  }
  if (input.empty()) return out;
  out.reserve(input.size() * 3);
  auto add_space = [&] { out += escape_whitespaces_ ? kSpaceSymbol : std::string_view(" "); };
  if (add_dummy_prefix_) add_space();
  bool is_prev_space = remove_extra_whitespaces_;
  while (!input.empty()) {
    auto [sp, consumed] = im.normalize_prefix(input);
    while (is_prev_space && !sp.empty() && sp.front() == ' ') sp.remove_prefix(1);
    if (!sp.empty()) {
      for (char c : sp) {
        if (escape_whitespaces_ && c == ' ')
          out += kSpaceSymbol;
        else
          out += c;
      }
      is_prev_space = sp.back() == ' ';
    }
    input.remove_prefix(consumed);
    if (!remove_extra_whitespaces_) is_prev_space = false;
  }
  if (remove_extra_whitespaces_) {
    const std::string_view space = escape_whitespaces_ ? kSpaceSymbol : std::string_view(" ");
    while (out.size() >= space.size() && std::string_view(out).substr(out.size() - space.size()) == space) {
      out.resize(out.size() - space.size());
    }
  }
  return out;
}

// ---- Encoding ----
namespace {

// Appends the ids of one symbol as SentencePieceProcessor::PopulateSentencePieceText does: an unknown symbol
// becomes its bytes (byte fallback) or kUnkRun.
template <class Impl>
void emit_symbol(const Impl& im, bool byte_fallback, std::string_view piece, int32_t id, std::vector<int32_t>& out) {
  if (im.is_unknown(id)) {
    if (byte_fallback) {
      for (char c : piece) out.push_back(im.byte_ids[static_cast<uint8_t>(c)]);
    } else {
      out.push_back(kUnkRun);
    }
    return;
  }
  out.push_back(id);
}

// bpe::Model::SampleEncode (alpha = 0) on `text`, which holds no user-defined piece.
template <class Impl>
void bpe_encode(const Impl& im, bool byte_fallback, std::string_view text, std::vector<int32_t>& out) {
  struct Symbol {
    int prev;
    int next;
    uint32_t begin;
    uint32_t size;
  };
  struct Pair {
    float score;
    int left;
    int right;
    size_t size;
  };
  struct Lower {
    bool operator()(const Pair& a, const Pair& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = std::min(one_char_len(static_cast<uint8_t>(text[pos])), text.size() - pos);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back(
        {index - 1, pos + len < text.size() ? index + 1 : -1, static_cast<uint32_t>(pos), static_cast<uint32_t>(len)});
    pos += len;
  }
  if (symbols.empty()) return;

  std::priority_queue<Pair, std::vector<Pair>, Lower> agenda;
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  auto view = [&](const Symbol& s) { return text.substr(s.begin, s.size); };
  auto maybe_add_pair = [&](int left, int right) {
    if (left == -1 || right == -1) return;
    const std::string_view piece = text.substr(symbols[left].begin, symbols[left].size + symbols[right].size);
    const auto it = im.mergeable.find(piece);
    if (it == im.mergeable.end()) return;
    agenda.push({im.scores[it->second], left, right, piece.size()});
    if (im.is_unused(it->second)) rev_merge[piece] = {view(symbols[left]), view(symbols[right])};
  };
  for (size_t i = 1; i < symbols.size(); ++i) maybe_add_pair(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[top.left];
    Symbol& r = symbols[top.right];
    if (l.size == 0 || r.size == 0 || l.size + r.size != top.size) continue;  // stale
    l.size += r.size;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = top.left;
    r.size = 0;
    maybe_add_pair(l.prev, top.left);
    maybe_add_pair(top.left, l.next);
  }

  std::function<void(std::string_view)> resegment = [&](std::string_view w) {
    const int32_t id = im.piece_to_id(w);
    if (im.is_unused(id)) {
      const auto it = rev_merge.find(w);
      if (it != rev_merge.end()) {
        resegment(it->second.first);
        resegment(it->second.second);
        return;
      }
    }
    emit_symbol(im, byte_fallback, w, id, out);
  };
  for (int i = 0; i != -1; i = symbols[i].next) resegment(view(symbols[i]));
}

// unigram::Model::EncodeOptimized on `text`.
template <class Impl>
void unigram_encode(const Impl& im, bool byte_fallback, std::string_view text, std::vector<int32_t>& out) {
  struct Best {
    int32_t id = -1;
    float score = 0.0f;
    int64_t starts_at = -1;
  };
  const size_t size = text.size();
  if (size == 0) return;
  constexpr float kUnkPenalty = 10.0f;
  const float unk_score = im.min_score - kUnkPenalty;
  std::vector<Best> best(size + 1);
  size_t starts_at = 0;
  while (starts_at < size) {
    const float score_here = best[starts_at].score;
    const size_t mblen = std::min(one_char_len(static_cast<uint8_t>(text[starts_at])), size - starts_at);
    bool has_single_node = false;
    im.unigram_pieces.for_each_prefix(text.substr(starts_at), [&](size_t length, int32_t id) {
      if (im.is_unused(id)) return;
      Best& target = best[starts_at + length];
      // As in sentencepiece, the candidate is a double (the user-defined bonus has a double constant) compared with
      // the stored float: this decides near-ties exactly as spm_encode does.
      const double score = im.types[id] == SentencePieceModel::PieceType::user_defined
                               ? static_cast<double>(static_cast<float>(length) * im.max_score) - 0.1
                               : static_cast<double>(im.scores[id]);
      const double candidate = score + static_cast<double>(score_here);
      if (target.starts_at == -1 || candidate > static_cast<double>(target.score)) {
        target.score = static_cast<float>(candidate);
        target.starts_at = static_cast<int64_t>(starts_at);
        target.id = id;
      }
      if (length == mblen) has_single_node = true;
    });
    if (!has_single_node) {
      Best& target = best[starts_at + mblen];
      const float candidate = unk_score + score_here;
      if (target.starts_at == -1 || candidate > target.score) {
        target.score = candidate;
        target.starts_at = static_cast<int64_t>(starts_at);
        target.id = im.unk_id;
      }
    }
    starts_at += mblen;
  }
  std::vector<std::pair<std::string_view, int32_t>> path;
  for (size_t end = size; end > 0;) {
    const Best& node = best[end];
    const auto begin = static_cast<size_t>(node.starts_at);
    path.emplace_back(text.substr(begin, end - begin), node.id);
    end = begin;
  }
  for (auto it = path.rbegin(); it != path.rend(); ++it) emit_symbol(im, byte_fallback, it->first, it->second, out);
}

}  // namespace

std::vector<int32_t> SentencePieceModel::encode_ids(std::string_view text) const {
  const Impl& im = *impl_;
  const std::string normalized = normalize(text);
  const std::string_view norm(normalized);
  std::vector<int32_t> raw;
  raw.reserve(norm.size() / 2 + 1);
  if (model_type_ == ModelType::unigram) {
    unigram_encode(im, byte_fallback_, norm, raw);
  } else {
    // Words (runs of symbols that no merge can cross) are encoded once per call.
    std::unordered_map<std::string_view, std::vector<int32_t>> cache;
    auto encode_word = [&](size_t begin, size_t end) {
      if (begin >= end) return;
      const std::string_view word = norm.substr(begin, end - begin);
      auto it = cache.find(word);
      if (it == cache.end()) {
        std::vector<int32_t> ids;
        bpe_encode(im, byte_fallback_, word, ids);
        it = cache.emplace(word, std::move(ids)).first;
      }
      raw.insert(raw.end(), it->second.begin(), it->second.end());
    };
    size_t word_begin = 0;
    for (size_t pos = 0; pos < norm.size();) {
      const std::string_view rest = norm.substr(pos);
      const size_t matched = im.user_defined.empty() ? 0 : im.user_defined.longest_prefix(rest);
      if (matched > 0) {  // a user-defined piece: one frozen symbol
        encode_word(word_begin, pos);
        const std::string_view piece = rest.substr(0, matched);
        emit_symbol(im, byte_fallback_, piece, im.piece_to_id(piece), raw);
        pos += matched;
        word_begin = pos;
        continue;
      }
      if (im.split_at_space && pos > word_begin && rest.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
        encode_word(word_begin, pos);
        word_begin = pos;
      }
      pos += std::min(one_char_len(static_cast<uint8_t>(rest[0])), rest.size());
    }
    encode_word(word_begin, norm.size());
  }
  // A run of unknown symbols (no byte fallback) gives one unk_id.
  std::vector<int32_t> ids;
  ids.reserve(raw.size());
  bool prev_unk = false;
  for (int32_t id : raw) {
    if (id == kUnkRun) {
      if (!prev_unk) ids.push_back(im.unk_id);
      prev_unk = true;
    } else {
      ids.push_back(id);
      prev_unk = false;
    }
  }
  return ids;
}

std::vector<int64_t> SentencePieceModel::encode(std::string_view text) const {
  const std::vector<int32_t> ids = encode_ids(text);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::vector<std::string> SentencePieceModel::encode_as_pieces(std::string_view text) const {
  std::vector<std::string> out;
  for (int32_t id : encode_ids(text)) out.push_back(pieces_[static_cast<size_t>(id)].text);
  return out;
}

// ---- Decoding ----
std::string SentencePieceModel::token_bytes(int64_t id) const {
  return id >= 0 && id < vocab_size() ? impl_->bytes[static_cast<size_t>(id)] : std::string();
}

bool SentencePieceModel::is_special(int64_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[static_cast<size_t>(id)] != 0;
}

int64_t SentencePieceModel::token_id(std::string_view token) const {
  if (auto it = impl_->reserved.find(token); it != impl_->reserved.end()) return it->second;
  if (auto it = impl_->mergeable.find(token); it != impl_->mergeable.end()) return it->second;
  return -1;
}

std::string SentencePieceModel::decode(const std::vector<int64_t>& ids) const {
  std::string raw;
  bool first = true;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size() || impl_->special[static_cast<size_t>(id)]) continue;
    std::string_view b = impl_->bytes[static_cast<size_t>(id)];
    if (first && drop_leading_space_ && !b.empty() && b.front() == ' ') b.remove_prefix(1);
    first = false;
    raw += b;
  }
  std::string out;
  tokenizer_detail::append_utf8_lossy(out, raw);
  return out;
}

std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open the file for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw std::runtime_error(path + ": cannot read the file");
  return std::make_unique<SentencePieceModel>(ss.str(), path);
}

}  // namespace sinkflow
