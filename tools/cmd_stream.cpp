// ppl: token-by-token perplexity over a long text through the streaming cache (StreamingLLM's evaluation).
// bench latency: per-token decode latency per cache size and policy; bench stream: latency and memory
// flatness over a very long stream.
#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>

#include "graph/progress.h"
#include "models/stream/kv_align.h"
#include "models/nn/gemv.h"
#include "models/nn/runtime.h"
#include "models/stream/stream.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace sinkflow::cli {

namespace {

using clock_type = std::chrono::steady_clock;

std::vector<int64_t> parse_list(const std::string& s, const std::string& what) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw std::invalid_argument(what + ": expected a comma-separated list of integers, found '" + s + "'");
    }
  }
  if (out.empty()) throw std::invalid_argument(what + ": empty list");
  return out;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  return v[i];
}

struct PplArgs {
  std::string model, text, csv, policy = "sink", kv_align;
  int64_t sinks = 4, window = 0, memory = 0, tokens = 0, segment = 1000, evict_block = 1;
  bool json = false;
  RuntimeOptions rt;
};

void run_ppl(const PplArgs& a) {
  a.rt.apply();
  c10::InferenceMode guard;
  LoadedModel m = load_model(a.model, a.rt);
  std::string text = read_file(a.text, "--text");
  std::vector<int64_t> ids = encode_prompt(m, text);
  if (a.tokens > 0 && static_cast<int64_t>(ids.size()) > a.tokens + 1) ids.resize(a.tokens + 1);
  if (ids.size() < 2) throw std::invalid_argument("--text '" + a.text + "' has fewer than 2 tokens");
  StreamConfig sc;
  sc.policy = parse_policy(a.policy);
  sc.cache.n_sink = a.sinks;
  sc.cache.n_memory = a.memory;
  sc.cache.n_recent = resolve_window(a.window, a.sinks, m.decoder->config());
  sc.cache.evict_block = a.evict_block;
  sc.cache.kv_dtype = parse_kv_dtype(a.rt.kv_dtype);
  if (sc.policy == Policy::kv_align) {
    sc.kv_align = KvAlign::load_for(a.model, a.kv_align);
  }
  StreamSession s(m.decoder, sc);
  std::ofstream csv;
  if (!a.csv.empty()) {
    csv.open(a.csv);
    if (!csv) throw std::invalid_argument("--csv '" + a.csv + "' cannot be written");
    csv << "index,position,token,nll\n";
  }
  const int64_t n = static_cast<int64_t>(ids.size()) - 1;
  Progress progress("ppl " + a.policy, n);
  std::vector<double> seg_nll;
  double total = 0, seg = 0;
  int64_t seg_n = 0;
  const auto t0 = clock_type::now();
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor logits = s.feed({ids[i]});
    const double nll = -at::log_softmax(logits[0], -1)[ids[i + 1]].item<double>();
    total += nll;
    seg += nll;
    if (++seg_n == a.segment || i == n - 1) {
      seg_nll.push_back(seg / seg_n);
      seg = 0;
      seg_n = 0;
    }
    if (csv.is_open()) csv << i << "," << s.position() - 1 << "," << ids[i + 1] << "," << nll << "\n";
    progress.set(i + 1);
  }
  progress.done();
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  const double ppl = std::exp(total / n);
  std::vector<double> seg_ppl;
  for (double v : seg_nll) seg_ppl.push_back(std::exp(v));
  std::cerr << "ppl " << a.policy << " sinks=" << s.cache().config().n_sink << " memory=" << a.memory << " window=" << sc.cache.n_recent
            << ": " << ppl << " over " << n << " tokens (" << n / secs << " tokens/s)\n";
  std::cerr << "per segment of " << a.segment << ":";
  for (double v : seg_ppl) std::cerr << " " << v;
  std::cerr << "\n";
  if (a.json) {
    print_json({{"command", "ppl"},       {"model", a.model},          {"policy", a.policy},
                {"n_sink", s.cache().config().n_sink}, {"n_memory", a.memory}, {"n_recent", sc.cache.n_recent},
                {"evict_block", a.evict_block},
                {"tokens", n},            {"ppl", ppl},                {"segment", a.segment},
                {"segment_ppl", seg_ppl}, {"tokens_per_s", n / secs},  {"ms_per_token", 1000.0 * secs / n},
                {"peak_rss_mb", peak_rss_bytes() / 1048576.0}});
  }
}

