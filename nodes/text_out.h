// text-out  in: step: StepResult
// Streams generated text to stdout (flushed per piece, so a reader sees tokens as they come) or to a file;
// ends each answer with a newline. Keeps what it wrote (text()) for tests.
#pragma once

#include <cstdint>
#include <string>

#include "nodes/node_kind.h"
#include "nodes/param_map.h"

namespace sinkflow {

struct TextOutConfig {
  std::string path;        // "" = stdout; "-" = stderr (beside a JSON summary on stdout); else a file (truncated)
  bool quiet = false;      // write nothing (keep the text for text() only)
  ParamOrigin origin;

  static TextOutConfig from_params(const ParamMap& params, const std::string& where);
  void validate() const;
};

// The text a built text-out node has received; std::invalid_argument if `node` is not one.
std::string text_out_text(const NodeInstance& node);

NodeKind text_out_kind();

}  // namespace sinkflow
