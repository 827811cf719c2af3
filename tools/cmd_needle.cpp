// needle: the needle-in-a-haystack grid in streaming mode (lengths from inside the cache to far beyond it
// x depths x memory modes), scored by retrieval hit (the needle is in the cache when the question is asked)
// and by the answer (expected words in the greedy output). Writes results.json and heatmap.svg.
#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>

#include "graph/progress.h"
#include "models/memory/chunk_store.h"
#include "models/lab/copy_check.h"
#include "models/memory/embedder.h"
#include "models/memory/memory_dir.h"
#include "models/memory/memory_path.h"
#include "models/lab/needle.h"
#include "models/nn/runtime.h"
#include "models/stream/stream.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace sinkflow::cli {

namespace {

namespace fs = std::filesystem;

struct NeedleArgs {
  std::string model, haystack, out = "needle-out";
  std::string lengths = "auto", depths = "0,25,50,75,100", modes = "none,evicted,always";
  NeedleSpec spec;
  int64_t sinks = 4, window = 252, chunk = 64, overlap = 32, top_k = 2, memory = 0, every = 128;
  int64_t max_new_tokens = 16;
  std::string inject = "text", select = "topk", embedder = "hash";
  bool json = false;
  RuntimeOptions rt;
};

std::vector<double> parse_numbers(const std::string& s, const std::string& what) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stod(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw std::invalid_argument(what + ": expected comma-separated numbers, found '" + s + "'");
    }
  }
  if (out.empty()) throw std::invalid_argument(what + ": empty list");
  return out;
}

struct Cell {
  std::string mode;
  int64_t length = 0;
  double depth = 0;
  bool hit = false;
  bool answer = false;
  double keywords = 0;
  std::string output;
  int64_t evicted = 0, chunks = 0, retrievals = 0;
};

// Positions (absolute) of everything the model can attend to: sinks, window and memory-region chunks.
std::set<int64_t> cached_positions(const StreamSession& s, const MemoryRegion& region) {
  std::set<int64_t> out;
  const KvCache& c = s.cache();
  for (int64_t slot : c.ordered_slots()) {
    const bool memory = slot >= c.config().n_sink && slot < c.config().n_sink + c.config().n_memory;
    if (!memory) out.insert(c.slot_position(slot));
  }
  for (int64_t p : region.resident_positions()) out.insert(p);
  return out;
}