struct LatencyArgs {
  std::string model, caches = "256,512,1024,2048,4096", policies = "sink,recompute,dense", kv_align;
  std::string dtypes;  // "" = --dtype alone
  int64_t steps = 50, warmup = 5, sinks = 4, recompute_steps = 5, evict_block = 1, memory = 16, prefill_block = 512;
  bool json = false;
  RuntimeOptions rt;
};

// A stream of `policy` whose cache holds `cache` tokens, filled with random tokens in blocks of prefill_block
// (recompute: in one block, as it would otherwise rebuild its window per block); `fill_s` receives the fill's
// wall time. kv-align and cluster streams also keep sinks; cluster's centroids come out of the window (`memory`
// slots).
std::unique_ptr<StreamSession> filled_session(const std::shared_ptr<Decoder>& d, Policy policy, int64_t cache,
                                              const LatencyArgs& a, const std::shared_ptr<const KvAlign>& kv_align,
                                              std::mt19937_64& rng, double& fill_s) {
  const int64_t extra = a.steps + a.warmup;
  StreamConfig sc;
  sc.policy = policy;
  const bool sinks = policy == Policy::sink || policy == Policy::kv_align || policy == Policy::cluster;
  sc.cache.n_sink = sinks ? a.sinks : 0;
  sc.cache.n_memory = policy == Policy::cluster ? a.memory : 0;
  sc.cache.n_recent = cache - sc.cache.n_sink - sc.cache.n_memory;
  if (policy != Policy::dense) sc.cache.evict_block = a.evict_block;
  sc.cache.kv_dtype = parse_kv_dtype(a.rt.kv_dtype);
  sc.kv_align = kv_align;
  if (policy == Policy::dense) sc.cache.n_recent = cache + extra;  // never full while timed
  sc.prefill_block = policy == Policy::recompute ? cache : a.prefill_block;
  auto s = std::make_unique<StreamSession>(d, sc);
  std::vector<int64_t> fill(cache);
  for (auto& t : fill) t = static_cast<int64_t>(rng() % d->config().vocab_size);
  const auto t0 = clock_type::now();
  s->feed(fill);
  fill_s = std::chrono::duration<double>(clock_type::now() - t0).count();
  return s;
}

double timed_step(StreamSession& s, int64_t token) {
  const auto t0 = clock_type::now();
  at::Tensor logits = s.feed({token});
  (void)logits.data_ptr<float>();
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

// Bytes a one-token step must read, at the least: every matrix once (the token embedding: one row, unless it is
// also the output projection) and every cached key and value.
double decode_bytes(const Decoder& d, int64_t cache, at::ScalarType kv_dtype) {
  const ModelConfig& c = d.config();
  double bytes = 0;
  for (const auto& [name, p] : d.named_parameters()) {
    const bool embedding = name.find("embed_tokens") != std::string::npos || name.find("wte") != std::string::npos ||
                           name.find("wpe") != std::string::npos;
    const bool head = embedding && c.tie_word_embeddings && name.find("wpe") == std::string::npos;
    const int64_t rows = embedding && !head ? 1 : p.size(0);
    const double row = static_cast<double>(p.numel() / std::max<int64_t>(p.size(0), 1)) * p.element_size();
    // int8 matrices carry a float16 scale per block of a row (quant.h).
    const double scales = p.scalar_type() == at::kChar ? 2.0 * q8_blocks(p.size(1)) : 0.0;
    bytes += static_cast<double>(rows) * (row + scales);
  }
  const double kv_elem = static_cast<double>(c10::elementSize(kv_dtype));
  return bytes + 2.0 * static_cast<double>(c.n_layer * c.n_kv_head * c.d_head * cache) * kv_elem;
}

// One core's read bandwidth (bytes/s): the best of 5 sums over 1 GiB (far larger than any cache) at the widest
// vector width the CPU has, as a decode kernel reads its weights.
double read_bandwidth() {
  const int64_t n = (int64_t{1} << 30) / static_cast<int64_t>(sizeof(float));
  std::vector<float> buf(static_cast<size_t>(n), 1.f);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = clock_type::now();
    const double sum = stream_sum(buf.data(), n);  // exact: each float lane adds at most 2^23 ones
    const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (sum != static_cast<double>(n)) throw std::logic_error("read_bandwidth: bad sum");
    best = std::max(best, static_cast<double>(n) * sizeof(float) / s);
  }
  return best;
}

