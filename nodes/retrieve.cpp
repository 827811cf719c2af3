#include "nodes/retrieve.h"

#include <c10/core/InferenceMode.h>

#include "models/memory_path.h"
#include "nodes/messages.h"
#include "nodes/stage.h"

namespace sinkflow {

RetrieveConfig RetrieveConfig::from_params(const ParamMap& params, const std::string& where) {
  RetrieveConfig c;
  ParamReader r(params, where, c.origin);
  c.memory_params.read(r);
  r.read("k", c.k);
  r.read_choice("select", c.select, {"topk", "mmr", "farthest"});
  r.read("mmr_lambda", c.mmr_lambda);
  r.read("candidates", c.candidates);
  r.read("min_score", c.min_score);
  r.read("load_kv", c.load_kv);
  r.read("fail_at", c.fail_at);
  r.done();
  return c;
}

void RetrieveConfig::validate() const {
  memory_params.validate(origin);
  origin.require(k >= 0, "k", "an integer >= 0", k);
  origin.require(mmr_lambda >= 0 && mmr_lambda <= 1, "mmr_lambda", "a number in [0, 1]", mmr_lambda);
  origin.require(candidates >= 0, "candidates", "an integer >= 0", candidates);
  origin.require(min_score >= -1 && min_score <= 1, "min_score", "a number in [-1, 1]", min_score);
  origin.require(fail_at >= 0, "fail_at", "an integer >= 0", fail_at);
}

namespace {

class RetrieveNode : public NodeInstance {
 public:
  RetrieveNode(const NodeContext& context, RetrieveConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        memory_(shared_memory(context.run, config_.memory_params)),
        stage_(*this, [this](const Query& q, Emitter<Retrieval>& out) { on_query(q, out); }) {
    select_.k = static_cast<int>(config_.k);
    select_.mode = config_.select == "mmr" ? SelectOptions::Mode::mmr
                   : config_.select == "farthest" ? SelectOptions::Mode::farthest
                                                   : SelectOptions::Mode::topk;
    select_.mmr_lambda = static_cast<float>(config_.mmr_lambda);
    select_.candidates = static_cast<int>(config_.candidates);
    select_.min_score = static_cast<float>(config_.min_score);
    select_.validate();
  }

 private:
  void on_query(const Query& q, Emitter<Retrieval>& out) {
    c10::InferenceMode guard;
    check_fail_at(config_.fail_at, ++messages_);
    Retrieval r;
    r.seq = q.seq;
    r.step = q.step;
    if (memory_->store->size() > 0) r.hits = retrieve(*memory_->store, *memory_->embedder, q.text, select_, config_.load_kv);
    context().run.counters.retrievals.fetch_add(1, std::memory_order_relaxed);
    if (!r.hits.empty()) out.put<0>(r);
  }

  RetrieveConfig config_;
  std::shared_ptr<SharedMemory> memory_;
  SelectOptions select_;
  std::atomic<int64_t> messages_{0};
  Stage<In<Query>, Out<Retrieval>> stage_;
};

}  // namespace

NodeKind retrieve_kind() {
  return make_node_kind<RetrieveNode, RetrieveConfig>("retrieve", "query -> top-k / MMR chunks from the memory store",
                                                      {in_port<Query>("query")}, {out_port<Retrieval>("hits")});
}

}  // namespace sinkflow
