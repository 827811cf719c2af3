// needle: the long-context grid in streaming mode (--task needle | passkey | dialogue; lengths from inside the
// cache to far beyond it x depths x memory arms (mode x placement) + an oracle), scored by retrieval hit (the
// needle is in the cache or the prompt when the question is asked), the answer (expected words in the greedy
// output) and the answer's NLL. Writes results.json and heatmap.svg. The runner is models/lab/needle_run.h.
#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "graph/progress.h"
#include "models/lab/copy_check.h"
#include "models/memory/memory_path.h"
#include "models/lab/needle.h"
#include "models/lab/needle_run.h"
#include "models/nn/runtime.h"
#include "models/stream/stream.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace sinkflow::cli {

namespace {

namespace fs = std::filesystem;

struct NeedleArgs {
  std::string model, haystack, filler, out = "needle-out";
  std::string task = "needle", lengths = "auto", depths = "0,25,50,75,100", modes = "none,evicted,always";
  std::string placements = "region", keywords;
  NeedleSpec spec;
  PasskeySpec passkey;
  EvalOptions eval;
  int64_t turn_tokens = 1000;
  std::string inject = "text", select = "topk", index = "hnsw";
  bool json = false;
  RuntimeOptions rt;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// Numbers with an optional K (x1024) or M (x1024^2) suffix: "1K,4K,1M".
std::vector<double> parse_numbers(const std::string& s, const std::string& what) {
  std::vector<double> out;
  for (std::string item : split_list(s)) {
    double scale = 1;
    if (!item.empty() && (item.back() == 'K' || item.back() == 'k')) scale = 1024, item.pop_back();
    else if (!item.empty() && (item.back() == 'M' || item.back() == 'm')) scale = 1024.0 * 1024.0, item.pop_back();
    try {
      size_t used = 0;
      out.push_back(std::stod(item, &used) * scale);
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw std::invalid_argument(what + ": expected comma-separated numbers (K, M suffixes allowed), found '" + s + "'");
    }
  }
  if (out.empty()) throw std::invalid_argument(what + ": expected comma-separated numbers, found an empty list");
  return out;
}

// The arms: each memory mode, and each placement of the modes that retrieve.
std::vector<EvalArm> parse_arms(const std::string& modes, const std::string& placements, NeedleTask task) {
  std::vector<Placement> places;
  for (const std::string& p : split_list(placements)) places.push_back(enum_from_name(kPlacementNames, p, "--placement"));
  if (places.empty()) throw std::invalid_argument("--placement: expected region and/or prompt, found an empty list");
  std::vector<EvalArm> arms;
  for (const std::string& m : split_list(modes)) {
    const MemoryMode mode = enum_from_name(kMemoryModeNames, m, "--memory");
    if (mode != MemoryMode::evicted && mode != MemoryMode::always) {
      arms.push_back({mode, Placement::region});
      continue;
    }
    // always:prompt places retrieved text before each user turn: dialogue only. Left out of a grid that has
    // other placements (with a note), an error when it would be always's only arm.
    const bool turns = task == NeedleTask::dialogue;
    if (mode == MemoryMode::always && !turns && places.size() == 1 && places[0] == Placement::prompt) {
      throw std::invalid_argument("--placement prompt with --memory always: expected --task dialogue (retrieved text "
                                  "is placed before each user turn), found --task " +
                                  std::string(enum_name(kNeedleTaskNames, task)));
    }
    for (Placement p : places) {
      if (mode == MemoryMode::always && p == Placement::prompt && !turns) {
        std::fprintf(stderr, "needle: arm always:prompt left out (dialogue only)\n");
        continue;
      }
      arms.push_back({mode, p});
    }
  }
  if (arms.empty()) throw std::invalid_argument("--memory: expected at least one of " + enum_choices(kMemoryModeNames));
  return arms;
}

std::string color(double v) {
  // 0 -> red, 1 -> green
  v = std::clamp(v, 0.0, 1.0);
  const int r = static_cast<int>(220 * (1 - v) + 30 * v), g = static_cast<int>(60 * (1 - v) + 170 * v);
  char buf[16];
  std::snprintf(buf, sizeof buf, "#%02x%02x50", r, g);
  return buf;
}

struct Row {  // one cell of one arm (the oracle is an arm here)
  const CellResult* cell;
  const ArmResult* arm;
};

void write_heatmap(const std::string& path, const std::string& title, const std::vector<Row>& rows,
                   const std::vector<std::string>& arms, const std::vector<int64_t>& lengths,
                   const std::vector<double>& depths) {
  const int cw = 62, ch = 30, left = 80, top = 60, gap = 30;
  const int pw = cw * static_cast<int>(lengths.size());
  const int width = std::max(left + static_cast<int>(arms.size()) * (pw + gap), 560);
  const int height = top + ch * static_cast<int>(depths.size()) + 110;
  std::ofstream f(path);
  f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height
    << "' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n";
  f << "<text x='10' y='18' font-size='13'>" << title << "</text>\n";
  for (size_t ai = 0; ai < arms.size(); ++ai) {
    const int x0 = left + static_cast<int>(ai) * (pw + gap);
    f << "<text x='" << x0 << "' y='" << top - 10 << "' font-size='12'>" << arms[ai] << "</text>\n";
    for (size_t li = 0; li < lengths.size(); ++li) {
      f << "<text x='" << x0 + static_cast<int>(li) * cw + 4 << "' y='" << top + ch * static_cast<int>(depths.size()) + 14
        << "' font-size='10'>" << lengths[li] << "</text>\n";
      for (size_t di = 0; di < depths.size(); ++di) {
        for (const Row& r : rows) {
          if (r.arm->arm != arms[ai] || r.cell->length != lengths[li] || r.cell->depth != depths[di]) continue;
          const int x = x0 + static_cast<int>(li) * cw, y = top + static_cast<int>(di) * ch;
          char nll[32];
          std::snprintf(nll, sizeof nll, "%.2f", r.arm->nll);
          f << "<rect x='" << x << "' y='" << y << "' width='" << cw - 2 << "' height='" << ch - 2 << "' fill='"
            << color(r.arm->keywords) << "'/>\n<text x='" << x + 4 << "' y='" << y + 18 << "' fill='white'>"
            << (r.arm->hit ? "H" : "-") << (r.arm->answer ? "A" : "-") << " " << nll << "</text>\n";
        }
      }
    }
  }
  for (size_t di = 0; di < depths.size(); ++di) {
    f << "<text x='10' y='" << top + static_cast<int>(di) * ch + 18 << "'>depth " << depths[di] << "%</text>\n";
  }
  // Colour scale and legend.
  const int ly = top + ch * static_cast<int>(depths.size()) + 34;
  f << "<text x='" << left << "' y='" << ly - 4 << "'>context length (tokens)</text>\n";
  f << "<defs><linearGradient id='scale'><stop offset='0' stop-color='" << color(0) << "'/><stop offset='1' stop-color='"
    << color(1) << "'/></linearGradient></defs>\n";
  f << "<rect x='10' y='" << ly + 10 << "' width='200' height='14' fill='url(#scale)'/>\n";
  f << "<text x='10' y='" << ly + 38 << "'>0</text><text x='102' y='" << ly + 38 << "'>0.5</text><text x='200' y='"
    << ly + 38 << "'>1</text>\n";
  f << "<text x='225' y='" << ly + 21 << "'>colour: keyword score of the greedy answer (passkey: the exact digits)</text>\n";
  f << "<text x='225' y='" << ly + 38 << "'>H: the needle was in the cache (or the prompt) at the question; A: exact "
       "answer; number: answer NLL per token (nats)</text>\n";
  f << "</svg>\n";
}

struct Totals {
  int64_t n = 0, evicted = 0, nll_n = 0;
  double hit = 0, ans = 0, kw = 0, far_hit = 0, nll = 0, none_nll = 0, oracle_nll = 0;
  double far_nll = 0, far_none = 0, far_oracle = 0;
  int64_t far_nll_n = 0;
  void add(const CellResult& c, const ArmResult& a) {
    ++n;
    hit += a.hit;
    ans += a.answer;
    kw += a.keywords;
    const bool far = !c.none.hit;  // the needle had left the cache
    if (far) {
      ++evicted;
      far_hit += a.hit;
    }
    if (std::isfinite(a.nll) && std::isfinite(c.none.nll) && std::isfinite(c.oracle.nll)) {
      ++nll_n;
      nll += a.nll;
      none_nll += c.none.nll;
      oracle_nll += c.oracle.nll;
      if (far) {
        ++far_nll_n;
        far_nll += a.nll;
        far_none += c.none.nll;
        far_oracle += c.oracle.nll;
      }
    }
  }
  static nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
  nlohmann::json json() const {
    const double m = nll_n ? 1.0 / static_cast<double>(nll_n) : 0, fm = far_nll_n ? 1.0 / static_cast<double>(far_nll_n) : 0;
    return {{"cells", n},
            {"answer_rate", ans / static_cast<double>(n)},
            {"hit_rate", hit / static_cast<double>(n)},
            {"hit_rate_beyond_cache", evicted ? num(far_hit / static_cast<double>(evicted)) : nlohmann::json(nullptr)},
            {"cells_beyond_cache", evicted},
            {"keyword_score", kw / static_cast<double>(n)},
            {"answer_nll", nll_n ? num(nll * m) : nlohmann::json(nullptr)},
            {"oracle_gain_recovered", nll_n ? num(oracle_gain_recovered(none_nll * m, nll * m, oracle_nll * m)) : nlohmann::json(nullptr)},
            {"oracle_gain_recovered_beyond_cache",
             far_nll_n ? num(oracle_gain_recovered(far_none * fm, far_nll * fm, far_oracle * fm)) : nlohmann::json(nullptr)}};
  }
};

void run_needle(NeedleArgs a) {
  FILE* table = table_stream(a.json);  // with --json, stdout carries the JSON line alone
  const NeedleTask task = enum_from_name(kNeedleTaskNames, a.task, "--task");
  const std::vector<EvalArm> arms = parse_arms(a.modes, a.placements, task);
  a.eval.inject = parse_inject_mode(a.inject);
  a.eval.select = enum_from_name(kSelectModeNames, a.select, "--select");
  a.eval.index = enum_from_name(kStoreIndexNames, a.index, "--index");
  a.eval.validate();
  if (task != NeedleTask::passkey && a.haystack.empty()) {
    throw std::invalid_argument("--haystack: expected a text file for --task " + a.task + ", found none");
  }
  if (task == NeedleTask::passkey && !a.haystack.empty()) {
    throw std::invalid_argument("--haystack: --task passkey takes --filler FILE instead, found --haystack " + a.haystack);
  }
  if (task != NeedleTask::passkey && !a.filler.empty()) {
    throw std::invalid_argument("--filler: only --task passkey takes a filler, found --task " + a.task);
  }
  const std::vector<double> depths = parse_numbers(a.depths, "--depths");
  a.rt.apply();
  c10::InferenceMode guard;
  LoadedModel m = load_model(a.model, a.rt);
  const std::string haystack = a.haystack.empty() ? "" : read_file(a.haystack, "--haystack");
  if (!a.filler.empty()) a.passkey.filler = read_file(a.filler, "--filler");
  const int64_t cache = a.eval.n_sink + a.eval.n_recent;
  std::vector<int64_t> lengths;
  if (a.lengths == "auto") {
    for (double f : {0.5, 1.0, 2.0, 4.0, 8.0, 16.0}) lengths.push_back(static_cast<int64_t>(f * static_cast<double>(cache)));
  } else {
    for (double v : parse_numbers(a.lengths, "--lengths")) lengths.push_back(static_cast<int64_t>(v));
  }
  const int64_t bos = prompt_bos(m);
  auto build = [&](int64_t len, double d) {
    EvalCase c;
    switch (task) {
      case NeedleTask::passkey: c = build_passkey_case(*m.tokenizer, bos, a.passkey, len, d, a.eval.n_sink); break;
      case NeedleTask::needle:
        c = needle_eval_case(*m.tokenizer, bos, haystack, a.spec, len, d, a.eval.n_sink, a.eval.n_recent);
        break;
      case NeedleTask::dialogue:
        c = build_dialogue_case(*m.tokenizer, bos, haystack, a.spec, len, d, a.eval.n_sink, a.eval.n_recent, a.turn_tokens);
        break;
    }
    if (!a.keywords.empty() && task != NeedleTask::passkey) c.keywords = split_list(a.keywords);
    return c;
  };
  // Bad input fails before any cell runs: the shortest case at every depth.
  for (double d : depths) build(*std::min_element(lengths.begin(), lengths.end()), d);
  int64_t ingestions = 1;
  for (const EvalArm& arm : arms) ingestions += arm.mode == MemoryMode::always ? 1 : arm.mode == MemoryMode::cluster ? 2 : 0;
  int64_t total = 0;
  for (int64_t len : lengths) total += len * static_cast<int64_t>(depths.size()) * ingestions;
  std::fprintf(stderr, "needle: task %s, %zu lengths x %zu depths x %zu arms (+ oracle), cache %lld (%lld sinks + %lld window, "
               "%lld memory slots), chunk %lld, top-k %d\n", a.task.c_str(), lengths.size(), depths.size(), arms.size(),
               static_cast<long long>(cache), static_cast<long long>(a.eval.n_sink), static_cast<long long>(a.eval.n_recent),
               static_cast<long long>(a.eval.memory_slots()), static_cast<long long>(a.eval.chunk), a.eval.top_k);
  fs::create_directories(a.out);
  std::vector<CellResult> cells;
  cells.reserve(lengths.size() * depths.size());
  Progress progress("needle", total, ProgressOptions{"tok"});
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t len : lengths) {
    for (double d : depths) {
      const EvalCase c = build(len, d);
      cells.push_back(run_eval_cell(m.decoder, *m.tokenizer, m.generation, c, arms, a.eval,
                                    (fs::path(a.out) / "memory").string(), [&](int64_t n) { progress.add(n); }));
      const CellResult& r = cells.back();
      std::string line;
      for (const ArmResult& x : r.arms) {
        char buf[160];
        std::snprintf(buf, sizeof buf, " | %s %s%s nll %.3f", x.arm.c_str(), x.hit ? "H" : "-", x.answer ? "A" : "-", x.nll);
        line += buf;
      }
      std::fprintf(stderr, "\ncell length %lld depth %g: %lld tokens, ingest %.0f tok/s | oracle %s nll %.3f%s\n",
                   static_cast<long long>(len), d, static_cast<long long>(r.tokens),
                   static_cast<double>(r.ingest_tokens) / std::max(r.ingest_seconds, 1e-9), r.oracle.answer ? "A" : "-",
                   r.oracle.nll, line.c_str());
    }
  }
  progress.done();
  fs::remove_all(fs::path(a.out) / "memory");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Summary per arm, and the oracle's own.
  std::vector<std::string> arm_names;
  for (const EvalArm& arm : arms) arm_names.push_back(arm.name());
  nlohmann::json summary = nlohmann::json::object();
  std::vector<Row> rows;
  std::fprintf(table, "%-15s %6s %6s %9s %7s %8s %9s %9s %13s\n", "arm", "cells", "hit", "hit>cache", "answer", "keywords",
               "nll", "recovered", "recovered>cache");
  auto print = [&](const std::string& name, const nlohmann::json& j) {
    auto f = [&](const char* k) { return j[k].is_null() ? std::nan("") : j[k].get<double>(); };
    std::fprintf(table, "%-15s %6lld %6.3f %9.3f %7.3f %8.3f %9.3f %9.3f %13.3f\n", name.c_str(),
                 static_cast<long long>(j["cells"].get<int64_t>()), f("hit_rate"), f("hit_rate_beyond_cache"),
                 f("answer_rate"), f("keyword_score"), f("answer_nll"), f("oracle_gain_recovered"),
                 f("oracle_gain_recovered_beyond_cache"));
  };
  for (size_t i = 0; i < arms.size(); ++i) {
    Totals t;
    for (const CellResult& c : cells) {
      t.add(c, c.arms[i]);
      rows.push_back({&c, &c.arms[i]});
    }
    nlohmann::json j = t.json();
    j["memory"] = enum_name(kMemoryModeNames, arms[i].mode);
    j["placement"] = arms[i].retrieves() ? nlohmann::json(enum_name(kPlacementNames, arms[i].placement)) : nlohmann::json(nullptr);
    print(arm_names[i], j);
    summary[arm_names[i]] = j;
  }
  {
    Totals t;
    for (const CellResult& c : cells) {
      t.add(c, c.oracle);
      rows.push_back({&c, &c.oracle});
    }
    nlohmann::json j = t.json();
    j["memory"] = "oracle";
    j["placement"] = "needle re-placed right before the question";
    print("oracle", j);
    summary["oracle"] = j;
  }
  nlohmann::json results = nlohmann::json::array();
  for (const Row& r : rows) {
    const CellResult& c = *r.cell;
    results.push_back({{"arm", r.arm->arm}, {"length", c.length}, {"depth", c.depth}, {"tokens", c.tokens},
                       {"passkey", c.passkey}, {"hit", r.arm->hit}, {"answer", r.arm->answer},
                       {"keywords", r.arm->keywords}, {"answer_nll", Totals::num(r.arm->nll)},
                       {"none_nll", Totals::num(c.none.nll)}, {"oracle_nll", Totals::num(c.oracle.nll)},
                       {"oracle_gain_recovered", Totals::num(oracle_gain_recovered(c.none.nll, r.arm->nll, c.oracle.nll))},
                       {"output", r.arm->output}, {"evicted_tokens", r.arm->evicted}, {"not_indexed_tokens", r.arm->not_indexed}, {"chunks", r.arm->chunks},
                       {"retrievals", r.arm->retrievals}, {"prompt_tokens", r.arm->prompt_tokens},
                       {"retrieved", r.arm->retrieved},
                       {"ingest_seconds", c.ingest_seconds}, {"ingest_tokens", c.ingest_tokens}});
  }
  nlohmann::json doc = {{"model", a.model},   {"task", a.task},        {"haystack", a.haystack},
                        {"filler", task == NeedleTask::passkey ? nlohmann::json(a.filler.empty() ? "default" : a.filler) : nlohmann::json(nullptr)},
                        {"cache", cache},     {"n_sink", a.eval.n_sink}, {"n_recent", a.eval.n_recent},
                        {"n_memory", a.eval.memory_slots()}, {"chunk_size", a.eval.chunk}, {"overlap", a.eval.overlap},
                        {"top_k", a.eval.top_k}, {"inject", a.inject}, {"index", a.index}, {"oracle", "needle re-placed right before the question"},
                        {"summary", summary}, {"cells", results}, {"seconds", secs}};
  if (task != NeedleTask::passkey) {
    doc["needle"] = a.spec.needle;
    doc["cloze"] = a.spec.cloze;
    doc["answer"] = a.spec.answer;
  }
  std::ofstream(fs::path(a.out) / "results.json") << doc.dump(2) << "\n";
  arm_names.push_back("oracle");
  write_heatmap((fs::path(a.out) / "heatmap.svg").string(),
                a.task + " (cache " + std::to_string(cache) + " tokens, " + std::to_string(a.eval.memory_slots()) +
                    " memory slots for the region placement)",
                rows, arm_names, lengths, depths);
  std::cerr << "wrote " << (fs::path(a.out) / "results.json").string() << " and heatmap.svg\n";
  if (a.json) print_json({{"command", "needle"}, {"task", a.task}, {"summary", summary}, {"seconds", secs}, {"out", a.out}});
}

}  // namespace