Cell run_cell(const LoadedModel& m, const NeedleArgs& a, const NeedleCase& nc, const std::string& mode,
              const std::string& store_dir) {
  Cell cell;
  cell.mode = mode;
  cell.length = nc.length;
  cell.depth = nc.depth;
  // cluster: no retrieval; the memory region holds centroids of the evicted K/V (the cluster policy).
  const bool cluster = mode == "cluster";
  const bool memory = mode == "evicted" || mode == "always";
  StreamConfig sc;
  sc.policy = cluster ? Policy::cluster : Policy::sink;
  sc.cache.n_sink = a.sinks;
  sc.cache.n_recent = a.window;
  sc.cache.n_memory = memory ? (a.memory > 0 ? a.memory : a.top_k * a.chunk) : cluster ? (a.memory > 0 ? a.memory : 16) : 0;
  sc.cache.evict_kv = a.inject == "kv";
  sc.prefill_block = 32;
  StreamSession session(m.decoder, sc);
  HashEmbedder embedder(384);
  MemoryDirLock store_lock(store_dir);  // a sinkflow memory directory only, then emptied: never anything else
  store_lock.reset();
  StoreOptions so;
  so.embedder_name = embedder.name();
  so.dim = embedder.dim();
  auto store = ChunkStore::open(store_dir, so);
  Chunker chunker(a.chunk, a.overlap);
  MemoryRegion region(ReplacePolicy::score);
  SelectOptions sel;
  sel.k = static_cast<int>(a.top_k);
  sel.mode = enum_from_name(kSelectModeNames, a.select, "--select");
  const InjectMode inject = parse_inject_mode(a.inject);
  auto retrieve_into_cache = [&](const std::string& query, int64_t step) {
    // Resident chunks stay eligible: MemoryRegion refreshes one that is retrieved again instead of
    // injecting it twice, and never gives up a chunk that the current query wants.
    auto hits = retrieve(*store, embedder, query, sel, inject == InjectMode::kv);
    region.inject(session, hits, inject, step);
    ++cell.retrievals;
  };
  // Ingest the haystack; the memory path runs inline (deterministic).
  const int64_t block = 32;
  int64_t since_query = 0;
  for (size_t b = 0; b < nc.tokens.size(); b += block) {
    std::vector<int64_t> part(nc.tokens.begin() + b, nc.tokens.begin() + std::min(nc.tokens.size(), b + block));
    std::vector<EvictedSpan> evicted;
    session.feed(part, memory ? &evicted : nullptr);
    for (auto& span : evicted) {
      cell.evicted += static_cast<int64_t>(span.tokens.size());
      for (Chunk& c : chunk_span(chunker, 0, span, *m.tokenizer)) {
        store_chunk(*store, embedder, c);
        ++cell.chunks;
      }
    }
    since_query += static_cast<int64_t>(part.size());
    if (mode == "always" && since_query >= a.every && store->size() > 0) {
      const auto recent = session.cache().cached_tokens();
      const std::vector<int64_t> tail(recent.end() - std::min<size_t>(recent.size(), 64), recent.end());
      retrieve_into_cache(m.tokenizer->decode(tail), static_cast<int64_t>(b));
      since_query = 0;
    }
  }
  if (!memory) cell.evicted = session.tokens_evicted();
  // The partial tail chunk is evicted text too.
  for (Chunk& c : chunker.flush()) {
    c.text = m.tokenizer->decode(c.tokens);
    store_chunk(*store, embedder, c);
    ++cell.chunks;
  }
  if (memory && store->size() > 0) retrieve_into_cache(a.spec.question, static_cast<int64_t>(nc.tokens.size()));
  const std::set<int64_t> in_cache = cached_positions(session, region);
  cell.hit = true;
  for (int64_t p = nc.needle_begin; p < nc.needle_end; ++p) cell.hit = cell.hit && in_cache.count(p);
  // Ask in cloze form, greedy.
  std::vector<int64_t> prompt = m.tokenizer->encode("\n" + a.spec.cloze);
  at::Tensor logits = session.feed(prompt);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < a.max_new_tokens; ++i) {
    const int64_t next = logits.argmax(-1).item<int64_t>();
    if (m.generation.is_stop(next)) break;
    out.push_back(next);
    if (m.tokenizer->decode(out).find('\n') != std::string::npos) break;
    logits = session.feed({next});
  }
  cell.output = m.tokenizer->decode(out);
  cell.answer = answer_found(cell.output, a.spec);
  cell.keywords = keyword_score(cell.output, a.spec);
  return cell;
}

std::string color(double v) {
  // 0 -> red, 1 -> green
  const int r = static_cast<int>(220 * (1 - v) + 30 * v), g = static_cast<int>(60 * (1 - v) + 170 * v);
  char buf[16];
  std::snprintf(buf, sizeof buf, "#%02x%02x50", r, g);
  return buf;
}

