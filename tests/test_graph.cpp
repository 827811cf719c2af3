// graph/ machinery with small test node kinds (defined here): YAML -> spec, validation messages, builder,
// runner (errors, stop, deadline, backpressure), profiling, run summary, progress.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "graph/graph.h"
#include "graph/progress.h"
#include "graph/validate.h"
#include "graph/yaml_spec.h"
#include "nodes/nodes.h"
#include "nodes/stage.h"

using namespace sinkflow;
using namespace std::chrono_literals;

namespace {

const std::string kData = std::string(SINKFLOW_SOURCE_DIR) + "/tests/data/graph";

std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("sinkflow_test_graph_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// What the test nodes saw.
struct Probe {
  std::mutex mutex;
  std::map<std::string, std::vector<int64_t>> received;  // sink name -> values, in arrival order
  std::map<std::string, std::vector<std::string>> texts; // string sinks
  std::vector<std::string> finished;                     // finish() calls, in order
  std::atomic<int64_t> produced{0};                      // by all sources
  std::atomic<int64_t> consumed{0};                      // by all collect sinks
  std::atomic<int64_t> max_outstanding{0};               // max of produced - consumed, seen by sources

  void receive(const std::string& node, int64_t v) {
    std::lock_guard<std::mutex> lock(mutex);
    received[node].push_back(v);
  }
  void finish(const std::string& node) {
    std::lock_guard<std::mutex> lock(mutex);
    finished.push_back(node);
  }
  std::vector<int64_t> sorted(const std::string& node) {
    std::lock_guard<std::mutex> lock(mutex);
    auto v = received[node];
    std::sort(v.begin(), v.end());
    return v;
  }
};

void sleep_us(int64_t us) {
  if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

// ---------------------------------------------------------------------------------------- count-source
// out: int64
struct CountSourceConfig {
  int64_t count = 10;  // values to emit; -1 = endless
  int64_t start = 0;   // first value
  int64_t step = 1;    // increment
  int64_t batch = 1;   // values per production step, >= 1
  ParamOrigin origin;  // where each field was set, for validate()

  static CountSourceConfig from_params(const ParamMap& params, const std::string& where) {
    CountSourceConfig c;
    ParamReader r(params, where, c.origin);
    r.read("count", c.count);
    r.read("start", c.start);
    r.read("step", c.step);
    r.read("batch", c.batch);
    r.done();
    return c;
  }
  void validate() const {
    origin.require(count >= -1, "count", "an integer >= -1 (-1 = endless)", count);
    origin.require(batch >= 1, "batch", "an integer >= 1", batch);
  }
};

class CountSource : public NodeInstance {
 public:
  CountSource(const NodeContext& context, CountSourceConfig config, std::shared_ptr<Probe> probe)
      : NodeInstance(context), config_(config), probe_(std::move(probe)),
        source_(*this, [this](Emitter<int64_t>& out) { return produce(out); }) {}
  void finish() override { probe_->finish(name()); }

 private:
  bool produce(Emitter<int64_t>& out) {
    for (int64_t b = 0; b < config_.batch && (config_.count < 0 || emitted_ < config_.count); ++b) {
      const int64_t outstanding = probe_->produced.fetch_add(1) + 1 - probe_->consumed.load();
      int64_t m = probe_->max_outstanding.load();
      while (outstanding > m && !probe_->max_outstanding.compare_exchange_weak(m, outstanding)) {
      }
      out.put<0>(config_.start + config_.step * emitted_++);
    }
    return config_.count < 0 || emitted_ < config_.count;
  }

  CountSourceConfig config_;
  std::shared_ptr<Probe> probe_;
  int64_t emitted_ = 0;
  Source<Out<int64_t>> source_;
};

// ----------------------------------------------------------------------------------------------- scale
// in: int64  out: int64
struct ScaleConfig {
  int64_t factor = 2;    // multiplier
  int64_t offset = 0;    // added after the multiplication
  int64_t delay_us = 0;  // sleep per message, µs, >= 0
  ParamOrigin origin;

  static ScaleConfig from_params(const ParamMap& params, const std::string& where) {
    ScaleConfig c;
    ParamReader r(params, where, c.origin);
    r.read("factor", c.factor);
    r.read("offset", c.offset);
    r.read("delay_us", c.delay_us);
    r.done();
    return c;
  }
  void validate() const { origin.require(delay_us >= 0, "delay_us", "an integer >= 0", delay_us); }
};

class Scale : public NodeInstance {
 public:
  Scale(const NodeContext& context, ScaleConfig config, std::shared_ptr<Probe> probe)
      : NodeInstance(context), config_(config), probe_(std::move(probe)),
        stage_(*this, [this](const int64_t& v, Emitter<int64_t>& out) {
          sleep_us(config_.delay_us);
          out.put<0>(v * config_.factor + config_.offset);
        }) {}
  void finish() override { probe_->finish(name()); }

 private:
  ScaleConfig config_;
  std::shared_ptr<Probe> probe_;
  Stage<In<int64_t>, Out<int64_t>> stage_;
};

// --------------------------------------------------------------------------------------------- collect
// in: int64
struct CollectConfig {
  int64_t delay_us = 0;     // sleep per message, µs, >= 0
  int64_t stop_after = 0;   // request a stop of the run after this many messages; 0 = never
  bool count_tokens = false; // add 1 to RunCounters::tokens_in per message
  ParamOrigin origin;

  static CollectConfig from_params(const ParamMap& params, const std::string& where) {
    CollectConfig c;
    ParamReader r(params, where, c.origin);
    r.read("delay_us", c.delay_us);
    r.read("stop_after", c.stop_after);
    r.read("count_tokens", c.count_tokens);
    r.done();
    return c;
  }
  void validate() const {
    origin.require(delay_us >= 0, "delay_us", "an integer >= 0", delay_us);
    origin.require(stop_after >= 0, "stop_after", "an integer >= 0", stop_after);
  }
};

class Collect : public NodeInstance {
 public:
  Collect(const NodeContext& context, CollectConfig config, std::shared_ptr<Probe> probe)
      : NodeInstance(context), config_(config), probe_(std::move(probe)),
        stage_(*this, [this](const int64_t& v, Emitter<>&) { take(v); }) {}
  void finish() override { probe_->finish(name()); }

 private:
  void take(int64_t v) {
    probe_->consumed.fetch_add(1);
    sleep_us(config_.delay_us);
    probe_->receive(name(), v);
    if (config_.count_tokens) context().run.counters.tokens_in.fetch_add(1);
    if (config_.stop_after > 0 && ++seen_ == config_.stop_after) context().run.request_stop();
  }

  CollectConfig config_;
  std::shared_ptr<Probe> probe_;
  int64_t seen_ = 0;
  Stage<In<int64_t>, Out<>> stage_;
};

// ------------------------------------------------------------------------------------------------ fail
// in: int64  out: int64 (passes values on until it throws)
struct FailConfig {
  int64_t at = 0;               // throw std::runtime_error("boom at <at>") on receiving this value (required)
  bool in_constructor = false;  // throw while being built instead
  bool in_finish = false;       // throw from finish() instead
  ParamOrigin origin;

  static FailConfig from_params(const ParamMap& params, const std::string& where) {
    FailConfig c;
    ParamReader r(params, where, c.origin);
    r.require("at", c.at);
    r.read("in_constructor", c.in_constructor);
    r.read("in_finish", c.in_finish);
    r.done();
    return c;
  }
  void validate() const {}
};

class Fail : public NodeInstance {
 public:
  Fail(const NodeContext& context, FailConfig config, std::shared_ptr<Probe> probe)
      : NodeInstance(context), config_(config), probe_(std::move(probe)),
        stage_(*this, [this](const int64_t& v, Emitter<int64_t>& out) {
          if (!config_.in_finish && v == config_.at) throw std::runtime_error("boom at " + std::to_string(v));
          out.put<0>(v);
        }) {
    if (config_.in_constructor) throw std::runtime_error("cannot open the thing");
  }
  void finish() override {
    probe_->finish(name());
    if (config_.in_finish) throw std::runtime_error("finish failed");
  }

 private:
  FailConfig config_;
  std::shared_ptr<Probe> probe_;
  Stage<In<int64_t>, Out<int64_t>> stage_;
};

// ------------------------------------------------------------------------------------- to-string, texts
// in: int64  out: string
struct NoConfig {
  ParamOrigin origin;
  static NoConfig from_params(const ParamMap& params, const std::string& where) {
    NoConfig c;
    ParamReader(params, where, c.origin).done();
    return c;
  }
  void validate() const {}
};

class ToString : public NodeInstance {
 public:
  ToString(const NodeContext& context, NoConfig)
      : NodeInstance(context),
        stage_(*this, [](const int64_t& v, Emitter<std::string>& out) { out.put<0>("#" + std::to_string(v)); }) {}

 private:
  Stage<In<int64_t>, Out<std::string>> stage_;
};

// in: string
class Texts : public NodeInstance {
 public:
  Texts(const NodeContext& context, NoConfig, std::shared_ptr<Probe> probe)
      : NodeInstance(context), probe_(std::move(probe)),
        stage_(*this, [this](const std::string& s, Emitter<>&) {
          std::lock_guard<std::mutex> lock(probe_->mutex);
          probe_->texts[name()].push_back(s);
        }) {}

 private:
  std::shared_ptr<Probe> probe_;
  Stage<In<std::string>, Out<>> stage_;
};

// ----------------------------------------------------------------------------------------------- split
// in: int64  out: even: int64, odd: int64
class Split : public NodeInstance {
 public:
  Split(const NodeContext& context, NoConfig)
      : NodeInstance(context), stage_(*this, [](const int64_t& v, Emitter<int64_t, int64_t>& out) {
          if (v % 2 == 0) out.put<0>(v);
          else out.put<1>(v);
        }) {}

 private:
  Stage<In<int64_t>, Out<int64_t, int64_t>> stage_;
};

// ---------------------------------------------------------------------------------------------- looper
// in: in: int64, feedback: int64 (step boundary)  out: out: int64, loop: int64
// A value from `in` goes out and around the loop; a value back on `feedback` goes out and around again
// while it is below `limit`.
struct LooperConfig {
  int64_t limit = 200;  // values >= limit leave the loop
  ParamOrigin origin;
  static LooperConfig from_params(const ParamMap& params, const std::string& where) {
    LooperConfig c;
    ParamReader r(params, where, c.origin);
    r.read("limit", c.limit);
    r.done();
    return c;
  }
  void validate() const {}
};

class Looper : public NodeInstance {
 public:
  Looper(const NodeContext& context, LooperConfig config)
      : NodeInstance(context), config_(config),
        stage_(
            *this,
            [](const int64_t& v, Emitter<int64_t, int64_t>& out) {
              out.put<0>(v);
              out.put<1>(v);
            },
            [this](const int64_t& v, Emitter<int64_t, int64_t>& out) {
              out.put<0>(v);
              if (v < config_.limit) out.put<1>(v);
            }) {}

 private:
  LooperConfig config_;
  Stage<In<int64_t, int64_t>, Out<int64_t, int64_t>> stage_;
};

Registry test_registry(std::shared_ptr<Probe> probe) {
  Registry r;
  r.add(make_node_kind<CountSourceConfig>(
      "count-source", "emits start, start+step, ... (count values, -1 = endless)", {}, {out_port<int64_t>("out")},
      [probe](const NodeContext& c, CountSourceConfig cfg) { return std::make_unique<CountSource>(c, cfg, probe); }));
  r.add(make_node_kind<ScaleConfig>(
      "scale", "v * factor + offset", {in_port<int64_t>("in")}, {out_port<int64_t>("out")},
      [probe](const NodeContext& c, ScaleConfig cfg) { return std::make_unique<Scale>(c, cfg, probe); }));
  NodeKind collect = make_node_kind<CollectConfig>(
      "collect", "records what it receives", {in_port<int64_t>("in")}, {},
      [probe](const NodeContext& c, CollectConfig cfg) { return std::make_unique<Collect>(c, cfg, probe); });
  collect.serial_only = true;
  r.add(std::move(collect));
  r.add(make_node_kind<FailConfig>(
      "fail", "throws on a given value", {in_port<int64_t>("in")}, {out_port<int64_t>("out")},
      [probe](const NodeContext& c, FailConfig cfg) { return std::make_unique<Fail>(c, cfg, probe); }));
  r.add(make_node_kind<ToString, NoConfig>("to-string", "formats integers", {in_port<int64_t>("in")},
                                           {out_port<std::string>("out")}));
  r.add(make_node_kind<NoConfig>(
      "texts", "records strings", {in_port<std::string>("in")}, {},
      [probe](const NodeContext& c, NoConfig cfg) { return std::make_unique<Texts>(c, cfg, probe); }));
  r.add(make_node_kind<Split, NoConfig>("split", "evens and odds", {in_port<int64_t>("in")},
                                        {out_port<int64_t>("even"), out_port<int64_t>("odd")}));
  r.add(make_node_kind<Looper, LooperConfig>(
      "looper", "sends values around a loop",
      {in_port<int64_t>("in"), in_port<int64_t>("feedback", PortRole::step_boundary)},
      {out_port<int64_t>("out"), out_port<int64_t>("loop")}));
  return r;
}

// The count pipeline of tests/data/graph/pipelines/count.yaml, built in code.
PipelineSpec count_spec_in_code() {
  PipelineSpec spec;
  spec.name = "count";
  spec.nodes.push_back({"src", "count-source", ParamMap{{"count", 20}, {"start", 1}}, 1, 8});
  spec.nodes.push_back({"triple", "scale", ParamMap{{"factor", 3}}, 2, 0});
  spec.nodes.push_back({"sink", "collect", ParamMap{}, 1, 0});
  spec.edges.push_back({"src", "out", "triple", "in"});
  spec.edges.push_back({"triple", "out", "sink", ""});
  return spec;
}

std::vector<int64_t> multiples(int64_t factor, int64_t from, int64_t to) {
  std::vector<int64_t> out;
  for (int64_t i = from; i <= to; ++i) out.push_back(factor * i);
  return out;
}

// Validates a pipeline written inline as "pipelines/bad.yaml".
void validate_text(const std::string& yaml) {
  auto probe = std::make_shared<Probe>();
  validate_pipeline(parse_pipeline(yaml, "pipelines/bad.yaml"), test_registry(probe));
}

}  // namespace

// ============================================================================================== specs

TEST_CASE("a pipeline from YAML equals the same pipeline built in code, and runs the same", "[graph]") {
  const PipelineSpec from_yaml = load_pipeline(kData + "/pipelines/count.yaml");
  const PipelineSpec in_code = count_spec_in_code();
  REQUIRE(from_yaml == in_code);
  CHECK(from_yaml.nodes[0].line == 5);
  CHECK(from_yaml.nodes[1].line == 9);
  CHECK(from_yaml.edges[1].line == 18);
  CHECK(from_yaml.nodes[1].params.find("factor")->where() == kData + "/pipelines/count.yaml:13");

  std::vector<std::vector<int64_t>> results;
  for (const PipelineSpec* spec : {&from_yaml, &in_code}) {
    auto probe = std::make_shared<Probe>();
    Pipeline pipeline(*spec, test_registry(probe));
    pipeline.run_for(20s);
    results.push_back(probe->sorted("sink"));
    REQUIRE(probe->received["sink"].size() == 20);
    CHECK(pipeline.topological_order() == std::vector<std::string>{"src", "triple", "sink"});
  }
  CHECK(results[0] == multiples(3, 1, 20));
  CHECK(results[1] == results[0]);
}

TEST_CASE("a config overrides parameters, then --set overrides the config", "[graph]") {
  RunSpec spec = load_run_spec(kData + "/configs/count_small.yaml", {"src.start=2", "triple.offset=-1"});
  REQUIRE(spec.config.pipeline == "count");
  CHECK(std::filesystem::path(spec.config.pipeline_file) ==
        std::filesystem::path(kData + "/pipelines/count.yaml").lexically_normal());
  CHECK(spec.config.run.find("json")->as_bool() == true);
  CHECK(spec.config.run.find("profile")->as_string() == "out/trace.json");
  const NodeSpec& src = *spec.pipeline.find_node("src");
  CHECK(src.params == ParamMap{{"count", 5}, {"start", 2}});
  CHECK(src.params.find("count")->where() == kData + "/configs/count_small.yaml:4");
  CHECK(src.params.find("start")->where() == "--set src.start=2");

  auto probe = std::make_shared<Probe>();
  Pipeline pipeline(spec.pipeline, test_registry(probe));
  pipeline.run_for(20s);
  CHECK(probe->sorted("sink") == std::vector<int64_t>{19, 29, 39, 49, 59});

  // A pipeline file works as well as a config.
  RunSpec direct = load_run_spec(kData + "/pipelines/count.yaml", {"src.count=3"});
  CHECK(direct.config.source_file.empty());
  CHECK(direct.pipeline.find_node("src")->params.find("count")->as_int() == 3);

  // Node settings, too: concurrency, and a source's backpressure bound.
  RunSpec settings = load_run_spec(kData + "/pipelines/count.yaml", {"triple.concurrency=3", "src.max_in_flight=7"});
  CHECK(settings.pipeline.find_node("triple")->concurrency == 3);
  CHECK(settings.pipeline.find_node("src")->max_in_flight == 7);
  CHECK(settings.pipeline.find_node("triple")->params.find("concurrency") == nullptr);
  RunSpec serial = load_run_spec(kData + "/pipelines/count.yaml", {"src.concurrency=2"});
  REQUIRE_THROWS_WITH(validate_pipeline(serial.pipeline, test_registry(probe)),
                      Catch::Contains("node 'src' (count-source) 'concurrency': expected 1 (sources run serially), found 2"));
}

TEST_CASE("YAML scalars become typed parameters", "[graph]") {
  const PipelineSpec spec = parse_pipeline(R"(
nodes:
  - name: a
    kind: k
    params:
      i: 42
      neg: -7
      d: 2.5
      e: 1e3
      b: true
      s: hello
      q: "42"
      l: [1, 2.5, x]
      m: {x: 1, y: [a, b]}
)",
                                           "pipelines/types.yaml");
  CHECK(spec.name == "types");
  const ParamMap& p = spec.nodes[0].params;
  CHECK(p.find("i")->type() == ParamValue::Type::integer);
  CHECK(p.find("i")->as_int() == 42);
  CHECK(p.find("neg")->as_int() == -7);
  CHECK(p.find("d")->as_double() == 2.5);
  CHECK(p.find("e")->type() == ParamValue::Type::number);
  CHECK(p.find("e")->as_double() == 1000.0);
  CHECK(p.find("b")->as_bool() == true);
  CHECK(p.find("s")->as_string() == "hello");
  CHECK(p.find("q")->type() == ParamValue::Type::string);
  CHECK(p.find("l")->to_string() == "[1, 2.5, x]");
  CHECK(p.find("m")->as_map().find("y")->to_string() == "[a, b]");
  CHECK(p.find("m")->where() == "pipelines/types.yaml:14");
  CHECK(p.keys() == std::vector<std::string>{"i", "neg", "d", "e", "b", "s", "q", "l", "m"});

  // A config type reads them, accepting an integer for a number and rejecting the rest by name.
  struct Config {
    double ratio = 0.5;                 // some ratio
    std::vector<std::string> names;     // some names
    std::string mode = "fast";          // fast | exact
    int64_t n = 3;                      // some count
    ParamOrigin origin;
    static Config from_params(const ParamMap& params, const std::string& where) {
      Config c;
      ParamReader r(params, where, c.origin);
      r.read("ratio", c.ratio);
      r.read("names", c.names);
      r.read_choice("mode", c.mode, {"fast", "exact"});
      r.require("n", c.n);
      r.done();
      return c;
    }
  };
  Config c = Config::from_params(ParamMap{{"ratio", 2}, {"names", std::vector<ParamValue>{"a", "b"}}, {"n", 1}}, "node 'x'");
  CHECK(c.ratio == 2.0);
  CHECK(c.names == std::vector<std::string>{"a", "b"});
  REQUIRE_THROWS_WITH(Config::from_params(ParamMap{{"mode", ParamValue("slow", "p.yaml:3")}, {"n", 1}}, "node 'x'"),
                      "p.yaml:3: node 'x' parameter 'mode': expected one of fast, exact, found string 'slow'");
  REQUIRE_THROWS_WITH(Config::from_params(ParamMap{{"names", std::vector<ParamValue>{"a", 1}}, {"n", 1}}, "node 'x'"),
                      "node 'x' parameter 'names': expected a list of strings, found list [a, 1]");
  REQUIRE_THROWS_WITH(Config::from_params(ParamMap("p.yaml:2"), "node 'x'"),
                      "p.yaml:2: node 'x' is missing required parameter 'n'");

  const std::vector<ParamInfo> info = describe_params<Config>();
  REQUIRE(info.size() == 4);
  CHECK(info[0] == ParamInfo{"ratio", "number", "0.5"});
  CHECK(info[1] == ParamInfo{"names", "list of string", "[]"});
  CHECK(info[2] == ParamInfo{"mode", "one of fast|exact", "fast"});
  CHECK(info[3] == ParamInfo{"n", "int", "(required)"});
}

// ========================================================================================= validation

TEST_CASE("validation errors name the file, the line and the field", "[graph]") {
  SECTION("unknown node kind, listing the known ones") {
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - name: src\n    kind: nope\n"),
                        "pipelines/bad.yaml:2: node 'src' has unknown kind 'nope'; known kinds: collect, count-source, "
                        "fail, looper, scale, split, texts, to-string");
  }
  SECTION("unknown parameter") {
    REQUIRE_THROWS_WITH(
        validate_text("nodes:\n  - name: src\n    kind: count-source\n    params:\n      count: 3\n      cuont: 4\n"),
        "pipelines/bad.yaml:6: node 'src' has unknown parameter 'cuont'; known: count, start, step, batch");
  }
  SECTION("missing required parameter") {
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - name: f\n    kind: fail\n"),
                        "pipelines/bad.yaml:2: node 'f' is missing required parameter 'at'");
  }
  SECTION("wrong type") {
    REQUIRE_THROWS_WITH(
        validate_text("nodes:\n  - name: src\n    kind: count-source\n    params:\n      count: ten\n"),
        "pipelines/bad.yaml:5: node 'src' parameter 'count': expected an integer, found string 'ten'");
    REQUIRE_THROWS_WITH(
        validate_text("nodes:\n  - name: src\n    kind: count-source\n    params: {count: \"5\"}\n"),
        "pipelines/bad.yaml:4: node 'src' parameter 'count': expected an integer, found string '5'");
  }
  SECTION("a value out of range (validate())") {
    REQUIRE_THROWS_WITH(
        validate_text("nodes:\n  - name: src\n    kind: count-source\n    params:\n      batch: 0\n"),
        "pipelines/bad.yaml:5: node 'src' parameter 'batch': expected an integer >= 1, found 0");
  }
  SECTION("a value from a config is located in the config") {
    auto probe = std::make_shared<Probe>();
    RunSpec spec = load_run_spec(kData + "/configs/count_bad_type.yaml");
    REQUIRE_THROWS_WITH(Pipeline(spec.pipeline, test_registry(probe)),
                        kData + "/configs/count_bad_type.yaml:4: node 'triple' parameter 'factor': expected an "
                                "integer, found string 'three'");
  }
  SECTION("a value from --set is located at the --set") {
    auto probe = std::make_shared<Probe>();
    PipelineSpec spec = load_pipeline(kData + "/pipelines/count.yaml");
    apply_set_override(spec, "src.count=-3");
    REQUIRE_THROWS_WITH(Pipeline(spec, test_registry(probe)),
                        "--set src.count=-3: node 'src' parameter 'count': expected an integer >= -1 (-1 = endless), "
                        "found -3");
  }
  SECTION("edge between ports of different types names both") {
    REQUIRE_THROWS_WITH(validate_text("nodes:\n"
                                      "  - {name: src, kind: count-source}\n"
                                      "  - {name: t, kind: texts}\n"
                                      "edges:\n"
                                      "  - src.out -> t.in\n"),
                        "pipelines/bad.yaml:5: edge 'src.out -> t.in' connects output 'src.out' of type int64 to "
                        "input 't.in' of type string; the types must be equal");
  }
  SECTION("dangling edge endpoint") {
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: src, kind: count-source}\nedges:\n  - src.out -> nowhere.in\n"),
                        "pipelines/bad.yaml:4: edge 'src.out -> nowhere.in': no node named 'nowhere'; nodes: src");
  }
  SECTION("unknown port, and a port left out where there are several") {
    const std::string nodes = "nodes:\n  - {name: src, kind: count-source}\n  - {name: sp, kind: split}\n"
                              "  - {name: sink, kind: collect}\n";
    REQUIRE_THROWS_WITH(validate_text(nodes + "edges:\n  - src.bogus -> sp.in\n"),
                        "pipelines/bad.yaml:6: edge 'src.bogus -> sp.in': node 'src' (count-source) has no output "
                        "port 'bogus'; its output ports: out");
    REQUIRE_THROWS_WITH(validate_text(nodes + "edges:\n  - src -> sp\n  - sp -> sink\n"),
                        "pipelines/bad.yaml:7: edge 'sp -> sink': node 'sp' (split) has 2 output ports (even, odd); "
                        "name one as sp.PORT");
  }
  SECTION("duplicate node name") {
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: src, kind: count-source}\n  - {name: x, kind: collect}\n"
                                      "  - {name: src, kind: collect}\n"),
                        "pipelines/bad.yaml:4: duplicate node name 'src' (first defined at pipelines/bad.yaml:2)");
  }
  SECTION("duplicate edge") {
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: src, kind: count-source}\n  - {name: s, kind: collect}\n"
                                      "edges:\n  - src -> s\n  - {from: src.out, to: s.in}\n"),
                        "pipelines/bad.yaml:6: edge 'src.out -> s.in' repeats the edge at pipelines/bad.yaml:5");
  }
  SECTION("a cycle that enters no step-boundary port") {
    REQUIRE_THROWS_WITH(validate_text("nodes:\n"
                                      "  - {name: src, kind: count-source}\n"
                                      "  - {name: a, kind: looper}\n"
                                      "  - {name: b, kind: scale}\n"
                                      "  - {name: c, kind: scale}\n"
                                      "edges:\n"
                                      "  - src -> a.in\n"
                                      "  - a.loop -> b\n"
                                      "  - b -> c\n"
                                      "  - c -> a.in\n"),
                        "pipelines/bad.yaml:10: edge 'c -> a.in' closes the cycle a -> b -> c -> a, which enters no "
                        "step-boundary input port (only a cycle through such a port, e.g. model-step's staged "
                        "injections, is allowed)");
    // The same cycle through the boundary port is legal.
    REQUIRE_NOTHROW(validate_text("nodes:\n"
                                  "  - {name: src, kind: count-source}\n"
                                  "  - {name: a, kind: looper}\n"
                                  "  - {name: b, kind: scale}\n"
                                  "  - {name: c, kind: scale}\n"
                                  "edges:\n"
                                  "  - src -> a.in\n"
                                  "  - a.loop -> b\n"
                                  "  - b -> c\n"
                                  "  - c -> a.feedback\n"));
  }
  SECTION("node-level settings") {
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: src, kind: count-source, concurrency: 2}\n"),
                        "pipelines/bad.yaml:2: node 'src' (count-source) 'concurrency': expected 1 (sources run "
                        "serially), found 2");
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: s, kind: collect, concurrency: 0}\n"),
                        "pipelines/bad.yaml:2: node 's' (collect) 'concurrency': expected 1 (this kind is serial "
                        "only), found 0");
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: s, kind: scale, max_in_flight: 4}\n"),
                        "pipelines/bad.yaml:2: node 's' (scale) 'max_in_flight': expected nothing (sources only), "
                        "found 4");
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: s, kind: scale, concurrency: two}\n"),
                        "pipelines/bad.yaml:2: node 's' 'concurrency': expected an integer, found 'two'");
  }
  SECTION("YAML structure") {
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - name: src\n    kind: count-source\n    param: {count: 1}\n"),
                        "pipelines/bad.yaml:4: unknown key 'param' in node; known keys: name, kind, concurrency, "
                        "max_in_flight, fail_at, params, description");
    REQUIRE_THROWS_WITH(validate_text("resources:\n  gpus: {g: {}}\nnodes:\n  - {name: src, kind: count-source}\n"),
                        "pipelines/bad.yaml:2: unknown key 'gpus' in resources; known keys: models, memories");
    REQUIRE_THROWS_WITH(validate_text("resources:\n  models: {lm: {device: cpu}}\nnodes:\n  - {name: src, kind: count-source}\n"),
                        Catch::Contains("resource 'models.lm' is missing required parameter 'path'"));
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: src, kind: count-source, fail_at: -1}\n"),
                        Catch::Contains("node 'src' (count-source) 'fail_at': expected an integer in [0, 1099511627776] (0 = never), found -1"));
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: src, kind: count-source}\nedges:\n  - src.out => x\n"),
                        "pipelines/bad.yaml:4: edge 'src.out => x': expected 'node.port -> node.port'");
    REQUIRE_THROWS_WITH(validate_text("name: x\nnodes: [\n"), Catch::StartsWith("pipelines/bad.yaml:3:1: YAML syntax error"));
    REQUIRE_THROWS_WITH(validate_text("name: x\n"), "pipelines/bad.yaml:1: pipeline 'x' has no 'nodes:' list");
    REQUIRE_THROWS_WITH(validate_text("nodes:\n  - {name: src, kind: count-source, params: {count: }}\n"),
                        "pipelines/bad.yaml:2: node 'src' parameter 'count': expected a value, found nothing");
  }
  SECTION("config errors") {
    PipelineSpec spec = load_pipeline(kData + "/pipelines/count.yaml");
    ConfigSpec config = parse_config("pipeline: count\nparams:\n  src: {count: 1}\n  nope: {x: 1}\n", "configs/c.yaml");
    REQUIRE_THROWS_WITH(apply_config_params(spec, config),
                        "configs/c.yaml:4: params for node 'nope', which pipeline 'count' does not have; its nodes: "
                        "src, triple, sink");
    REQUIRE_THROWS_WITH(parse_config("pipeline: count\nextra: 1\n", "configs/c.yaml"),
                        "configs/c.yaml:2: unknown key 'extra' in config; known keys: pipeline, description, resources, params, run");
    REQUIRE_THROWS_WITH(load_config(kData + "/configs/missing.yaml"),
                        Catch::Contains("config file '" + kData + "/configs/missing.yaml': cannot open the file"));
    const std::string bad = (temp_dir("config") / "c.yaml").string();
    std::ofstream(bad) << "pipeline: nothere\n";
    REQUIRE_THROWS_WITH(load_config(bad), Catch::StartsWith(bad + ":1: pipeline 'nothere' not found (looked for "));
  }
  SECTION("--set errors") {
    PipelineSpec spec = load_pipeline(kData + "/pipelines/count.yaml");
    REQUIRE_THROWS_WITH(apply_set_override(spec, "srccount=3"),
                        "--set srccount=3: expected NODE.PARAM=VALUE (e.g. model.cache.n_sink=4), NODE.concurrency=N or "
                        "resources.models|memories.NAME.PARAM=VALUE");
    REQUIRE_THROWS_WITH(apply_set_override(spec, "resources.models.lm.path=x"),
                        "--set resources.models.lm.path=x: pipeline 'count' declares no resource 'models.lm'; its models: none");
    REQUIRE_THROWS_WITH(apply_set_override(spec, "resources.gpus.g.path=x"),
                        Catch::Contains("expected resources.models.NAME.PARAM=VALUE"));
    REQUIRE_THROWS_WITH(apply_set_override(spec, "triple.fail_at=x"),
                        "--set triple.fail_at=x: node setting 'fail_at' expects an integer, found 'x'");
    apply_set_override(spec, "triple.fail_at=3");
    CHECK(spec.find_node("triple")->fail_at == 3);
    REQUIRE_THROWS_WITH(apply_set_override(spec, "nope.count=3"),
                        "--set nope.count=3: pipeline 'count' has no node 'nope'; its nodes: src, triple, sink");
    REQUIRE_THROWS_WITH(apply_set_override(spec, "triple.concurrency=two"),
                        "--set triple.concurrency=two: node setting 'concurrency' expects an integer, found 'two'");
    REQUIRE_THROWS_WITH(apply_set_override(spec, "src.max_in_flight=1.5"),
                        "--set src.max_in_flight=1.5: node setting 'max_in_flight' expects an integer, found '1.5'");
    apply_set_override(spec, "src.extra.depth=3");
    CHECK(spec.find_node("src")->params.find("extra")->to_string() == "{depth: 3}");
    auto probe = std::make_shared<Probe>();
    REQUIRE_THROWS_WITH(validate_pipeline(spec, test_registry(probe)),
                        "--set src.extra.depth=3: node 'src' has unknown parameter 'extra'; known: count, start, "
                        "step, batch");
  }
}

