// Resources declared once (nodes/resources.h) and the memory directory guard (models/memory/memory_dir.h):
// one --set switches the model of a whole pipeline (its tokenizer included); nodes naming one model share one
// decoder; reset never touches what is not a sinkflow memory directory; a second run on a locked directory is
// refused and the first run's records are all kept.
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "graph/graph.h"
#include "graph/yaml_spec.h"
#include "models/lab/make_model.h"
#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/memory/memory_dir.h"
#include "models/nn/decoder.h"
#include "models/stream/stream.h"
#include "models/text/tokenizer.h"
#include "nodes/model_step.h"
#include "nodes/nodes.h"
#include "nodes/resources.h"
#include "tests/pipeline_fixture.h"
#include "tests/test_util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const std::string kSource = SINKFLOW_SOURCE_DIR;

fs::path temp_dir(const std::string& name) { return test::temp_dir("resources_" + name); }

// Two tiny Llamas whose tokenizers differ (trained on different text) as well as their weights.
const std::string& model_a() { return test::tiny_model(); }
const std::string& model_b() {
  static const std::string dir = [] {
    MakeModelOptions o;
    o.config = shape_preset("tiny-llama");
    o.seed = 11;
    o.tokenizer_text = "zebra quartz jigsaw vexing fjord nymph waltz zebra quartz jigsaw vexing fjord nymph waltz "
                       "Once upon a time there was a little zebra in a fjord.";
    const std::string d = temp_dir("b").string();
    make_model(d, o);
    return d;
  }();
  return dir;
}

Registry builtin() { return test::builtin_registry(); }

RunSpec stream_spec(const std::string& model, const std::string& memory_dir, std::vector<std::string> extra = {}) {
  extra.insert(extra.begin(), "model.max_new_tokens=8");
  return test::tiny_spec("stream-tiny", model, memory_dir, extra);
}

// Greedy tokens after BOS + prompt through the stream-tiny cache, without the graph.
std::vector<int64_t> bare_loop(const std::string& model, const std::string& prompt, int64_t max_new) {
  c10::InferenceMode guard;
  return test::bare_greedy_loop(model, prompt, test::stream_tiny_cache(), 16, max_new);
}

}  // namespace

TEST_CASE("one --set of resources.models.lm.path switches the model and its tokenizer for every node", "[resources]") {
  const std::string prompt = "Once upon a time there was a little";
  REQUIRE(load_tokenizer(model_a())->encode(prompt) != load_tokenizer(model_b())->encode(prompt));
  for (const std::string* model : {&model_a(), &model_b()}) {
    Pipeline pipeline(stream_spec(*model, (temp_dir("mem_switch") / fs::path(*model).filename()).string()).pipeline,
                      builtin());
    const auto lm = pipeline.resources().model("lm", {}, "model");
    CHECK(lm->config.path == *model);
    pipeline.run_for(120s);
    const ModelStepStats stats = model_step_stats(pipeline.node("model"));
    // The source tokenized with this model's tokenizer (BOS + the prompt), and the answer is this model's.
    CHECK(stats.prefill_tokens == 1 + static_cast<int64_t>(load_tokenizer(*model)->encode(prompt).size()));
    CHECK(stats.generated == bare_loop(*model, prompt, 8));
  }
}

TEST_CASE("nodes naming one model resource share one decoder and one tokenizer", "[resources]") {
  Pipeline pipeline(stream_spec(model_a(), temp_dir("mem_share").string()).pipeline, builtin());
  const auto lm = pipeline.resources().model("lm", {}, "model");
  CHECK(model_step_decoder(pipeline.node("model")).get() == lm->decoder.get());
  // The resource's tokenizer is the one src, model and eviction hold: nobody else loaded one.
  CHECK(lm->tokenizer.use_count() >= 4);
  CHECK(pipeline.resources().model_names() == std::vector<std::string>{"lm"});
  CHECK(pipeline.resources().memory_names() == std::vector<std::string>{"mem"});
}

TEST_CASE("a node naming an undeclared resource, or a bad resource parameter, is named with its file and line", "[resources]") {
  const fs::path mem = temp_dir("mem_bad");
  REQUIRE_THROWS_WITH(Pipeline(stream_spec(model_a(), mem.string(), {"eviction.model=llm"}).pipeline, builtin()),
                      Catch::Contains("--set eviction.model=llm") && Catch::Contains("node 'eviction' parameter 'model'") &&
                          Catch::Contains("a model resource (declared under resources.models: lm), found 'llm'"));
  REQUIRE_THROWS_WITH(Pipeline(stream_spec(model_a(), mem.string(), {"embed.memory=m2"}).pipeline, builtin()),
                      Catch::Contains("a memory resource (declared under resources.memories: mem), found 'm2'"));
  REQUIRE_THROWS_WITH(load_run_spec(kSource + "/configs/stream-tiny.yaml", {"resources.models.llm.path=x"}),
                      Catch::Contains("declares no resource 'models.llm'; its models: lm"));
  REQUIRE_THROWS_WITH(
      Pipeline(stream_spec(model_a(), mem.string(), {"resources.models.lm.dtype=float8"}).pipeline, builtin()),
      Catch::Contains("--set resources.models.lm.dtype=float8") && Catch::Contains("resource 'models.lm' parameter 'dtype'"));
  REQUIRE_THROWS_WITH(
      Pipeline(stream_spec((mem / "no-such-model").string(), mem.string()).pipeline, builtin()),
      Catch::Contains("resource 'models.lm'") && Catch::Contains("no-such-model"));
}

