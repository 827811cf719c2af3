#include "nodes/resources.h"

#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <stdexcept>

#include "models/nn/runtime.h"

namespace sinkflow {

namespace {

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? std::string("none") : out;
}

}  // namespace

ModelResourceConfig ModelResourceConfig::from_params(const ParamMap& params, const std::string& where) {
  ModelResourceConfig c;
  ParamReader r(params, where, c.origin);
  r.require("path", c.path);
  r.read("device", c.device);
  r.read_choice("dtype", c.dtype, {"auto", "float32", "float16", "bfloat16", "int8"});
  r.done();
  return c;
}

void ModelResourceConfig::validate() const {
  origin.require(!path.empty(), "path", "a model folder", path);
  origin.require(is_device_name(device), "device", "cpu, cuda, cuda:N or mps", device);
}

EmbedderParams EmbedderParams::from_params(const ParamMap& params, const std::string& where) {
  EmbedderParams c;
  ParamReader r(params, where, c.origin);
  r.read_enum("kind", c.kind, kEmbedderKindNames);
  r.read("dim", c.dim);
  r.read("model", c.model);
  r.read("path", c.path);
  r.done();
  return c;
}

void EmbedderParams::validate() const {
  origin.require(dim >= 1 && dim <= 65536, "dim", "an integer in [1, 65536]", dim);
  const bool lm = kind == EmbedderKind::lm, bert = kind == EmbedderKind::bert;
  origin.require(!lm || !model.empty(), "model", "a model resource for embedder kind lm", model);
  origin.require(!bert || !path.empty(), "path", "an encoder folder for embedder kind bert", path);
  origin.require(lm || model.empty(), "model", "nothing unless kind is lm", model);
  origin.require(bert || path.empty(), "path", "nothing unless kind is bert", path);
}

MemoryResourceConfig MemoryResourceConfig::from_params(const ParamMap& params, const std::string& where) {
  MemoryResourceConfig c;
  ParamReader r(params, where, c.origin);
  r.require("dir", c.dir);
  r.read("reset", c.reset);
  r.read("index_ram_mb", c.index_ram_mb);
  r.read("index_first_ram_mb", c.index_first_ram_mb);
  r.read("merge_factor", c.merge_factor);
  r.read("merge_ram_mb", c.merge_ram_mb);
  r.read("merge_nice", c.merge_nice);
  r.read("search_threads", c.search_threads);
  ParamMap embedder;
  r.read("embedder", embedder);
  r.done();
  c.embedder = EmbedderParams::from_params(embedder, where + " embedder");
  return c;
}

void MemoryResourceConfig::validate() const {
  origin.require(!dir.empty(), "dir", "a directory path", dir);
  origin.require(index_ram_mb >= 0 && index_ram_mb <= (int64_t(1) << 30), "index_ram_mb",
                 "MiB in [0, 2^30] (0 = never seal)", index_ram_mb);
  origin.require(index_first_ram_mb >= 0 && index_first_ram_mb <= (int64_t(1) << 30), "index_first_ram_mb",
                 "MiB in [0, 2^30] (0 = index_ram_mb)", index_first_ram_mb);
  origin.require(merge_factor == 0 || (merge_factor >= 2 && merge_factor <= 64), "merge_factor",
                 "0 (never merge) or an integer in [2, 64]", merge_factor);
  origin.require(merge_ram_mb >= 0 && merge_ram_mb <= (int64_t(1) << 30), "merge_ram_mb", "MiB in [0, 2^30]",
                 merge_ram_mb);
  origin.require(merge_nice >= 0 && merge_nice <= 19, "merge_nice", "a nice value in [0, 19]", merge_nice);
  origin.require(search_threads >= 1 && search_threads <= 64, "search_threads", "threads in [1, 64]", search_threads);
  embedder.validate();
}

void MemoryResource::mark_indexed(int64_t batch_step) {
  int64_t seen = indexed_.load();
  while (batch_step > seen && !indexed_.compare_exchange_weak(seen, batch_step)) {
  }
}

