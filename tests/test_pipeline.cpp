// The real node kinds and pipelines (pipelines/stream.yaml, pipelines/ingest.yaml through configs/*-tiny.yaml)
// on a tiny random Llama written by make_model: graph decoding equals the bare StreamSession loop, ingestion
// stays under the backpressure bound, every node kind's failure is named, the memory directory reopens with
// every evicted token, and a bad parameter names its file:line.
#include <c10/core/InferenceMode.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "graph/graph.h"
#include "graph/yaml_spec.h"
#include "models/io/checkpoint.h"
#include "models/memory/chunk_store.h"
#include "models/io/config.h"
#include "models/nn/decoder.h"
#include "models/memory/embedder.h"
#include "models/memory/model_embedders.h"
#include "models/lab/make_model.h"
#include "models/stream/stream.h"
#include "models/text/tokenizer.h"
#include "nodes/model_step.h"
#include "nodes/nodes.h"
#include "nodes/resources.h"
#include "nodes/text_out.h"
#include "tests/pipeline_fixture.h"
#include "tests/test_util.h"

// ATen pulls in glog, whose one-argument CHECK macro would replace Catch's: include Catch last.
#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const std::string kSource = SINKFLOW_SOURCE_DIR;

fs::path temp_dir(const std::string& name) { return test::temp_dir("pipeline_" + name); }

using test::long_document;
using test::tiny_model;

RunSpec stream_spec(const std::vector<std::string>& extra, const std::string& memory_dir) {
  return test::tiny_spec("stream-tiny", tiny_model(), memory_dir, extra);
}

RunSpec ingest_spec(const std::vector<std::string>& extra, const std::string& memory_dir) {
  return test::tiny_spec("ingest-tiny", tiny_model(), memory_dir, extra);
}

Registry builtin() { return test::builtin_registry(); }

// The bare loop through the stream-tiny cache (4 + 32 + 28 slots).
std::vector<int64_t> bare_loop(const std::string& prompt, int64_t block, int64_t max_new) {
  c10::InferenceMode guard;
  return test::bare_greedy_loop(tiny_model(), prompt, test::stream_tiny_cache(), block, max_new);
}

}  // namespace

TEST_CASE("graph decoding equals the bare StreamSession loop, memory path off and on", "[pipeline]") {
  const std::string prompt = "Once upon a time there was a little";
  const std::vector<int64_t> expected = bare_loop(prompt, 16, 48);
  REQUIRE(expected.size() == 48);  // long enough to evict: 28-slot window
  for (const bool memory : {false, true}) {
    const fs::path mem = temp_dir(memory ? "a_on" : "a_off");
    RunSpec spec = stream_spec({"model.memory=" + std::string(memory ? "true" : "false")}, mem.string());
    Pipeline pipeline(spec.pipeline, builtin());
    pipeline.run_for(120s);
    const ModelStepStats stats = model_step_stats(pipeline.node("model"));
    CHECK(stats.generated == expected);
    const RunSummary s = pipeline.summary();
    CHECK(s.tokens_out == 48);
    CHECK(s.evictions > 0);
    if (memory) {
      CHECK(s.chunks_indexed > 0);
      CHECK(s.retrievals == 1);  // the prompt turn
    } else {
      CHECK(s.chunks_indexed == 0);
    }
    auto tokenizer = load_tokenizer(tiny_model());
    CHECK(text_out_text(pipeline.node("out")) == tokenizer->decode(expected) + "\n");
  }
}

