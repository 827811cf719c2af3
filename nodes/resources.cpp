#include "nodes/resources.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <stdexcept>

#include "models/embedder_factory.h"

namespace sinkflow {

void MemoryParams::read(ParamReader& r) {
  r.read("memory_dir", memory_dir);
  r.read_choice("embedder", embedder, {"hash", "bert", "lm"});
  r.read("embed_dim", embed_dim);
  r.read("embedder_model", embedder_model);
  r.read("reset", reset);
}

void MemoryParams::validate(const ParamOrigin& origin) const {
  origin.require(!memory_dir.empty(), "memory_dir", "a directory path", memory_dir);
  origin.require(embed_dim >= 1, "embed_dim", "an integer >= 1", embed_dim);
  origin.require(embedder != "bert" || !embedder_model.empty(), "embedder_model", "an encoder folder for embedder bert",
                 embedder_model);
  origin.require(embedder != "lm" || !embedder_model.empty(), "embedder_model", "a decoder folder for embedder lm",
                 embedder_model);
}

void SharedMemory::mark_indexed(int64_t batch_step) {
  int64_t seen = indexed_.load();
  while (batch_step > seen && !indexed_.compare_exchange_weak(seen, batch_step)) {
  }
}

namespace {

std::string embedder_key(const MemoryParams& p) {
  if (p.embedder == "hash") return "hash (embed_dim " + std::to_string(p.embed_dim) + ")";
  return p.embedder + " (embedder_model " + p.embedder_model + ")";
}

}  // namespace

std::shared_ptr<SharedMemory> shared_memory(RunContext& run, const MemoryParams& params) {
  auto memory = run.shared<SharedMemory>("memory:" + params.memory_dir, [&] {
    auto m = std::make_shared<SharedMemory>();
    EmbedderConfig ec;
    ec.kind = params.embedder;
    ec.dim = params.embed_dim;
    ec.model = params.embedder_model;
    m->embedder = make_embedder(ec);
    m->opened_with = embedder_key(params);
    if (params.reset) std::filesystem::remove_all(params.memory_dir);
    StoreOptions so;
    so.embedder_name = m->embedder->name();
    so.dim = m->embedder->dim();
    m->store = ChunkStore::open(params.memory_dir, so);
    spdlog::info("memory: dir={} embedder={} dim={} chunks={}{}", params.memory_dir, so.embedder_name, so.dim,
                 m->store->size(), params.reset ? " (reset)" : "");
    return m;
  });
  if (memory->opened_with != embedder_key(params))
    throw std::invalid_argument("memory_dir '" + params.memory_dir + "': opened with embedder " + memory->opened_with +
                                " by another node, this node asks for " + embedder_key(params));
  return memory;
}

std::shared_ptr<const Tokenizer> shared_tokenizer(RunContext& run, const std::string& model_dir) {
  auto holder = run.shared<std::shared_ptr<const Tokenizer>>("tokenizer:" + model_dir, [&] {
    return std::make_shared<std::shared_ptr<const Tokenizer>>(load_tokenizer(model_dir));
  });
  return *holder;
}

void check_fail_at(int64_t fail_at, int64_t n) {
  if (fail_at > 0 && n == fail_at)
    throw std::runtime_error("fail_at: injected failure at message " + std::to_string(n));
}

}  // namespace sinkflow
