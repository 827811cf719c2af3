// eviction  in: evicted: EvictedBatch  out: chunks: ChunkBatch
// The StreamSession already plans and applies evictions inside feed() (model-step is the only writer of the
// cache), so this node starts where the cache stops: it groups the evicted spans of each sequence into chunks
// of chunk_size tokens (Chunker, with overlap) and decodes their text (chunk_span). A batch with `flush` also
// emits the partial tail. Serial: it owns the Chunker. Every batch gives one ChunkBatch (maybe empty) so that
// index-insert can report how far the memory path has got.
#pragma once

#include <cstdint>
#include <string>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct EvictionConfig {
  std::string model;        // model resource whose tokenizer decodes the chunks (required)
  int64_t chunk_size = 32;  // tokens per chunk, >= 1
  int64_t overlap = 0;      // tokens repeated from the previous chunk, in [0, chunk_size)
  ParamOrigin origin;

  static EvictionConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

NodeKind eviction_kind();

}  // namespace sinkflow
