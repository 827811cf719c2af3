#include "nodes/eviction.h"

#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include "models/memory/memory_path.h"
#include "nodes/messages.h"
#include "nodes/resources.h"
#include "nodes/stage.h"

namespace sinkflow {

EvictionConfig EvictionConfig::from_params(const ParamMap& params, const std::string& where) {
  EvictionConfig c;
  ParamReader r(params, where, c.origin);
  r.require("model", c.model);
  r.read("chunk_size", c.chunk_size);
  r.read("overlap", c.overlap);
  r.done();
  return c;
}

void EvictionConfig::validate() const {
  origin.require(chunk_size >= 1 && chunk_size <= (int64_t{1} << 20), "chunk_size", "an integer in [1, 1048576]", chunk_size);
  origin.require(overlap >= 0 && overlap < chunk_size, "overlap", "an integer in [0, chunk_size)", overlap);
}

namespace {

class Eviction : public NodeInstance {
 public:
  Eviction(const NodeContext& context, EvictionConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        tokenizer_(context.resources.model(config_.model, config_.origin, "model")->tokenizer),
        chunker_(config_.chunk_size, config_.overlap),
        stage_(*this, [this](const EvictedBatch& b, Emitter<ChunkBatch>& out) { on_batch(b, out); }) {
    spdlog::info("eviction '{}': chunk_size={} overlap={}", name(), config_.chunk_size, config_.overlap);
  }

 private:
  void on_batch(const EvictedBatch& b, Emitter<ChunkBatch>& out) {
    c10::InferenceMode guard;
    ChunkBatch c;
    c.seq = b.seq;
    c.step = b.step;
    for (const EvictedSpan& span : b.spans)
      for (Chunk& chunk : chunk_span(chunker_, b.seq, span, *tokenizer_)) c.chunks.push_back(std::move(chunk));
    if (b.flush) {
      for (Chunk& chunk : chunker_.flush()) {
        chunk.text = tokenizer_->decode(chunk.tokens);
        c.chunks.push_back(std::move(chunk));
      }
    }
    out.put<0>(c);
  }

  EvictionConfig config_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  Chunker chunker_;
  Stage<In<EvictedBatch>, Out<ChunkBatch>> stage_;
};

}  // namespace

NodeKind eviction_kind() {
  NodeKind kind = make_node_kind<Eviction, EvictionConfig>(
      "eviction", "evicted spans -> chunks of text (Chunker + chunk_span)", {in_port<EvictedBatch>("evicted")},
      {out_port<ChunkBatch>("chunks")});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