// For each cache size, one stream per dtype and policy, filled to the cache size, then single-token steps taken
// in turn (A, B, C, A, B, C, ...) so that the machine's load drifts equally over all of them. Each row also gives
// the fill's rate (tokens/s, prefill in blocks of --prefill-block) and how far the step is from the memory
// bandwidth floor (the bytes it must read / one core's read bandwidth, measured first).
void run_bench_latency(const LatencyArgs& a) {
  FILE* table = table_stream(a.json);  // with --json, stdout carries the JSON line alone
  a.rt.apply();
  c10::InferenceMode guard;
  const at::Device device = parse_device(a.rt.device);
  std::vector<std::string> dtype_names;  // canonical: "float32", not "auto" or "f32"
  std::vector<std::shared_ptr<Decoder>> decoders;
  for (const std::string& name : split(a.dtypes.empty() ? a.rt.dtype : a.dtypes)) {
    const at::ScalarType dtype = parse_dtype(name, device);
    dtype_names.push_back(dtype_name(dtype));
    decoders.push_back(load_decoder(a.model, device, dtype));
  }
  const double bandwidth = device.is_cpu() ? read_bandwidth() : 0.0;
  if (bandwidth > 0) std::fprintf(table, "one core reads %.1f GB/s (sum over 1 GiB, best of 5)\n", bandwidth / 1e9);
  nlohmann::json rows = nlohmann::json::array();
  std::fprintf(table, "%8s %9s %10s %9s %9s %9s %6s %9s %9s %8s\n", "cache", "dtype", "policy", "p50 ms", "p90 ms",
               "mean ms", "steps", "fill t/s", "floor ms", "x floor");
  std::mt19937_64 rng(7);
  std::shared_ptr<const KvAlign> kv_align;
  const std::vector<std::string> policies = split(a.policies);
  if (std::find(policies.begin(), policies.end(), "kv-align") != policies.end()) {
    kv_align = KvAlign::load_for(a.model, a.kv_align);
  }
  // One untimed fill per dtype first (as llama-batched-bench warms up): a process's first products of a shape build
  // their oneDNN kernels (~5 ms for the first, ~1-2 ms for each later one), which no later fill pays again.
  const std::vector<int64_t> caches = parse_list(a.caches, "--cache");
  for (const int64_t c : caches)
    if (c < 1) throw std::invalid_argument("--cache: cache sizes must be >= 1, found " + std::to_string(c));
  const int64_t warm_tokens = std::min(a.prefill_block, *std::min_element(caches.begin(), caches.end()));
  for (const auto& d : decoders) {
    double warm_s = 0;
    filled_session(d, Policy::dense, warm_tokens, a, kv_align, rng, warm_s);
  }
  for (int64_t cache : caches) {
    struct Cell {
      std::string dtype, policy;
      const Decoder* decoder = nullptr;
      std::unique_ptr<StreamSession> session;
      double fill_s = 0;
      std::vector<double> ms;
    };
    std::vector<Cell> cells;
    for (size_t di = 0; di < decoders.size(); ++di) {
      const auto& d = decoders[di];
      for (const std::string& pname : policies) {
        const Policy policy = parse_policy(pname);
        if (policy == Policy::dense && d->config().family == Family::gpt2 &&
            cache + a.steps + a.warmup > d->config().max_positions) {
          continue;
        }
        Cell cell;
        cell.dtype = dtype_names[di];
        cell.policy = pname;
        cell.decoder = d.get();
        try {
          cell.session = filled_session(d, policy, cache, a, kv_align, rng, cell.fill_s);
        } catch (const std::invalid_argument& e) {
          // A size this model cannot hold under this policy (e.g. beyond its max positions): a note, and the rows
          // already measured stay.
          std::fprintf(stderr, "bench latency: cache %ld, policy %s skipped: %s\n", static_cast<long>(cache),
                       pname.c_str(), e.what());
          continue;
        }
        cells.push_back(std::move(cell));
      }
    }
    for (int64_t i = 0; i < a.warmup + a.steps; ++i) {
      const int64_t tok = static_cast<int64_t>(rng() % decoders.front()->config().vocab_size);
      for (Cell& cell : cells) {
        const bool slow = cell.policy == "recompute";
        if (slow && (i < a.warmup - 1 || i >= a.warmup + a.recompute_steps)) continue;
        const double dt = timed_step(*cell.session, tok);
        if (i >= a.warmup) cell.ms.push_back(dt);
      }
    }
    // With block eviction (--evict-block) the work of kv-align and cluster comes once per block: their cost per
    // token is the mean, not the median.
    std::map<std::string, double> p50, mean;
    for (Cell& cell : cells) {
      const std::string key = cell.dtype + "/" + cell.policy;
      p50[key] = percentile(cell.ms, 0.5);
      const double p90 = percentile(cell.ms, 0.9);
      double sum = 0;
      for (double v : cell.ms) sum += v;
      mean[key] = cell.ms.empty() ? 0 : sum / static_cast<double>(cell.ms.size());
      const double fill_rate = static_cast<double>(cache) / std::max(cell.fill_s, 1e-9);
      const at::ScalarType kv_dtype = cell.session->cache().kv_dtype();
      const double floor_ms = bandwidth > 0 ? 1000.0 * decode_bytes(*cell.decoder, cache, kv_dtype) / bandwidth : 0.0;
      std::fprintf(table, "%8ld %9s %10s %9.3f %9.3f %9.3f %6zu %9.1f %9.2f %8.2f\n", static_cast<long>(cache),
                   cell.dtype.c_str(), cell.policy.c_str(), p50[key], p90, mean[key], cell.ms.size(), fill_rate,
                   floor_ms, floor_ms > 0 ? p50[key] / floor_ms : 0.0);
      rows.push_back({{"cache", cache}, {"dtype", cell.dtype}, {"policy", cell.policy}, {"p50_ms", p50[key]},
                      {"p90_ms", p90}, {"mean_ms", mean[key]}, {"steps", cell.ms.size()},
                      {"evict_block", a.evict_block}, {"fill_tokens_per_s", fill_rate}, {"floor_ms", floor_ms},
                      {"kv_dtype", dtype_name(kv_dtype)}});
    }
    for (const std::string& dt : dtype_names) {
      const std::string n = dt + "/";
      if (mean.count(n + "kv-align") && mean.count(n + "recompute")) {
        std::fprintf(table, "%8ld  %skv-align/recompute mean cost per token: %.3f\n", static_cast<long>(cache), n.c_str(),
                     mean[n + "kv-align"] / mean[n + "recompute"]);
      }
      if (p50.count(n + "sink") && p50.count(n + "recompute")) {
        std::fprintf(table, "%8ld  %srecompute/sink latency: %.1fx\n", static_cast<long>(cache), n.c_str(),
                     p50[n + "recompute"] / p50[n + "sink"]);
      }
      if (p50.count(n + "sink") && p50.count(n + "dense")) {
        std::fprintf(table, "%8ld  %ssink/dense cost ratio: %.3f\n", static_cast<long>(cache), n.c_str(),
                     p50[n + "sink"] / p50[n + "dense"]);
      }
    }
    std::fflush(table);
  }
  if (a.json)
    print_json({{"command", "bench latency"}, {"model", a.model}, {"device", a.rt.device},
                {"read_bandwidth_gbs", bandwidth / 1e9}, {"rows", rows}});
}

