// The embedder a memory path uses, chosen by configuration: hash | bert | lm.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "models/io/names.h"
#include "models/memory/embedder.h"

namespace sinkflow {

class Decoder;
class Tokenizer;

// The embedder kinds, one name table for parsing, printing and messages.
enum class EmbedderKind { hash, lm, bert };
inline constexpr NameTable<EmbedderKind, 3> kEmbedderKindNames{
    {{{EmbedderKind::hash, "hash"}, {EmbedderKind::lm, "lm"}, {EmbedderKind::bert, "bert"}}}};

struct EmbedderConfig {
  std::string kind = "hash";   // hash (lexical, no weights) | bert (encoder folder) | lm (the decoder's hidden states)
  int64_t dim = 384;           // vector length, >= 1; hash only (bert and lm: the model's hidden size)
  std::string model;           // bert: a BERT/MiniLM folder; lm: a decoder folder; "" for hash
  std::string device = "cpu";  // cpu | cuda | cuda:N | mps (bert and lm)

  // Checks the fields without touching files or devices; throws std::invalid_argument naming `where` and the
  // field, e.g. "embedder.model: bert needs a model folder".
  void validate(const std::string& where) const;
};

// Builds the embedder of `config` (validated first, under the name "embedder"): HashEmbedder(dim);
// BertEmbedder(model, device); LmEmbedder over load_decoder(model, device, float32) and load_tokenizer(model).
// Throws std::invalid_argument for a bad config or model folder, std::runtime_error for an unavailable device.
std::unique_ptr<Embedder> make_embedder(const EmbedderConfig& config);

// As above, but kind lm reuses a decoder and tokenizer already loaded from config.model (the one the stream
// decodes with: no second copy of the weights). Other kinds ignore them. Throws std::invalid_argument when kind
// is lm and either is null.
std::unique_ptr<Embedder> make_embedder(const EmbedderConfig& config, std::shared_ptr<const Decoder> decoder,
                                        std::shared_ptr<const Tokenizer> tokenizer);

}  // namespace sinkflow
