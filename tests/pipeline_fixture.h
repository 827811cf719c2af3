// Shared fixtures of the tests that run the real node kinds: a tiny random Llama written by make_model, a
// document many times the tiny caches, and the tiny configs with the model and memory resources set once.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "graph/graph.h"
#include "graph/yaml_spec.h"
#include "models/cache/kv_cache.h"
#include "models/lab/make_model.h"
#include "nodes/nodes.h"
#include "tests/test_util.h"

namespace sinkflow::test {

// A tiny random Llama (seed 7), written once per test process.
inline const std::string& tiny_model() {
  static const std::string dir = [] {
    const std::filesystem::path d = temp_dir("fixture_model");
    MakeModelOptions o;
    o.config = shape_preset("tiny-llama");
    o.seed = 7;
    make_model(d.string(), o);
    return d.string();
  }();
  return dir;
}

// A document many times the tiny caches.
inline const std::string& long_document() {
  static const std::string path = [] {
    const std::filesystem::path p = temp_dir("fixture_doc") / "doc.txt";
    std::ofstream f(p);
    for (int i = 0; i < 12; ++i) f << builtin_tokenizer_text() << "\n\n";
    return p.string();
  }();
  return path;
}

// configs/stream-tiny.yaml (or ingest-tiny.yaml over long_document()) with `model` and `memory_dir` as its
// resources, text-out quiet, then `extra` --set overrides.
inline RunSpec tiny_spec(const std::string& config, const std::string& model, const std::string& memory_dir,
                         const std::vector<std::string>& extra) {
  std::vector<std::string> sets = {"resources.models.lm.path=" + model, "resources.memories.mem.dir=" + memory_dir,
                                   "out.quiet=true"};
  if (config == "ingest-tiny") sets.push_back("src.path=" + long_document());
  sets.insert(sets.end(), extra.begin(), extra.end());
  return load_run_spec(std::string(SINKFLOW_SOURCE_DIR) + "/configs/" + config + ".yaml", sets);
}

inline Registry builtin_registry() {
  Registry r;
  register_builtin_nodes(r);
  return r;
}

// The cache of configs/stream-tiny.yaml: 4 sinks + 32 memory + 28 recent.
inline CacheConfig stream_tiny_cache() {
  CacheConfig c;
  c.n_sink = 4;
  c.n_memory = 32;
  c.n_recent = 28;
  return c;
}

}  // namespace sinkflow::test