// ============================================================================================== runs

TEST_CASE("multiple outputs, several inputs and a legal cycle run to completion", "[graph]") {
  auto probe = std::make_shared<Probe>();
  const PipelineSpec spec = parse_pipeline(R"(
name: shapes
nodes:
  - {name: src, kind: count-source, params: {count: 10}}
  - {name: sp, kind: split}
  - {name: evens, kind: collect}
  - {name: fmt, kind: to-string}
  - {name: odds, kind: texts}
  - {name: loop_src, kind: count-source, params: {count: 3}}
  - {name: looper, kind: looper, params: {limit: 200}}
  - {name: plus100, kind: scale, concurrency: 0, params: {factor: 1, offset: 100}}
  - {name: loop_out, kind: collect}
edges:
  - src -> sp
  - sp.even -> evens
  - sp.odd -> fmt
  - fmt -> odds
  - loop_src -> looper.in
  - looper.loop -> plus100
  - plus100 -> looper.feedback
  - looper.out -> loop_out
)",
                                           "pipelines/shapes.yaml");
  Pipeline pipeline(spec, test_registry(probe));
  pipeline.run_for(20s);
  CHECK(probe->received["evens"] == std::vector<int64_t>{0, 2, 4, 6, 8});
  CHECK(probe->texts["odds"] == std::vector<std::string>{"#1", "#3", "#5", "#7", "#9"});
  CHECK(probe->sorted("loop_out") == std::vector<int64_t>{0, 1, 2, 100, 101, 102, 200, 201, 202});
}

