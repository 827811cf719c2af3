// Registration of the launcher's subcommands (one function per tools/cmd_*.cpp file).
#pragma once

#include <CLI/CLI.hpp>

namespace sinkflow::cli {

void add_model_commands(CLI::App& app);   // make-model, generate      (cmd_model.cpp)
void add_stream_commands(CLI::App& app);  // ppl, bench latency/stream (cmd_stream.cpp)
void add_needle_commands(CLI::App& app);  // needle, copy              (cmd_needle.cpp)
void add_train_commands(CLI::App& app);   // train, bench loss         (cmd_train.cpp)
void add_run_commands(CLI::App& app);     // run, bench pipeline       (cmd_run.cpp)
void add_template_commands(CLI::App& app);  // template                (cmd_template.cpp)
void add_chat_commands(CLI::App& app);      // chat                    (cmd_chat.cpp)
void add_bench_memory_command(CLI::App& app);  // bench memory         (cmd_bench_memory.cpp)

inline void register_commands(CLI::App& app) {
  add_model_commands(app);
  add_stream_commands(app);
  add_needle_commands(app);
  add_train_commands(app);
  add_run_commands(app);
  add_template_commands(app);
  add_chat_commands(app);
  add_bench_memory_command(app);
}

}  // namespace sinkflow::cli
