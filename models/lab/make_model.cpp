#include "models/lab/make_model.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <vector>

#include "models/io/checkpoint.h"
#include "models/nn/runtime.h"
#include "models/text/tokenizer.h"

namespace sinkflow {

const std::string& builtin_tokenizer_text() {
  // Genesis 1:1-13, King James Version (public domain), plus digits and punctuation so that every
  // common byte pair occurs.
  static const std::string text = R"(In the beginning God created the heaven and the earth.
And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.
And God said, Let there be light: and there was light.
And God saw the light, that it was good: and God divided the light from the darkness.
And God called the light Day, and the darkness he called Night. And the evening and the morning were the first day.
And God said, Let there be a firmament in the midst of the waters, and let it divide the waters from the waters.
And God made the firmament, and divided the waters which were under the firmament from the waters which were above the firmament: and it was so.
And God called the firmament Heaven. And the evening and the morning were the second day.
And God said, Let the waters under the heaven be gathered together unto one place, and let the dry land appear: and it was so.
And God called the dry land Earth; and the gathering together of the waters called he Seas: and God saw that it was good.
And God said, Let the earth bring forth grass, the herb yielding seed, and the fruit tree yielding fruit after his kind, whose seed is in itself, upon the earth: and it was so.
And the earth brought forth grass, and herb yielding seed after his kind, and the tree yielding fruit, whose seed was in itself, after his kind: and God saw that it was good.
And the evening and the morning were the third day.
The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.
0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14 (a) [b] {c} "quoted" 'single' - + = * / ? ! ; : , .
)";
  return text;
}

namespace {

// WordPiece vocabulary for a random BERT: specials, single characters (plain and ## continuation), then
// the most frequent lower-cased words of `text`, up to vocab_size entries.
void write_wordpiece_vocab(const std::string& path, const std::string& text, int64_t vocab_size) {
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  std::set<std::string> seen(vocab.begin(), vocab.end());
  auto add = [&](const std::string& w) {
    if (static_cast<int64_t>(vocab.size()) < vocab_size && seen.insert(w).second) vocab.push_back(w);
  };
  for (char c = 33; c < 127; ++c) {
    if (std::isupper(static_cast<unsigned char>(c))) continue;
    add(std::string(1, c));
  }
  for (char c = 'a'; c <= 'z'; ++c) add("##" + std::string(1, c));
  for (char c = '0'; c <= '9'; ++c) add("##" + std::string(1, c));
  std::map<std::string, int64_t> freq;
  std::string word;
  for (char ch : text + " ") {
    if (std::isalnum(static_cast<unsigned char>(ch))) {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!word.empty()) {
      ++freq[word];
      word.clear();
    }
  }
  std::vector<std::pair<int64_t, std::string>> by_freq;
  for (auto& [w, f] : freq) by_freq.emplace_back(-f, w);
  std::sort(by_freq.begin(), by_freq.end());
  for (auto& [f, w] : by_freq) add(w);
  std::ofstream out(path);
  for (auto& w : vocab) out << w << "\n";
  if (!out) throw std::runtime_error(path + ": cannot write the vocabulary");
}

// The files sentence-transformers writes around a Transformer module: Pooling (one mode) and Normalize.
void write_sentence_transformers(const std::string& dir, const std::string& pooling, int64_t d_model,
                                 int64_t max_seq_length) {
  if (pooling != "mean" && pooling != "cls")
    throw std::invalid_argument("make-model: pooling '" + pooling + "' is not known, expected mean or cls");
  namespace fs = std::filesystem;
  fs::create_directories(fs::path(dir) / "1_Pooling");
  fs::create_directories(fs::path(dir) / "2_Normalize");
  auto write = [](const fs::path& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    if (!out) throw std::runtime_error(path.string() + ": cannot write");
  };
  write(fs::path(dir) / "modules.json",
        "[\n  {\"idx\": 0, \"name\": \"0\", \"path\": \"\", \"type\": \"sentence_transformers.models.Transformer\"},\n"
        "  {\"idx\": 1, \"name\": \"1\", \"path\": \"1_Pooling\", \"type\": \"sentence_transformers.models.Pooling\"},\n"
        "  {\"idx\": 2, \"name\": \"2\", \"path\": \"2_Normalize\", \"type\": \"sentence_transformers.models.Normalize\"}\n]\n");
  const bool cls = pooling == "cls";
  write(fs::path(dir) / "1_Pooling" / "config.json",
        "{\n  \"word_embedding_dimension\": " + std::to_string(d_model) + ",\n  \"pooling_mode_cls_token\": " +
            (cls ? "true" : "false") + ",\n  \"pooling_mode_mean_tokens\": " + (cls ? "false" : "true") +
            ",\n  \"pooling_mode_max_tokens\": false,\n  \"pooling_mode_mean_sqrt_len_tokens\": false\n}\n");
  write(fs::path(dir) / "sentence_bert_config.json",
        "{\n  \"max_seq_length\": " + std::to_string(max_seq_length) + ",\n  \"do_lower_case\": false\n}\n");
}

}  // namespace

std::pair<std::string, int64_t> shape_pooling(const std::string& shape) {
  if (shape == "minilm-l6") return {"mean", 256};  // sentence-transformers/all-MiniLM-L6-v2
  if (shape == "bge-small") return {"cls", 512};   // BAAI/bge-small-en-v1.5
  return {"", 0};
}

void make_model(const std::string& dir, const MakeModelOptions& options) {
  ModelConfig config = options.config;
  config.validate("make-model");
  if (options.dtype != at::kFloat && options.dtype != at::kHalf && options.dtype != at::kBFloat16)
    throw std::invalid_argument("make-model: a checkpoint is written in float32, float16 or bfloat16, found " +
                                dtype_name(options.dtype) + " (int8 is chosen when a model is loaded: --dtype int8)");
  std::filesystem::create_directories(dir);
  const std::string& text = options.tokenizer_text.empty() ? builtin_tokenizer_text() : options.tokenizer_text;
  if (config.family == Family::bert) {
    write_wordpiece_vocab(dir + "/vocab.txt", text, config.vocab_size);
    if (!options.pooling.empty())
      write_sentence_transformers(dir, options.pooling, config.d_model,
                                  options.max_seq_length > 0 ? options.max_seq_length : config.max_positions);
  } else {
    const std::vector<std::string> specials = config.family == Family::gpt2
                                                  ? std::vector<std::string>{"<|endoftext|>"}
                                                  : std::vector<std::string>{"<s>", "</s>"};
    const int64_t room = config.vocab_size - 256 - static_cast<int64_t>(specials.size());
    if (room < 0) {
      throw std::invalid_argument("make-model: vocab_size " + std::to_string(config.vocab_size) +
                                  " is too small for a byte-level tokenizer (at least " +
                                  std::to_string(256 + specials.size()) + ")");
    }
    train_byte_bpe(text, static_cast<int>(std::min<int64_t>(room, 2000)), specials, dir + "/tokenizer.json");
    auto tok = load_tokenizer(dir);
    config.bos_token_id = tok->token_id(specials.front());
    config.eos_token_id = tok->token_id(specials.back());
  }
  save_checkpoint(dir, config, random_tensors(config, options.seed, options.dtype), options.max_shard_bytes);
  spdlog::info("make-model: wrote {} ({} {} layers, d_model={}, seed={})", dir, config.model_type, config.n_layer,
               config.d_model, options.seed);
}

}  // namespace sinkflow