struct StreamBenchArgs {
  std::string model;
  int64_t tokens = 1000000, cache = 1024, sinks = 4, probe = 200;
  std::string checkpoints = "10000,100000,1000000";
  bool json = false;
  RuntimeOptions rt;
};

// Streams random tokens one at a time with the sink policy and reports, at each checkpoint, the median
// latency of the last `probe` steps and the resident memory: both must stay flat.
void run_bench_stream(const StreamBenchArgs& a) {
  FILE* table = table_stream(a.json);  // with --json, stdout carries the JSON line alone
  a.rt.apply();
  c10::InferenceMode guard;
  const at::Device device = parse_device(a.rt.device);
  auto d = load_decoder(a.model, device, parse_dtype(a.rt.dtype, device));
  StreamConfig sc;
  sc.cache.n_sink = a.sinks;
  sc.cache.n_recent = a.cache - a.sinks;
  sc.cache.kv_dtype = parse_kv_dtype(a.rt.kv_dtype);
  StreamSession s(d, sc);
  std::vector<int64_t> marks = parse_list(a.checkpoints, "--checkpoints");
  std::mt19937_64 rng(11);
  const int64_t vocab = d->config().vocab_size;
  std::vector<double> recent;
  nlohmann::json rows = nlohmann::json::array();
  Progress progress("bench stream", a.tokens);
  size_t next_mark = 0;
  for (int64_t i = 1; i <= a.tokens; ++i) {
    const auto t0 = clock_type::now();
    at::Tensor logits = s.feed({static_cast<int64_t>(rng() % vocab)});
    (void)logits.data_ptr<float>();
    recent.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
    if (static_cast<int64_t>(recent.size()) > a.probe) recent.erase(recent.begin());
    if (next_mark < marks.size() && i == marks[next_mark]) {
      const double p50 = percentile(recent, 0.5);
      const double rss = current_rss_bytes() / 1048576.0;
      std::fprintf(stderr, "\n%10ld tokens: p50 %.3f ms/token, rss %.1f MiB\n", static_cast<long>(i), p50, rss);
      rows.push_back({{"tokens", i}, {"p50_ms", p50}, {"rss_mb", rss}});
      ++next_mark;
    }
    progress.set(i);
  }
  progress.done();
  if (rows.size() >= 2) {
    std::fprintf(table, "latency last/first checkpoint: %.3f, rss last/first: %.3f\n",
                rows.back()["p50_ms"].get<double>() / rows.front()["p50_ms"].get<double>(),
                rows.back()["rss_mb"].get<double>() / rows.front()["rss_mb"].get<double>());
  }
  if (a.json) print_json({{"command", "bench stream"}, {"model", a.model}, {"cache", a.cache}, {"rows", rows}});
}

}  // namespace