TEST_CASE("an exception in a node body ends the run and names the node", "[graph]") {
  auto probe = std::make_shared<Probe>();
  // An endless source: only the failure can end this run.
  const PipelineSpec spec = parse_pipeline(R"(
name: failing
nodes:
  - {name: src, kind: count-source, params: {count: -1}}
  - {name: boom, kind: fail, params: {at: 7}}
  - {name: sink, kind: collect}
  - {name: tap, kind: collect}
edges:
  - src -> boom
  - boom -> sink
  - src -> tap
)",
                                           "pipelines/failing.yaml");
  Pipeline pipeline(spec, test_registry(probe));
  try {
    pipeline.run_for(20s);
    FAIL("the run did not throw");
  } catch (const NodeError& e) {
    CHECK(std::string(e.what()) == "node 'boom' (fail): boom at 7");
    CHECK(e.node() == "boom");
    CHECK(e.kind() == "fail");
    REQUIRE_THROWS_AS(std::rethrow_exception(e.cause()), std::runtime_error);
  }
  // Values after 7 never passed `boom`; finish() hooks still ran, producers first.
  for (int64_t v : probe->received["sink"]) CHECK(v < 7);
  CHECK(probe->finished == std::vector<std::string>{"src", "boom", "sink", "tap"});
}