TEST_CASE("ingesting a document far larger than the cache keeps in-flight blocks under the source's bound", "[pipeline]") {
  const fs::path mem = temp_dir("b");
  // No answer: every model-step body then emits at most one message (an EvictedBatch), so the messages the
  // source has caused, wherever they are, stay within its bound plus one block and one message in transit.
  RunSpec spec = ingest_spec({"model.max_new_tokens=0"}, mem.string());
  spec.pipeline.find_node("src")->max_in_flight = 4;
  Pipeline pipeline(spec.pipeline, builtin());
  pipeline.run_for(300s);
  auto tokenizer = load_tokenizer(tiny_model());
  std::ifstream f(long_document());
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const int64_t doc_tokens = static_cast<int64_t>(tokenizer->encode(text).size());
  const ModelStepStats stats = model_step_stats(pipeline.node("model"));
  REQUIRE(doc_tokens > 20 * 96);  // far beyond the 96-slot cache
  // Streaming tokenization (cut at word boundaries) gives the tokens of the whole text; + BOS + the prompt.
  CHECK(stats.prefill_tokens == 1 + doc_tokens + static_cast<int64_t>(tokenizer->encode("\nThe best thing to do in San Francisco is").size()));
  int64_t most = 0;
  for (const NodeProfile& p : pipeline.profile_table()) {
    INFO(p.node << " max_queue " << p.max_queue);
    CHECK(p.max_queue <= 4 + 2);
    most = std::max(most, p.max_queue);
  }
  CHECK(most >= 1);
}

TEST_CASE("an exception in any node kind ends the run naming that node", "[pipeline]") {
  const std::vector<std::pair<std::string, std::string>> nodes = {
      {"src", "token-source"}, {"model", "model-step"}, {"eviction", "eviction"}, {"embed", "embedding"},
      {"index", "index-insert"}, {"retrieve", "retrieve"}, {"reinject", "re-inject"}, {"out", "text-out"},
      {"metrics", "metrics"}};
  for (const auto& [node, kind] : nodes) {
    SECTION(kind) {
      const fs::path mem = temp_dir("c_" + node);
      // The stream pipeline over a document with retrieval every 16 tokens: every node gets messages.
      RunSpec spec = stream_spec({"src.path=" + long_document(), "model.retrieval.trigger=always", "model.retrieval.every=16",
                                  "model.max_new_tokens=4", node + ".fail_at=2"},
                                 mem.string());
      Pipeline pipeline(spec.pipeline, builtin());
      REQUIRE_THROWS_WITH(pipeline.run_for(120s),
                          Catch::Contains("node '" + node + "' (" + kind + "): fail_at: injected failure at message 2"));
    }
  }
}

TEST_CASE("after a run with memory on, the memory directory reopens with every evicted token", "[pipeline]") {
  const fs::path mem = temp_dir("d");
  RunSpec spec = ingest_spec({}, mem.string());
  int64_t evicted = 0, indexed = 0;
  {
    Pipeline pipeline(spec.pipeline, builtin());
    pipeline.run_for(300s);
    evicted = model_step_stats(pipeline.node("model")).tokens_evicted;
    indexed = pipeline.summary().chunks_indexed;
  }
  REQUIRE(evicted > 0);
  StoreOptions so;
  so.embedder_name = HashEmbedder(64).name();
  so.dim = 64;
  auto store = ChunkStore::open(mem.string(), so);
  REQUIRE(store->size() == indexed);
  // chunk_size 16, no overlap: full chunks, plus at most two partial tails (flushed before the sync
  // retrieval and at the end of the input).
  CHECK(store->size() >= evicted / 16);
  CHECK(store->size() <= evicted / 16 + 2);
  std::vector<int64_t> positions;
  for (int64_t id = 0; id < store->size(); ++id) {
    const Chunk c = store->get(id, false);
    CHECK(c.tokens.size() <= 16);
    positions.insert(positions.end(), c.positions.begin(), c.positions.end());
  }
  REQUIRE(static_cast<int64_t>(positions.size()) == evicted);
  for (size_t i = 0; i < positions.size(); ++i) REQUIRE(positions[i] == 4 + static_cast<int64_t>(i));  // after the sinks
}