void add_stream_commands(CLI::App& app) {
  auto p = std::make_shared<PplArgs>();
  CLI::App* ppl = app.add_subcommand("ppl", "Token-by-token perplexity of a long text through the streaming cache");
  ppl->add_option("--model", p->model, "model folder")->required();
  ppl->add_option("--text", p->text, "text file")->required();
  ppl->add_option("--policy", p->policy, "dense, window, sink, recompute, kv-align or cluster")->capture_default_str();
  ppl->add_option("--kv-align", p->kv_align, "kv-align networks folder (default MODEL/kv-align)");
  ppl->add_option("--evict-block", p->evict_block, "tokens evicted at once when the window is full")->capture_default_str();
  ppl->add_option("--sinks", p->sinks, "attention sinks")->capture_default_str();
  ppl->add_option("--window", p->window, "recent window (0 = 1020, or what fits a model with learned positions)")->capture_default_str();
  ppl->add_option("--memory", p->memory, "memory-region slots (cluster: the number of centroids)")->capture_default_str();
  ppl->add_option("--tokens", p->tokens, "evaluate at most this many tokens (0 = all)")->capture_default_str();
  ppl->add_option("--segment", p->segment, "tokens per reported segment")->capture_default_str();
  ppl->add_option("--csv", p->csv, "write per-token NLL to this CSV file");
  ppl->add_flag("--json", p->json, "print a JSON summary line");
  p->rt.add_to(*ppl);
  p->rt.add_kv_dtype_to(*ppl);
  ppl->callback([p] { run_ppl(*p); });

  CLI::App* bench = bench_command(app);
  auto l = std::make_shared<LatencyArgs>();
  CLI::App* lat = bench->add_subcommand("latency", "Per-token decode latency vs cache size and policy");
  lat->add_option("--model", l->model, "model folder")->required();
  lat->add_option("--cache", l->caches, "cache sizes")->capture_default_str();
  lat->add_option("--policies", l->policies, "policies to compare")->capture_default_str();
  lat->add_option("--steps", l->steps, "timed decode steps per cell")->capture_default_str();
  lat->add_option("--warmup", l->warmup, "untimed steps first")->capture_default_str();
  lat->add_option("--recompute-steps", l->recompute_steps, "timed steps for recompute (each re-runs the window)")->capture_default_str();
  lat->add_option("--sinks", l->sinks, "sinks for the sink, kv-align and cluster policies")->capture_default_str();
  lat->add_option("--evict-block", l->evict_block, "tokens evicted at once (all but dense)")->capture_default_str();
  lat->add_option("--kv-align", l->kv_align, "kv-align networks folder (default MODEL/kv-align)");
  lat->add_option("--memory", l->memory, "centroids of the cluster policy")->capture_default_str();
  lat->add_option("--dtypes", l->dtypes, "dtypes to compare, interleaved step by step (e.g. float32,bfloat16,int8; default: --dtype)");
  lat->add_option("--prefill-block", l->prefill_block, "tokens per forward when filling a cache (recompute: the whole cache)")->capture_default_str()->check(CLI::PositiveNumber);
  lat->add_flag("--json", l->json, "print a JSON summary line");
  l->rt.add_to(*lat);
  l->rt.add_kv_dtype_to(*lat);
  lat->callback([l] { run_bench_latency(*l); });

  auto st = std::make_shared<StreamBenchArgs>();
  CLI::App* str = bench->add_subcommand("stream", "Latency and memory over a very long sink-policy stream");
  str->add_option("--model", st->model, "model folder")->required();
  str->add_option("--tokens", st->tokens, "tokens to stream")->capture_default_str();
  str->add_option("--cache", st->cache, "cache size (sinks + window)")->capture_default_str();
  str->add_option("--checkpoints", st->checkpoints, "token counts at which to report")->capture_default_str();
  str->add_flag("--json", st->json, "print a JSON summary line");
  st->rt.add_to(*str);
  st->rt.add_kv_dtype_to(*str);
  str->callback([st] { run_bench_stream(*st); });
}

}  // namespace sinkflow::cli
