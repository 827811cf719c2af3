// sinkflow: the launcher. Each subcommand lives in a tools/cmd_*.cpp file; errors are caught once, here.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <iostream>
#include <stdexcept>

#include "models/nn/runtime.h"
#include "tools/commands.h"
#include "tools/common.h"

int main(int argc, char** argv) {
  sinkflow::keep_freed_memory();
  sinkflow::select_blas_kernels();
  // Logs and warnings go to stderr: stdout carries results alone (the --json line, generated text).
  spdlog::set_default_logger(spdlog::stderr_color_mt("sinkflow"));
  CLI::App app{"sinkflow: streaming LLM inference with attention sinks and a memory of evicted text"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "sinkflow " SINKFLOW_VERSION);
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")->capture_default_str();
  app.parse_complete_callback([&] { spdlog::set_level(spdlog::level::from_str(log_level)); });
  sinkflow::cli::register_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; a bad command line is bad input: exit 2, as every other bad input.
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const sinkflow::cli::ExitStatus& e) {
    return e.code;
  } catch (const std::invalid_argument& e) {
    std::cerr << "sinkflow: error: " << e.what() << std::endl;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sinkflow: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