TEST_CASE("node construction and finish() failures name the node", "[graph]") {
  auto probe = std::make_shared<Probe>();
  const std::string nodes = "name: f\nnodes:\n  - {name: src, kind: count-source, params: {count: 3}}\n";
  REQUIRE_THROWS_AS(Pipeline(parse_pipeline(nodes + "  - {name: f, kind: fail, params: {at: 1, in_constructor: true}}\nedges: [src -> f]\n",
                                            "pipelines/f.yaml"),
                             test_registry(probe)),
                    std::runtime_error);
  REQUIRE_THROWS_WITH(Pipeline(parse_pipeline(nodes + "  - {name: f, kind: fail, params: {at: 1, in_constructor: true}}\nedges: [src -> f]\n",
                                              "pipelines/f.yaml"),
                               test_registry(probe)),
                      "pipelines/f.yaml:4: node 'f' (fail): cannot open the thing");
  // Without the edge, 'f' could never run: refused when the pipeline is built, naming what could feed it.
  REQUIRE_THROWS_WITH(Pipeline(parse_pipeline(nodes + "  - {name: f, kind: fail, params: {at: 1}}\n", "pipelines/f.yaml"),
                               test_registry(probe)),
                      "pipelines/f.yaml:4: node 'f' (fail) receives nothing: no edge enters its input 'in' (int64); "
                      "connect e.g. 'src.out -> f.in'");
  Pipeline pipeline(parse_pipeline(nodes + "  - {name: f, kind: fail, params: {at: 1, in_finish: true}}\nedges: [src -> f]\n",
                                   "pipelines/f.yaml"),
                    test_registry(probe));
  REQUIRE_THROWS_WITH(pipeline.run_for(20s), "node 'f' (fail) finish: finish failed");
}