struct CopyArgs {
  std::string model, text, kinds = "natural,random";
  CopyCheckOptions options;
  int64_t tokens = 200000;
  bool json = false;
  RuntimeOptions rt;
};

void run_copy(const CopyArgs& a) {
  std::vector<std::string> kind_list;
  std::stringstream kinds_in(a.kinds);
  for (std::string kind; std::getline(kinds_in, kind, ',');) {
    if (kind != "natural" && kind != "random") {
      throw std::invalid_argument("--kinds: expected natural and/or random, found '" + kind + "'");
    }
    kind_list.push_back(kind);
  }
  a.options.validate();
  a.rt.apply();
  c10::InferenceMode guard;
  LoadedModel m = load_model(a.model, a.rt);
  std::string text = read_file(a.text, "--text");
  if (a.tokens > 0 && static_cast<int64_t>(text.size()) > 8 * a.tokens) text.resize(static_cast<size_t>(8 * a.tokens));
  std::vector<int64_t> ids = m.tokenizer->encode(text);
  if (a.tokens > 0 && static_cast<int64_t>(ids.size()) > a.tokens) ids.resize(static_cast<size_t>(a.tokens));
  nlohmann::json kinds = nlohmann::json::object();
  std::fprintf(stderr, "copy check: %s, %lld cases per kind, %lld-token span (%lld cued, %lld scored), %lld tokens between\n",
               a.model.c_str(), static_cast<long long>(a.options.cases), static_cast<long long>(a.options.span),
               static_cast<long long>(a.options.prefix), static_cast<long long>(a.options.span - a.options.prefix),
               static_cast<long long>(a.options.gap));
  std::fprintf(stderr, "%-8s %10s %11s %10s %11s %12s\n", "span", "nll first", "nll repeat", "top1 first", "top1 repeat",
               "exact repeat");
  for (const std::string& kind : kind_list) {
    CopyCheckOptions o = a.options;
    o.random = kind == "random";
    o.bos = prompt_bos(m);
    const CopyReport r = copy_check(*m.decoder, copy_cases(ids, o), o);
    std::fprintf(stderr, "%-8s %10.3f %11.3f %10.3f %11.3f %12.3f\n", kind.c_str(), r.nll_first, r.nll_repeat, r.top1_first,
                 r.top1_repeat, r.exact_repeat);
    kinds[kind] = {{"cases", r.cases},           {"scored_tokens", r.scored},   {"nll_first", r.nll_first},
                   {"nll_repeat", r.nll_repeat}, {"top1_first", r.top1_first}, {"top1_repeat", r.top1_repeat},
                   {"exact_repeat", r.exact_repeat}};
  }
  if (a.json) {
    print_json({{"command", "copy"},
                {"model", a.model},
                {"text", a.text},
                {"span", a.options.span},
                {"prefix", a.options.prefix},
                {"gap", a.options.gap},
                {"before", a.options.before},
                {"kinds", kinds}});
  }
}

