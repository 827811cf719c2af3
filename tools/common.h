// Options and helpers shared by the launcher's subcommands.
#pragma once

#include <cstdio>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "models/nn/decoder.h"
#include "models/text/generation_config.h"
#include "models/text/tokenizer.h"

namespace sinkflow::cli {

struct RuntimeOptions {
  std::string device = "cpu";   // cpu | cuda | cuda:N | mps
  std::string dtype = "auto";   // auto (float32 on CPU, float16 on GPUs) | float32 | float16 | bfloat16 | int8 (CPU)
  int threads = 1;              // LibTorch intra-op threads (and OpenBLAS); 1 leaves a core to the memory path
  std::string kv_dtype = "auto";  // the KV cache's elements: auto (the model's dtype) | float32 | bfloat16 | float16
  void add_to(CLI::App& app);
  void add_kv_dtype_to(CLI::App& app);  // --kv-dtype, for the commands that build a stream's cache
  void apply() const;           // configures threads
};

struct LoadedModel {
  std::shared_ptr<Decoder> decoder;
  std::unique_ptr<Tokenizer> tokenizer;
  GenerationConfig generation;  // BOS, stop ids and sampling defaults of the folder
};
LoadedModel load_model(const std::string& dir, const RuntimeOptions& rt);

// The token a prompt starts with (generation_config.h: add_bos_token, the post-processor, or the family's habit),
// -1 for none.
int64_t prompt_bos(const LoadedModel& model);
// Encodes a prompt as the model family expects it (prompt_bos first when there is one).
std::vector<int64_t> encode_prompt(const LoadedModel& model, const std::string& text);

// The recent window when the user gave none (<= 0): 1020 slots, or fewer so that sinks + window fit a
// model with learned absolute positions.
int64_t resolve_window(int64_t window, int64_t sinks, const ModelConfig& model);

// Thrown by a command that ended without an error but must not exit 0 (a run interrupted by SIGINT or SIGTERM
// exits 128 + the signal, as a shell reports it: 130, 143); main() returns `code`.
struct ExitStatus {
  int code;
};

// The `bench` command that several files add subcommands to (created by the first caller).
CLI::App* bench_command(CLI::App& app);

// Prints one line of JSON on stdout (the final summary of a run with --json).
void print_json(const nlohmann::json& j);
// Where a command's human-readable table goes: stdout, or stderr under --json (stdout then carries the one JSON
// line and nothing else).
std::FILE* table_stream(bool json);

std::string read_file(const std::string& path, const std::string& what);

}  // namespace sinkflow::cli