TEST_CASE("backpressure: a fast source into a slow serial consumer stays within its bound", "[graph]") {
  for (const int bound : {1, 4}) {
    for (const bool with_stage : {false, true}) {
      INFO("max_in_flight " << bound << (with_stage ? ", through an unlimited stage" : ", direct"));
      auto probe = std::make_shared<Probe>();
      PipelineSpec spec;
      spec.name = "backpressure";
      spec.nodes.push_back({"src", "count-source", ParamMap{{"count", 150}, {"batch", 1}}, 1, bound});
      spec.nodes.push_back({"slow", "collect", ParamMap{{"delay_us", 300}}, 1, 0});
      if (with_stage) {
        spec.nodes.push_back({"mid", "scale", ParamMap{{"factor", 1}}, 0, 0});
        spec.edges.push_back({"src", "", "mid", ""});
        spec.edges.push_back({"mid", "", "slow", ""});
      } else {
        spec.edges.push_back({"src", "", "slow", ""});
      }
      Pipeline pipeline(spec, test_registry(probe));
      pipeline.run_for(60s);
      if (!with_stage) CHECK(probe->received["slow"] == multiples(1, 0, 149));
      CHECK(probe->sorted("slow") == multiples(1, 0, 149));
      // Produced but not yet consumed, measured by the source at each emission.
      CHECK(probe->max_outstanding.load() >= 1);
      CHECK(probe->max_outstanding.load() <= bound);
      for (const NodeProfile& row : pipeline.profile_table()) {
        CHECK(row.max_queue <= bound);
        CHECK(row.executions == 150);
      }
    }
  }
}

