// index-insert  in: chunks: ChunkBatch (with embeddings)  out: indexed: int64 (the EvictedBatch step now stored)
// Appends each chunk and its embedding to the shared ChunkStore (chunk log + hnsw index), counts
// RunCounters::chunks_indexed, and reports the batch as indexed on `indexed` (what model-step's sync retrieval
// waits for, on its step-boundary input `indexed`).
// finish() flushes the store (fsync + index.bin), also after a stop (SIGINT) or a failure elsewhere:
// every chunk accepted is kept. Serial: the store has one writer.
#pragma once

#include <cstdint>
#include <string>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct IndexInsertConfig {
  std::string memory;          // memory resource (required)
  int64_t flush_every = 0;     // also flush the store every this many chunks, <= 2^40; 0 = only at the end
  ParamOrigin origin;

  static IndexInsertConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

NodeKind index_insert_kind();

}  // namespace sinkflow
