// WordPiece (BERT, MiniLM): BERT basic tokenizer (clean text, CJK characters as words, strip accents, lower case,
// split on whitespace and punctuation) then greedy longest-match-first with "##" continuations, as Hugging Face's
// BertNormalizer + BertPreTokenizer + WordPiece model + WordPiece decoder.
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <unordered_map>

#include "models/text/tokenizer_internal.h"

namespace sinkflow::tokenizer_detail {

namespace {
using nlohmann::json;

// BertNormalizer's "Chinese characters" (CJK Unified Ideographs and their extensions, compatibility ideographs),
// with Hugging Face's ranges.
bool is_cjk(uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// BERT's whitespace: \t \n \r and the White_Space property (U+0085, U+2028, U+2029, U+000B, U+000C, Zs...).
bool is_bert_whitespace(uint32_t cp) { return cp == '\t' || cp == '\n' || cp == '\r' || is_whitespace(cp); }

// What clean_text removes: NUL, U+FFFD and General Category Cc, Cf, Cs, Co (unassigned code points stay), except
// \t \n \r.
bool is_bert_removed(uint32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  return cp == 0 || cp == 0xFFFD || is_other_category(cp);
}

// BERT's punctuation: every ASCII non-alphanumeric printable character, and General Category P.
bool is_bert_punctuation(uint32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) {
    return true;
  }
  return cp >= 0x80 && is_punctuation(cp);
}

struct WordPieceOptions {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = true;
  bool lowercase = true;
  std::string prefix = "##";
  size_t max_input_chars_per_word = 100;
  std::string unk_token = "[UNK]";
  bool cleanup = true;  // decoder: " ." -> "." etc.
};

// Hugging Face's decoders::wordpiece::cleanup.
std::string cleanup_tokenization(std::string s) {
  static const std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},     {" ?", "?"},       {" !", "!"},      {" ,", ","},    {" ' ", "'"},    {" n't", "n't"},
      {" 'm", "'m"},   {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) {
    std::string out;
    size_t pos = 0;
    while (true) {
      const size_t hit = s.find(from, pos);
      if (hit == std::string::npos) break;
      out.append(s, pos, hit - pos);
      out.append(to);
      pos = hit + from.size();
    }
    out.append(s, pos, std::string::npos);
    s.swap(out);
  }
  return s;
}

class WordPieceTokenizer final : public TokenizerBase {
 public:
  WordPieceTokenizer(std::unordered_map<std::string, int64_t> vocab, std::vector<AddedToken> added,
                     WordPieceOptions options, const std::string& source)
      : vocab_(std::move(vocab)), options_(std::move(options)), added_(added) {
    int64_t n_ids = 0;
    for (const auto& [tok, id] : vocab_) n_ids = std::max(n_ids, id + 1);
    for (const AddedToken& a : added) n_ids = std::max(n_ids, a.id + 1);
    id_token_.assign(static_cast<size_t>(n_ids), std::string());
    special_.assign(static_cast<size_t>(n_ids), 0);
    for (const auto& [tok, id] : vocab_) id_token_[id] = tok;
    for (const AddedToken& a : added) {
      id_token_[a.id] = a.content;
      special_[a.id] = a.special;
      added_ids_[a.content] = a.id;
    }
    auto it = vocab_.find(options_.unk_token);
    if (it == vocab_.end()) {
      throw std::invalid_argument(source + ": unk_token \"" + options_.unk_token +
                                  "\" is not in the vocabulary, expected it there");
    }
    unk_id_ = it->second;
  }

  std::string kind() const override { return "wordpiece"; }

  std::vector<int64_t> encode(std::string_view text) const override {
    std::vector<int64_t> out;
    for (const TextPiece& piece : added_.split(text)) {
      if (piece.id >= 0) {
        out.push_back(piece.id);
        continue;
      }
      for (const std::string& word : basic_tokenize(piece.text)) wordpiece(word, out);
    }
    return out;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    size_t i = 0;  // index among the kept tokens, as Hugging Face's decoder sees them
    for (int64_t id : ids) {
      if (id < 0 || id >= vocab_size() || special_[id]) continue;
      std::string token = id_token_[id];
      if (i != 0) {
        if (token.rfind(options_.prefix, 0) == 0 && !options_.prefix.empty()) token.erase(0, options_.prefix.size());
        else token.insert(token.begin(), ' ');
      }
      if (options_.cleanup) token = cleanup_tokenization(token);
      out += token;
      ++i;
    }
    return out;
  }

  std::string token_bytes(int64_t id) const override {
    if (id < 0 || id >= vocab_size()) return {};
    const std::string& token = id_token_[id];
    if (special_[id]) return token;
    if (!options_.prefix.empty() && token.rfind(options_.prefix, 0) == 0) return token.substr(options_.prefix.size());
    return " " + token;
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(id_token_.size()); }
  int64_t token_id(std::string_view token) const override { return lookup_token_id(added_ids_, vocab_, token); }
  bool is_special(int64_t id) const override { return id >= 0 && id < vocab_size() && special_[id]; }
  bool stream_drops_leading_space() const override { return true; }

