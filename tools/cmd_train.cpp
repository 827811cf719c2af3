// train: trains one of sinkflow's own small models (Llama or GPT-2 family) from a JSON config.
// bench loss: a training step with the whole-logits loss vs the chunked one, and with freed memory given back
// to the system vs kept, side by side.
//   sinkflow train --family llama --config configs/train/llama.json --out data/models/sinkflow-llama [--resume]
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "graph/progress.h"
#include "models/stream/kv_align.h"
#include "models/nn/runtime.h"
#include "models/lab/train.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace sinkflow::cli {

namespace {

struct TrainArgs {
  std::string family = "llama", config, out, device;
  bool resume = false;
  int threads = -1;
  int64_t steps = 0;
  int64_t stop_after = -1;
  std::string command_line;
};

void run_train(const TrainArgs& a) {
  // Training reports its losses through spdlog: show them unless the user asked for another level.
  if (spdlog::get_level() == spdlog::level::warn) spdlog::set_level(spdlog::level::info);
  const Family family = parse_family(a.family);
  TrainConfig config = load_train_config(a.config, family);
  if (!a.device.empty()) config.device = a.device;
  if (a.threads >= 0) config.threads = a.threads;
  if (a.steps > 0) {
    if (config.warmup >= a.steps) throw std::invalid_argument("--steps must be > the config's warmup (" + std::to_string(config.warmup) + ")");
    config.steps = a.steps;
  }
  TrainOptions options;
  options.out_dir = a.out;
  options.resume = a.resume;
  if (a.stop_after == 0 || a.stop_after < -1) {
    throw std::invalid_argument("--stop-after must be >= 1, found " + std::to_string(a.stop_after));
  }
  options.stop_after = a.stop_after;
  options.command_line = a.command_line;
  ProgressOptions popts;
  popts.unit = "step";
  popts.plain_interval_s = 60;
  // Created at the first step so that a resumed run's rate and ETA count only the steps it runs.
  std::shared_ptr<Progress> progress;
  int64_t first = 0;
  options.on_step = [&](const TrainStatus& s) {
    if (!progress) {
      first = s.step - 1;
      const std::string label = "train " + a.family + (first > 0 ? " (from step " + std::to_string(first) + ")" : "");
      progress = std::make_shared<Progress>(label, config.steps - first, popts);
    }
    progress->set(s.step - first);
  };
  TrainResult r = train_model(config, options);
  if (progress) progress->done();
  spdlog::info("trained {} steps ({} tokens) in {:.0f} s; last loss {:.4f}, held-out loss {:.4f}", r.steps_done,
               r.tokens_trained, r.wall_s, r.final_loss, r.heldout_loss);
}

struct KvAlignArgs {
  std::string model, text, out;
  KvAlignTrainOptions o;
  bool json = false;
  RuntimeOptions rt;
};

void run_train_kv_align(const KvAlignArgs& a) {
  if (spdlog::get_level() == spdlog::level::warn) spdlog::set_level(spdlog::level::info);
  a.rt.apply();
  LoadedModel m = load_model(a.model, a.rt);
  std::vector<int64_t> ids;
  {
    c10::InferenceMode guard;
    ids = encode_prompt(m, read_file(a.text, "--text"));
  }
  const std::string out = a.out.empty() ? KvAlign::default_dir(a.model) : a.out;
  KvAlignTrainOptions o = a.o;
  ProgressOptions popts;
  popts.unit = "window";
  popts.plain_interval_s = 30;
  std::shared_ptr<Progress> pairs, steps;
  o.on_pairs = [&](int64_t done, int64_t total) {
    if (!pairs) pairs = std::make_shared<Progress>("kv-align pairs", total, popts);
    pairs->set(done);
  };
  o.on_step = [&](int64_t step, int64_t total, double) {
    if (pairs) pairs->done();
    if (!steps) {
      ProgressOptions p = popts;
      p.unit = "step";
      steps = std::make_shared<Progress>("kv-align train", total, p);
    }
    steps->set(step);
  };
  KvAlignTrainReport r;
  std::shared_ptr<KvAlign> net = train_kv_align(*m.decoder, ids, o, &r);
  if (steps) steps->done();
  net->save(out, r.to_json());
  spdlog::info("kv-align: {} training / {} held-out vectors; held-out normalised MSE keys {:.4f} (stale {:.4f}), values "
               "{:.4f} (stale {:.4f}); pairs {:.0f} s, training {:.0f} s; wrote {}",
               r.train_vectors, r.heldout_vectors, r.heldout_key, r.heldout_stale_key, r.heldout_value,
               r.heldout_stale_value, r.seconds_pairs, r.seconds_train, out);
  if (a.json) {
    nlohmann::json j = nlohmann::json::parse(r.to_json());
    j["command"] = "train-kv-align";
    j["model"] = a.model;
    j["out"] = out;
    print_json(j);
  }
}

struct LossBenchArgs {
  std::string model;
  int64_t batch = 8, seq = 256, reps = 5;
  bool json = false;
  RuntimeOptions rt;
};

// One training step's forward and backward (no optimizer) on `tokens` with the whole-logits loss (cross_entropy
// of forward_full) or the chunked one (linear_cross_entropy); returns {seconds, loss}.
std::pair<double, double> timed_step(const Decoder& d, const at::Tensor& tokens, bool chunked) {
  for (auto& [name, p] : d.named_parameters()) p.mutable_grad() = at::Tensor();
  const auto t0 = std::chrono::steady_clock::now();
  at::Tensor loss;
  if (chunked) {
    loss = lm_loss(d, tokens, d.device());  // the trainer's loss
  } else {
    const int64_t t = tokens.size(1) - 1;
    const at::Tensor logits = d.forward_full(tokens.narrow(1, 0, t));
    loss = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(at::kFloat),
                                                tokens.narrow(1, 1, t).reshape({-1}));
  }
  loss.backward();
  const double l = loss.item<double>();  // waits for the device
  return {std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), l};
}

