// What several nodes of one run share through RunContext::shared: a tokenizer per model folder and the
// memory (embedder + chunk store) per memory directory; plus the `fail_at` test hook every kind has.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "models/chunk_store.h"
#include "models/embedder.h"
#include "models/tokenizer.h"
#include "nodes/param_map.h"
#include "nodes/run_context.h"

namespace sinkflow {

// The memory parameters of the nodes that touch the store (embedding, index-insert, retrieve, model-step):
// the first node built opens the directory; the others must name the same embedder.
struct MemoryParams {
  std::string memory_dir = "out/memory";  // chunk store directory (created)
  std::string embedder = "hash";          // hash | bert | lm
  int64_t embed_dim = 384;                // hash vector length, >= 1
  std::string embedder_model;             // bert: encoder folder; lm: decoder folder (its own copy, on the CPU)
  bool reset = false;                     // delete the directory before opening it (a fresh memory)

  void read(ParamReader& r);
  void validate(const ParamOrigin& origin) const;
};

// One memory directory of a run: the embedder, the store, and how far index-insert has got (the last
// EvictedBatch step whose chunks are all in the store).
struct SharedMemory {
  std::unique_ptr<Embedder> embedder;
  std::unique_ptr<ChunkStore> store;
  std::string opened_with;  // the embedder (kind with its dim or model) of the node that opened it

  void mark_indexed(int64_t batch_step);
  int64_t indexed() const { return indexed_.load(); }

 private:
  std::atomic<int64_t> indexed_{-1};
};

// The shared memory of `params.memory_dir` (opened on first use). Throws std::invalid_argument when another
// node opened it with another embedder (kind, dim or model).
std::shared_ptr<SharedMemory> shared_memory(RunContext& run, const MemoryParams& params);

// The tokenizer of a model folder, loaded once per run.
std::shared_ptr<const Tokenizer> shared_tokenizer(RunContext& run, const std::string& model_dir);

// Test hook: throws std::runtime_error("fail_at: injected failure at message <n>") when n == fail_at > 0.
void check_fail_at(int64_t fail_at, int64_t n);

}  // namespace sinkflow
