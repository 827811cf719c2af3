// A conversation through a chat template, one turn at a time: the text each new user turn adds to a stream
// that already holds everything said before (the KV cache of an endless chat), computed as llama.cpp's
// common_chat_format_single does, by rendering the last exchange with and without the new message. Only the
// system message and the last exchange are kept, so an endless conversation renders in constant time and memory.
//
//   ChatTurns chat(select_chat_template(dir, ""));
//   ChatTurn t = chat.user("Hi");   // t.text: "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
//   ... feed t.text, decode the reply ...
//   chat.reply("Hello!");           // as decoded (the stream holds it; its end-of-turn marker is not)
//   chat.user("And?").text          // "<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\n"
//
// Each turn's text starts with what the template writes after the previous reply (its end-of-turn marker), so
// a reply cut at max_new_tokens or by a stop string is still closed before the next turn.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>

#include "models/text/chat_template.h"

namespace sinkflow {

struct ChatTurn {
  std::string text;               // what to feed
  size_t preamble_begin = 0;      // the preamble's bytes in `text`: [preamble_begin, preamble_end)
  size_t preamble_end = 0;        // (both 0 when there is none)
};

class ChatTurns {
 public:
  explicit ChatTurns(ChatTemplate t);

  // A message that is context, not a question (a system prompt, an assistant line of an imported dialogue):
  // fed with the next user turn.
  void add(const std::string& role, const std::string& content);
  // The text of a user turn. `preamble` (retrieved text, placement `prompt`) is written at the start of the
  // user's message, before `content`; its place in the returned text is reported (it is never indexed again).
  // Throws what the template throws (jinja::TemplateRaised, std::invalid_argument naming the template).
  ChatTurn user(const std::string& content, const std::string& preamble = "");
  // The assistant's reply to the last user turn, as decoded. `fed_after`: text the stream holds after the reply
  // (a stop string, "\nUser:"): the next turn's text leaves it out when it starts with it.
  void reply(const std::string& text, const std::string& fed_after = "");
  // Forgets the conversation (the system message stays).
  void reset();

  bool append_only() const { return append_only_; }  // false once a render did not extend the previous one
  const ChatTemplate& chat_template() const { return formatter_.chat_template(); }

  // What a resumed conversation needs: {"system", "last", "pending", "replied", "fed_after"}.
  nlohmann::ordered_json state() const;
  // Restores state(); std::invalid_argument naming `where` for anything else.
  void restore(const nlohmann::ordered_json& state, const std::string& where);

 private:
  ChatFormatter formatter_;
  nlohmann::ordered_json system_;   // null, or the system message
  nlohmann::ordered_json last_;     // the last exchange: [] or [user, assistant]
  nlohmann::ordered_json pending_;  // context messages not fed yet
  bool replied_ = false;            // the last user turn has its reply (last_ holds it)
  std::string fed_after_;           // what the stream holds after that reply
  bool append_only_ = true;
};

}  // namespace sinkflow
