// re-inject  in: hits: Retrieval  out: inject: Retrieval (to model-step's step-boundary port `inject`)
// Chooses what enters the memory region: drops hits below min_score, keeps at most max_chunks, and drops a
// retrieval that is stale (made more than max_age tokens before the newest one seen; never the answer to a sync
// query, which a turn waits for). model-step applies what arrives between two of its steps.
#pragma once

#include <cstdint>
#include <string>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct ReInjectConfig {
  double min_score = -1.0;   // hits less similar than this are not injected, [-1, 1]
  int64_t max_chunks = 0;    // most chunks injected per retrieval, <= 4096; 0 = all
  int64_t max_age = 0;       // drop a retrieval older than this many tokens behind the newest, <= 2^40; 0 = never
  ParamOrigin origin;

  static ReInjectConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

NodeKind re_inject_kind();

}  // namespace sinkflow