TEST_CASE("profiling writes a Chrome trace with one track per node and a table of executions", "[graph]") {
  auto probe = std::make_shared<Probe>();
  Pipeline pipeline(load_pipeline(kData + "/pipelines/count.yaml"), test_registry(probe), RunOptions{.profile = true});
  pipeline.run_for(20s);

  const std::vector<NodeProfile> table = pipeline.profile_table();
  REQUIRE(table.size() == 3);
  CHECK(table[0].node == "src");
  CHECK(table[1].node == "triple");
  CHECK(table[1].kind == "scale");
  for (const NodeProfile& row : table) {
    CHECK(row.executions == 20);
    CHECK(row.total_ms > 0);
    CHECK(row.p50_us <= row.p99_us);
    CHECK(row.p99_us <= row.max_us);
    CHECK(row.max_queue <= 8);
  }
  const std::string text = format_profile_table(table);
  CHECK(text.rfind("node ", 0) == 0);
  CHECK(std::count(text.begin(), text.end(), '\n') == 4);

  const auto path = temp_dir("trace") / "trace.json";
  pipeline.write_chrome_trace(path.string());
  std::ifstream in(path);
  const nlohmann::json trace = nlohmann::json::parse(in);
  REQUIRE(trace.contains("traceEvents"));
  std::map<int, std::string> track_names;
  std::map<int, int> executions;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "thread_name") track_names[e["tid"].get<int>()] = e["args"]["name"];
    if (e["ph"] == "X") {
      executions[e["tid"].get<int>()]++;
      CHECK(e["pid"] == 1);
      CHECK(e["ts"].get<double>() >= 0);
      CHECK(e["dur"].get<double>() >= 0);
      CHECK(e["name"] == track_names.at(e["tid"].get<int>()).substr(0, e["name"].get<std::string>().size()));
    }
  }
  CHECK(track_names == std::map<int, std::string>{{1, "src (count-source)"}, {2, "triple (scale)"}, {3, "sink (collect)"}});
  CHECK(executions == std::map<int, int>{{1, 20}, {2, 20}, {3, 20}});

  // Without profiling, executions and queues are still counted; there is no trace.
  Pipeline plain(load_pipeline(kData + "/pipelines/count.yaml"), test_registry(probe));
  plain.run_for(20s);
  CHECK(plain.profile_table()[2].executions == 20);
  CHECK(plain.profile_table()[2].total_ms == 0);
  REQUIRE_THROWS_WITH(plain.chrome_trace_json(), "pipeline 'count': profiling is off (RunOptions::profile)");
}

