// The end-of-run numbers the launcher prints (and writes as JSON with --json).
#pragma once

#include <cstdint>
#include <string>

#include "nodes/run_context.h"

namespace sinkflow {

struct RunSummary {
  std::string pipeline;
  bool stopped = false;        // ended by request_stop() (SIGINT) rather than by its sources running out
  int signal = 0;              // the signal that stopped it (SIGINT 2, SIGTERM 15), 0 if none
  double wall_s = 0;           // from activation to the end of the finish() hooks
  int64_t tokens_in = 0;       // RunCounters::tokens_in
  int64_t tokens_out = 0;      // RunCounters::tokens_out
  double tokens_per_s = 0;     // (tokens_in + tokens_out) / wall_s; 0 when wall_s is 0
  int64_t evictions = 0;
  int64_t chunks_indexed = 0;
  int64_t retrievals = 0;
  int64_t peak_rss_kb = 0;     // VmHWM of this process (0 where /proc is unavailable)

  // One JSON object whose keys are the field names.
  std::string to_json() const;
};

RunSummary make_run_summary(const std::string& pipeline, const RunCounters& counters, double wall_s, bool stopped);

// Peak resident set size of this process in KiB, from /proc/self/status (VmHWM); 0 if unavailable.
int64_t peak_rss_kb();

}  // namespace sinkflow
