// The retrieve node (nodes/retrieve.h): the one place that retrieves. A sync question is answered only once
// index-insert has stored everything evicted before it, so the graph retrieves exactly what the direct memory
// path (models/memory/memory_path.h) retrieves from the same chunks; without the indexed edge the run names it;
// `select:` is validated by SelectOptions itself with the file:line of the value.
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <fstream>
#include <filesystem>
#include <string>
#include <vector>

#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/memory/memory_path.h"
#include "nodes/model_step.h"
#include "nodes/resources.h"
#include "tests/pipeline_fixture.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) { return test::temp_dir("retrieve_" + name); }

RunSpec ingest(const fs::path& mem, std::vector<std::string> extra) {
  return test::tiny_spec("ingest-tiny", test::tiny_model(), mem.string(), extra);
}

}  // namespace

TEST_CASE("a sync question retrieves from everything evicted before it, as the direct memory path does", "[retrieve]") {
  const fs::path mem = temp_dir("sync");
  // No answer tokens and a question of a few tokens: nothing is evicted after the retrieval, so the store at
  // the end holds exactly what was there when the question was asked.
  RunSpec spec = ingest(mem, {"model.max_new_tokens=0", "model.show_retrieval=false", "retrieve.select={k: 3}",
                              "reinject.max_chunks=0", "src.prompt=\"\\nkindly\"", "src.query=\"the little dog\""});
  std::vector<int64_t> injected;
  int64_t indexed = 0;
  {
    Pipeline pipeline(spec.pipeline, test::builtin_registry());
    pipeline.run_for(300s);
    injected = model_step_stats(pipeline.node("model")).injected_ids;
    indexed = pipeline.summary().chunks_indexed;
    CHECK(pipeline.summary().retrievals == 1);
  }
  REQUIRE(indexed > 3);
  StoreOptions so;
  HashEmbedder embedder(64);
  so.embedder_name = embedder.name();
  so.dim = 64;
  auto store = ChunkStore::open(mem.string(), so);
  SelectOptions sel;
  sel.k = 3;
  const std::vector<Retrieved> direct = retrieve(*store, embedder, "the little dog", sel, false);
  REQUIRE(direct.size() == 3);
  // The chunks the direct path finds enter the 32-slot memory region best first, each while it still fits.
  std::vector<int64_t> expected;
  int64_t used = 0;
  for (const Retrieved& r : direct) {
    const int64_t n = static_cast<int64_t>(r.chunk.tokens.size());
    if (used + n > 32) continue;
    expected.push_back(r.chunk.id);
    used += n;
  }
  REQUIRE(expected.size() >= 2);
  CHECK(injected == expected);
}

TEST_CASE("a sync question finds a sentence evicted just before it was asked", "[retrieve]") {
  const fs::path dir = temp_dir("recent");
  // The sentence leaves the 60-token window only in the last blocks before the question: the question's
  // retrieval must wait for those chunks to be indexed (and for the chunker's tail to be flushed).
  const fs::path doc = dir / "doc.txt";
  {
    std::ofstream f(doc);
    f << builtin_tokenizer_text() << "\n\nZebras quietly juggle seventeen purple violins.\n\n"
      << builtin_tokenizer_text().substr(0, 200);
  }
  RunSpec spec = ingest(dir / "mem", {"src.path=" + doc.string(), "model.max_new_tokens=0", "retrieve.select={k: 2}",
                                      "src.query=\"Zebras quietly juggle seventeen purple violins.\""});
  Pipeline pipeline(spec.pipeline, test::builtin_registry());
  pipeline.run_for(300s);
  const ModelStepStats stats = model_step_stats(pipeline.node("model"));
  // The sentence spans two 16-token chunks: both are the question's top 2.
  REQUIRE(stats.injected_ids.size() == 2);
  const auto memory = pipeline.resources().memory("mem", {}, "memory");
  std::string injected;
  for (int64_t id : stats.injected_ids) injected += memory->store->get(id, false).text;
  CHECK_THAT(injected, Catch::Contains("juggle") && Catch::Contains("purple"));
  // ... and they were in the memory region before the question's tokens were fed.
  const int64_t question = static_cast<int64_t>(
      load_tokenizer(test::tiny_model())->encode("\nThe best thing to do in San Francisco is").size());
  CHECK(stats.injected_at[0] + question <= stats.prefill_tokens);
}

TEST_CASE("without the index.indexed -> retrieve.indexed edge a sync question names what to connect", "[retrieve]") {
  const fs::path mem = temp_dir("no_edge");
  RunSpec spec = ingest(mem, {"model.max_new_tokens=0"});
  auto& edges = spec.pipeline.edges;
  const size_t before = edges.size();
  edges.erase(std::remove_if(edges.begin(), edges.end(),
                             [](const EdgeSpec& e) { return e.from_node == "index" && e.to_node == "retrieve"; }),
              edges.end());
  REQUIRE(edges.size() == before - 1);
  Pipeline pipeline(spec.pipeline, test::builtin_registry());
  REQUIRE_THROWS_WITH(pipeline.run_for(300s), Catch::Contains("sync retrieval") &&
                                                  Catch::Contains("index.indexed -> retrieve.indexed"));
}

TEST_CASE("select options are checked by SelectOptions with the file:line of the value", "[retrieve]") {
  const fs::path mem = temp_dir("bad");
  REQUIRE_THROWS_WITH(Pipeline(ingest(mem, {"retrieve.select.mmr_lambda=1.5"}).pipeline, test::builtin_registry()),
                      Catch::Contains("--set retrieve.select.mmr_lambda=1.5") &&
                          Catch::Contains("parameter 'select.mmr_lambda'") && Catch::Contains("expected [0, 1]"));
  REQUIRE_THROWS_WITH(Pipeline(ingest(mem, {"retrieve.select.mode=best"}).pipeline, test::builtin_registry()),
                      Catch::Contains("parameter 'select.mode'") && Catch::Contains("one of topk, mmr, farthest"));
  REQUIRE_THROWS_WITH(Pipeline(ingest(mem, {"retrieve.select={k: 2, top: 1}"}).pipeline, test::builtin_registry()),
                      Catch::Contains("unknown parameter 'select.top'"));
}
