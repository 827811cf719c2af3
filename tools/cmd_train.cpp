// train: trains one of sinkflow's own small models (Llama or GPT-2 family) from a JSON config.
//   sinkflow train --family llama --config configs/train/llama.json --out data/models/sinkflow-llama [--resume]
#include <spdlog/spdlog.h>

#include <memory>
#include <string>

#include "graph/progress.h"
#include "models/train.h"
#include "tools/commands.h"

namespace sinkflow::cli {

namespace {

struct TrainArgs {
  std::string family = "llama", config, out, device;
  bool resume = false;
  int threads = -1;
  int64_t steps = 0;
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
  options.command_line = a.command_line;
  ProgressOptions popts;
  popts.unit = "step";
  popts.plain_interval_s = 60;
  auto progress = std::make_shared<Progress>("train " + a.family, config.steps, popts);
  options.on_step = [progress](const TrainStatus& s) { progress->set(s.step); };
  TrainResult r = train_model(config, options);
  progress->done();
  spdlog::info("trained {} steps ({} tokens) in {:.0f} s; last loss {:.4f}, held-out loss {:.4f}", r.steps_done,
               r.tokens_trained, r.wall_s, r.final_loss, r.heldout_loss);
}

}  // namespace

void add_train_commands(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* t = app.add_subcommand("train", "Train a small Llama- or GPT-2-family model on a text corpus (JSON config)");
  t->add_option("--family", a->family, "llama or gpt2")->capture_default_str();
  t->add_option("--config", a->config, "training config (JSON), e.g. configs/train/llama.json")->required();
  t->add_option("--out", a->out, "output folder: final float16 model, train_log.json, checkpoint/")->required();
  t->add_flag("--resume", a->resume, "continue from OUT/checkpoint/");
  t->add_option("--device", a->device, "cpu or cuda (overrides the config)");
  t->add_option("--threads", a->threads, "LibTorch threads on CPU (overrides the config)");
  t->add_option("--steps", a->steps, "optimizer steps (overrides the config)");
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
