// The two model-based embedders:
//   BertEmbedder  sentence-transformers style: [CLS] text [SEP] -> last hidden state -> mean over the real
//                 (non-padding) tokens -> L2 normalize.
//   LmEmbedder    the decoder's own final (normed) hidden states, mean-pooled over the text's tokens -> L2 normalize.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "models/memory/embedder.h"
#include "models/nn/bert.h"

namespace sinkflow {

class Decoder;
class Tokenizer;

// A sentence-transformers folder's pooling: modules.json lists the modules; the Pooling module's config.json has
// one pooling_mode_* true (several would concatenate vectors: refused); a Normalize module L2-normalizes.
struct SentencePooling {
  std::string mode = "mean";  // mean | cls | max | lasttoken | mean_sqrt_len
  bool normalize = true;
};
// Reads DIR/modules.json and the pooling config it points to (mean + normalize when there is no modules.json).
// Throws std::invalid_argument naming the file and field for anything else.
SentencePooling read_sentence_pooling(const std::string& dir);

// Sentence embeddings from a BERT folder, as sentence-transformers computes them (Transformer -> Pooling ->
// [Normalize]): the folder's modules.json and its Pooling module's config.json choose the pooling (mean: all-MiniLM;
// cls: BAAI/bge; max; lasttoken; mean_sqrt_len) and whether a Normalize module follows; a folder without
// modules.json is pooled as all-MiniLM-L6-v2 (mean, then normalized).
//  - ids = [CLS] + WordPiece(text) + [SEP]; WordPiece(text) is cut so that ids has at most max_tokens entries
//    ([SEP] is kept). max_tokens = max_seq_length of sentence_bert_config.json when the folder has one (256 for
//    all-MiniLM-L6-v2), else max_position_embeddings; never more than max_position_embeddings.
//  - token types all 0; in a batch, shorter texts are padded with [PAD] (or id 0) and masked out of attention.
//  - the vector pools the last hidden state over the ids (padding excluded), L2-normalized when the folder says so,
//    in float32.
//  - a text whose WordPiece encoding is empty (empty, whitespace, control characters only) gives the zero vector
//    (the Embedder contract), not the embedding of "[CLS] [SEP]".
// Threads: embed()/embed_batch() may be called from several threads, but an internal mutex lets one run at a
// time (the memory path owns one core). Each call opens its own c10::InferenceMode (thread-local) and computes on
// the calling thread with the process's intra-op setting (the launcher's configure_threads(1)).
class BertEmbedder final : public Embedder {
 public:
  struct Options {
    int64_t max_tokens = 0;   // 0 = the folder's default (see above); else capped at max_position_embeddings, >= 2
    // Padded tokens per forward in embed_batch (texts sorted by length, then grouped while count x longest stays
    // within it; a longer text goes alone), >= 1; 0 = by device: 512 on CPU (larger batches are slower there:
    // fresh multi-megabyte activations cost page faults, and GEMMs of ~100 rows already run at full speed),
    // 16384 on accelerators.
    int64_t batch_tokens = 0;
  };

  // Loads the encoder (load_bert) and the tokenizer (load_tokenizer, which must be WordPiece with [CLS] and
  // [SEP]) of `dir`. Throws std::invalid_argument as load_bert, or naming the folder when the tokenizer is not
  // WordPiece, lacks [CLS]/[SEP], or has ids beyond config.json's vocab_size.
  explicit BertEmbedder(const std::string& dir, at::Device device = at::Device(at::kCPU));
  BertEmbedder(const std::string& dir, at::Device device, const Options& options);
  ~BertEmbedder() override;

  // "bert:<folder name>-<d_model>", e.g. "bert:all-MiniLM-L6-v2-384"; "-max<N>" is appended when
  // Options::max_tokens makes max_tokens() differ from the folder's default (other vectors for long texts).
  std::string name() const override { return name_; }
  int64_t dim() const override;
  std::vector<float> embed(std::string_view text) const override;
  std::vector<std::vector<float>> embed_batch(const std::vector<std::string>& texts) const override;

  // The ids fed to the encoder for `text` ([CLS] ... [SEP], truncated), or {} when WordPiece gives nothing.
  std::vector<int64_t> input_ids(std::string_view text) const;
  int64_t max_tokens() const { return max_tokens_; }
  const BertEncoder& encoder() const { return *encoder_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  std::shared_ptr<const BertEncoder> encoder_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::string name_;
  int64_t max_tokens_ = 0;
  int64_t batch_tokens_ = 512;
  int64_t cls_id_ = -1, sep_id_ = -1, pad_id_ = 0;
  SentencePooling pooling_;
  mutable std::mutex mutex_;
};

// Mean of hidden [B, T, D] over the positions where mask [B, T] is non-zero, L2-normalized: [B, D] float32.
// A row whose mask is all zero (or whose mean is zero) gives zeros.
at::Tensor masked_mean_normalize(const at::Tensor& hidden, const at::Tensor& mask);

// hidden [B, T, D] pooled over mask [B, T] (right padding) as sentence-transformers' Pooling module does, then
// L2-normalized when `pooling.normalize`: [B, D] float32.
at::Tensor pool_sentence(const at::Tensor& hidden, const at::Tensor& mask, const SentencePooling& pooling);

// Embeddings from a decoder's own hidden states: the text's tokens (after the BOS token for the Llama family,
// when the model or tokenizer defines one) are run through the decoder in a private dense KvCache, in forward
// steps of at most prefill_block tokens; the final (normed) hidden states of the text's tokens (not the BOS) are
// mean-pooled and L2-normalized. At most max_tokens text tokens are used (the first ones); max_tokens = 0 means
// the model's max positions less the BOS. A text with no tokens gives the zero vector.
// Thread-safe: every call has its own cache and InferenceMode; the decoder is shared read-only.
class LmEmbedder final : public Embedder {
 public:
  struct Options {
    int64_t prefill_block = 256;  // tokens per decoder forward, >= 1
    int64_t max_tokens = 0;       // text tokens embedded, 0 = as many as the model's positions allow
  };

  // model_name: the model folder's name, for name(). Throws std::invalid_argument for a null decoder or
  // tokenizer, bad options, or a tokenizer whose vocabulary is larger than the model's.
  LmEmbedder(std::shared_ptr<const Decoder> decoder, std::shared_ptr<const Tokenizer> tokenizer,
             const std::string& model_name);
  LmEmbedder(std::shared_ptr<const Decoder> decoder, std::shared_ptr<const Tokenizer> tokenizer,
             const std::string& model_name, const Options& options);

  // "lm:<model folder name>-<d_model>", plus "-max<N>" when Options::max_tokens cuts below the default.
  std::string name() const override { return name_; }
  int64_t dim() const override;
  std::vector<float> embed(std::string_view text) const override;

  // The token ids the decoder runs over for `text` (BOS first where used), {} when the text has no tokens.
  std::vector<int64_t> input_ids(std::string_view text) const;
  // How many leading ids of input_ids() are not pooled (1 with a BOS, else 0).
  int64_t n_prefix() const { return bos_id_ >= 0 ? 1 : 0; }
  // The decoder it pools (shared, never copied).
  const Decoder& decoder() const { return *decoder_; }

 private:
  std::shared_ptr<const Decoder> decoder_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::string name_;
  Options options_;
  int64_t bos_id_ = -1;
  int64_t max_tokens_ = 0;
};

// The last component of a folder path, ignoring trailing separators ("models/MiniLM/" -> "MiniLM"; "." -> the
// current directory's name): what embedder names use.
std::string folder_name(const std::string& dir);

}  // namespace sinkflow
