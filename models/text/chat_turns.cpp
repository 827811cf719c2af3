#include "models/text/chat_turns.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <stdexcept>

namespace sinkflow {

namespace {

using Json = nlohmann::ordered_json;

Json message(const std::string& role, const std::string& content) {
  Json m = Json::object();
  m["role"] = role;
  m["content"] = content;
  return m;
}

std::string strip(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

ChatTurns::ChatTurns(ChatTemplate t)
    : formatter_(std::move(t)), system_(nullptr), last_(Json::array()), pending_(Json::array()) {}

void ChatTurns::add(const std::string& role, const std::string& content) {
  if (role == "system" && system_.is_null() && last_.empty() && pending_.empty()) {
    system_ = message(role, content);
    return;
  }
  pending_.push_back(message(role, content));
}

ChatTurn ChatTurns::user(const std::string& content, const std::string& preamble) {
  // prev: what the stream already holds (system, the last exchange); next: prev + the new messages.
  Json prev = Json::array();
  if (!system_.is_null()) prev.push_back(system_);
  for (const Json& m : last_) prev.push_back(m);
  Json next = prev;
  for (const Json& m : pending_) next.push_back(m);
  next.push_back(message("user", preamble + content));
  const std::string full = formatter_.render(next, true);
  ChatTurn turn;
  if (last_.empty()) {
    // The first turn: the whole render (a system message that came alone renders with it).
    turn.text = full;
  } else {
    const std::string before = formatter_.render(prev, false);
    size_t cut = 0;
    if (full.compare(0, before.size(), before) == 0) {
      cut = before.size();
    } else {
      cut = static_cast<size_t>(std::mismatch(full.begin(), full.end(), before.begin(), before.end()).first - full.begin());
      if (append_only_)
        spdlog::warn("chat template {}: a new turn does not extend the previous render (it rewrites {} bytes of "
                     "history); the stream keeps what it has and goes on from the first difference",
                     formatter_.chat_template().origin, before.size() - cut);
      append_only_ = false;
    }
    // The end-of-turn marker after the reply: what `before` writes after the reply's text. The stream holds the
    // reply without it (decoding stops before the end-of-turn token is fed, or at the token limit).
    std::string close;
    if (replied_) {
      const std::string reply = strip(last_.back()["content"].get<std::string>());
      const size_t at = reply.empty() ? std::string::npos : before.rfind(reply);
      if (at != std::string::npos) close = before.substr(at + reply.size(), cut - std::min(cut, at + reply.size()));
    }
    turn.text = close + full.substr(cut);
    if (!fed_after_.empty() && turn.text.compare(0, fed_after_.size(), fed_after_) == 0) turn.text.erase(0, fed_after_.size());
  }
  if (!preamble.empty()) {
    const size_t at = turn.text.rfind(preamble + content);
    if (at != std::string::npos) {
      turn.preamble_begin = at;
      turn.preamble_end = at + preamble.size();
    }
  }
  last_ = Json::array({next.back()});
  pending_ = Json::array();
  replied_ = false;
  fed_after_.clear();
  return turn;
}

void ChatTurns::reply(const std::string& text, const std::string& fed_after) {
  if (last_.empty() || replied_) throw std::logic_error("ChatTurns::reply without a user turn to answer");
  last_.push_back(message("assistant", strip(text)));
  replied_ = true;
  fed_after_ = fed_after;
}

void ChatTurns::reset() {
  last_ = Json::array();
  pending_ = Json::array();
  replied_ = false;
  fed_after_.clear();
}

Json ChatTurns::state() const {
  Json s = Json::object();
  s["system"] = system_;
  s["last"] = last_;
  s["pending"] = pending_;
  s["replied"] = replied_;
  s["fed_after"] = fed_after_;
  return s;
}

void ChatTurns::restore(const Json& s, const std::string& where) {
  auto messages_ok = [](const Json& list) {
    if (!list.is_array() || list.size() > 64) return false;
    for (const Json& m : list)
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
          !m["content"].is_string())
        return false;
    return true;
  };
  if (!s.is_object() || !s.contains("system") || !s.contains("last") || !s.contains("pending") ||
      !s.contains("replied") || !s["replied"].is_boolean() || !s.contains("fed_after") || !s["fed_after"].is_string() || !messages_ok(s["last"]) || !messages_ok(s["pending"]) ||
      !(s["system"].is_null() || messages_ok(Json::array({s["system"]}))))
    throw std::invalid_argument(where + ": expected the chat state {system, last, pending, replied}, found another value");
  system_ = s["system"];
  last_ = s["last"];
  pending_ = s["pending"];
  replied_ = s["replied"].get<bool>();
  fed_after_ = s["fed_after"].get<std::string>();
}

}  // namespace sinkflow
