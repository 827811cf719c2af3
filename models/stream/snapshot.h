// A stream's saved state, to resume it exactly (a conversation after a clean exit, a Ctrl-C or a kill): the
// StreamSession's tensors and a JSON document of the caller's own state, in one safetensors file written
// atomically (temporary file, fsync, rename: a crash leaves the previous snapshot or the new one, never a torn
// one). The file records what it was written by (stream_identity: the model's shape and a digest of its weights,
// the compute dtype, the policy and cache shape) and a digest of its tensors; a snapshot written by another model
// or cache, or damaged, is refused with a message naming the file and the first difference.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "models/stream/stream.h"

namespace sinkflow {

// What a snapshot must have been written by to fit `session`.
nlohmann::ordered_json stream_identity(const StreamSession& session);

// A copy of a session's state taken now, written later (once what it refers to is durable elsewhere).
struct Snapshot {
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // StreamSession::state_tensors(), copied
  nlohmann::ordered_json identity;                          // stream_identity()
  nlohmann::ordered_json meta;                              // the caller's own state
};
// std::invalid_argument for a policy that cannot be saved.
Snapshot take_snapshot(const StreamSession& session, nlohmann::ordered_json meta);
// Writes `snapshot` to `path` atomically; std::runtime_error when writing fails.
void write_snapshot(const std::string& path, const Snapshot& snapshot);

// Reads `path` into `session` (which must have been built like the one saved) and returns its meta document.
// std::invalid_argument naming the file: not a snapshot, damaged (digest), written by another model or cache
// ("... n_recent is 252 there, 128 here"), or a tensor that does not fit. `session` is unchanged on error.
nlohmann::ordered_json load_snapshot(const std::string& path, StreamSession& session);

}  // namespace sinkflow
