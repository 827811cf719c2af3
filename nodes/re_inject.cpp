#include "nodes/re_inject.h"

#include <algorithm>

#include "models/io/limits.h"
#include "nodes/messages.h"
#include "nodes/resources.h"
#include "nodes/stage.h"

namespace sinkflow {

ReInjectConfig ReInjectConfig::from_params(const ParamMap& params, const std::string& where) {
  ReInjectConfig c;
  ParamReader r(params, where, c.origin);
  r.read("min_score", c.min_score);
  r.read("max_chunks", c.max_chunks);
  r.read("max_age", c.max_age);
  r.done();
  return c;
}

void ReInjectConfig::validate() const {
  origin.require(min_score >= -1 && min_score <= 1, "min_score", "a number in [-1, 1]", min_score);
  origin.require_in(max_chunks, "max_chunks", 0, kMaxRetrieved, " (0 = all)");
  origin.require_in(max_age, "max_age", 0, kMaxCount, " (0 = never)");
}

namespace {

class ReInject : public NodeInstance {
 public:
  ReInject(const NodeContext& context, ReInjectConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        stage_(*this, [this](const Retrieval& r, Emitter<Retrieval>& out) { on_hits(r, out); }) {}

 private:
  void on_hits(const Retrieval& r, Emitter<Retrieval>& out) {
    newest_ = std::max(newest_, r.step);
    // A sync answer always goes on: a turn waits for it.
    if (!r.sync && config_.max_age > 0 && newest_ - r.step > config_.max_age) return;
    Retrieval kept;
    kept.seq = r.seq;
    kept.step = r.step;
    kept.query_id = r.query_id;
    kept.sync = r.sync;
    for (const Retrieved& h : r.hits) {
      if (h.score < config_.min_score) continue;
      if (config_.max_chunks > 0 && static_cast<int64_t>(kept.hits.size()) >= config_.max_chunks) break;
      kept.hits.push_back(h);
    }
    if (!kept.hits.empty() || kept.sync) out.put<0>(kept);
  }

  ReInjectConfig config_;
  int64_t newest_ = 0;
  Stage<In<Retrieval>, Out<Retrieval>> stage_;
};

}  // namespace

NodeKind re_inject_kind() {
  NodeKind kind = make_node_kind<ReInject, ReInjectConfig>(
      "re-inject", "chooses retrieved chunks for model-step's memory region (staged, applied between steps)",
      {in_port<Retrieval>("hits")}, {out_port<Retrieval>("inject")});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
