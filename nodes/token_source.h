// token-source  in: -  out: tokens: TokenBlock
// Reads a text document (a file or stdin) incrementally, `read_bytes` at a time, cut at a word boundary and
// tokenized piece by piece, and emits it in blocks of `block` tokens: memory stays bounded for a document of
// any length, and the source gate (the node's max_in_flight) is its backpressure. Or reads JSONL dialogue
// turns {"role": "user", "content": ...}, one line at a time: user turns are answered by model-step, other
// roles are context. An optional `prompt` follows the input as a final turn (a question about the document).
// Format `chat` (sinkflow chat): each line is a message ({"role", "content"} or plain text from the user), sent
// at once without tokens (model-step writes it through the chat template); "/quit" ends, other "/word" lines are
// commands (TokenBlock::command).
#pragma once

#include <cstdint>
#include <string>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct TokenSourceConfig {
  std::string model;                  // model resource whose tokenizer is used (required)
  std::string path;                   // input file; "-" = stdin; "" = no input (only the prompt)
  std::string format = "text";        // text | jsonl (dialogue turns, one JSON object per line) | chat (messages
                                      // for model-step's chat template, sent untokenized as soon as read)
  int64_t block = 256;                // tokens per TokenBlock, >= 1
  int64_t read_bytes = 16384;         // bytes read per refill (text), >= 64
  std::string prompt;                 // text appended after the input as a user turn ("" = none)
  std::string query;                  // retrieval query of the prompt turn ("" = the prompt itself)
  bool answer_input = false;          // text: the input itself is a turn (a prompt file): model-step answers it
  bool bos = true;                    // prepend the tokenizer's BOS (Llama family) at the start of the stream
  std::string turn_template = "{content}";  // jsonl: how a turn's text is written into the stream
  int64_t seq = 0;                    // sequence id of the blocks, >= 0
  ParamOrigin origin;

  static TokenSourceConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

NodeKind token_source_kind();

}  // namespace sinkflow