void run_bench_loss(const LossBenchArgs& a) {
  FILE* table = table_stream(a.json);  // with --json, stdout carries the JSON line alone
  a.rt.apply();
  LoadedModel m = load_model(a.model, a.rt);
  const Decoder& d = *m.decoder;
  for (auto& [name, p] : d.named_parameters()) p.set_requires_grad(true);
  at::manual_seed(1);
  const at::Tensor tokens = at::randint(3, d.config().vocab_size, {a.batch, a.seq + 1}, at::kLong).to(d.device());
  // Four arms, alternating so that drift in machine speed hits all alike: the whole-logits loss or the chunked
  // one, with freed memory kept by the process (as every sinkflow command runs) or given back as glibc does.
  struct Arm {
    const char* name;
    bool chunked, keep;
    std::vector<double> seconds;
    double loss = 0;
  };
  std::vector<Arm> arms = {{"whole logits, memory given back", false, false, {}},
                           {"chunked, memory given back", true, false, {}},
                           {"whole logits, memory kept", false, true, {}},
                           {"chunked, memory kept", true, true, {}}};
  for (int64_t r = -1; r < a.reps; ++r) {  // r = -1: warm-up
    for (auto& arm : arms) {
      arm.keep ? keep_freed_memory() : return_freed_memory();
      auto [s, l] = timed_step(d, tokens, arm.chunked);
      if (r < 0) continue;
      arm.seconds.push_back(s);
      arm.loss = l;
    }
  }
  keep_freed_memory();
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double n = static_cast<double>(a.batch * a.seq), base = median(arms[0].seconds);
  std::fprintf(table, "training step (forward + backward) of %s, %lld x %lld tokens, vocab %lld, %s; median of %lld\n",
              a.model.c_str(), static_cast<long long>(a.batch), static_cast<long long>(a.seq),
              static_cast<long long>(d.config().vocab_size), a.rt.device.c_str(), static_cast<long long>(a.reps));
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& arm : arms) {
    const double s = median(arm.seconds);
    std::fprintf(table, "  %-32s %8.3f s  %8.0f tok/s  %5.2fx  loss %.6f\n", arm.name, s, n / s, base / s, arm.loss);
    rows.push_back({{"arm", arm.name}, {"chunked", arm.chunked}, {"memory_kept", arm.keep}, {"seconds", s},
                    {"tokens_per_s", n / s}, {"speedup", base / s}, {"loss", arm.loss}});
  }
  if (a.json) {
    print_json({{"command", "bench loss"}, {"model", a.model}, {"device", a.rt.device}, {"batch", a.batch},
                {"seq", a.seq}, {"reps", a.reps}, {"rows", rows}});
  }
}

}  // namespace

