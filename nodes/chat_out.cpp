#include "nodes/chat_out.h"

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdio>
#include <mutex>

#include "nodes/messages.h"
#include "nodes/stage.h"

namespace sinkflow {

ChatOutConfig ChatOutConfig::from_params(const ParamMap& params, const std::string& where) {
  ChatOutConfig c;
  ParamReader r(params, where, c.origin);
  r.read_choice("format", c.format, {"auto", "text", "jsonl"});
  r.read("path", c.path);
  r.done();
  return c;
}

void ChatOutConfig::validate() const {}

namespace {

nlohmann::ordered_json turn_json(const std::string& content, const TurnReport& r) {
  nlohmann::ordered_json j;
  if (!r.command.empty()) {
    j["command"] = r.command;
    j["info"] = r.info;
    return j;
  }
  j["role"] = "assistant";
  j["content"] = content;
  j["tokens"] = r.reply_tokens;
  j["stop"] = r.stop;
  nlohmann::ordered_json hits = nlohmann::ordered_json::array();
  for (const TurnReport::Hit& h : r.retrieved)
    hits.push_back({{"chunk", h.chunk_id}, {"score", h.score}, {"positions", {h.first_position, h.last_position}},
                    {"placed", h.placed}, {"text", h.text}});
  j["retrieved"] = hits;
  if (!r.placement.empty()) j["placement"] = r.placement;
  j["timings"] = {{"prompt_tokens", r.prompt_tokens},
                  {"prefill_ms", r.prefill_s * 1e3},
                  {"first_token_ms", r.first_token_s * 1e3},
                  {"decode_ms", r.decode_s * 1e3},
                  {"tokens_per_s", r.decode_s > 0 ? r.reply_tokens / r.decode_s : 0.0}};
  return j;
}

class ChatOut : public NodeInstance {
 public:
  ChatOut(const NodeContext& context, ChatOutConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        stage_(*this, [this](const StepResult& r, Emitter<>&) { on_step(r); }) {
    jsonl_ = config_.format == "jsonl" || (config_.format == "auto" && !::isatty(0));
    interactive_ = !jsonl_ && config_.path.empty() && ::isatty(0) && ::isatty(1);
    if (!config_.path.empty()) {
      file_ = std::fopen(config_.path.c_str(), "w");
      if (!file_) throw std::runtime_error("path '" + config_.path + "' cannot be written");
    }
  }
  ~ChatOut() override {
    if (file_) std::fclose(file_);
  }
  void finish() override {
    std::FILE* f = out();
    if (!jsonl_ && !reply_.empty()) write("\n");  // a reply cut by a stop
    std::fflush(f);
  }

  std::vector<std::string> turns() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return turns_;
  }

 private:
  std::FILE* out() const { return file_ ? file_ : stdout; }
  void write(const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), out());
    std::fflush(out());
  }

  void on_step(const StepResult& r) {
    if (!file_) context().run.before_output();
    std::string text = r.text;
    if (reply_.empty()) text.erase(0, text.find_first_not_of(" \n"));  // a reply starts at its first word
    reply_ += text;
    if (!jsonl_ && !text.empty()) write(text);
    if (!r.end_of_turn) return;
    const TurnReport empty;
    const TurnReport& report = r.report ? *r.report : empty;
    const std::string line = turn_json(reply_, report).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      turns_.push_back(line);
    }
    if (jsonl_) {
      write(line + "\n");
    } else {
      std::string tail = report.command.empty() ? "\n" : report.info + "\n";
      if (interactive_) tail += "> ";
      write(tail);
    }
    reply_.clear();
  }

  ChatOutConfig config_;
  std::FILE* file_ = nullptr;
  bool jsonl_ = false, interactive_ = false;
  std::string reply_;
  mutable std::mutex mutex_;
  std::vector<std::string> turns_;
  Stage<In<StepResult>, Out<>> stage_;
};

}  // namespace

std::vector<std::string> chat_out_turns(const NodeInstance& node) {
  const auto* c = dynamic_cast<const ChatOut*>(&node);
  if (!c) throw std::invalid_argument("node '" + node.name() + "' is not a chat-out node");
  return c->turns();
}

NodeKind chat_out_kind() {
  NodeKind kind = make_node_kind<ChatOut, ChatOutConfig>(
      "chat-out", "writes a conversation's replies: streamed text on a terminal, one JSON line per reply otherwise",
      {in_port<StepResult>("step")}, {});
  kind.serial_only = true;
  return kind;
}

}  // namespace sinkflow
