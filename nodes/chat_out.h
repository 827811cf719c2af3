// chat-out  in: step: StepResult
// The conversation's output. `text`: each reply streams as it is decoded (flushed per piece), ends with a newline;
// a command's answer follows; on a terminal "> " asks for the next line. `jsonl`: one JSON line per reply
// {"role": "assistant", "content", "tokens", "stop", "retrieved": [...], "timings": {...}} and per command
// {"command", "info"}, written when the turn ends. `auto`: text when standard input is a terminal, else jsonl.
// Keeps the replies (replies()) for tests.
#pragma once

#include <string>
#include <vector>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct ChatOutConfig {
  std::string format = "auto";  // auto | text | jsonl
  std::string path;             // "" = stdout; else a file (truncated)
  ParamOrigin origin;

  static ChatOutConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

// The lines a built chat-out node wrote for each finished turn (the JSON object of each, in jsonl form, whatever
// the format); std::invalid_argument if `node` is not one.
std::vector<std::string> chat_out_turns(const NodeInstance& node);

NodeKind chat_out_kind();

}  // namespace sinkflow