TEST_CASE("reset refuses a foreign directory and a regular file and leaves them intact", "[resources][memory_dir]") {
  const fs::path root = temp_dir("foreign");
  const fs::path foreign = root / "photos";
  fs::create_directories(foreign);
  std::ofstream(foreign / "holiday.jpg") << "not a memory";
  std::ofstream(foreign / "meta.json") << "{}";
  const fs::path file = root / "notes.txt";
  std::ofstream(file) << "keep me";
  for (const bool reset : {true, false}) {
    const std::string r = reset ? "true" : "false";
    REQUIRE_THROWS_WITH(
        Pipeline(stream_spec(model_a(), foreign.string(), {"resources.memories.mem.reset=" + r}).pipeline, builtin()),
        Catch::Contains("resource 'memories.mem'") && Catch::Contains("memory directory '" + foreign.string() +
                                                                      "' holds 'holiday.jpg'") &&
            Catch::Contains("nothing was changed"));
    REQUIRE_THROWS_WITH(
        Pipeline(stream_spec(model_a(), file.string(), {"resources.memories.mem.reset=" + r}).pipeline, builtin()),
        Catch::Contains("memory directory '" + file.string() + "' is a regular file"));
  }
  CHECK(fs::exists(foreign / "holiday.jpg"));
  CHECK(fs::exists(foreign / "meta.json"));
  std::ifstream f(file);
  std::string text;
  std::getline(f, text);
  CHECK(text == "keep me");
  // The guard alone: only the store's own files are deleted, never the lock.
  const fs::path store = root / "store";
  {
    MemoryDirLock lock(store.string());
    std::ofstream(store / "meta.json") << "{}";
    std::ofstream(store / "chunks.log") << "x";
    std::ofstream(store / "index.bin.tmp") << "x";
    CHECK(lock.reset() == std::vector<std::string>{"meta.json", "chunks.log", "index.bin.tmp"});
    CHECK(fs::exists(store / "lock"));
  }
}

TEST_CASE("a second run on a memory directory is refused while the first holds it, and the first keeps every record", "[resources][memory_dir]") {
  const fs::path mem = temp_dir("locked");
  RunSpec spec = stream_spec(model_a(), mem.string(), {"model.max_new_tokens=48"});
  int64_t indexed = 0;
  {
    Pipeline first(spec.pipeline, builtin());
    // The second run, asking for a reset, is refused before it deletes anything.
    REQUIRE_THROWS_WITH(Pipeline(spec.pipeline, builtin()),
                        Catch::Contains("memory directory '" + mem.string() + "' is in use by another run") &&
                            Catch::Contains((mem / "lock").string()));
    first.run_for(120s);
    indexed = first.summary().chunks_indexed;
  }
  REQUIRE(indexed > 0);
  StoreOptions so;
  so.embedder_name = HashEmbedder(64).name();
  so.dim = 64;
  CHECK(ChunkStore::open(mem.string(), so)->size() == indexed);
}

TEST_CASE("memory resource merge and search options reach the store and out-of-range values are refused naming the field", "[resources]") {
  const fs::path mem = temp_dir("mem_merge");
  {
    Pipeline p(stream_spec(model_a(), mem.string(),
                           {"resources.memories.mem.merge_factor=8", "resources.memories.mem.merge_ram_mb=32",
                            "resources.memories.mem.merge_nice=0", "resources.memories.mem.search_threads=3"})
                   .pipeline,
               builtin());
    const StoreOptions& so = p.resources().memory("mem", ParamOrigin{}, "memory")->store->options();
    CHECK(so.merge_factor == 8);
    CHECK(so.merge_ram_mb == 32);
    CHECK(so.merge_nice == 0);
    CHECK(so.search_threads == 3);
  }
  REQUIRE_THROWS_WITH(
      Pipeline(stream_spec(model_a(), mem.string(), {"resources.memories.mem.search_threads=0"}).pipeline, builtin()),
      Catch::Contains("search_threads") && Catch::Contains("threads in [1, 64]"));
  REQUIRE_THROWS_WITH(
      Pipeline(stream_spec(model_a(), mem.string(), {"resources.memories.mem.merge_factor=1"}).pipeline, builtin()),
      Catch::Contains("--set resources.memories.mem.merge_factor=1") && Catch::Contains("merge_factor") &&
          Catch::Contains("0 (never merge) or an integer in [2, 64]"));
  REQUIRE_THROWS_WITH(
      Pipeline(stream_spec(model_a(), mem.string(), {"resources.memories.mem.merge_nice=20"}).pipeline, builtin()),
      Catch::Contains("a nice value in [0, 19]"));
}

TEST_CASE("memory resource index_first_ram_mb reaches the store, a negative one is refused naming the field", "[resources]") {
  const fs::path mem = temp_dir("mem_first");
  {
    Pipeline p(stream_spec(model_a(), mem.string(), {"resources.memories.mem.index_first_ram_mb=16"}).pipeline,
               builtin());
    const StoreOptions& so = p.resources().memory("mem", ParamOrigin{}, "memory")->store->options();
    CHECK(so.index_first_ram_mb == 16);
    CHECK(so.effective_first_segment_chunks() < so.effective_segment_chunks());
  }
  {
    Pipeline p(stream_spec(model_a(), mem.string(), {}).pipeline, builtin());
    CHECK(p.resources().memory("mem", ParamOrigin{}, "memory")->store->options().index_first_ram_mb == 8);
  }
  REQUIRE_THROWS_WITH(
      Pipeline(stream_spec(model_a(), mem.string(), {"resources.memories.mem.index_first_ram_mb=-1"}).pipeline,
               builtin()),
      Catch::Contains("--set resources.memories.mem.index_first_ram_mb=-1") &&
          Catch::Contains("MiB in [0, 2^30] (0 = index_ram_mb)"));
}