TEST_CASE("an unknown model-step parameter names its file and line", "[pipeline]") {
  const fs::path dir = temp_dir("e");
  const fs::path path = dir / "bad.yaml";
  std::ofstream(path) << "name: bad\n"
                         "nodes:\n"
                         "  - name: src\n"
                         "    kind: token-source\n"
                         "    params: {model: m, prompt: hi}\n"
                         "  - name: model\n"
                         "    kind: model-step\n"
                         "    params:\n"
                         "      model: m\n"
                         "      n_sinks: 4\n"
                         "edges:\n"
                         "  - src.tokens -> model.tokens\n";
  REQUIRE_THROWS_WITH(Pipeline(load_run_spec(path.string()).pipeline, builtin()),
                      Catch::Contains(path.string() + ":10") && Catch::Contains("n_sinks"));
  // A value out of range names the parameter and what was expected.
  // A value out of range names the nested parameter, where it was written and what was expected.
  REQUIRE_THROWS_WITH(Pipeline(stream_spec({"model.cache.n_sink=-3"}, (dir / "mem").string()).pipeline, builtin()),
                      Catch::Contains("--set model.cache.n_sink=-3") && Catch::Contains("parameter 'cache.n_sink'") &&
                          Catch::Contains("n_sink must be >= 0, found -3"));
  // An unknown nested key names its full path.
  REQUIRE_THROWS_WITH(Pipeline(stream_spec({"model.sampler.top_q=0.5"}, (dir / "mem").string()).pipeline, builtin()),
                      Catch::Contains("--set model.sampler.top_q=0.5") && Catch::Contains("unknown parameter 'sampler.top_q'"));
  // An enum lists its names (one table: parsing, printing and this message).
  REQUIRE_THROWS_WITH(Pipeline(stream_spec({"model.policy=streaming"}, (dir / "mem").string()).pipeline, builtin()),
                      Catch::Contains("parameter 'policy'") &&
                          Catch::Contains("one of dense, window, sink, recompute, kv-align, cluster"));
  // The KV cache's dtype: a name it does not know, and what it expected.
  REQUIRE_THROWS_WITH(Pipeline(stream_spec({"model.cache.kv_dtype=int8"}, (dir / "mem").string()).pipeline, builtin()),
                      Catch::Contains("--set model.cache.kv_dtype=int8") && Catch::Contains("cache.kv_dtype") &&
                          Catch::Contains("auto, float32, bfloat16 or float16"));
}