void add_train_commands(CLI::App& app) {
  {
    CLI::App* bench = bench_command(app);
    auto b = std::make_shared<LossBenchArgs>();
    CLI::App* l = bench->add_subcommand("loss", "Training step: whole-logits vs chunked loss, freed memory given back vs kept (alternating)");
    l->add_option("--model", b->model, "model folder (its shape and vocabulary; weights as loaded)")->required();
    l->add_option("--batch", b->batch, "sequences per step")->capture_default_str()->check(CLI::PositiveNumber);
    l->add_option("--seq", b->seq, "tokens per sequence")->capture_default_str()->check(CLI::PositiveNumber);
    l->add_option("--reps", b->reps, "alternating pairs of steps")->capture_default_str()->check(CLI::PositiveNumber);
    l->add_flag("--json", b->json, "print a JSON summary on stdout");
    b->rt.add_to(*l);
    l->callback([b] { run_bench_loss(*b); });
  }
  {
    auto k = std::make_shared<KvAlignArgs>();
    CLI::App* t = app.add_subcommand("train-kv-align", "Train KV-Align networks for a GPT-2-family model");
    t->add_option("--model", k->model, "model folder (GPT-2 family)")->required();
    t->add_option("--text", k->text, "training text (its last tenth gives the held-out pairs)")->required();
    t->add_option("--out", k->out, "output folder (default MODEL/kv-align)");
    t->add_option("--caches", k->o.caches, "cache sizes (sinks + window) to train for")->capture_default_str()->delimiter(',');
    t->add_option("--sinks", k->o.n_sink, "attention sinks")->capture_default_str();
    t->add_option("--windows", k->o.windows, "windows of text to draw pairs from")->capture_default_str();
    t->add_option("--shifts", k->o.shifts, "shifted copies of each window")->capture_default_str();
    t->add_option("--steps", k->o.steps, "optimizer steps")->capture_default_str();
    t->add_option("--batch", k->o.batch, "vectors per step")->capture_default_str();
    t->add_option("--lr", k->o.lr, "peak learning rate")->capture_default_str();
    t->add_option("--hidden", k->o.hidden, "hidden width of the networks")->capture_default_str();
    t->add_option("--seed", k->o.seed, "seed")->capture_default_str();
    t->add_flag("--json", k->json, "print a JSON summary on stdout");
    k->rt.add_to(*t);
    t->callback([k] { run_train_kv_align(*k); });
  }
  auto a = std::make_shared<TrainArgs>();
  CLI::App* t = app.add_subcommand("train", "Train a small Llama- or GPT-2-family model on a text corpus (JSON config)");
  t->add_option("--family", a->family, "llama or gpt2")->capture_default_str();
  t->add_option("--config", a->config, "training config (JSON), e.g. configs/train/llama.json")->required();
  t->add_option("--out", a->out, "output folder: final float16 model, train_log.json, checkpoint/")->required();
  t->add_flag("--resume", a->resume, "continue from OUT/checkpoint/");
  t->add_option("--device", a->device, "cpu or cuda (overrides the config)");
  t->add_option("--threads", a->threads, "LibTorch threads on CPU (overrides the config)");
  t->add_option("--steps", a->steps, "optimizer steps (overrides the config)");
  t->add_option("--stop-after", a->stop_after,
                "stop at this step with a checkpoint, keeping the config's schedule (a curriculum phase; --resume continues, "
                "possibly with other data)");
  t->callback([a, t] {
    a->command_line = "sinkflow train";
    for (const auto& o : t->get_options()) {
      if (o->count() == 0 || o->get_name() == "--help") continue;
      a->command_line += " " + o->get_name();
      if (o->get_name() != "--resume") a->command_line += " " + o->as<std::string>();
    }
    run_train(*a);
  });
}

}  // namespace sinkflow::cli
