#include "tools/common.h"

#include <cstdio>
#include <fstream>
#include <algorithm>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include "models/nn/runtime.h"

namespace sinkflow::cli {

CLI::App* bench_command(CLI::App& app) {
  try {
    return app.get_subcommand("bench");
  } catch (const CLI::OptionNotFound&) {
    CLI::App* bench = app.add_subcommand("bench", "Benchmarks (ratios measured side by side in one run)");
    bench->require_subcommand(1);
    return bench;
  }
}

void RuntimeOptions::add_to(CLI::App& app) {
  app.add_option("--device", device, "cpu, cuda, cuda:N or mps")->capture_default_str();
  app.add_option("--dtype", dtype, "auto, float32, float16 (accelerators), bfloat16 or int8 (on the CPU: bfloat16 or int8 matrices, float32 compute)")->capture_default_str();
  app.add_option("--threads", threads, "LibTorch/OpenBLAS intra-op threads")->capture_default_str();
}

void RuntimeOptions::add_kv_dtype_to(CLI::App& app) {
  app.add_option("--kv-dtype", kv_dtype,
                 "KV cache elements: auto (the model's dtype), float32, bfloat16 (half the bytes a step reads) or "
                 "float16")
      ->capture_default_str()
      ->check([](const std::string& v) {
        try {
          parse_kv_dtype(v);
          return std::string();
        } catch (const std::invalid_argument& e) {
          return std::string(e.what());
        }
      });
}

void RuntimeOptions::apply() const { configure_threads(threads); }

LoadedModel load_model(const std::string& dir, const RuntimeOptions& rt) {
  const at::Device device = parse_device(rt.device);
  LoadedModel m;
  m.decoder = load_decoder(dir, device, parse_dtype(rt.dtype, device));
  m.tokenizer = load_tokenizer(dir);
  m.generation = load_generation_config(dir, *m.tokenizer, m.decoder->config().family);
  return m;
}

int64_t prompt_bos(const LoadedModel& model) {
  return model.generation.bos_id;
}

std::vector<int64_t> encode_prompt(const LoadedModel& model, const std::string& text) {
  std::vector<int64_t> ids;
  if (prompt_bos(model) >= 0) ids.push_back(prompt_bos(model));
  auto body = model.tokenizer->encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  if (ids.empty() && model.tokenizer->bos_id() >= 0) ids.push_back(model.tokenizer->bos_id());
  if (ids.empty()) ids.push_back(model.tokenizer->eos_id() >= 0 ? model.tokenizer->eos_id() : 0);
  return ids;
}

int64_t resolve_window(int64_t window, int64_t sinks, const ModelConfig& model) {
  if (window > 0) return window;
  int64_t w = 1020;
  if (model.family == Family::gpt2) w = std::min<int64_t>(w, model.max_positions - sinks);
  return w;
}

void print_json(const nlohmann::json& j) {
  std::cout << j.dump() << std::endl;
}

std::FILE* table_stream(bool json) { return json ? stderr : stdout; }

std::string read_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(what + " '" + path + "' cannot be opened");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace sinkflow::cli