void add_needle_commands(CLI::App& app) {
  auto a = std::make_shared<NeedleArgs>();
  CLI::App* n = app.add_subcommand("needle", "Long-context grid (needle, passkey, dialogue) through the streaming cache and memory");
  n->add_option("--model", a->model, "model folder")->required();
  n->add_option("--task", a->task, "needle, passkey (Landmark Attention / InfLLM) or dialogue (seed 001)")->capture_default_str();
  n->add_option("--haystack", a->haystack, "haystack text file (needle, dialogue)");
  n->add_option("--filler", a->filler, "passkey: filler text file (default: the grass is green ...)");
  n->add_option("--out", a->out, "output folder (results.json, heatmap.svg)")->capture_default_str();
  n->add_option("--lengths", a->lengths, "context lengths in tokens (K = 1024, M = 1024^2), or auto (0.5x..16x the cache)")->capture_default_str();
  n->add_option("--depths", a->depths, "needle depths in percent")->capture_default_str();
  n->add_option("--memory", a->modes, "memory modes: none, evicted, always, cluster (centroids of the evicted K/V)")->capture_default_str();
  n->add_option("--placement", a->placements, "where retrieved chunks go, each an arm: region (memory region), prompt (text before the question)")->capture_default_str();
  n->add_option("--needle", a->spec.needle, "needle sentence");
  n->add_option("--question", a->spec.question, "retrieval query");
  n->add_option("--cloze", a->spec.cloze, "cloze prompt the model continues");
  n->add_option("--answer", a->spec.answer, "expected answer text");
  n->add_option("--keywords", a->keywords, "keyword score's words, comma-separated (default: the needle's content words after the cloze)");
  n->add_option("--seed", a->passkey.seed, "passkey: seed of the digits")->capture_default_str();
  n->add_option("--turn-tokens", a->turn_tokens, "dialogue: tokens per user turn")->capture_default_str();
  n->add_option("--turn-answer-tokens", a->eval.turn_answer_tokens, "dialogue: greedy tokens the model answers each turn with")->capture_default_str();
  n->add_option("--sinks", a->eval.n_sink, "attention sinks")->capture_default_str();
  n->add_option("--window", a->eval.n_recent, "recent window")->capture_default_str();
  n->add_option("--chunk", a->eval.chunk, "tokens per memory chunk")->capture_default_str();
  n->add_option("--overlap", a->eval.overlap, "chunk overlap in tokens")->capture_default_str();
  n->add_option("--top-k", a->eval.top_k, "chunks retrieved per query")->capture_default_str();
  n->add_option("--memory-slots", a->eval.n_memory, "memory-region slots (0 = top_k x chunk; cluster: 16 centroids)")->capture_default_str();
  n->add_option("--every", a->eval.every, "always mode: retrieve every N ingested tokens")->capture_default_str();
  n->add_option("--inject", a->inject, "text or kv")->capture_default_str();
  n->add_option("--select", a->select, "topk, mmr or farthest")->capture_default_str();
  n->add_option("--index", a->index, "chunk index: hnsw or brute (exact)")->capture_default_str();
  n->add_option("--max-new-tokens", a->eval.max_new_tokens, "answer length")->capture_default_str();
  n->add_flag("--json", a->json, "print a JSON summary line");
  a->rt.add_to(*n);
  n->callback([a] { run_needle(*a); });

  auto c = std::make_shared<CopyArgs>();
  CLI::App* cp = app.add_subcommand("copy", "Copy check: does the model repeat a span it has seen in its context?");
  cp->add_option("--model", c->model, "model folder")->required();
  cp->add_option("--text", c->text, "text file the cases are cut from (held-out text)")->required();
  cp->add_option("--kinds", c->kinds, "natural (the text's own span) and/or random (random corpus tokens)")->capture_default_str();
  cp->add_option("--cases", c->options.cases, "cases per kind")->capture_default_str();
  cp->add_option("--before", c->options.before, "text tokens before the span")->capture_default_str();
  cp->add_option("--span", c->options.span, "tokens written twice")->capture_default_str();
  cp->add_option("--gap", c->options.gap, "text tokens between the span and its repeat")->capture_default_str();
  cp->add_option("--prefix", c->options.prefix, "tokens of the repeat given as the cue (not scored)")->capture_default_str();
  cp->add_option("--tokens", c->tokens, "text tokens read (0 = all)")->capture_default_str();
  cp->add_option("--seed", c->options.seed, "seed of the random spans")->capture_default_str();
  cp->add_flag("--json", c->json, "print a JSON summary line");
  c->rt.add_to(*cp);
  cp->callback([c] { run_copy(*c); });
}

}  // namespace sinkflow::cli