void Resources::add_model(const std::string& name, const ModelResourceConfig& config) {
  config.validate();
  if (models_.count(name)) throw std::invalid_argument("model resource '" + name + "' is declared twice");
  auto m = std::make_shared<ModelResource>();
  m->name = name;
  m->config = config;
  {
    c10::InferenceMode guard;
    const at::Device device = parse_device(config.device);
    m->decoder = load_decoder(config.path, device, parse_dtype(config.dtype, device));
  }
  m->tokenizer = load_tokenizer(config.path);
  m->generation = load_generation_config(config.path, *m->tokenizer, m->decoder->config().family);
  spdlog::info("resource models.{}: path={} device={} dtype={}", name, config.path, config.device,
               dtype_name(m->decoder->dtype()));
  models_.emplace(name, std::move(m));
}

void Resources::add_memory(const std::string& name, const MemoryResourceConfig& config) {
  config.validate();
  if (memories_.count(name)) throw std::invalid_argument("memory resource '" + name + "' is declared twice");
  auto m = std::make_shared<MemoryResource>();
  m->name = name;
  m->config = config;
  const EmbedderParams& e = config.embedder;
  EmbedderConfig ec;
  ec.kind = enum_name(kEmbedderKindNames, e.kind);
  ec.dim = e.dim;
  std::shared_ptr<const ModelResource> lm;
  if (e.kind == EmbedderKind::lm) {
    lm = model(e.model, e.origin, "model");
    ec.model = lm->config.path;
    ec.device = lm->config.device;
  } else if (e.kind == EmbedderKind::bert) {
    ec.model = e.path;
  }
  // Lock before anything in the directory changes: a second run on it is refused, never wiped.
  m->lock = std::make_unique<MemoryDirLock>(config.dir);
  std::vector<std::string> deleted;
  if (config.reset) deleted = m->lock->reset();
  m->embedder = lm ? make_embedder(ec, lm->decoder, lm->tokenizer) : make_embedder(ec);
  StoreOptions so;
  so.embedder_name = m->embedder->name();
  so.dim = m->embedder->dim();
  so.index_ram_mb = config.index_ram_mb;
  so.index_first_ram_mb = config.index_first_ram_mb;
  so.merge_factor = static_cast<int>(config.merge_factor);
  so.merge_ram_mb = config.merge_ram_mb;
  so.merge_nice = static_cast<int>(config.merge_nice);
  so.search_threads = static_cast<int>(config.search_threads);
  m->store = ChunkStore::open(config.dir, so);
  spdlog::info("resource memories.{}: dir={} embedder={} dim={} chunks={}{}", name, config.dir, so.embedder_name, so.dim,
               m->store->size(), config.reset ? " (reset: " + std::to_string(deleted.size()) + " files deleted)" : "");
  memories_.emplace(name, std::move(m));
}

std::shared_ptr<const ModelResource> Resources::model(const std::string& name, const ParamOrigin& origin,
                                                      std::string_view field) const {
  auto it = models_.find(name);
  if (it == models_.end())
    origin.fail(field, "a model resource (declared under resources.models: " + join(model_names()) + ")",
                "'" + name + "'");
  return it->second;
}

std::shared_ptr<MemoryResource> Resources::memory(const std::string& name, const ParamOrigin& origin,
                                                  std::string_view field) const {
  auto it = memories_.find(name);
  if (it == memories_.end())
    origin.fail(field, "a memory resource (declared under resources.memories: " + join(memory_names()) + ")",
                "'" + name + "'");
  return it->second;
}

std::vector<std::string> Resources::model_names() const {
  std::vector<std::string> out;
  for (const auto& [n, m] : models_) out.push_back(n);
  return out;
}

std::vector<std::string> Resources::memory_names() const {
  std::vector<std::string> out;
  for (const auto& [n, m] : memories_) out.push_back(n);
  return out;
}

}  // namespace sinkflow
