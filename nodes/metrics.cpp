#include "nodes/metrics.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "nodes/messages.h"
#include "nodes/resources.h"
#include "nodes/stage.h"

namespace sinkflow {

MetricsConfig MetricsConfig::from_params(const ParamMap& params, const std::string& where) {
  MetricsConfig c;
  ParamReader r(params, where, c.origin);
  r.read("log", c.log);
  r.done();
  return c;
}

void MetricsConfig::validate() const {}

namespace {

using Clock = std::chrono::steady_clock;

class Metrics : public NodeInstance {
 public:
  Metrics(const NodeContext& context, MetricsConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        created_(Clock::now()),
        stage_(*this, [this](const StepResult& r, Emitter<>&) { on_step(r); }) {}

  void finish() override {
    if (!config_.log) return;
    const double decode_s = tokens_ > 1 ? std::chrono::duration<double>(last_ - first_).count() : 0.0;
    const RunCounters& c = context().run.counters;
    spdlog::info("metrics '{}': answers={} tokens_out={} first_token={:.3f}s decode={:.1f} tok/s tokens_in={} "
                 "evictions={} chunks_indexed={} retrievals={}",
                 name(), answers_, tokens_, tokens_ ? std::chrono::duration<double>(first_ - created_).count() : 0.0,
                 decode_s > 0 ? static_cast<double>(tokens_ - 1) / decode_s : 0.0, c.tokens_in.load(),
                 c.evictions.load(), c.chunks_indexed.load(), c.retrievals.load());
  }

 private:
  void on_step(const StepResult& r) {
    if (r.end_of_turn) ++answers_;
    if (r.tokens.empty()) return;
    const Clock::time_point now = r.produced == Clock::time_point{} ? Clock::now() : r.produced;
    if (tokens_ == 0) first_ = now;
    last_ = now;
    tokens_ += static_cast<int64_t>(r.tokens.size());
  }

  MetricsConfig config_;
  Clock::time_point created_, first_, last_;
  int64_t tokens_ = 0, answers_ = 0;
  Stage<In<StepResult>, Out<>> stage_;
};

}  // namespace

NodeKind metrics_kind() {
  NodeKind kind = make_node_kind<Metrics, MetricsConfig>("metrics", "counts generated tokens, time to first token",
                                                         {in_port<StepResult>("step")}, {});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
