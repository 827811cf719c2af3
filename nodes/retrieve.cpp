#include "nodes/retrieve.h"

#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <deque>

#include "models/memory/memory_path.h"
#include "nodes/messages.h"
#include "nodes/resources.h"
#include "nodes/stage.h"

namespace sinkflow {

// The fields of SelectOptions a pipeline sets (`select:`); exclude is per query.
void read_select(ParamReader& r, SelectOptions& s) {
  r.read("k", s.k);
  r.read_enum("mode", s.mode, kSelectModeNames);
  double lambda = s.mmr_lambda, min_score = s.min_score;
  r.read("mmr_lambda", lambda);
  r.read("candidates", s.candidates);
  r.read("min_score", min_score);
  s.mmr_lambda = static_cast<float>(lambda);
  s.min_score = static_cast<float>(min_score);
}

RetrieveConfig RetrieveConfig::from_params(const ParamMap& params, const std::string& where) {
  RetrieveConfig c;
  ParamReader r(params, where, c.origin);
  r.require("memory", c.memory);
  r.nested("select", [&](ParamReader& s) { read_select(s, c.select); });
  r.read("load_kv", c.load_kv);
  r.done();
  return c;
}

void RetrieveConfig::validate() const {
  origin.check("select", [&] { select.validate(); });
}

namespace {

class RetrieveNode : public NodeInstance {
 public:
  RetrieveNode(const NodeContext& context, RetrieveConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        memory_(context.resources.memory(config_.memory, config_.origin, "memory")),
        stage_(*this, [this](const Query& q, Emitter<Retrieval>& out) { on_query(q, out); },
               [this](const int64_t& step, Emitter<Retrieval>& out) { on_indexed(step, out); }) {
    spdlog::info("retrieve '{}': memory={} k={} mode={}", name(), config_.memory, config_.select.k,
                 enum_name(kSelectModeNames, config_.select.mode));
  }

  void finish() override {
    if (!waiting_.empty() && !context().run.failed() && !context().run.stop_requested())
      throw std::runtime_error("sync retrieval: a query waited for index-insert, which never reported (connect "
                               "index.indexed -> " + name() + ".indexed)");
  }

 private:
  void on_query(const Query& q, Emitter<Retrieval>& out) {
    if (q.sync && memory_->indexed() < q.wait_for) {
      waiting_.push_back(q);
      return;
    }
    answer(q, out);
  }

  // index-insert stored everything up to `step` (MemoryResource::indexed() already says so): answer the
  // queries that waited for it, in order.
  void on_indexed(const int64_t&, Emitter<Retrieval>& out) {
    while (!waiting_.empty() && memory_->indexed() >= waiting_.front().wait_for) {
      const Query q = std::move(waiting_.front());
      waiting_.pop_front();
      answer(q, out);
    }
  }

  void answer(const Query& q, Emitter<Retrieval>& out) {
    c10::InferenceMode guard;
    Retrieval r;
    r.seq = q.seq;
    r.step = q.step;
    r.query_id = q.id;
    r.sync = q.sync;
    if (memory_->store->size() > 0)
      r.hits = retrieve(*memory_->store, *memory_->embedder, q.text, config_.select, config_.load_kv || q.load_kv);
    context().run.counters.retrievals.fetch_add(1, std::memory_order_relaxed);
    if (!r.hits.empty() || r.sync) out.put<0>(r);
  }

  RetrieveConfig config_;
  std::shared_ptr<MemoryResource> memory_;
  std::deque<Query> waiting_;  // sync queries waiting for index-insert
  Stage<In<Query, int64_t>, Out<Retrieval>> stage_;
};

}  // namespace

NodeKind retrieve_kind() {
  NodeKind kind = make_node_kind<RetrieveNode, RetrieveConfig>(
      "retrieve", "query -> top-k / MMR chunks from the memory store (sync queries wait for index-insert)",
      {in_port<Query>("query"), in_port<int64_t>("indexed")}, {out_port<Retrieval>("hits")});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
