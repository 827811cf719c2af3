// metrics  in: step: StepResult
// Counts generated tokens and answers, measures time to first token and decode tokens/s, and logs one
// info line at the end. The run-wide counters (RunCounters) are filled by the nodes that do the work
// (model-step: tokens in/out and evictions; index-insert: chunks; retrieve: retrievals).
#pragma once

#include <cstdint>
#include <string>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct MetricsConfig {
  bool log = true;        // log the summary line at the end of the run
  ParamOrigin origin;

  static MetricsConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

NodeKind metrics_kind();

}  // namespace sinkflow