void write_heatmap(const std::string& path, const std::vector<Cell>& cells, const std::vector<std::string>& modes,
                   const std::vector<int64_t>& lengths, const std::vector<double>& depths, int64_t cache) {
  const int cw = 56, ch = 28, left = 70, top = 50, gap = 40;
  const int pw = cw * static_cast<int>(lengths.size());
  const int width = left + static_cast<int>(modes.size()) * (pw + gap);
  const int height = top + ch * static_cast<int>(depths.size()) + 70;
  std::ofstream f(path);
  f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height
    << "' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n";
  f << "<text x='10' y='18' font-size='13'>needle in a haystack (cache " << cache
    << " tokens): keyword score (colour), retrieval hit (H), exact answer (A)</text>\n";
  for (size_t mi = 0; mi < modes.size(); ++mi) {
    const int x0 = left + static_cast<int>(mi) * (pw + gap);
    f << "<text x='" << x0 << "' y='" << top - 10 << "' font-size='12'>memory: " << modes[mi] << "</text>\n";
    for (size_t li = 0; li < lengths.size(); ++li) {
      f << "<text x='" << x0 + static_cast<int>(li) * cw + 4 << "' y='" << top + ch * static_cast<int>(depths.size()) + 14
        << "'>" << lengths[li] << "</text>\n";
      for (size_t di = 0; di < depths.size(); ++di) {
        for (const Cell& c : cells) {
          if (c.mode != modes[mi] || c.length != lengths[li] || c.depth != depths[di]) continue;
          const int x = x0 + static_cast<int>(li) * cw, y = top + static_cast<int>(di) * ch;
          f << "<rect x='" << x << "' y='" << y << "' width='" << cw - 2 << "' height='" << ch - 2 << "' fill='"
            << color(c.keywords) << "'/>\n<text x='" << x + 6 << "' y='" << y + 17 << "' fill='white'>"
            << (c.hit ? "H" : "-") << (c.answer ? "A" : "") << "</text>\n";
        }
      }
    }
    if (mi == 0) {
      for (size_t di = 0; di < depths.size(); ++di) {
        f << "<text x='10' y='" << top + static_cast<int>(di) * ch + 17 << "'>depth " << depths[di] << "%</text>\n";
      }
    }
  }
  f << "<text x='" << left << "' y='" << height - 18 << "'>context length (tokens)</text>\n</svg>\n";
}