TEST_CASE("the stop flag stops an endless source, the rest drains and finish() runs in order", "[graph]") {
  auto probe = std::make_shared<Probe>();
  const PipelineSpec spec = parse_pipeline(R"(
name: endless
nodes:
  - {name: src, kind: count-source, max_in_flight: 4, params: {count: -1, start: 1}}
  - {name: triple, kind: scale, params: {factor: 3}}
  - {name: sink, kind: collect, params: {stop_after: 50, count_tokens: true}}
  - {name: tap, kind: collect}
edges:
  - src -> triple
  - triple -> sink
  - src -> tap
)",
                                           "pipelines/endless.yaml");
  Pipeline pipeline(spec, test_registry(probe));
  pipeline.run_for(20s);
  const RunSummary summary = pipeline.summary();
  CHECK(summary.stopped);
  const auto& got = probe->received["sink"];
  REQUIRE(got.size() >= 50);
  CHECK(got.size() <= 50 + 4);  // what was in flight when the stop came drained
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == 3 * static_cast<int64_t>(i + 1));
  CHECK(probe->received["tap"].size() == got.size());  // a source's item reaches every receiver
  CHECK(probe->finished == std::vector<std::string>{"src", "triple", "sink", "tap"});
  CHECK(pipeline.topological_order() == probe->finished);
  CHECK(summary.tokens_in == static_cast<int64_t>(got.size()));
}

TEST_CASE("SIGINT stops a run through StopOnSignal, and the old handler comes back", "[graph]") {
  auto probe = std::make_shared<Probe>();
  const PipelineSpec spec = parse_pipeline(
      "name: sig\nnodes:\n  - {name: src, kind: count-source, params: {count: -1}}\n"
      "  - {name: sink, kind: collect}\nedges: [src -> sink]\n",
      "pipelines/sig.yaml");
  Pipeline pipeline(spec, test_registry(probe));
  struct sigaction before {};
  sigaction(SIGINT, nullptr, &before);
  {
    StopOnSignal guard(pipeline.context());
    REQUIRE_THROWS_AS(StopOnSignal(pipeline.context()), std::logic_error);
    std::raise(SIGINT);  // as if Ctrl-C came before the first token
    CHECK(pipeline.context().stop_requested());
    CHECK(pipeline.context().stop_signal() == SIGINT);
    pipeline.run_for(20s);  // the endless source stops at once
  }
  CHECK(pipeline.summary().stopped);
  CHECK(pipeline.summary().signal == SIGINT);  // the launcher exits 128 + 2
  CHECK(probe->finished == std::vector<std::string>{"src", "sink"});
  struct sigaction after {};
  sigaction(SIGINT, nullptr, &after);
  CHECK(after.sa_handler == before.sa_handler);
}

