// run: builds a pipeline from a config (or pipeline) YAML and runs it: the launcher of the flow graph.
// bench pipeline: the same pipeline with the memory path on and off, alternating, in one process.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "graph/graph.h"
#include "graph/progress.h"
#include "graph/yaml_spec.h"
#include "models/nn/runtime.h"
#include "nodes/model_step.h"
#include "nodes/nodes.h"
#include "nodes/text_out.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace sinkflow::cli {

namespace {

struct RunArgs {
  std::string config;
  std::vector<std::string> sets;
  bool json = false;
  std::string profile;
  int max_in_flight = 64;
  int reps = 2;
};

// The first node of kind model-step, or "" when the pipeline has none.
std::string model_node(const PipelineSpec& spec) {
  for (const NodeSpec& n : spec.nodes)
    if (n.kind == "model-step") return n.name;
  return "";
}

struct RunResult {
  RunSummary summary;
  std::string text;  // what the text-out nodes received
  ModelStepStats model;
  bool has_model = false;
};

// Builds and runs one pipeline; the progress line shows tokens read + generated when stderr is a terminal.
RunResult run_once(const RunSpec& spec, const RunArgs& a, bool show_progress) {
  Registry registry;
  register_builtin_nodes(registry);
  RunOptions options;
  options.profile = !a.profile.empty();
  options.default_max_in_flight = a.max_in_flight;
  Pipeline pipeline(spec.pipeline, registry, options);
  StopOnSignal stop(pipeline.context());
  std::atomic<bool> done{false};
  std::thread progress_thread;
  std::mutex progress_mutex;
  std::unique_ptr<Progress> progress;
  if (show_progress && ::isatty(::fileno(stderr))) {
    // The question first, then the reading progress; the bar ends before the first answer text or shown
    // retrieval is written (RunContext::before_output), so that it never draws over the answer.
    for (const NodeSpec& n : spec.pipeline.nodes) {
      if (n.kind != "token-source") continue;
      for (const char* key : {"query", "prompt"}) {
        const ParamValue* v = n.params.find(key);
        if (!v || v->type() != ParamValue::Type::string) continue;
        std::string text = v->as_string();
        text.erase(0, text.find_first_not_of(" \n\t"));
        if (!text.empty()) std::fprintf(stderr, "%s %s: %s\n", n.name.c_str(), key, text.c_str());
      }
    }
    progress = std::make_unique<Progress>(spec.pipeline.name, 0, ProgressOptions{"tok"});
    pipeline.context().set_before_output([&] {
      std::lock_guard<std::mutex> lock(progress_mutex);
      if (progress) progress->done();
      progress.reset();
    });
    progress_thread = std::thread([&] {
      const RunCounters& c = pipeline.context().counters;
      for (;;) {
        {
          std::lock_guard<std::mutex> lock(progress_mutex);
          if (!progress) return;
          progress->set(c.tokens_in.load() + c.tokens_out.load());
          if (done.load()) {
            progress->done();
            progress.reset();
            return;
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  }
  try {
    pipeline.run();
  } catch (...) {
    done = true;
    if (progress_thread.joinable()) progress_thread.join();
    throw;
  }
  done = true;
  if (progress_thread.joinable()) progress_thread.join();
  RunResult r;
  r.summary = pipeline.summary();
  for (const NodeSpec& n : spec.pipeline.nodes)
    if (n.kind == "text-out") r.text += text_out_text(pipeline.node(n.name));
  const std::string model = model_node(spec.pipeline);
  if (!model.empty()) {
    r.model = model_step_stats(pipeline.node(model));
    r.has_model = true;
  }
  if (!a.profile.empty()) {
    pipeline.write_chrome_trace(a.profile);
    std::cerr << format_profile_table(pipeline.profile_table());
    std::cerr << "wrote " << a.profile << " (open it in ui.perfetto.dev)\n";
  }
  return r;
}

double rate(double n, double s) { return s > 0 ? n / s : 0.0; }

void run_command(const RunArgs& args) {
  RunSpec spec = load_run_spec(args.config, args.sets);
  // The config's run settings, where the command line gave none.
  RunArgs a = args;
  if (const ParamValue* v = spec.config.run.find("json"); v && !a.json) a.json = v->as_bool();
  if (const ParamValue* v = spec.config.run.find("profile"); v && a.profile.empty()) a.profile = v->as_string();
  if (a.json) {
    // stdout carries the JSON line alone: generated text that would go there goes to stderr (and into the JSON).
    for (const NodeSpec& n : spec.pipeline.nodes) {
      const ParamValue* path = n.kind == "text-out" ? n.params.find("path") : nullptr;
      if (n.kind == "text-out" && (!path || (path->type() == ParamValue::Type::string && path->as_string().empty())))
        apply_set_override(spec.pipeline, n.name + ".path=\"-\"");
    }
  }
  const RunResult r = run_once(spec, a, true);
  const RunSummary& s = r.summary;
  const double ingest = rate(static_cast<double>(r.model.prefill_tokens), r.model.ingest_wall_s);
  const double decode = rate(static_cast<double>(r.model.decode_tokens), r.model.decode_s);
  if (a.json) {
    nlohmann::json j = nlohmann::json::parse(s.to_json());
    j["command"] = "run";
    j["config"] = a.config;
    j["ingest_tokens_per_s"] = ingest;
    j["decode_tokens_per_s"] = decode;
    j["tokens_evicted"] = r.model.tokens_evicted;
    j["injected_chunks"] = r.model.injected_chunks;
    j["text"] = r.text;
    print_json(j);
  } else {
    std::fprintf(stderr,
                 "%s: %s in %.2fs: %ld tokens in (%.1f tok/s ingest), %ld out (%.1f tok/s decode), %ld evictions, "
                 "%ld chunks indexed, %ld retrievals, peak RSS %.1f MiB\n",
                 s.pipeline.c_str(), s.signal ? (s.signal == SIGINT ? "interrupted (SIGINT)" : "interrupted (SIGTERM)") : s.stopped ? "stopped" : "done", s.wall_s, static_cast<long>(s.tokens_in), ingest,
                 static_cast<long>(s.tokens_out), decode, static_cast<long>(s.evictions),
                 static_cast<long>(s.chunks_indexed), static_cast<long>(s.retrievals), s.peak_rss_kb / 1024.0);
  }
  if (s.signal != 0) throw ExitStatus{128 + s.signal};
}

void bench_pipeline(const RunArgs& a) {
  const RunSpec base = load_run_spec(a.config, a.sets);
  const std::string model = model_node(base.pipeline);
  if (model.empty()) throw std::invalid_argument(a.config + ": expected a pipeline with a model-step node, found none");
  struct Totals {
    double prefill_tokens = 0, ingest_s = 0, decode_tokens = 0, decode_s = 0;
  } on, off;
  RunArgs quiet = a;
  quiet.profile.clear();
  for (int rep = 0; rep < a.reps; ++rep) {
    // on, off, then off, on, ...: neither setting always runs first (warm caches, clock ramps).
    for (bool memory : rep % 2 == 0 ? std::vector<bool>{true, false} : std::vector<bool>{false, true}) {
      std::vector<std::string> sets = a.sets;
      sets.push_back(model + ".memory=" + (memory ? "true" : "false"));
      for (const NodeSpec& n : base.pipeline.nodes)
        if (n.kind == "text-out") sets.push_back(n.name + ".quiet=true");
      const RunResult r = run_once(load_run_spec(a.config, sets), quiet, false);
      Totals& t = memory ? on : off;
      t.prefill_tokens += static_cast<double>(r.model.prefill_tokens);
      t.ingest_s += r.model.ingest_wall_s;
      t.decode_tokens += static_cast<double>(r.model.decode_tokens);
      t.decode_s += r.model.decode_s;
      std::fprintf(stderr, "rep %d memory %-3s: ingest %.1f tok/s, decode %.1f tok/s, %ld chunks indexed\n", rep,
                   memory ? "on" : "off", rate(static_cast<double>(r.model.prefill_tokens), r.model.ingest_wall_s),
                   rate(static_cast<double>(r.model.decode_tokens), r.model.decode_s),
                   static_cast<long>(r.summary.chunks_indexed));
    }
  }
  const double ingest_on = rate(on.prefill_tokens, on.ingest_s), ingest_off = rate(off.prefill_tokens, off.ingest_s);
  const double decode_on = rate(on.decode_tokens, on.decode_s), decode_off = rate(off.decode_tokens, off.decode_s);
  const double ingest_ratio = rate(ingest_on, ingest_off), decode_ratio = rate(decode_on, decode_off);
  FILE* table = table_stream(a.json);  // with --json, stdout carries the JSON line alone
  std::fprintf(table, "%-10s %14s %14s %8s\n", "", "memory on", "memory off", "on/off");
  std::fprintf(table, "%-10s %10.1f tok/s %10.1f tok/s %8.3f\n", "ingest", ingest_on, ingest_off, ingest_ratio);
  std::fprintf(table, "%-10s %10.1f tok/s %10.1f tok/s %8.3f\n", "decode", decode_on, decode_off, decode_ratio);
  // A rate over a handful of tokens (a short prompt, a cloze answer) is noise: judge only the measured ones.
  const bool ingest_counts = on.prefill_tokens >= 1024.0 * a.reps, decode_counts = on.decode_tokens >= 256.0 * a.reps;
  const bool met = (!ingest_counts || ingest_ratio >= 0.95) && (!decode_counts || decode_ratio >= 0.95);
  std::fprintf(table, "goal: on/off >= 0.95 for %s%s%s: %s\n", ingest_counts ? "ingest" : "",
              ingest_counts && decode_counts ? " and " : "", decode_counts ? "decode" : "",
              !ingest_counts && !decode_counts ? "nothing measured (too few tokens)" : met ? "met" : "not met");
  if (a.json)
    print_json({{"command", "bench pipeline"}, {"config", a.config}, {"reps", a.reps},
                {"ingest_on", ingest_on}, {"ingest_off", ingest_off}, {"ingest_ratio", ingest_ratio},
                {"decode_on", decode_on}, {"decode_off", decode_off}, {"decode_ratio", decode_ratio}});
}

void add_common(CLI::App& c, RunArgs& a) {
  c.add_option("config", a.config, "config (configs/NAME.yaml) or pipeline (pipelines/NAME.yaml) file")->required();
  c.add_option("--set", a.sets, "override a node parameter: node.param=value (repeatable)");
  c.add_flag("--json", a.json, "print a one-line JSON summary on stdout");
  c.add_option("--max-in-flight", a.max_in_flight, "backpressure bound of sources without max_in_flight")
      ->capture_default_str();
}

}  // namespace

void add_run_commands(CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  CLI::App* run = app.add_subcommand("run", "Run a pipeline (YAML config) through the flow graph");
  add_common(*run, *a);
  run->add_option("--profile", a->profile, "write a Chrome/Perfetto trace here and print the per-node table");
  run->callback([a] { run_command(*a); });

  CLI::App* bench = bench_command(app);
  auto b = std::make_shared<RunArgs>();
  CLI::App* pipe = bench->add_subcommand("pipeline", "Pipeline throughput with the memory path on vs off (alternating)");
  add_common(*pipe, *b);
  pipe->add_option("--reps", b->reps, "on/off pairs")->capture_default_str()->check(CLI::PositiveNumber);
  pipe->callback([b] { bench_pipeline(*b); });
}

}  // namespace sinkflow::cli
