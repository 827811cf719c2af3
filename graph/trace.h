// The throughput profile of a run: a per-node table and a Chrome/Perfetto trace (open it in
// ui.perfetto.dev or chrome://tracing: one track per node; a counter track per node for its queue).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nodes/profiler.h"

namespace sinkflow {

struct NodeProfile {
  std::string node;
  std::string kind;
  int64_t executions = 0;  // bodies run (always counted)
  double total_ms = 0;     // time spent in bodies (0 unless profiling was on)
  double p50_us = 0;       // median body time
  double p99_us = 0;
  double max_us = 0;
  int64_t max_queue = 0;   // most messages queued or running at the node at once (always tracked)
};

// What the trace needs to know of each node; index i is ProfileEvent::node == i.
struct TraceNode {
  std::string name;
  std::string kind;
  int64_t executions = 0;
  int64_t max_queue = 0;
};

// One row per node, in `nodes` order; timing columns from `events`.
std::vector<NodeProfile> make_profile_table(const std::vector<TraceNode>& nodes, const std::vector<ProfileEvent>& events);

// A fixed-width text table, one line per node, with a header line.
std::string format_profile_table(const std::vector<NodeProfile>& table);

// Chrome trace-event JSON: {"traceEvents": [...], "displayTimeUnit": "ms"}. Complete events (ph "X",
// ts/dur in microseconds) with pid 1 and tid = node index + 1, so that each node is its own track;
// metadata events name the process and each track ("src (count-source)") and sort the tracks in `order`
// (node indices); args of each event carry the OS thread (0, 1, ...) and the queue depth at its start;
// a counter event ("queue <node>") per execution draws each node's queue.
std::string chrome_trace_json(const std::string& pipeline, const std::vector<TraceNode>& nodes,
                              const std::vector<size_t>& order, const std::vector<ProfileEvent>& events);

}  // namespace sinkflow