 private:
  // BertNormalizer (in Hugging Face's order: clean text, space around CJK characters, strip accents = NFD then
  // drop nonspacing marks, lower case) then BertPreTokenizer (split on whitespace, punctuation isolated).
  std::vector<std::string> basic_tokenize(std::string_view text) const {
    std::string normalized;
    normalized.reserve(text.size() + 8);
    for (size_t i = 0; i < text.size();) {
      uint32_t cp = 0;
      i += decode_utf8(text, i, cp);
      if (cp == kInvalidCodePoint) cp = 0xFFFD;
      if (options_.clean_text) {
        if (is_bert_removed(cp)) continue;
        if (is_bert_whitespace(cp)) cp = ' ';
      }
      const bool cjk = options_.handle_chinese_chars && is_cjk(cp);
      if (cjk) normalized += ' ';
      append_utf8(normalized, cp);
      if (cjk) normalized += ' ';
    }
    if (options_.strip_accents) {
      const std::string decomposed = normalize_unicode(normalized, NormalForm::nfd);
      normalized.clear();
      for (size_t i = 0; i < decomposed.size();) {
        uint32_t cp = 0;
        const size_t len = decode_utf8(decomposed, i, cp);
        if (cp == kInvalidCodePoint || !is_nonspacing_mark(cp)) normalized.append(decomposed, i, len);
        i += len;
      }
    }
    std::vector<std::string> words;
    std::string word;
    auto end_word = [&] {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    };
    for (size_t i = 0; i < normalized.size();) {
      uint32_t cp = 0;
      i += decode_utf8(normalized, i, cp);
      if (cp == kInvalidCodePoint) cp = 0xFFFD;
      if (options_.lowercase) {
        if (cp == 0x130) {  // İ: the one unconditional lower-case mapping to two code points (SpecialCasing)
          word += 'i';
          cp = 0x307;
        } else {
          cp = to_lower(cp);
        }
      }
      if (is_bert_whitespace(cp)) {
        end_word();
        continue;
      }
      if (is_bert_punctuation(cp)) {
        end_word();
        append_utf8(word, cp);
        end_word();
        continue;
      }
      append_utf8(word, cp);
    }
    end_word();
    return words;
  }

  // Greedy longest-match-first; the whole word becomes [UNK] when some part matches nothing.
  void wordpiece(const std::string& word, std::vector<int64_t>& out) const {
    std::vector<size_t> bounds;  // byte offset of each character, plus the end
    for (size_t i = 0; i < word.size();) {
      bounds.push_back(i);
      uint32_t cp = 0;
      i += decode_utf8(word, i, cp);
    }
    bounds.push_back(word.size());
    const size_t n_chars = bounds.size() - 1;
    if (n_chars > options_.max_input_chars_per_word) {
      out.push_back(unk_id_);
      return;
    }
    std::vector<int64_t> pieces;
    size_t start = 0;
    std::string candidate;
    while (start < n_chars) {
      int64_t found = -1;
      size_t end = n_chars;
      for (; end > start; --end) {
        candidate.assign(start > 0 ? options_.prefix : std::string());
        candidate.append(word, bounds[start], bounds[end] - bounds[start]);
        auto it = vocab_.find(candidate);
        if (it != vocab_.end()) {
          found = it->second;
          break;
        }
      }
      if (found < 0) {
        out.push_back(unk_id_);
        return;
      }
      pieces.push_back(found);
      start = end;
    }
    out.insert(out.end(), pieces.begin(), pieces.end());
  }

  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<std::string, int64_t> added_ids_;
  std::vector<std::string> id_token_;
  std::vector<uint8_t> special_;
  WordPieceOptions options_;
  AddedTokenSplitter added_;
  int64_t unk_id_ = -1;
};

// The "type" of a JSON object; "" when it is not an object or has no string "type".
std::string type_field(const json& v) {
  if (!v.is_object()) return {};
  auto it = v.find("type");
  return it != v.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool json_bool(const json& obj, const char* key, bool fallback, const std::string& source, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    throw std::invalid_argument(source + ": field " + path + "." + key + " is " + it->dump() +
                                ", expected true or false");
  }
  return it->get<bool>();
}

std::string describe(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 200 ? s.substr(0, 200) + "..." : s;
}
}  // namespace

