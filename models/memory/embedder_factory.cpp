#include "models/memory/embedder_factory.h"

#include <cctype>
#include <filesystem>
#include <stdexcept>

#include "models/memory/model_embedders.h"
#include "models/nn/decoder.h"
#include "models/nn/runtime.h"
#include "models/text/tokenizer.h"

namespace sinkflow {
namespace {

std::unique_ptr<Embedder> build(const EmbedderConfig& config, std::shared_ptr<const Decoder> decoder,
                                std::shared_ptr<const Tokenizer> tokenizer, bool shared) {
  config.validate("embedder");
  if (config.kind == "hash") return std::make_unique<HashEmbedder>(config.dim);
  const at::Device device = parse_device(config.device);
  if (config.kind == "bert") return std::make_unique<BertEmbedder>(config.model, device);
  if (shared) {
    if (!decoder || !tokenizer) {
      throw std::invalid_argument("embedder: kind lm was given no " + std::string(decoder ? "tokenizer" : "decoder") +
                                  " to share, expected the stream's decoder and tokenizer of '" + config.model + "'");
    }
  } else {
    if (!std::filesystem::is_directory(config.model)) {
      throw std::invalid_argument("embedder.model: '" + config.model +
                                  "' is not a folder (expected a decoder model folder for lm)");
    }
    decoder = load_decoder(config.model, device, at::kFloat);
    tokenizer = load_tokenizer(config.model);
  }
  return std::make_unique<LmEmbedder>(std::move(decoder), std::move(tokenizer), folder_name(config.model));
}

}  // namespace

void EmbedderConfig::validate(const std::string& where) const {
  if (kind != "hash" && kind != "bert" && kind != "lm") {
    throw std::invalid_argument(where + ".kind: unknown embedder kind '" + kind + "', expected hash, bert or lm");
  }
  if (kind == "hash") {
    if (dim < 1) throw std::invalid_argument(where + ".dim: must be >= 1, found " + std::to_string(dim));
    return;
  }
  if (model.empty()) throw std::invalid_argument(where + ".model: " + kind + " needs a model folder");
  if (!is_device_name(device)) {
    throw std::invalid_argument(where + ".device: unknown device '" + device + "', expected cpu, cuda, cuda:N or mps");
  }
}

std::unique_ptr<Embedder> make_embedder(const EmbedderConfig& config) { return build(config, nullptr, nullptr, false); }

std::unique_ptr<Embedder> make_embedder(const EmbedderConfig& config, std::shared_ptr<const Decoder> decoder,
                                        std::shared_ptr<const Tokenizer> tokenizer) {
  return build(config, std::move(decoder), std::move(tokenizer), true);
}

}  // namespace sinkflow