TEST_CASE("numeric node parameters past their limits name the parameter with its value and limit", "[pipeline]") {
  const fs::path dir = temp_dir("limits");
  auto message = [&](const std::string& set) {
    try {
      Pipeline(stream_spec({set}, (dir / "mem").string()).pipeline, builtin());
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model.threads=100000", "parameter 'threads': expected an integer in [0, 1024] (0 = LibTorch's default), found 100000"},
      {"model.prefill_block=100000000", "parameter 'prefill_block': expected an integer in [1, 16777216], found 100000000"},
      {"model.max_new_tokens=2000000000000",
       "parameter 'max_new_tokens': expected an integer in [0, 1099511627776], found 2000000000000"},
      {"model.sampler.top_k=100000000", "top_k must be in [0, 16777216], found 100000000"},
      {"model.retrieval.query_tokens=100000000", "query_tokens must be in [1, 16777216], found 100000000"},
      {"retrieve.select.k=5000", "k is 5000, expected [0, 4096]"},
      {"retrieve.select.candidates=2000000", "candidates is 2000000, expected [0, 1048576]"},
      {"reinject.max_chunks=5000", "parameter 'max_chunks': expected an integer in [0, 4096] (0 = all), found 5000"},
      {"index.flush_every=2000000000000",
       "parameter 'flush_every': expected an integer in [0, 1099511627776] (0 = only at the end), found 2000000000000"},
      {"src.max_in_flight=100000", "'max_in_flight': expected an integer in [1, 65536] (0 = default), found 100000"},
      {"embed.concurrency=5000", "'concurrency': expected 1 (serial), N in (1, 1024] or 0 (unlimited), found 5000"},
  };
  for (const auto& [set, expected] : cases) {
    const std::string m = message(set);
    INFO(set << ": " << m);
    CHECK_THAT(m, Catch::EndsWith(expected));
  }
}

TEST_CASE("kv re-injection through the graph: retrieved chunks enter the memory region with their stored K/V", "[pipeline]") {
  int64_t injected[2] = {0, 0};
  for (const bool kv : {false, true}) {
    const fs::path mem = temp_dir(kv ? "kv_on" : "kv_off");
    RunSpec spec = ingest_spec({"model.retrieval.inject=" + std::string(kv ? "kv" : "text")}, mem.string());
    {
      Pipeline pipeline(spec.pipeline, builtin());
      pipeline.run_for(300s);
      injected[kv] = model_step_stats(pipeline.node("model")).injected_chunks;
      CHECK(pipeline.summary().retrievals >= 1);
    }
    StoreOptions so;
    so.embedder_name = HashEmbedder(64).name();
    so.dim = 64;
    auto store = ChunkStore::open(mem.string(), so);
    REQUIRE(store->size() > 0);
    const Chunk c = store->get(0, true);
    // kv mode stores every chunk's K/V ([n_layer, 2, n_kv_head, n_tok, d_head]); text mode stores none.
    CHECK(c.kv.defined() == kv);
    if (kv) CHECK(c.kv.size(3) == static_cast<int64_t>(c.tokens.size()));
  }
  // The same retrieval either way: the same number of chunks entered the region.
  CHECK(injected[1] > 0);
  CHECK(injected[1] == injected[0]);
}

TEST_CASE("the cluster policy runs in a pipeline, and refuses a memory region that retrieval needs", "[pipeline]") {
  const fs::path mem = temp_dir("cluster");
  RunSpec spec = stream_spec({"model.memory=false", "model.policy=cluster"}, mem.string());
  Pipeline pipeline(spec.pipeline, builtin());
  pipeline.run_for(120s);
  const ModelStepStats stats = model_step_stats(pipeline.node("model"));
  CHECK(stats.generated.size() == 48);
  CHECK(stats.tokens_evicted > 0);
  RunSpec bad = stream_spec({"model.memory=true", "model.policy=cluster"}, mem.string());
  REQUIRE_THROWS_WITH(Pipeline(bad.pipeline, builtin()), Catch::Contains("not 'cluster' while retrieved chunks need the memory region"));
}

TEST_CASE("the lm embedder fills the memory from a pipeline, with the model resource's own decoder", "[pipeline]") {
  const fs::path mem = temp_dir("lm");
  const std::vector<std::string> lm = {"resources.memories.mem.embedder={kind: lm, model: lm}"};
  int64_t indexed = 0;
  {
    Pipeline pipeline(ingest_spec(lm, mem.string()).pipeline, builtin());
    // One decoder: the model resource's, used by model-step and by the lm embedder (no second copy).
    const auto model = pipeline.resources().model("lm", {}, "model");
    const auto memory = pipeline.resources().memory("mem", {}, "memory");
    const auto* embedder = dynamic_cast<const LmEmbedder*>(memory->embedder.get());
    REQUIRE(embedder != nullptr);
    CHECK(&embedder->decoder() == model->decoder.get());
    CHECK(model_step_decoder(pipeline.node("model")).get() == model->decoder.get());
    pipeline.run_for(300s);
    indexed = pipeline.summary().chunks_indexed;
  }
  REQUIRE(indexed > 0);
  // The store remembers the lm embedder (named after the model folder and its width) and refuses to reopen
  // under another one.
  const std::string name = "lm:" + fs::path(tiny_model()).filename().string() + "-" +
                           std::to_string(load_model_config(tiny_model()).d_model);
  StoreOptions so;
  so.embedder_name = name;
  so.dim = load_model_config(tiny_model()).d_model;
  CHECK(ChunkStore::open(mem.string(), so)->size() == indexed);
  so.embedder_name = HashEmbedder(64).name();
  so.dim = 64;
  REQUIRE_THROWS_WITH(ChunkStore::open(mem.string(), so), Catch::Contains("embedder is '" + name + "'"));

  // lm without a model resource names the parameter; a model resource that is not declared is listed.
  REQUIRE_THROWS_WITH(Pipeline(ingest_spec({"resources.memories.mem.embedder={kind: lm}"}, (mem / "x").string()).pipeline,
                               builtin()),
                      Catch::Contains("resource 'memories.mem' embedder parameter 'model'") &&
                          Catch::Contains("a model resource for embedder kind lm"));
  REQUIRE_THROWS_WITH(
      Pipeline(ingest_spec({"resources.memories.mem.embedder={kind: lm, model: other}"}, (mem / "y").string()).pipeline,
               builtin()),
      Catch::Contains("parameter 'model'") && Catch::Contains("declared under resources.models: lm") &&
          Catch::Contains("found 'other'"));
}
