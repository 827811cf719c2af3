#include "graph/run_summary.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

namespace sinkflow {

RunSummary make_run_summary(const std::string& pipeline, const RunCounters& counters, double wall_s, bool stopped) {
  RunSummary s;
  s.pipeline = pipeline;
  s.stopped = stopped;
  s.wall_s = wall_s;
  s.tokens_in = counters.tokens_in.load();
  s.tokens_out = counters.tokens_out.load();
  s.tokens_per_s = wall_s > 0 ? static_cast<double>(s.tokens_in + s.tokens_out) / wall_s : 0.0;
  s.evictions = counters.evictions.load();
  s.chunks_indexed = counters.chunks_indexed.load();
  s.retrievals = counters.retrievals.load();
  s.peak_rss_kb = peak_rss_kb();
  return s;
}

int64_t peak_rss_kb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream s(line.substr(6));
      int64_t kb = 0;
      s >> kb;
      return kb;
    }
  }
  return 0;
}

std::string RunSummary::to_json() const {
  nlohmann::json j = {{"pipeline", pipeline},
                      {"stopped", stopped},
                      {"signal", signal},
                      {"wall_s", wall_s},
                      {"tokens_in", tokens_in},
                      {"tokens_out", tokens_out},
                      {"tokens_per_s", tokens_per_s},
                      {"evictions", evictions},
                      {"chunks_indexed", chunks_indexed},
                      {"retrievals", retrievals},
                      {"peak_rss_kb", peak_rss_kb}};
  return j.dump();
}

}  // namespace sinkflow
