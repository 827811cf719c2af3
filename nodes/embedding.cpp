#include "nodes/embedding.h"

#include <c10/core/InferenceMode.h>

#include "nodes/messages.h"
#include "nodes/resources.h"
#include "nodes/stage.h"

namespace sinkflow {

EmbeddingConfig EmbeddingConfig::from_params(const ParamMap& params, const std::string& where) {
  EmbeddingConfig c;
  ParamReader r(params, where, c.origin);
  r.require("memory", c.memory);
  r.done();
  return c;
}

void EmbeddingConfig::validate() const {
}

namespace {

class Embedding : public NodeInstance {
 public:
  Embedding(const NodeContext& context, EmbeddingConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        memory_(context.resources.memory(config_.memory, config_.origin, "memory")),
        stage_(*this, [this](const ChunkBatch& b, Emitter<ChunkBatch>& out) { on_batch(b, out); }) {}

 private:
  void on_batch(const ChunkBatch& b, Emitter<ChunkBatch>& out) {
    c10::InferenceMode guard;
    ChunkBatch c = b;
    std::vector<std::string> texts;
    for (const Chunk& chunk : c.chunks) texts.push_back(chunk.text);
    if (!texts.empty()) c.embeddings = memory_->embedder->embed_batch(texts);
    out.put<0>(c);
  }

  EmbeddingConfig config_;
  std::shared_ptr<MemoryResource> memory_;
  Stage<In<ChunkBatch>, Out<ChunkBatch>> stage_;
};

}  // namespace

NodeKind embedding_kind() {
  return make_node_kind<Embedding, EmbeddingConfig>("embedding", "chunk text -> embedding vectors",
                                                    {in_port<ChunkBatch>("chunks")}, {out_port<ChunkBatch>("chunks")});
}

}  // namespace sinkflow
