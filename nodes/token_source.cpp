#include "nodes/token_source.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>

#include "models/io/config.h"
#include "models/io/limits.h"
#include "nodes/input_stream.h"
#include "models/io/json_read.h"
#include "models/io/message_text.h"
#include "models/text/tokenizer.h"
#include "nodes/messages.h"
#include "nodes/resources.h"
#include "nodes/stage.h"

namespace sinkflow {

TokenSourceConfig TokenSourceConfig::from_params(const ParamMap& params, const std::string& where) {
  TokenSourceConfig c;
  ParamReader r(params, where, c.origin);
  r.require("model", c.model);
  r.read("path", c.path);
  r.read_choice("format", c.format, {"text", "jsonl", "chat"});
  r.read("block", c.block);
  r.read("read_bytes", c.read_bytes);
  r.read("prompt", c.prompt);
  r.read("query", c.query);
  r.read("answer_input", c.answer_input);
  r.read("bos", c.bos);
  r.read("turn_template", c.turn_template);
  r.read("seq", c.seq);
  r.done();
  return c;
}

void TokenSourceConfig::validate() const {
  origin.require_in(block, "block", 1, kMaxCacheTokens);
  origin.require_in(read_bytes, "read_bytes", 64, int64_t{1} << 26);
  origin.require(seq >= 0, "seq", "an integer >= 0", seq);
  origin.require(!path.empty() || !prompt.empty(), "path", "an input file (or a prompt)", path);
  origin.require(format != "chat" || !path.empty(), "path", "an input file or \"-\" (stdin) with format chat", path);
  origin.require(format != "chat" || prompt.empty(), "prompt",
                 "empty with format chat (the messages come from the input)", prompt.substr(0, 64));
  origin.require(turn_template.find("{content}") != std::string::npos, "turn_template",
                 "a template containing {content}", turn_template);
}

namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

class TokenSource : public NodeInstance {
 public:
  TokenSource(const NodeContext& context, TokenSourceConfig config)
      : NodeInstance(context),
        config_(std::move(config)),
        model_(context.resources.model(config_.model, config_.origin, "model")),
        tokenizer_(model_->tokenizer),
        source_(*this, [this](Emitter<TokenBlock>& out) { return produce(out); }) {
    if (!config_.path.empty()) {
      RunContext* run = &context.run;
      in_ = std::make_unique<InputStream>(config_.path, [run] { return run->stop_requested(); });
      interactive_ = config_.format == "chat" && config_.path == "-" && ::isatty(0) && ::isatty(1);
    } else {
      eof_ = true;
    }
    if (config_.bos && model_->generation.bos_id >= 0) pending_.push_back(model_->generation.bos_id);
    spdlog::info("token-source '{}': path={} format={} block={} prompt={}", name(), config_.path.empty() ? "-" : config_.path,
                 config_.format, config_.block, config_.prompt.empty() ? "none" : "'" + config_.prompt + "'");
  }

 private:
  bool produce(Emitter<TokenBlock>& out) {
    if (config_.format == "jsonl") return produce_jsonl(out);
    if (config_.format == "chat") return produce_chat(out);
    // Refill until a full block is pending (strictly more than a block while input remains, so that the
    // last block of the input is always known to be the last).
    while (!eof_ && static_cast<int64_t>(pending_.size()) <= config_.block) refill_text();
    if (in_ && in_->stopped()) return false;  // SIGINT while reading: no tail, no prompt
    if (static_cast<int64_t>(pending_.size()) > config_.block ||
        (!eof_ && static_cast<int64_t>(pending_.size()) == config_.block)) {
      emit(out, take(config_.block), false, {}, false);
      return true;
    }
    // End of the input: its tail, then the prompt.
    const bool has_prompt = !config_.prompt.empty();
    if (!has_prompt) {
      const bool turn = config_.answer_input;
      emit(out, take(static_cast<int64_t>(pending_.size())), turn, turn ? input_text_ : std::string(), true);
    } else {  // the input's tail (< one block) goes with the prompt's first block
      emit_turn(out, config_.prompt, config_.query.empty() ? config_.prompt : config_.query, true);
    }
    return false;
  }

  void refill_text() {
    std::string buf(static_cast<size_t>(config_.read_bytes), '\0');
    const size_t got = in_->read(buf.data(), buf.size());
    if (got < buf.size()) eof_ = true;  // the end of the input, or a stop
    buf.resize(got);
    carry_ += buf;
    size_t cut = carry_.size();
    if (!eof_) {
      // Cut before the whitespace that precedes the last word: byte-level BPE then tokenizes the pieces as
      // it would the whole text (the tail word stays with the next piece).
      cut = 0;
      for (size_t i = carry_.size() - 1; i > 0; --i) {
        if (is_space(carry_[i - 1]) && !is_space(carry_[i])) {
          cut = i - 1;
          break;
        }
      }
      if (cut == 0 && carry_.size() < (1u << 20)) return;  // one long word so far: read on
      if (cut == 0) cut = carry_.size();
    }
    const std::string piece = carry_.substr(0, cut);
    carry_.erase(0, cut);
    if (config_.answer_input && input_text_.size() < 4096) input_text_ += piece;
    const std::vector<int64_t> ids = tokenizer_->encode(piece);
    pending_.insert(pending_.end(), ids.begin(), ids.end());
  }