TEST_CASE("a run that does not end fails at its deadline instead of hanging", "[graph]") {
  auto probe = std::make_shared<Probe>();
  const PipelineSpec spec = parse_pipeline(
      "name: forever\nnodes:\n  - {name: src, kind: count-source, params: {count: -1}}\n"
      "  - {name: sink, kind: collect}\nedges: [src -> sink]\n",
      "pipelines/forever.yaml");
  Pipeline pipeline(spec, test_registry(probe));
  REQUIRE_THROWS_WITH(pipeline.run_for(300ms),
                      "pipeline 'forever' did not finish within 300 ms; it was stopped and cancelled");
  CHECK(probe->finished == std::vector<std::string>{"src", "sink"});
  REQUIRE_THROWS_AS(pipeline.run(), std::logic_error);  // a pipeline runs once
}

TEST_CASE("the run summary carries the counters and the peak RSS as JSON", "[graph]") {
  auto probe = std::make_shared<Probe>();
  PipelineSpec spec = count_spec_in_code();
  spec.nodes[2].params.set("count_tokens", true);
  Pipeline pipeline(spec, test_registry(probe));
  pipeline.context().counters.evictions += 3;
  pipeline.run_for(20s);
  const RunSummary s = pipeline.summary();
  CHECK(s.pipeline == "count");
  CHECK_FALSE(s.stopped);
  CHECK(s.tokens_in == 20);
  CHECK(s.tokens_out == 0);
  CHECK(s.evictions == 3);
  CHECK(s.wall_s > 0);
  CHECK(s.tokens_per_s == Approx(20 / s.wall_s));
  CHECK(s.peak_rss_kb > 0);
  const nlohmann::json j = nlohmann::json::parse(s.to_json());
  CHECK(j["pipeline"] == "count");
  CHECK(j["tokens_in"] == 20);
  CHECK(j["evictions"] == 3);
  CHECK(j["chunks_indexed"] == 0);
  CHECK(j["retrievals"] == 0);
  CHECK(j["peak_rss_kb"].get<int64_t>() == s.peak_rss_kb);
  CHECK(j["stopped"] == false);
}

TEST_CASE("kinds are described from their declarations and built-in registration is explicit", "[graph]") {
  auto probe = std::make_shared<Probe>();
  const std::string text = describe_kinds(test_registry(probe));
  CHECK_THAT(text, Catch::Contains("count-source  [-] -> [out: int64]\n"));
  CHECK_THAT(text, Catch::Contains("    count: int = 10\n"));
  CHECK_THAT(text, Catch::Contains("looper  [in: int64, feedback: int64 (step boundary)] -> [out: int64, loop: int64]"));
  CHECK_THAT(text, Catch::Contains("to-string  [in: int64] -> [out: string]"));
  CHECK_THAT(text, Catch::Contains("collect  [in: int64] -> [-]  serial"));
  CHECK_THAT(text, Catch::Contains("    at: int = (required)\n"));

  Registry builtin;
  REQUIRE_NOTHROW(register_builtin_nodes(builtin));
  Registry twice = test_registry(probe);
  REQUIRE_THROWS_AS(twice.add(*twice.find("scale")), std::logic_error);
}

// ========================================================================================== progress

namespace {
std::string read_stream(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  return out;
}
}  // namespace

TEST_CASE("progress: plain lines without a terminal, a bar on one, and a final line", "[graph]") {
  CHECK(Progress::format_duration(42) == "42s");
  CHECK(Progress::format_duration(100) == "1m40s");
  CHECK(Progress::format_duration(7380) == "2h03m");

  FILE* plain = std::tmpfile();
  {
    ProgressOptions options;
    options.stream = plain;
    options.tty = 0;
    options.plain_interval_s = 0;  // a line at every update
    Progress p("ingest", 4, options);
    CHECK_FALSE(p.is_tty());
    for (int i = 0; i < 4; ++i) p.add();
    p.done();
    p.done();
  }
  std::istringstream lines(read_stream(plain));
  std::vector<std::string> got;
  for (std::string line; std::getline(lines, line);) got.push_back(line);
  REQUIRE(got.size() == 5);
  CHECK(got[0].rfind("ingest: 1/4 (25.0%), ", 0) == 0);
  CHECK_THAT(got[0], Catch::Contains(" tok/s, ETA "));
  CHECK(got[3].rfind("ingest: 4/4 (100.0%), ", 0) == 0);
  CHECK(got[4].rfind("ingest: done, 4 tok in ", 0) == 0);
  std::fclose(plain);

  FILE* tty = std::tmpfile();
  {
    ProgressOptions options;
    options.stream = tty;
    options.tty = 1;
    options.tty_interval_s = 0;
    options.unit = "chunk";
    options.bar_width = 10;
    Progress p("index", 10, options);
    p.set(5);
  }  // the destructor calls done()
  const std::string drawn = read_stream(tty);
  CHECK_THAT(drawn, Catch::StartsWith("\rindex [#####-----] 5/10 (50.0%), "));
  CHECK_THAT(drawn, Catch::Contains(" chunk/s"));
  CHECK_THAT(drawn, Catch::EndsWith("\n"));
  CHECK_THAT(drawn, Catch::Contains("\rindex: done, 5 chunk in "));
  std::fclose(tty);

  // Without a total: the count and the rate.
  FILE* unknown = std::tmpfile();
  {
    ProgressOptions options;
    options.stream = unknown;
    options.tty = 0;
    options.plain_interval_s = 3600;  // never due during the test
    Progress p("ppl", 0, options);
    p.add(7);
    CHECK(p.status().rfind("7 tok, ", 0) == 0);
  }
  const std::string only_final = read_stream(unknown);
  CHECK(only_final.rfind("ppl: done, 7 tok in ", 0) == 0);
  CHECK(std::count(only_final.begin(), only_final.end(), '\n') == 1);
  std::fclose(unknown);
}
