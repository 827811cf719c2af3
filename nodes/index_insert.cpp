#include "nodes/index_insert.h"

#include <spdlog/spdlog.h>

#include "models/io/limits.h"
#include "nodes/messages.h"
#include "nodes/resources.h"
#include "nodes/stage.h"

namespace sinkflow {

IndexInsertConfig IndexInsertConfig::from_params(const ParamMap& params, const std::string& where) {
  IndexInsertConfig c;
  ParamReader r(params, where, c.origin);
  r.require("memory", c.memory);
  r.read("flush_every", c.flush_every);
  r.done();
  return c;
}

void IndexInsertConfig::validate() const {
  origin.require_in(flush_every, "flush_every", 0, kMaxCount, " (0 = only at the end)");
}

namespace {

class IndexInsert : public NodeInstance {
 public:
  IndexInsert(const NodeContext& context, IndexInsertConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        memory_(context.resources.memory(config_.memory, config_.origin, "memory")),
        stage_(*this, [this](const ChunkBatch& b, Emitter<int64_t>& out) { on_batch(b, out); }) {}

  void finish() override {
    memory_->store->flush();
    spdlog::info("index-insert '{}': {} chunks added, store holds {}", name(), added_, memory_->store->size());
  }

 private:
  void on_batch(const ChunkBatch& b, Emitter<int64_t>& out) {
    if (b.embeddings.size() != b.chunks.size())
      throw std::invalid_argument("chunk batch " + std::to_string(b.step) + ": expected one embedding per chunk (" +
                                  std::to_string(b.chunks.size()) + "), found " + std::to_string(b.embeddings.size()) +
                                  " (is an embedding node upstream?)");
    for (size_t i = 0; i < b.chunks.size(); ++i) {
      memory_->store->add(b.chunks[i], b.embeddings[i]);
      ++added_;
      context().run.counters.chunks_indexed.fetch_add(1, std::memory_order_relaxed);
      if (config_.flush_every > 0 && added_ % config_.flush_every == 0) memory_->store->flush();
    }
    memory_->mark_indexed(b.step);
    out.put<0>(b.step);
  }

  IndexInsertConfig config_;
  std::shared_ptr<MemoryResource> memory_;
  int64_t added_ = 0;
  Stage<In<ChunkBatch>, Out<int64_t>> stage_;
};

}  // namespace

NodeKind index_insert_kind() {
  NodeKind kind = make_node_kind<IndexInsert, IndexInsertConfig>(
      "index-insert", "adds chunks and embeddings to the memory store; flushes it at the end",
      {in_port<ChunkBatch>("chunks")}, {out_port<int64_t>("indexed")});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
