// embedding  in: chunks: ChunkBatch  out: chunks: ChunkBatch (with embeddings)
// Embeds each chunk's text with the memory's embedder (Embedder::embed_batch). Runs beside decoding, on the
// second core (concurrency 1 in the pipelines).
#pragma once

#include <cstdint>
#include <string>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"
#include "nodes/resources.h"

namespace sinkflow {

struct EmbeddingConfig {
  MemoryParams memory_params;  // memory_dir, embedder, embed_dim, embedder_model, reset
  int64_t fail_at = 0;         // tests: throw at this message (1-based); 0 = never
  ParamOrigin origin;

  static EmbeddingConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

NodeKind embedding_kind();

}  // namespace sinkflow
