#include "graph/trace.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>

namespace sinkflow {

namespace {
double percentile(const std::vector<int64_t>& sorted_ns, double q) {
  if (sorted_ns.empty()) return 0;
  const size_t k = static_cast<size_t>(q * static_cast<double>(sorted_ns.size() - 1) + 0.5);
  return static_cast<double>(sorted_ns[std::min(k, sorted_ns.size() - 1)]) / 1e3;
}
}  // namespace

std::vector<NodeProfile> make_profile_table(const std::vector<TraceNode>& nodes, const std::vector<ProfileEvent>& events) {
  std::vector<std::vector<int64_t>> durations(nodes.size());
  for (const auto& e : events)
    if (e.node < nodes.size()) durations[e.node].push_back(e.end_ns - e.start_ns);
  std::vector<NodeProfile> table;
  for (size_t i = 0; i < nodes.size(); ++i) {
    auto& d = durations[i];
    std::sort(d.begin(), d.end());
    NodeProfile p;
    p.node = nodes[i].name;
    p.kind = nodes[i].kind;
    p.executions = nodes[i].executions;
    p.max_queue = nodes[i].max_queue;
    int64_t total = 0;
    for (int64_t x : d) total += x;
    p.total_ms = static_cast<double>(total) / 1e6;
    p.p50_us = percentile(d, 0.50);
    p.p99_us = percentile(d, 0.99);
    p.max_us = d.empty() ? 0 : static_cast<double>(d.back()) / 1e3;
    table.push_back(p);
  }
  return table;
}

std::string format_profile_table(const std::vector<NodeProfile>& table) {
  size_t w = 4, wk = 4;
  for (const auto& p : table) {
    w = std::max(w, p.node.size());
    wk = std::max(wk, p.kind.size());
  }
  std::string out;
  char line[512];
  std::snprintf(line, sizeof(line), "%-*s  %-*s  %10s  %10s  %10s  %10s  %10s  %9s\n", int(w), "node", int(wk), "kind",
                "execs", "total_ms", "p50_us", "p99_us", "max_us", "max_queue");
  out += line;
  for (const auto& p : table) {
    std::snprintf(line, sizeof(line), "%-*s  %-*s  %10lld  %10.2f  %10.1f  %10.1f  %10.1f  %9lld\n", int(w),
                  p.node.c_str(), int(wk), p.kind.c_str(), static_cast<long long>(p.executions), p.total_ms, p.p50_us,
                  p.p99_us, p.max_us, static_cast<long long>(p.max_queue));
    out += line;
  }
  return out;
}

std::string chrome_trace_json(const std::string& pipeline, const std::vector<TraceNode>& nodes,
                              const std::vector<size_t>& order, const std::vector<ProfileEvent>& events) {
  using nlohmann::json;
  json trace_events = json::array();
  trace_events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 1}, {"args", {{"name", "sinkflow: " + pipeline}}}});
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int tid = static_cast<int>(i) + 1;
    trace_events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 1}, {"tid", tid},
                            {"args", {{"name", nodes[i].name + " (" + nodes[i].kind + ")"}}}});
    const auto pos = std::find(order.begin(), order.end(), i);
    trace_events.push_back({{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", 1}, {"tid", tid},
                            {"args", {{"sort_index", static_cast<int64_t>(pos - order.begin())}}}});
  }
  for (const auto& e : events) {
    if (e.node >= nodes.size()) continue;
    const double ts = static_cast<double>(e.start_ns) / 1e3;
    trace_events.push_back({{"name", nodes[e.node].name},
                            {"cat", nodes[e.node].kind},
                            {"ph", "X"},
                            {"pid", 1},
                            {"tid", static_cast<int>(e.node) + 1},
                            {"ts", ts},
                            {"dur", static_cast<double>(e.end_ns - e.start_ns) / 1e3},
                            {"args", {{"thread", e.thread}, {"queue", e.depth}}}});
    trace_events.push_back({{"name", "queue " + nodes[e.node].name},
                            {"ph", "C"},
                            {"pid", 1},
                            {"ts", ts},
                            {"args", {{"depth", e.depth}}}});
  }
  json doc = {{"traceEvents", std::move(trace_events)}, {"displayTimeUnit", "ms"}};
  return doc.dump();
}

}  // namespace sinkflow