  bool produce_jsonl(Emitter<TokenBlock>& out) {
    if (!have_next_) read_turn();
    if (in_ && in_->stopped()) return false;
    if (!have_next_) {  // empty dialogue
      emit_turn(out, config_.prompt, config_.query.empty() ? config_.prompt : config_.query, true);
      return false;
    }
    const std::string role = next_role_, content = next_content_;
    have_next_ = false;
    read_turn();
    const bool last = !have_next_ && config_.prompt.empty();
    std::string text = config_.turn_template;
    text.replace(text.find("{content}"), 9, content);
    if (role == "user") {
      emit_turn(out, text, content, last);
    } else {
      const std::vector<int64_t> ids = tokenizer_->encode(text);
      pending_.insert(pending_.end(), ids.begin(), ids.end());
      while (static_cast<int64_t>(pending_.size()) > config_.block) emit(out, take(config_.block), false, {}, false);
      emit(out, take(static_cast<int64_t>(pending_.size())), false, {}, last);
    }
    if (!have_next_ && !config_.prompt.empty()) {
      emit_turn(out, config_.prompt, config_.query.empty() ? config_.prompt : config_.query, true);
      return false;
    }
    return have_next_;
  }

  // Chat: one message per line, sent as soon as it is read (never a line behind): a JSON object {"role",
  // "content"}, or (any other line) the user's text. "/quit" ends; "/reset", "/stats", "/memory" (any "/word")
  // are commands that model-step answers. At the end of the input an empty last block flushes the memory path.
  bool produce_chat(Emitter<TokenBlock>& out) {
    if (interactive_ && step_ == 0) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    std::string line;
    for (;;) {
      if (!in_->getline(line)) {
        if (in_->stopped()) return false;
        emit(out, {}, false, {}, true);
        return false;
      }
      ++line_no_;
      if (line.find_first_not_of(" \t\r") != std::string::npos) break;
      if (interactive_) {
        std::fputs("> ", stdout);
        std::fflush(stdout);
      }
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string role = "user", content = line;
    if (line.find_first_not_of(" \t") != std::string::npos && line[line.find_first_not_of(" \t")] == '{') {
      const std::string where = config_.path + ":" + std::to_string(line_no_);
      const nlohmann::json j = parse_json(line, where);
      if (!j.is_object() || !j.contains("content") || !j["content"].is_string())
        throw std::invalid_argument(where + ": expected a JSON object with a string field 'content', found " + json_preview(j));
      if (j.contains("role") && !j["role"].is_string())
        throw std::invalid_argument(where + ": field 'role': expected a string, found " + json_preview(j["role"]));
      role = j.value("role", std::string("user"));
      content = j["content"].get<std::string>();
    }
    TokenBlock b;
    b.seq = config_.seq;
    b.step = step_++;
    b.role = role;
    b.text = content;
    b.turn = role == "user";
    if (role == "user" && content.size() >= 2 && content.size() <= 16 && content[0] == '/' &&
        std::all_of(content.begin() + 1, content.end(), [](char c) { return std::islower(static_cast<unsigned char>(c)); })) {
      const std::string command = content.substr(1);
      if (command == "quit" || command == "exit") {
        emit(out, {}, false, {}, true);
        return false;
      }
      b.command = command;
      b.turn = false;
      b.role.clear();
    }
    out.put<0>(b);
    return true;
  }

  void read_turn() {
    std::string line;
    while (in_ && in_->getline(line)) {
      ++line_no_;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = config_.path + ":" + std::to_string(line_no_);
      nlohmann::json j;
      try {
        j = parse_json(line, where);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string(e.what()) + "; expected a JSON object {\"role\": ..., \"content\": ...} per line");
      }
      if (!j.is_object() || !j.contains("content") || !j["content"].is_string())
        throw std::invalid_argument(where + ": expected a JSON object with a string field 'content', found " + json_preview(j));
      next_role_ = j.value("role", std::string("user"));
      next_content_ = j["content"].get<std::string>();
      have_next_ = true;
      return;
    }
  }

  // A user turn: its tokens (split in blocks), the last block flagged as a turn carrying `query`.
  void emit_turn(Emitter<TokenBlock>& out, const std::string& text, const std::string& query, bool last) {
    const std::vector<int64_t> ids = tokenizer_->encode(text);
    pending_.insert(pending_.end(), ids.begin(), ids.end());
    while (static_cast<int64_t>(pending_.size()) > config_.block) emit(out, take(config_.block), false, {}, false);
    emit(out, take(static_cast<int64_t>(pending_.size())), true, query, last);
  }

  std::vector<int64_t> take(int64_t n) {
    std::vector<int64_t> ids(pending_.begin(), pending_.begin() + n);
    pending_.erase(pending_.begin(), pending_.begin() + n);
    return ids;
  }

  void emit(Emitter<TokenBlock>& out, std::vector<int64_t> tokens, bool turn, std::string text, bool last) {
    TokenBlock b;
    b.seq = config_.seq;
    b.step = step_++;
    b.tokens = std::move(tokens);
    b.turn = turn;
    b.text = std::move(text);
    b.last = last;
    out.put<0>(b);
  }

  TokenSourceConfig config_;
  std::shared_ptr<const ModelResource> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::unique_ptr<InputStream> in_;  // null: no input file, a prompt alone
  bool eof_ = false;
  std::string carry_;                // read but not yet tokenized (the tail word)
  std::string input_text_;           // answer_input: the input's text (first 4 KiB), the turn's query
  std::vector<int64_t> pending_;     // tokenized, not yet emitted (< 2 blocks + one refill)
  int64_t step_ = 0;
  int64_t line_no_ = 0;
  bool have_next_ = false;
  std::string next_role_, next_content_;
  bool interactive_ = false;         // chat on a terminal: "> " before each line
  Source<Out<TokenBlock>> source_;
};

}  // namespace

NodeKind token_source_kind() {
  return make_node_kind<TokenSource, TokenSourceConfig>(
      "token-source", "tokenizes a document (streamed in blocks) or JSONL dialogue turns, then an optional prompt", {},
      {out_port<TokenBlock>("tokens")});
}

}  // namespace sinkflow
