// load_tokenizer, TextStreamer, added-token splitting, and the adapter over models/sentencepiece.h.
// Byte-level BPE lives in tokenizer_bpe.cpp, WordPiece in tokenizer_wordpiece.cpp, Unicode in tokenizer_unicode.cpp.
#include "models/text/tokenizer.h"
#include "models/io/json_read.h"
#include "models/io/message_text.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "models/text/sentencepiece.h"
#include "models/text/tokenizer_internal.h"

namespace sinkflow {
namespace tokenizer_detail {

// ---- AddedTokenSplitter ----

AddedTokenSplitter::AddedTokenSplitter(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  for (size_t k = 0; k < tokens_.size(); ++k) {
    if (tokens_[k].content.empty()) continue;
    const int pass = tokens_[k].normalized ? 1 : 0;
    by_first_byte_[pass][static_cast<uint8_t>(tokens_[k].content[0])].push_back(static_cast<int32_t>(k));
  }
  for (auto& table : by_first_byte_) {
    for (auto& list : table) {
      std::stable_sort(list.begin(), list.end(), [&](int32_t a, int32_t b) {
        return tokens_[a].content.size() > tokens_[b].content.size();
      });
    }
  }
}

namespace {
bool is_word_char(uint32_t cp) { return cp == '_' || is_letter(cp) || is_number(cp); }

// Last code point of text[0, end), or kInvalidCodePoint when there is none.
uint32_t code_point_before(std::string_view text, size_t end) {
  if (end == 0) return kInvalidCodePoint;
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
  uint32_t cp = 0;
  decode_utf8(text.substr(0, end), start, cp);
  return cp;
}
}  // namespace

void AddedTokenSplitter::split_pass(std::string_view text, int pass, std::vector<TextPiece>& out) const {
  const auto& table = by_first_byte_[pass];
  size_t plain_start = 0;  // start of the plain text not yet emitted
  size_t pos = 0;
  while (pos < text.size()) {
    const auto& candidates = table[static_cast<uint8_t>(text[pos])];
    int32_t found = -1;
    for (int32_t k : candidates) {
      const std::string& c = tokens_[k].content;
      if (text.compare(pos, c.size(), c) == 0) {
        found = k;
        break;
      }
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[found];
    size_t start = pos;
    size_t stop = pos + tok.content.size();
    if (tok.single_word) {
      uint32_t after = kInvalidCodePoint;
      if (stop < text.size()) decode_utf8(text, stop, after);
      const uint32_t before = code_point_before(text, start);
      if ((before != kInvalidCodePoint && is_word_char(before)) ||
          (after != kInvalidCodePoint && is_word_char(after))) {
        pos = stop;  // as Aho-Corasick's non-overlapping search, go on after the discarded match
        continue;
      }
    }
    if (tok.lstrip) {
      while (start > plain_start) {
        const uint32_t cp = code_point_before(text, start);
        if (cp == kInvalidCodePoint || !is_whitespace(cp)) break;
        size_t len = 1;
        while (len < start && (static_cast<uint8_t>(text[start - len]) & 0xC0) == 0x80) ++len;
        start -= len;
      }
    }
    if (tok.rstrip) {
      while (stop < text.size()) {
        uint32_t cp = 0;
        const size_t len = decode_utf8(text, stop, cp);
        if (cp == kInvalidCodePoint || !is_whitespace(cp)) break;
        stop += len;
      }
    }
    if (start > plain_start) out.push_back({text.substr(plain_start, start - plain_start), -1});
    out.push_back({text.substr(start, stop - start), tok.id});
    pos = stop;
    plain_start = stop;
  }
  if (plain_start < text.size()) out.push_back({text.substr(plain_start), -1});
}

std::vector<TextPiece> AddedTokenSplitter::split(std::string_view text) const {
  std::vector<TextPiece> first;
  split_pass(text, 0, first);
  std::vector<TextPiece> out;
  out.reserve(first.size());
  for (const TextPiece& piece : first) {
    if (piece.id >= 0) out.push_back(piece);
    else split_pass(piece.text, 1, out);
  }
  return out;
}

// ---- SentencePiece ----

namespace {
// The SentencePiece model of models/sentencepiece.h (read without libsentencepiece, whose bundled protobuf collides
// with LibTorch's in one process), with bos/eos settable from the folder's config files.
class SentencePieceAdapter final : public TokenizerBase {
 public:
  explicit SentencePieceAdapter(std::unique_ptr<Tokenizer> model) : model_(std::move(model)) {}
  std::string kind() const override { return model_->kind(); }
  std::vector<int64_t> encode(std::string_view text) const override { return model_->encode(text); }
  std::string decode(const std::vector<int64_t>& ids) const override { return model_->decode(ids); }
  std::string token_bytes(int64_t id) const override { return model_->token_bytes(id); }
  int64_t vocab_size() const override { return model_->vocab_size(); }
  int64_t token_id(std::string_view token) const override { return model_->token_id(token); }
  bool is_special(int64_t id) const override { return model_->is_special(id); }
  bool stream_drops_leading_space() const override { return model_->stream_drops_leading_space(); }
  int64_t native_bos_id() const override { return model_->bos_id(); }
  int64_t native_eos_id() const override { return model_->eos_id(); }

 private:
  std::unique_ptr<Tokenizer> model_;
};
}  // namespace

std::unique_ptr<TokenizerBase> make_sentencepiece(const std::string& path) {
  return std::make_unique<SentencePieceAdapter>(load_sentencepiece_model(path));
}

}  // namespace tokenizer_detail

// ---- load_tokenizer ----

namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using tokenizer_detail::TokenizerBase;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot open the file for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json_file(const fs::path& path) {
  return read_json_file(path.string());
}

// The "type" of a JSON object; "" when it is not an object or has no string "type".
std::string type_field(const json& v) {
  if (!v.is_object()) return {};
  auto it = v.find("type");
  return it != v.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// Whether a tokenizer.json holds a Unigram model (a SentencePiece conversion read from its tokenizer.model).
bool is_unigram(const json& j) {
  return j.is_object() && j.contains("model") && type_field(j["model"]) == "Unigram";
}

// The id named by `value` (bos_token / eos_token of tokenizer_config.json or special_tokens_map.json: a string,
// {"content": ...} or null); -1 for null. Throws when the token is not in the vocabulary.
int64_t id_of_token_field(const Tokenizer& tok, const json& value, const fs::path& file, const std::string& field) {
  if (value.is_null()) return -1;
  std::string content;
  if (value.is_string()) {
    content = value.get<std::string>();
  } else if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    content = value["content"].get<std::string>();
  } else {
    throw std::invalid_argument(file.string() + ": field " + field +
                                " is " + json_preview(value) + ", expected a token string, {\"content\": ...} or null");
  }
  const int64_t id = tok.token_id(content);
  if (id < 0) {
    throw std::invalid_argument(file.string() + ": field " + field + " names token '" + content +
                                "', which is not in the tokenizer's vocabulary");
  }
  return id;
}

// The id of config.json's bos_token_id / eos_token_id: an integer, a list (first element) or null (-1).
int64_t id_of_id_field(const Tokenizer& tok, const json& value, const fs::path& file, const std::string& field) {
  const json* v = &value;
  if (v->is_array()) {
    if (v->empty()) return -1;
    v = &(*v)[0];
  }
  if (v->is_null()) return -1;
  if (!v->is_number_integer()) {
    throw std::invalid_argument(file.string() + ": field " + field + " is " + json_preview(value) +
                                ", expected a token id, a list of token ids or null");
  }
  const int64_t id = v->get<int64_t>();
  if (id < 0) return -1;
  if (id >= tok.vocab_size()) {
    throw std::invalid_argument(file.string() + ": field " + field + " is " + std::to_string(id) +
                                ", expected an id below the tokenizer's vocab_size " + std::to_string(tok.vocab_size()));
  }
  return id;
}

void resolve_bos_eos(TokenizerBase& tok, const fs::path& dir) {
  bool have_bos = false;
  bool have_eos = false;
  int64_t bos = -1;
  int64_t eos = -1;
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path file = dir / name;
    if (!fs::exists(file)) continue;
    const json j = parse_json_file(file);
    if (!j.is_object()) continue;
    if (!have_bos && j.contains("bos_token")) {
      bos = id_of_token_field(tok, j["bos_token"], file, "bos_token");
      have_bos = true;
    }
    if (!have_eos && j.contains("eos_token")) {
      eos = id_of_token_field(tok, j["eos_token"], file, "eos_token");
      have_eos = true;
    }
  }
  const fs::path config = dir / "config.json";
  if ((!have_bos || !have_eos) && fs::exists(config)) {
    const json j = parse_json_file(config);
    if (j.is_object()) {
      if (!have_bos && j.contains("bos_token_id")) {
        bos = id_of_id_field(tok, j["bos_token_id"], config, "bos_token_id");
        have_bos = true;
      }
      if (!have_eos && j.contains("eos_token_id")) {
        eos = id_of_id_field(tok, j["eos_token_id"], config, "eos_token_id");
        have_eos = true;
      }
    }
  }
  auto well_known = [&](std::initializer_list<const char*> names) -> int64_t {
    for (const char* n : names) {
      const int64_t id = tok.token_id(n);
      if (id >= 0) return id;
    }
    return -1;
  };
  if (!have_bos) {
    bos = tok.native_bos_id() >= 0 ? tok.native_bos_id()
                                   : well_known({"<|begin_of_text|>", "<s>", "<|endoftext|>", "[CLS]", "<bos>"});
  }
  if (!have_eos) {
    eos = tok.native_eos_id() >= 0 ? tok.native_eos_id()
                                   : well_known({"<|end_of_text|>", "</s>", "<|endoftext|>", "[SEP]", "<eos>"});
  }
  tok.set_bos_eos(bos, eos);
}

// do_lower_case / strip_accents of a BERT tokenizer_config.json (defaults: uncased, accents stripped).
void bert_options(const fs::path& dir, bool& lower_case, bool& strip_accents) {
  lower_case = true;
  const fs::path file = dir / "tokenizer_config.json";
  json strip = nullptr;
  if (fs::exists(file)) {
    const json j = parse_json_file(file);
    if (j.is_object()) {
      if (j.contains("do_lower_case")) {
        if (!j["do_lower_case"].is_boolean()) {
          throw std::invalid_argument(file.string() + ": field do_lower_case is " + json_preview(j["do_lower_case"]) +
                                      ", expected true or false");
        }
        lower_case = j["do_lower_case"].get<bool>();
      }
      if (j.contains("strip_accents")) strip = j["strip_accents"];
    }
  }
  strip_accents = strip.is_boolean() ? strip.get<bool>() : lower_case;
}
}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  const fs::path d(dir);
  const fs::path json_path = d / "tokenizer.json";
  const fs::path spm_path = d / "tokenizer.model";
  const fs::path vocab_path = d / "vocab.txt";
  std::unique_ptr<TokenizerBase> tok;
  if (fs::is_regular_file(json_path)) {
    const json j = parse_json_file(json_path);
    if (is_unigram(j)) {
      if (!fs::is_regular_file(spm_path)) {
        throw std::invalid_argument(json_path.string() + ": field model.type is \"Unigram\" (a SentencePiece "
                                    "conversion): expected tokenizer.model beside it, found none");
      }
      spdlog::info("tokenizer: {} holds a Unigram model; loading {}", json_path.string(), spm_path.string());
      tok = tokenizer_detail::make_sentencepiece(spm_path.string());
    } else {
      std::string type;
      if (j.is_object() && j.contains("model") && j["model"].is_object()) {
        const json& m = j["model"];
        if (m.contains("type") && m["type"].is_string()) type = m["type"].get<std::string>();
        else if (m.contains("merges")) type = "BPE";  // older files infer the model from its fields
        else if (m.contains("max_input_chars_per_word")) type = "WordPiece";
      }
      if (type == "WordPiece") tok = tokenizer_detail::make_wordpiece_from_json(j, json_path.string());
      else tok = tokenizer_detail::make_bpe(j, json_path.string());  // reports other types
    }
  } else if (fs::is_regular_file(spm_path)) {
    tok = tokenizer_detail::make_sentencepiece(spm_path.string());
  } else if (fs::is_regular_file(vocab_path)) {
    bool lower_case = true;
    bool strip_accents = true;
    bert_options(d, lower_case, strip_accents);
    tok = tokenizer_detail::make_wordpiece_from_vocab(read_file(vocab_path), vocab_path.string(), lower_case,
                                                      strip_accents);
  } else {
    throw std::invalid_argument("load_tokenizer: '" + dir +
                                "' holds no tokenizer: expected tokenizer.json, tokenizer.model or vocab.txt, found " +
                                (fs::is_directory(d) ? "none of them" : "no such directory"));
  }
  resolve_bos_eos(*tok, d);
  spdlog::info("tokenizer: kind={} vocab_size={} bos={} eos={} dir={}", tok->kind(), tok->vocab_size(),
               tok->bos_id(), tok->eos_id(), dir);
  return tok;
}

// ---- TextStreamer ----

TextStreamer::TextStreamer(const Tokenizer& tokenizer)
    : tokenizer_(tokenizer), drop_leading_space_(tokenizer.stream_drops_leading_space()) {}

std::string TextStreamer::feed(int64_t id) {
  if (id < 0 || id >= tokenizer_.vocab_size() || tokenizer_.is_special(id)) return {};
  std::string bytes = tokenizer_.token_bytes(id);
  if (at_start_) {
    at_start_ = false;
    if (drop_leading_space_ && !bytes.empty() && bytes[0] == ' ') bytes.erase(0, 1);
  }
  pending_ += bytes;
  const size_t complete = tokenizer_detail::utf8_complete_prefix(pending_);
  std::string out;
  tokenizer_detail::append_utf8_lossy(out, std::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return out;
}

std::string TextStreamer::flush() {
  std::string out;
  tokenizer_detail::append_utf8_lossy(out, pending_);
  pending_.clear();
  return out;
}

}  // namespace sinkflow