std::unique_ptr<TokenizerBase> make_wordpiece_from_json(const json& j, const std::string& source) {
  const json& model = j.at("model");  // load_tokenizer checked it is an object
  WordPieceOptions options;
  if (auto it = model.find("unk_token"); it != model.end() && it->is_string()) options.unk_token = it->get<std::string>();
  if (auto it = model.find("continuing_subword_prefix"); it != model.end() && it->is_string()) {
    options.prefix = it->get<std::string>();
  }
  if (auto it = model.find("max_input_chars_per_word"); it != model.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
      throw std::invalid_argument(source + ": field model.max_input_chars_per_word is " + describe(*it) +
                                  ", expected a positive integer");
    }
    options.max_input_chars_per_word = it->get<size_t>();
  }
  auto vit = model.find("vocab");
  if (vit == model.end() || !vit->is_object()) {
    throw std::invalid_argument(source + ": field model.vocab is " +
                                (vit == model.end() ? std::string("missing") : describe(*vit)) +
                                ", expected an object mapping token -> id");
  }
  std::vector<AddedToken> added = parse_added_tokens_json(j, source);
  const int64_t id_limit = static_cast<int64_t>(vit->size() + added.size());
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<uint8_t> used(static_cast<size_t>(id_limit), 0);
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it.value().is_number_integer()) {
      throw std::invalid_argument(source + ": field model.vocab[\"" + it.key() + "\"] is " + describe(it.value()) +
                                  ", expected an integer id");
    }
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= id_limit) {
      throw std::invalid_argument(source + ": field model.vocab[\"" + it.key() + "\"] is " + std::to_string(id) +
                                  ", expected an id in [0, " + std::to_string(id_limit) + ")");
    }
    if (used[id]) {
      throw std::invalid_argument(source + ": field model.vocab has id " + std::to_string(id) + " twice (at \"" +
                                  it.key() + "\"), expected unique ids");
    }
    used[id] = 1;
    vocab.emplace(it.key(), id);
  }
  for (const AddedToken& a : added) {
    if (a.id >= id_limit) {
      throw std::invalid_argument(source + ": field added_tokens (\"" + a.content + "\") has id " +
                                  std::to_string(a.id) + ", expected an id in [0, " + std::to_string(id_limit) + ")");
    }
  }
  // normalizer: BertNormalizer or null
  const json normalizer = j.value("normalizer", json());
  if (normalizer.is_null()) {
    options.clean_text = options.handle_chinese_chars = options.strip_accents = options.lowercase = false;
  } else if (type_field(normalizer) == "BertNormalizer") {
    options.clean_text = json_bool(normalizer, "clean_text", true, source, "normalizer");
    options.handle_chinese_chars = json_bool(normalizer, "handle_chinese_chars", true, source, "normalizer");
    options.lowercase = json_bool(normalizer, "lowercase", true, source, "normalizer");
    options.strip_accents = json_bool(normalizer, "strip_accents", options.lowercase, source, "normalizer");
  } else {
    throw std::invalid_argument(source + ": field normalizer is " + describe(normalizer) +
                                ", expected null or BertNormalizer for WordPiece");
  }
  const json pre = j.value("pre_tokenizer", json());
  if (type_field(pre) != "BertPreTokenizer") {
    throw std::invalid_argument(source + ": field pre_tokenizer is " + describe(pre) +
                                ", expected BertPreTokenizer for WordPiece");
  }
  const json decoder = j.value("decoder", json());
  if (type_field(decoder) != "WordPiece") {
    throw std::invalid_argument(source + ": field decoder is " + describe(decoder) +
                                ", expected a WordPiece decoder for WordPiece");
  }
  if (auto it = decoder.find("prefix"); it != decoder.end() && it->is_string() && it->get<std::string>() != options.prefix) {
    throw std::invalid_argument(source + ": field decoder.prefix is " + describe(*it) + ", expected \"" +
                                options.prefix + "\" (model.continuing_subword_prefix)");
  }
  options.cleanup = json_bool(decoder, "cleanup", true, source, "decoder");
  return std::make_unique<WordPieceTokenizer>(std::move(vocab), std::move(added), std::move(options), source);
}

std::unique_ptr<TokenizerBase> make_wordpiece_from_vocab(const std::string& vocab_text, const std::string& source,
                                                         bool lower_case, bool strip_accents) {
  std::unordered_map<std::string, int64_t> vocab;
  int64_t id = 0;
  size_t pos = 0;
  while (pos < vocab_text.size()) {
    size_t end = vocab_text.find('\n', pos);
    if (end == std::string::npos) end = vocab_text.size();
    std::string token = vocab_text.substr(pos, end - pos);
    if (!token.empty() && token.back() == '\r') token.pop_back();
    vocab[token] = id++;  // as transformers' load_vocab: a repeated token keeps its last line
    pos = end + 1;
  }
  if (vocab.empty()) throw std::invalid_argument(source + ": holds no token, expected one token per line");
  std::vector<AddedToken> added;
  for (const char* name : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) {
    auto it = vocab.find(name);
    if (it == vocab.end()) continue;
    AddedToken a;
    a.content = name;
    a.id = it->second;
    a.special = true;
    a.normalized = false;
    added.push_back(a);
  }
  if (!vocab.count("[UNK]")) {
    throw std::invalid_argument(source + ": has no line \"[UNK]\", expected the unknown token in the vocabulary");
  }
  WordPieceOptions options;
  options.lowercase = lower_case;
  options.strip_accents = strip_accents;
  return std::make_unique<WordPieceTokenizer>(std::move(vocab), std::move(added), std::move(options), source);
}

}  // namespace sinkflow::tokenizer_detail