void run_needle(const NeedleArgs& a) {
  FILE* table = table_stream(a.json);  // with --json, stdout carries the JSON line alone
  a.rt.apply();
  c10::InferenceMode guard;
  LoadedModel m = load_model(a.model, a.rt);
  const std::string haystack = read_file(a.haystack, "--haystack");
  const int64_t cache = a.sinks + a.window;
  std::vector<int64_t> lengths;
  if (a.lengths == "auto") {
    for (double f : {0.5, 1.0, 2.0, 4.0, 8.0, 16.0}) lengths.push_back(static_cast<int64_t>(f * cache));
  } else {
    for (double v : parse_numbers(a.lengths, "--lengths")) lengths.push_back(static_cast<int64_t>(v));
  }
  const std::vector<double> depths = parse_numbers(a.depths, "--depths");
  std::vector<std::string> modes;
  {
    std::stringstream ss(a.modes);
    std::string m2;
    while (std::getline(ss, m2, ',')) {
      if (m2 != "none" && m2 != "evicted" && m2 != "always" && m2 != "cluster") {
        throw std::invalid_argument("--memory: unknown mode '" + m2 + "', expected none, evicted, always or cluster");
      }
      modes.push_back(m2);
    }
  }
  const int64_t bos = prompt_bos(m);
  std::vector<NeedleCase> cases;
  for (int64_t len : lengths) {
    for (double d : depths) cases.push_back(build_needle_case(*m.tokenizer, bos, haystack, a.spec, len, d, a.sinks, a.window));
  }
  fs::create_directories(a.out);
  std::vector<Cell> cells;
  Progress progress("needle", static_cast<int64_t>(cases.size() * modes.size()), ProgressOptions{"cells"});
  const auto t0 = std::chrono::steady_clock::now();
  for (const std::string& mode : modes) {
    for (const NeedleCase& nc : cases) {
      cells.push_back(run_cell(m, a, nc, mode, (fs::path(a.out) / "memory").string()));
      progress.add();
    }
  }
  progress.done();
  fs::remove_all(fs::path(a.out) / "memory");
  nlohmann::json results = nlohmann::json::array();
  nlohmann::json summary = nlohmann::json::object();
  std::fprintf(table, "%-8s %8s %8s %8s %10s %10s\n", "memory", "cells", "hit", "answer", "keywords", "hit>cache");
  for (const std::string& mode : modes) {
    double hit = 0, ans = 0, kw = 0, far_hit = 0;
    int64_t n = 0, far = 0;
    for (const Cell& c : cells) {
      if (c.mode != mode) continue;
      ++n;
      hit += c.hit;
      ans += c.answer;
      kw += c.keywords;
      if (c.length > cache) {
        ++far;
        far_hit += c.hit;
      }
    }
    summary[mode] = {{"cells", n}, {"hit_rate", hit / n}, {"answer_rate", ans / n}, {"keyword_score", kw / n},
                     {"hit_rate_beyond_cache", far ? far_hit / far : 0.0}};
    std::fprintf(table, "%-8s %8ld %8.3f %8.3f %10.3f %10.3f\n", mode.c_str(), static_cast<long>(n), hit / n, ans / n, kw / n,
                far ? far_hit / far : 0.0);
  }
  for (const Cell& c : cells) {
    results.push_back({{"memory", c.mode}, {"length", c.length}, {"depth", c.depth}, {"hit", c.hit}, {"answer", c.answer},
                       {"keywords", c.keywords}, {"output", c.output}, {"evicted_tokens", c.evicted},
                       {"chunks", c.chunks}, {"retrievals", c.retrievals}});
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json doc = {{"model", a.model},   {"haystack", a.haystack}, {"cache", cache},
                        {"n_sink", a.sinks},  {"n_recent", a.window},   {"chunk_size", a.chunk},
                        {"overlap", a.overlap}, {"top_k", a.top_k},     {"inject", a.inject},
                        {"needle", a.spec.needle}, {"cloze", a.spec.cloze}, {"answer", a.spec.answer},
                        {"summary", summary}, {"cells", results},       {"seconds", secs}};
  std::ofstream(fs::path(a.out) / "results.json") << doc.dump(2) << "\n";
  write_heatmap((fs::path(a.out) / "heatmap.svg").string(), cells, modes, lengths, depths, cache);
  std::cerr << "wrote " << (fs::path(a.out) / "results.json").string() << " and heatmap.svg\n";
  if (a.json) print_json({{"command", "needle"}, {"summary", summary}, {"seconds", secs}, {"out", a.out}});
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
  CLI::App* n = app.add_subcommand("needle", "Needle-in-a-haystack grid through the streaming cache and memory");
  n->add_option("--model", a->model, "model folder")->required();
  n->add_option("--haystack", a->haystack, "haystack text file")->required();
  n->add_option("--out", a->out, "output folder (results.json, heatmap.svg)")->capture_default_str();
  n->add_option("--lengths", a->lengths, "context lengths in tokens, or auto (0.5x..16x the cache)")->capture_default_str();
  n->add_option("--depths", a->depths, "needle depths in percent")->capture_default_str();
  n->add_option("--memory", a->modes, "memory modes: none, evicted, always, cluster (centroids of the evicted K/V)")->capture_default_str();
  n->add_option("--needle", a->spec.needle, "needle sentence");
  n->add_option("--question", a->spec.question, "retrieval query");
  n->add_option("--cloze", a->spec.cloze, "cloze prompt the model continues");
  n->add_option("--answer", a->spec.answer, "expected answer text");
  n->add_option("--sinks", a->sinks, "attention sinks")->capture_default_str();
  n->add_option("--window", a->window, "recent window")->capture_default_str();
  n->add_option("--chunk", a->chunk, "tokens per memory chunk")->capture_default_str();
  n->add_option("--overlap", a->overlap, "chunk overlap in tokens")->capture_default_str();
  n->add_option("--top-k", a->top_k, "chunks retrieved per query")->capture_default_str();
  n->add_option("--memory-slots", a->memory, "memory-region slots (0 = top_k x chunk; cluster: 16 centroids)")->capture_default_str();
  n->add_option("--every", a->every, "always mode: retrieve every N ingested tokens")->capture_default_str();
  n->add_option("--inject", a->inject, "text or kv")->capture_default_str();
  n->add_option("--select", a->select, "topk, mmr or farthest")->capture_default_str();
  n->add_option("--max-new-tokens", a->max_new_tokens, "answer length")->capture_default_str();
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
