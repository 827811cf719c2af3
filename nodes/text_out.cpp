#include "nodes/text_out.h"

#include <cstdio>
#include <mutex>

#include "nodes/messages.h"
#include "nodes/resources.h"
#include "nodes/stage.h"

namespace sinkflow {

TextOutConfig TextOutConfig::from_params(const ParamMap& params, const std::string& where) {
  TextOutConfig c;
  ParamReader r(params, where, c.origin);
  r.read("path", c.path);
  r.read("quiet", c.quiet);
  r.done();
  return c;
}

void TextOutConfig::validate() const {}

namespace {

class TextOut : public NodeInstance {
 public:
  TextOut(const NodeContext& context, TextOutConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        stage_(*this, [this](const StepResult& r, Emitter<>&) { on_step(r); }) {
    if (!config_.quiet && !config_.path.empty() && config_.path != "-") {
      file_ = std::fopen(config_.path.c_str(), "w");
      if (!file_) throw std::runtime_error("path '" + config_.path + "' cannot be written");
    }
  }
  ~TextOut() override {
    if (file_) std::fclose(file_);
  }
  void finish() override {
    if (file_) std::fflush(file_);
  }

  std::string text() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }

 private:
  void on_step(const StepResult& r) {
    const std::string piece = r.text + (r.end_of_turn ? "\n" : "");
    {
      std::lock_guard<std::mutex> lock(mutex_);
      text_ += piece;
    }
    if (config_.quiet || piece.empty()) return;
    if (!file_) context().run.before_output();
    FILE* f = file_ ? file_ : config_.path == "-" ? stderr : stdout;
    std::fwrite(piece.data(), 1, piece.size(), f);
    std::fflush(f);
  }

  TextOutConfig config_;
  FILE* file_ = nullptr;
  mutable std::mutex mutex_;
  std::string text_;
  Stage<In<StepResult>, Out<>> stage_;
};

}  // namespace

std::string text_out_text(const NodeInstance& node) {
  const auto* t = dynamic_cast<const TextOut*>(&node);
  if (!t) throw std::invalid_argument("node '" + node.name() + "' is not a text-out node");
  return t->text();
}

NodeKind text_out_kind() {
  NodeKind kind = make_node_kind<TextOut, TextOutConfig>("text-out", "streams generated text to stdout or a file",
                                                         {in_port<StepResult>("step")}, {});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
