// Reading JSON nobody checked (config.json, safetensors headers, tokenizer files, a memory directory's meta.json,
// JSONL input): one bounded way for the whole project. A streaming check runs first and builds nothing: nesting
// deeper than a limit (a 100,000-deep array crashed the process once: its error message dumped the value
// recursively), text longer than a limit, a key repeated in an object (which value wins is a guess) and malformed
// text are errors naming the source; only then is the value built.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace sinkflow {

struct JsonLimits {
  std::size_t max_depth = 64;                    // nested arrays and objects (Hugging Face files: under 10)
  std::size_t max_bytes = std::size_t{1} << 30;  // 1 GiB (tokenizer.json of real models: up to ~20 MB)
};

// Parses `text` (from `what`: a path, or "path:line") as JSON. Throws std::invalid_argument "WHAT: ..." for
// malformed JSON (with the byte offset), nesting deeper than limits.max_depth, more than limits.max_bytes, or a key
// repeated in one object (with the key).
nlohmann::json parse_json(std::string_view text, const std::string& what, const JsonLimits& limits = {});

// The text of the file at `path`, read up to max_bytes and no further (a device such as /dev/zero included), for
// every reader of files nobody checked (JSON here, YAML in graph/). Messages start with `label` (the path, or
// "config file 'x.yaml'"): more than max_bytes and a directory are std::invalid_argument, a file that cannot be
// opened or read std::runtime_error. `kind` names the expected file ("JSON").
std::string read_bounded_file(const std::string& path, std::size_t max_bytes, const std::string& label,
                              const std::string& kind);

// read_bounded_file for a JSON file: labelled by its path, at most limits.max_bytes.
std::string read_json_text(const std::string& path, const JsonLimits& limits = {});

// read_json_text, then parse_json.
nlohmann::json read_json_file(const std::string& path, const JsonLimits& limits = {});

// parse_json with the same checks, into a value whose objects keep the key order of the text (what a template or
// a Python program iterating a dict would see; nlohmann::json sorts keys).
nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& what, const JsonLimits& limits = {});

}  // namespace sinkflow
