#include "models/stream/snapshot.h"

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/io/json_read.h"
#include "models/io/safetensors.h"
#include "models/nn/decoder.h"

namespace sinkflow {

namespace {

constexpr const char* kFormat = "sinkflow-stream-snapshot-1";

// FNV-1a, 64 bits, over the identity and meta texts, then each tensor's name and bytes in order.
uint64_t digest(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& identity,
                const std::string& meta) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  mix(identity.data(), identity.size());
  mix(meta.data(), meta.size());
  for (const auto& [name, t] : tensors) {
    mix(name.data(), name.size());
    const at::Tensor c = t.contiguous();
    mix(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  }
  return h;
}

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

nlohmann::ordered_json stream_identity(const StreamSession& session) {
  const Decoder& d = session.decoder();
  const ModelConfig& m = d.config();
  const CacheConfig& c = session.cache().config();
  // The weights: a digest of the output matrix's first rows as float (cheap, and it differs between checkpoints).
  const at::Tensor head = d.head_weight();
  const at::Tensor rows = head.narrow(0, 0, std::min<int64_t>(head.size(0), 16)).to(at::kCPU, at::kFloat).contiguous();
  nlohmann::ordered_json id;
  id["model_type"] = m.model_type;
  id["vocab_size"] = m.vocab_size;
  id["hidden_size"] = m.d_model;
  id["num_hidden_layers"] = m.n_layer;
  id["num_key_value_heads"] = m.n_kv_head;
  id["head_dim"] = m.d_head;
  id["weights"] = hex(digest({{"head", rows}}, "", ""));
  id["dtype"] = std::string(c10::toString(d.dtype()));
  id["weight_dtype"] = std::string(c10::toString(d.weight_dtype()));
  id["policy"] = policy_name(session.config().policy);
  id["n_sink"] = c.n_sink;
  id["n_memory"] = c.n_memory;
  id["n_recent"] = c.n_recent;
  id["evict_block"] = c.evict_block;
  id["evict_kv"] = c.evict_kv;
  return id;
}

Snapshot take_snapshot(const StreamSession& session, nlohmann::ordered_json meta) {
  Snapshot s;
  for (auto& [name, t] : session.state_tensors()) s.tensors.emplace_back(name, t.clone());
  s.identity = stream_identity(session);
  s.meta = std::move(meta);
  return s;
}

void write_snapshot(const std::string& path, const Snapshot& snapshot) {
  std::map<std::string, std::string> md;
  md["format"] = kFormat;
  md["identity"] = snapshot.identity.dump();
  md["meta"] = snapshot.meta.dump();
  md["digest"] = hex(digest(snapshot.tensors, md["identity"], md["meta"]));
  save_safetensors(path, snapshot.tensors, md);
}

nlohmann::ordered_json load_snapshot(const std::string& path, StreamSession& session) {
  const SafetensorsFile file(path);
  const auto& md = file.metadata();
  auto field = [&](const char* key) -> const std::string& {
    const auto it = md.find(key);
    if (it == md.end())
      throw std::invalid_argument(path + ": not a sinkflow stream snapshot (metadata '" + key + "' is missing)");
    return it->second;
  };
  if (field("format") != kFormat)
    throw std::invalid_argument(path + ": expected a snapshot of format " + kFormat + ", found '" + field("format") + "'");
  const nlohmann::ordered_json saved = parse_ordered_json(field("identity"), path + " (metadata 'identity')");
  const nlohmann::ordered_json here = stream_identity(session);
  for (const auto& [key, value] : here.items()) {
    if (!saved.contains(key) || saved[key] != value)
      throw std::invalid_argument(path + ": written by another model or cache: " + key + " is " +
                                  (saved.contains(key) ? saved[key].dump() : std::string("absent")) + " there, " +
                                  value.dump() + " here");
  }
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, at::Tensor> by_name;
  // Views of the mapping (a private mapping: a later save that replaces the file leaves them as read); the session
  // copies them into its own buffers.
  for (const std::string& name : file.names()) by_name.emplace(name, file.tensor(name));
  // The digest covers the tensors in the order they were written (session.state_tensors()'s order).
  for (const auto& [name, like] : session.state_tensors()) {
    const auto it = by_name.find(name);
    if (it == by_name.end()) throw std::invalid_argument(path + ": tensor '" + name + "' is missing");
    tensors.emplace_back(name, it->second);
  }
  const std::string found = hex(digest(tensors, field("identity"), field("meta")));
  if (found != field("digest"))
    throw std::invalid_argument(path + ": damaged: its digest is " + found + ", the file says " + field("digest"));
  const nlohmann::ordered_json meta = parse_ordered_json(field("meta"), path + " (metadata 'meta')");
  session.restore_state(by_name, path);
  return meta;
}

}  // namespace sinkflow
