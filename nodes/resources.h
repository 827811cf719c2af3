// The heavy things a pipeline declares once, in its top-level `resources:` section, and nodes name:
//
//   resources:
//     models:   {lm: {path: data/models/sinkflow-llama, device: cpu, dtype: auto}}
//     memories: {mem: {dir: out/memory/stream, reset: false, embedder: {kind: hash, dim: 384}}}
//
// The graph builds every resource before any node (graph/graph.h) and hands the set to each node's factory
// (NodeContext::resources); a node resolves the names it was given once, when it is built, and keeps the
// shared pointers. A model resource is one decoder and its tokenizer, shared read-only by every node that
// names it (the lm embedder included). A memory resource is one memory directory, locked for the run, reset only
// when asked and only if it is a sinkflow memory directory, with its embedder and chunk store.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/memory/embedder_factory.h"
#include "models/memory/memory_dir.h"
#include "models/nn/decoder.h"
#include "models/text/generation_config.h"
#include "models/text/tokenizer.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct ModelResourceConfig {
  std::string path;            // Hugging Face model folder (required)
  std::string device = "cpu";  // cpu | cuda | cuda:N | mps
  std::string dtype = "auto";  // auto | float32 | float16 | bfloat16 | int8 (CPU: bf16 or int8 matrices, f32 compute)
  ParamOrigin origin;

  static ModelResourceConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

// One loaded decoder with its tokenizer. Read-only once built.
struct ModelResource {
  std::string name;                            // the key under resources.models
  ModelResourceConfig config;
  std::shared_ptr<const Decoder> decoder;
  std::shared_ptr<const Tokenizer> tokenizer;  // the folder's own tokenizer: text and model always agree
  GenerationConfig generation;                 // BOS, stop ids, sampling defaults (generation_config.h)
};

// The embedder of a memory resource: `{kind: hash, dim: 384}`, `{kind: lm, model: lm}` (a model resource) or
// `{kind: bert, path: DIR}` (an encoder folder).
struct EmbedderParams {
  EmbedderKind kind = EmbedderKind::hash;  // hash | lm | bert
  int64_t dim = 384;          // hash: vector length, in [1, 65536]
  std::string model;          // lm: the model resource whose hidden states are pooled
  std::string path;           // bert: BERT/MiniLM folder
  ParamOrigin origin;

  static EmbedderParams from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

struct MemoryResourceConfig {
  std::string dir;          // memory directory (required; created if missing)
  bool reset = false;       // empty it first: only a sinkflow memory directory, and only under the run's lock
  // RAM cap of the in-memory hnsw segment, MiB: beyond it the segment is sealed into a file that is memory-mapped
  // and searched from disk, so RAM stops growing with the stream; 0 = never seal (StoreOptions::index_ram_mb).
  int64_t index_ram_mb = 64;
  // RAM cap of the first in-memory segment, MiB; later ones hold as many vectors as are sealed before them, up to
  // index_ram_mb, so a short stream takes little RAM (StoreOptions::index_first_ram_mb); 0 = index_ram_mb.
  int64_t index_first_ram_mb = 8;
  // Background merging of sealed segments (StoreOptions::merge_factor, merge_ram_mb, merge_nice): merge_factor
  // adjacent segments of a tier become one (0 = never merge), built in at most merge_ram_mb MiB of RAM, on a
  // thread of nice merge_nice (0 = full speed).
  int64_t merge_factor = 4;
  int64_t merge_ram_mb = 256;
  int64_t merge_nice = 10;
  // Threads that share a search's segments (StoreOptions::search_threads): the caller and search_threads - 1 helpers.
  int64_t search_threads = 2;
  EmbedderParams embedder;  // how chunks and queries become vectors
  ParamOrigin origin;

  static MemoryResourceConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

// One opened memory directory: its lock (held for the run), embedder and chunk store, and how far index-insert
// has got (the last EvictedBatch step whose chunks are all stored).
struct MemoryResource {
  std::string name;  // the key under resources.memories
  MemoryResourceConfig config;
  std::unique_ptr<MemoryDirLock> lock;
  std::unique_ptr<Embedder> embedder;
  std::unique_ptr<ChunkStore> store;

  void mark_indexed(int64_t batch_step);
  int64_t indexed() const { return indexed_.load(); }

 private:
  std::atomic<int64_t> indexed_{-1};
};

// The resources of one run, built before any node.
class Resources {
 public:
  // Loads the decoder and tokenizer of `config.path`. std::invalid_argument (naming config.origin) for a bad
  // config or folder; a repeated name is std::invalid_argument.
  void add_model(const std::string& name, const ModelResourceConfig& config);
  // Opens a memory directory: lock first, then (if asked) reset, then the embedder and the store. An lm embedder
  // must name a model added before. Errors as MemoryDirLock and ChunkStore::open, prefixed with the resource.
  void add_memory(const std::string& name, const MemoryResourceConfig& config);

  // The resource a node's parameter `field` names; std::invalid_argument through origin.fail() when there is
  // none ("expected a model resource (declared: lm), found 'x'").
  std::shared_ptr<const ModelResource> model(const std::string& name, const ParamOrigin& origin,
                                             std::string_view field) const;
  std::shared_ptr<MemoryResource> memory(const std::string& name, const ParamOrigin& origin,
                                         std::string_view field) const;

  std::vector<std::string> model_names() const;
  std::vector<std::string> memory_names() const;

 private:
  std::map<std::string, std::shared_ptr<const ModelResource>> models_;
  std::map<std::string, std::shared_ptr<MemoryResource>> memories_;
};

}  // namespace sinkflow
