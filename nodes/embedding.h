// embedding  in: chunks: ChunkBatch  out: chunks: ChunkBatch (with embeddings)
// Embeds each chunk's text with the memory's embedder (Embedder::embed_batch). Runs beside decoding, on the
// second core (concurrency 1 in the pipelines).
#pragma once

#include <cstdint>
#include <string>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct EmbeddingConfig {
  std::string memory;          // memory resource (required)
  ParamOrigin origin;

  static EmbeddingConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

NodeKind embedding_kind();

}  // namespace sinkflow
