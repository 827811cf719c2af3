// Tokenizers loaded from a Hugging Face model folder: byte-level BPE (GPT-2, SmolLM2, Qwen2/3, Llama-3 tokenizer.json),
// SentencePiece-style BPE (tokenizer.json converted from SentencePiece: Llama-2, Mistral, Gemma; or tokenizer.model
// alone) and WordPiece (BERT/MiniLM: vocab.txt or tokenizer.json). Encoding and decoding follow Hugging Face's
// `tokenizers` (checked id for id against it on real tokenizer files: tests/data/tokenizers/README.md).
// All tokenizers are immutable after loading and safe to use from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sinkflow {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // "bpe" (byte-level BPE), "sentencepiece" (tokenizer.model, or a tokenizer.json BPE over characters with byte
  // fallback) or "wordpiece".
  virtual std::string kind() const = 0;

  // Token ids of `text`, as Hugging Face `tokenizers` gives them with add_special_tokens=False (SentencePiece's own
  // for a tokenizer.model): never adds BOS/EOS/CLS/SEP. The tokenizer.json pipeline runs as there: added tokens
  // ("<|endoftext|>", "[SEP]", "<s>") are cut out first, the normalizer (NFC, NFD, NFKC, NFKD, Prepend, Replace,
  // BertNormalizer) runs on the text between them, then the pre-tokenizer (ByteLevel, Split, Digits, Metaspace with
  // prepend_scheme always/first/never and split, BertPreTokenizer) and the model (BPE with ignore_merges and byte
  // fallback to <0xNN> tokens, WordPiece). A tokenizer.model treats special-token text as plain text.
  // Invalid UTF-8 in `text` is tolerated (byte-level BPE keeps the bytes; the others map it to [UNK]/bytes).
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;

  // Text of `ids` (skip_special_tokens=True) as Hugging Face's decoder gives it (ByteLevel; Replace, ByteFallback,
  // Fuse, Strip, Metaspace; WordPiece with its clean-up): special tokens are skipped, byte sequences that are not
  // valid UTF-8 become U+FFFD. Ids outside [0, vocab_size()) are skipped.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;

  // The exact bytes token `id` contributes to the output text stream when tokens are printed one by one
  // (byte-level BPE: the token's bytes; SentencePiece: piece with U+2581 -> ' ', <0xNN> -> that byte; WordPiece:
  // "##ab" -> "ab", any other token -> ' ' + token). May be a fragment of a UTF-8 character. For a special token
  // it is the token's own text (TextStreamer and decode() skip special tokens). "" for an unknown id.
  // For non-special ids, concatenating token_bytes equals decode() up to the leading space that
  // stream_drops_leading_space() describes (and WordPiece's punctuation clean-up).
  virtual std::string token_bytes(int64_t id) const = 0;

  // Number of ids: 1 + the largest id of the vocabulary and of the added tokens.
  virtual int64_t vocab_size() const = 0;
  virtual int64_t bos_id() const = 0;  // -1 = none
  virtual int64_t eos_id() const = 0;  // -1 = none

  // Id of a token given in the vocabulary's own spelling (byte-level BPE: "Ġthe"; SentencePiece: "▁the";
  // WordPiece: "##ing"), or of an added/special token ("<|endoftext|>"). -1 = not in the vocabulary.
  virtual int64_t token_id(std::string_view token) const = 0;

  // True for special tokens: added tokens flagged "special" (BPE, WordPiece), control and unknown pieces
  // (SentencePiece), [PAD] [UNK] [CLS] [SEP] [MASK] for a WordPiece vocab.txt.
  virtual bool is_special(int64_t id) const = 0;

  // True when decode() drops one leading space that the first token's token_bytes() carries: the dummy-prefix
  // space of SentencePiece models that add one, and the joining space of WordPiece tokens.
  virtual bool stream_drops_leading_space() const { return false; }
};

// Loads the tokenizer of a model folder, trying in this order:
//   tokenizer.json  model.type "BPE" with a ByteLevel pre-tokenizer (or decoder) -> byte-level BPE; "BPE" without
//                   one -> SentencePiece-style BPE read from tokenizer.json alone (Llama-2, Mistral v0.1/v0.3,
//                   Gemma: Metaspace or Prepend+Replace, byte fallback); "WordPiece" -> WordPiece. model.type
//                   "Unigram" defers to the folder's tokenizer.model (an error when there is none).
//   tokenizer.model SentencePiece (models/sentencepiece.h, read without libsentencepiece).
//   vocab.txt       WordPiece with BERT uncased defaults (do_lower_case from tokenizer_config.json when present).
// bos/eos: the first of tokenizer_config.json (bos_token/eos_token: a string, {"content": ...} or null = none),
// special_tokens_map.json (same), config.json (bos_token_id/eos_token_id: an id, a list whose first id is taken,
// or null) that defines them; else the SentencePiece model's own; else a well-known token in the vocabulary
// (bos: <|begin_of_text|> <s> <|endoftext|> [CLS] <bos>; eos: <|end_of_text|> </s> <|endoftext|> [SEP] <eos>).
// Throws std::invalid_argument naming the file and field for malformed or unsupported files, and naming `dir` and
// the files tried when none exists.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

// Turns streamed token ids into printable UTF-8. Holds back an incomplete UTF-8 sequence until the token that
// completes it arrives (invalid bytes become U+FFFD), skips special tokens, and drops the single leading space of
// the first printed token when the tokenizer's stream_drops_leading_space() (SentencePiece dummy prefix).
// Concatenating feed() over a sequence and then flush() gives decode() of that sequence (WordPiece: up to
// punctuation clean-up). Keeps a reference: the tokenizer must outlive the streamer. Not thread-safe.
class TextStreamer {
 public:
  explicit TextStreamer(const Tokenizer& tokenizer);
  // Text that became printable with token `id` (often "", e.g. inside a multi-byte character).
  std::string feed(int64_t id);
  // Held-back bytes of an incomplete character, as U+FFFD ("" when nothing is held back). The stream goes on:
  // later feeds are not treated as the start of a new stream.
  std::string flush();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence
  bool at_start_ = true;
  bool drop_leading_space_ = false;
};

// Trains a byte-level BPE in GPT-2 style on `text` and writes a Hugging Face tokenizer.json to `out_path`:
// ids 0..255 are the bytes (id = byte value, spelled with GPT-2's byte-to-unicode map), then one token per merge
// (a merge whose result already exists reuses its id), then `special_tokens` as added_tokens (special: true).
// Pre-tokenizer ByteLevel (GPT-2 regex, no prefix space), decoder ByteLevel, merges as "a b" strings.
// Words are the GPT-2 regex pieces (special tokens in `text` are cut out first); each step merges the most frequent
// adjacent pair, ties broken by the smaller (left bytes, right bytes); stops early when no pair is left.
// Deterministic: the same arguments give the same file bytes. Throws std::invalid_argument for n_merges < 0,
// an empty or duplicated special token or one that is not valid UTF-8, std::runtime_error if the file cannot
// be written.
void train_byte_bpe(const std::string& text, int n_merges, const std::vector<std::string>& special_tokens,
                    const std::string& out_path);

}  // namespace sinkflow
