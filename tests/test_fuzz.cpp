// Fuzz harness (issue 19): random mutations of the files sinkflow reads (config.json, a safetensors header,
// tokenizer.json, a YAML config, a memory directory's meta.json, a JSONL line, a chat template, a messages file),
// each parsed in a forked child with a 2 GiB address-space cap and a 10 s alarm. A case passes when the child exits
// 0 (accepted), 2 (bad input: std::invalid_argument) or 1 (another exception), and fails on a signal (a crash, the
// alarm, an allocation past the cap). The default run does 60 cases per file kind; `[.slow]` does 1,000 per kind.
// Then the mutations that change the model (config.json fields and safetensors header entries of whole
// checkpoints, loaded with load_decoder: never exit 0 as another model; the classification is above
// fuzz_models) and the files of a memory directory (opened as a ChunkStore: recovered from the log or refused
// naming the file). Counts are printed.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "graph/yaml_spec.h"
#include "models/io/checkpoint.h"
#include "models/io/config.h"
#include "models/io/json_read.h"
#include "models/io/safetensors.h"
#include "models/lab/make_model.h"
#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/memory/vector_index.h"
#include "models/nn/bert.h"
#include "models/nn/decoder.h"
#include "models/text/chat_template.h"
#include "models/text/tokenizer.h"
#include "tests/test_util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
namespace fs = std::filesystem;

namespace {

// One random mutation: flipped bytes, a cut, a duplicated slice, a deep nest or a huge number spliced in.
std::string mutate(std::string s, std::mt19937_64& rng) {
  if (s.empty()) s = "{}";
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % std::max<size_t>(n, 1)); };
  switch (rng() % 6) {
    case 0:
      for (int i = 0, n = 1 + static_cast<int>(rng() % 8); i < n; ++i) s[pick(s.size())] = static_cast<char>(rng());
      break;
    case 1: s.resize(pick(s.size())); break;
    case 2: {
      const size_t a = pick(s.size()), len = pick(std::min<size_t>(s.size() - a, 4096));
      s.insert(pick(s.size()), s.substr(a, len));
      break;
    }
    case 3: {
      const int depth = 50 + static_cast<int>(rng() % 100000);
      s.insert(pick(s.size()), std::string(depth, '[') + std::string(depth, ']'));
      break;
    }
    case 4: {
      static const char* const numbers[] = {"1e300", "-1", "0", "9223372036854775807", "18446744073709551616",
                                            "1000000000000", "2147483648", "-2147483649", "1e-300", "NaN"};
      // Replace the first run of digits after a random point.
      const size_t at = s.find_first_of("0123456789", pick(s.size()));
      if (at != std::string::npos) {
        const size_t end = s.find_first_not_of("0123456789.", at);
        s.replace(at, (end == std::string::npos ? s.size() : end) - at, numbers[rng() % 10]);
      }
      break;
    }
    default: {
      const std::string junk = "\"\\u0000\xff\xfe{}[],:\"";
      s.insert(pick(s.size()), junk.substr(pick(junk.size())));
      break;
    }
  }
  return s;
}

// What a forked child did: its exit code (or -signal) and the message of what it threw or complained of.
struct Outcome {
  int code = 0;
  std::string message;
};

// Runs `body` in a forked child with a 2 GiB address-space cap and a 10 s alarm. The child exits 0 when `body`
// returns "", 3 when it returns a complaint (an oracle's: something accepted that must not be), 2 on
// std::invalid_argument and 1 on another exception; the message comes back through a pipe. A signal (a crash,
// the alarm, an allocation past the cap) gives -signal.
Outcome run_capped(const std::function<std::string()>& body) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    rlimit as{rlim_t{2} << 30, rlim_t{2} << 30};
    ::setrlimit(RLIMIT_AS, &as);
    ::alarm(10);
    int code = 0;
    std::string message;
    try {
      message = body();
      code = message.empty() ? 0 : 3;
    } catch (const std::invalid_argument& e) {
      code = 2;
      message = e.what();
    } catch (const std::exception& e) {
      code = 1;
      message = e.what();
    }
    if (::write(fds[1], message.data(), std::min<size_t>(message.size(), 4000)) < 0) code = 4;
    ::_exit(code);
  }
  ::close(fds[1]);
  Outcome out;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof buffer)) > 0;) out.message.append(buffer, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  out.code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  return out;
}

// Cases by outcome, printed as one line per family of mutations.
struct Tally {
  std::string kind;
  std::map<int, int> counts;
  int cases() const {
    int n = 0;
    for (const auto& [code, k] : counts) n += k;
    return n;
  }
  void print() {
    std::fprintf(stderr, "fuzz %-12s %d cases: accepted %d, bad input (exit 2) %d, other error (exit 1) %d\n",
                 kind.c_str(), cases(), counts[0], counts[2], counts[1]);
  }
};

void fuzz(const std::string& kind, int cases, const std::string& seed_text, const fs::path& file,
          const std::function<void()>& parse) {
  std::mt19937_64 rng(std::hash<std::string>{}(kind));
  Tally tally{kind};
  for (int i = 0; i < cases; ++i) {
    std::string text = seed_text;
    for (int m = 0, n = 1 + static_cast<int>(rng() % 3); m < n; ++m) text = mutate(text, rng);
    test::write_file(file, text);
    const int code = run_capped([&] {
                       parse();
                       return std::string();
                     }).code;
    ++tally.counts[code];
    if (code < 0) {
      test::write_file(file.string() + ".crash", text);
      FAIL(kind << ": case " << i << " ended by signal " << -code << " (input kept in " << file << ".crash)");
    }
  }
  tally.print();
  CHECK(tally.counts[0] + tally.counts[1] + tally.counts[2] == cases);
}

// A safetensors file's JSON header and data section, and a file written from them (its length prefix anew).
std::pair<std::string, std::string> split_safetensors(const std::string& file) {
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(file[static_cast<size_t>(i)]);
  return {file.substr(8, header_len), file.substr(8 + header_len)};
}

void write_safetensors(const fs::path& path, const std::string& header, const std::string& data) {
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  test::write_file(path, file + header + data);
}

void fuzz_all(int cases) {
  const fs::path dir = test::temp_dir("fuzz");
  MakeModelOptions o;
  o.config = shape_preset("tiny-llama");
  make_model((dir / "model").string(), o);
  const fs::path model = dir / "model";

  const std::string config = test::read_file(model / "config.json");
  fuzz("config.json", cases, config, dir / "config.json",
       [&] { ModelConfig::from_json_file((dir / "config.json").string()); });

  // The safetensors file: its JSON header mutated, then written back with its (new) length and the original data.
  const auto [header, data] = split_safetensors(test::read_file(model / "model.safetensors"));
  fuzz("safetensors", cases, header, dir / "header.json", [&] {
    write_safetensors(dir / "model.safetensors", test::read_file(dir / "header.json"), data);
    SafetensorsFile((dir / "model.safetensors").string());
  });

  fs::create_directories(dir / "tok");
  fuzz("tokenizer", cases, test::read_file(model / "tokenizer.json").substr(0, 200000), dir / "tok" / "tokenizer.json",
       [&] { load_tokenizer((dir / "tok").string()); });

  const std::string yaml = "pipeline: count\nparams:\n  src: {count: 5, start: 2}\n  triple:\n    factor: 10\n"
                           "run: {json: true}\n";
  fuzz("yaml", cases, yaml, dir / "config.yaml", [&] { parse_config(test::read_file(dir / "config.yaml"), "config.yaml"); });

  const std::string jsonl = R"({"role": "user", "content": "What is the best thing to do in San Francisco?"})";
  fuzz("jsonl", cases, jsonl, dir / "line.jsonl", [&] { parse_json(test::read_file(dir / "line.jsonl"), "line.jsonl:1"); });

  // A real chat template (Qwen3's: loops, namespace, string methods) mutated, parsed and rendered over a conversation
  // with every role it handles; and a mutated messages file.
  const std::string conversation = R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello"}, {"role": "tool", "content": "42"}])";
  const fs::path templates = fs::path(SINKFLOW_SOURCE_DIR) / "tests/data/chat_templates";
  fuzz("chat template", cases, test::read_file(templates / "qwen3.jinja"), dir / "chat_template.jinja", [&] {
    const ChatTemplate t{test::read_file(dir / "chat_template.jinja"), "chat_template.jinja", std::nullopt, "<|im_end|>"};
    ChatFormatter(t).render(nlohmann::json::parse(conversation), true);
  });
  fuzz("messages", cases, conversation, dir / "messages.json", [&] {
    render_chat(builtin_chat_template("chatml"), read_chat_messages((dir / "messages.json").string()));
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Mutations that change the model: config.json fields and safetensors header entries of whole tiny checkpoints,
// each loaded with load_decoder (load_bert for a bert config). The oracle, in the child: a checkpoint that loads must be the model it was, or
// one of the changes below that no loader can tell from a well-formed checkpoint.
//
// config.json fields, by what a change does:
//  - shape fields decide a tensor's name or shape, so the checkpoint contradicts any change: vocab_size,
//    hidden_size (n_embd), intermediate_size (n_inner), num_hidden_layers (n_layer), num_key_value_heads, head_dim,
//    tie_word_embeddings, attention_bias, mlp_bias, n_positions (gpt2's wpe rows), max_position_embeddings and
//    type_vocab_size of bert (its embedding rows), and model_type between types whose tensors differ (qwen2:
//    biases, qwen3: q/k norms, gemma: four norms a layer, phi3: fused matrices, gpt2, bert). A change
//    must be refused naming the field or a tensor. The oracle: expected_tensors() of the config that loaded equals
//    the original's, else the child complains (exit 3).
//  - behaviour fields change the computation and no tensor, so a valid value loads: rope_theta, rope_scaling,
//    partial_rotary_factor, rms_norm_eps (layer_norm_epsilon, layer_norm_eps), max_position_embeddings of RoPE models,
//    sliding_window, layer_types, use_sliding_window, max_window_layers, query_pre_attn_scalar, the soft-caps,
//    model_type between llama and mistral (the same tensors; mistral reads sliding_window), and
//    num_attention_heads where no shape depends on it (gpt2: c_attn is [D, 3D] for any head count).
//  - inert fields: bos/eos/pad_token_id, torch_dtype (each tensor's own dtype is read), architectures, dropouts,
//    unknown keys.
// safetensors header entries: a change of a shape, a dtype (to another width, or to an integer type), the offsets,
// a name, a removed or an added entry must be refused naming the tensor. Accepted on purpose, as a well-formed
// checkpoint of other weights: two tensors of the same byte size swapping their names or offsets, and a floating
// dtype relabelled as another floating dtype of the same width (BF16 as F16). Safetensors has no checksum.

using Parameters = std::vector<std::pair<std::string, at::Tensor>>;

// The config and parameters of a checkpoint folder, loaded as its config.json's family is (load_bert, load_decoder).
std::pair<ModelConfig, Parameters> load_model(const fs::path& dir) {
  if (load_model_config(dir.string()).family == Family::bert) {
    const auto bert = load_bert(dir.string(), at::kCPU, at::kFloat);
    return {bert->config(), bert->named_parameters()};
  }
  const auto decoder = load_decoder(dir.string(), at::kCPU, at::kFloat);
  return {decoder->config(), decoder->named_parameters()};
}

// A tiny checkpoint that the model family mutates, and what it loads as.
struct Checkpoint {
  std::string preset;
  std::string config;       // config.json
  std::string header;       // model.safetensors: the JSON header and the data section after it
  std::string data;
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors;  // expected_tensors of its config
  Parameters parameters;
};

Checkpoint make_checkpoint(const fs::path& dir, const std::string& preset, at::ScalarType dtype) {
  Checkpoint c{preset};
  const ModelConfig config = shape_preset(preset);
  save_checkpoint(dir.string(), config, random_tensors(config, 7, dtype));
  c.config = test::read_file(dir / "config.json");
  std::tie(c.header, c.data) = split_safetensors(test::read_file(dir / "model.safetensors"));
  c.tensors = expected_tensors(config);
  c.parameters = load_model(dir).second;
  return c;
}

// "" when `a` holds the weights of `b`, else the first parameter that differs.
std::string differing_parameter(const Parameters& a, const Parameters& b) {
  if (a.size() != b.size()) return "the parameter count";
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].first != b[i].first || !a[i].second.sizes().equals(b[i].second.sizes()) || !at::equal(a[i].second, b[i].second))
      return a[i].first;
  return "";
}

// One config.json mutation: a field (present or one a loader reads when present) set to a neighbouring value,
// a value of another type, or removed. Returns the field.
std::string mutate_config(nlohmann::ordered_json& j, std::mt19937_64& rng) {
  static const char* const optional[] = {"head_dim", "num_key_value_heads", "tie_word_embeddings", "attention_bias",
                                         "mlp_bias", "sliding_window", "rope_scaling", "partial_rotary_factor",
                                         "n_inner", "layer_types", "use_sliding_window", "max_window_layers"};
  static const char* const strings[] = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2",
                                        "bert", "gemma3", "float16", "bfloat16", "silu", "gelu_new", ""};
  const nlohmann::ordered_json others[] = {0, 1, 2, -1, 3, 16, 1000000000000, 1.5, "64", nullptr, true, false,
                                           nlohmann::ordered_json::array(), nlohmann::ordered_json::object()};
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  for (const char* key : optional)
    if (!j.contains(key)) keys.push_back(key);
  const std::string key = keys[rng() % keys.size()];
  const int op = static_cast<int>(rng() % 4);
  if (op == 0) {
    j.erase(key);
    return key;
  }
  nlohmann::ordered_json& v = j[key];
  if (op == 1 || v.is_null() || v.is_structured()) {
    v = others[rng() % std::size(others)];
  } else if (v.is_number_integer()) {
    const int64_t x = v.get<int64_t>();
    const int64_t near[] = {x + 1, x - 1, 2 * x, x / 2, x + 8, 4 * x};
    v = near[rng() % std::size(near)];
  } else if (v.is_boolean()) {
    v = !v.get<bool>();
  } else if (v.is_string()) {
    v = strings[rng() % std::size(strings)];
  } else {
    v = v.get<double>() * (rng() % 2 ? 2.0 : 0.5);
  }
  return key;
}

// One safetensors header mutation: the header text and whether it is one of the changes accepted on purpose.
struct HeaderMutation {
  std::string what;
  std::string header;
  bool well_formed_other = false;  // a same-size swap or a floating relabel: another well-formed checkpoint
};

HeaderMutation mutate_header(const std::string& text, std::mt19937_64& rng) {
  using ordered_json = nlohmann::ordered_json;
  ordered_json h = ordered_json::parse(text);
  std::vector<std::string> names;
  for (const auto& item : h.items())
    if (item.key() != "__metadata__") names.push_back(item.key());
  const std::string t = names[rng() % names.size()], u = names[rng() % names.size()];
  ordered_json& e = h[t];
  auto bytes_of = [&](const std::string& name) {
    return h[name]["data_offsets"][1].get<int64_t>() - h[name]["data_offsets"][0].get<int64_t>();
  };
  auto floating = [](const std::string& d) { return d == "F64" || d == "F32" || d == "F16" || d == "BF16"; };
  auto width = [](const std::string& d) { return safetensors_element_size(d); };
  HeaderMutation m;
  auto rename = [&](const std::string& from, const std::string& to) {  // in the text: `to` may already exist
    std::string out = h.dump();
    const std::string key = "\"" + from + "\":";
    out.replace(out.find(key), key.size(), "\"" + to + "\":");
    m.header = out;
  };
  switch (rng() % 8) {
    case 0: {
      m.what = "shape of " + t;
      std::vector<int64_t> s = e["shape"].get<std::vector<int64_t>>();
      const int64_t numel = std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<>());
      switch (rng() % 4) {
        case 0:  // same bytes, other shape
          if (s.size() == 2) std::swap(s[0], s[1]);
          else s.push_back(1);
          break;
        case 1: s = s.size() == 1 ? std::vector<int64_t>{1, numel} : std::vector<int64_t>{numel}; break;
        case 2: s.insert(s.begin(), 1); break;
        default: s[rng() % s.size()] += rng() % 2 ? 1 : -1; break;
      }
      e["shape"] = s;
      break;
    }
    case 1: {
      static const char* const dtypes[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
      const std::string from = e["dtype"], to = dtypes[rng() % std::size(dtypes)];
      m.what = "dtype of " + t + " " + from + " -> " + to;
      e["dtype"] = to;
      m.well_formed_other = floating(from) && floating(to) && width(from) == width(to);
      break;
    }
    case 2: {
      static const int64_t shifts[] = {1, 2, 4, 8, -4, 64, -64, 4096};
      const int64_t d = shifts[rng() % std::size(shifts)];
      m.what = "offsets of " + t + " shifted by " + std::to_string(d);
      const int64_t begin = e["data_offsets"][0].get<int64_t>() + d, end = e["data_offsets"][1].get<int64_t>() + d;
      e["data_offsets"] = {std::max<int64_t>(begin, 0), std::max<int64_t>(end, 0)};
      break;
    }
    case 3: {
      m.what = "offsets of " + t + " and " + u + " swapped";
      m.well_formed_other = bytes_of(t) == bytes_of(u);
      std::swap(e["data_offsets"], h[u]["data_offsets"]);
      break;
    }
    case 4: {
      static const char* const layer = "layers.0.";
      std::string to = "x" + std::to_string(rng() % 1000) + ".weight";
      const size_t at = t.find(layer);
      if (rng() % 2 && at != std::string::npos) to = std::string(t).replace(at, std::strlen(layer), "layers.9.");
      else if (rng() % 2) to = t.substr(t.find('.') + 1);  // "transformer." dropped: an alias for gpt2
      else if (rng() % 2) to = u;                          // a name written twice
      m.what = "'" + t + "' renamed '" + to + "'";
      rename(t, to);
      return m;
    }
    case 5: m.what = t + " removed"; h.erase(t); break;
    case 6: {
      if (rng() % 2) {
        m.what = "a copy of " + t + " added";
        h[t + ".copy"] = e;
      } else {
        m.what = "an empty tensor added";
        h["extra.weight"] = {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {0, 0}}};
      }
      break;
    }
    default: {
      m.what = "entries of " + t + " and " + u + " swapped";
      m.well_formed_other = h[t]["shape"] == h[u]["shape"] && h[t]["dtype"] == h[u]["dtype"];
      std::swap(e, h[u]);
      break;
    }
  }
  m.header = h.dump();
  return m;
}

// The two model families over each preset: `cases` config.json and `cases` header mutations a preset.
void fuzz_models(int cases) {
  const fs::path dir = test::temp_dir("fuzz_models");
  const fs::path work = dir / "case";
  fs::create_directories(work);
  const auto level = spdlog::get_level();
  spdlog::set_level(spdlog::level::warn);  // a load logs a line
  Tally configs{"model config"}, headers{"model header"};
  std::map<std::string, int> accepted_fields;  // config.json fields some mutation of which loaded
  int well_formed_other = 0;
  for (const auto& [preset, dtype] : std::vector<std::pair<std::string, at::ScalarType>>{
           {"tiny-llama", at::kFloat}, {"tiny-mistral", at::kFloat}, {"tiny-qwen3", at::kBFloat16},
           {"tiny-phi3", at::kFloat}, {"tiny-gpt2", at::kFloat}, {"tiny-bert", at::kFloat}}) {
    const Checkpoint base = make_checkpoint(dir / preset, preset, dtype);
    std::mt19937_64 rng(std::hash<std::string>{}(preset));
    // The child's check: what loaded has the tensors of the original config and, unless the mutation makes
    // another well-formed checkpoint, its weights.
    auto load = [&](bool other_weights) {
      const auto [config, parameters] = load_model(work);
      if (expected_tensors(config) != base.tensors)
        return std::string("loaded a config whose tensors differ from the checkpoint's");
      const std::string differs = differing_parameter(parameters, base.parameters);
      if (!differs.empty() && !other_weights) return "loaded other weights: " + differs;
      return std::string();
    };
    auto check = [&](Tally& tally, const Outcome& o, const std::string& what, const std::string& file) {
      ++tally.counts[o.code];
      INFO(preset << ": " << what << ": " << o.message);
      REQUIRE(o.code >= 0);
      REQUIRE(o.code != 3);
      if (o.code != 0)
        CHECK_THAT(o.message, Catch::Contains(file) && Catch::Contains("'"));  // names the file and a field or tensor
    };

    write_safetensors(work / "model.safetensors", base.header, base.data);
    for (int i = 0; i < cases; ++i) {
      auto j = nlohmann::ordered_json::parse(base.config);
      std::vector<std::string> fields = {mutate_config(j, rng)};
      if (rng() % 4 == 0) fields.push_back(mutate_config(j, rng));
      test::write_file(work / "config.json", j.dump(2));
      const Outcome o = run_capped([&] { return load(false); });
      for (const std::string& field : fields) accepted_fields[field] += o.code == 0;
      check(configs, o, "config.json " + fields.front() + " " + j.dump(), "config.json");
    }
    test::write_file(work / "config.json", base.config);
    for (int i = 0; i < cases; ++i) {
      const HeaderMutation m = mutate_header(base.header, rng);
      write_safetensors(work / "model.safetensors", m.header, base.data);
      const Outcome o = run_capped([&] { return load(m.well_formed_other); });
      if (o.code == 0 && m.well_formed_other) ++well_formed_other;
      check(headers, o, m.what, "model.safetensors");
    }
  }
  spdlog::set_level(level);
  configs.print();
  headers.print();
  std::string fields;
  for (const auto& [field, n] : accepted_fields)
    if (n > 0) fields += " " + field + " (" + std::to_string(n) + ")";
  std::fprintf(stderr, "fuzz model: config.json mutations that loaded, by field:%s\n", fields.c_str());
  std::fprintf(stderr, "fuzz model: header mutations that loaded as another well-formed checkpoint: %d\n",
               well_formed_other);
}

// ---------------------------------------------------------------------------------------------------------------
// A memory directory's files (meta.json, chunks.log, index.bin, segment-NNNNNN.bin) flipped, cut, lengthened,
// rewritten with their checksums made valid again, or deleted; then opened as a ChunkStore, every record read and
// searched. The contract (models/memory/chunk_store.h): the log is the truth; damaged derived files are rebuilt
// from it; damage at the log's tail drops only the damaged records; damage before an intact record, or a record
// whose checksum holds over inconsistent content, is refused naming chunks.log; a bad meta.json is refused naming
// it, and so is a deleted chunks.log (its index files index records that are gone).

// A pristine memory directory: its files, and what opening it gives.
struct MemoryDir {
  StoreOptions options;
  std::map<std::string, std::string> files;  // name -> bytes
  std::vector<uint64_t> record_ends;         // chunks.log: the end of each record
  std::vector<std::string> texts;            // record i's text
  std::vector<std::vector<float>> queries;
  std::vector<std::vector<int64_t>> hits;    // the ids each query finds
};

std::vector<int64_t> hit_ids(const std::vector<SearchHit>& hits) {
  std::vector<int64_t> ids;
  for (const SearchHit& h : hits) ids.push_back(h.id);
  return ids;
}

MemoryDir make_memory_dir(const fs::path& dir, StoreOptions::IndexKind kind) {
  static const char* const words[] = {"harbour", "violin", "glacier", "copper", "lantern", "falcon", "bread", "delta"};
  MemoryDir m;
  m.options.embedder_name = "hash-64";
  m.options.dim = 64;
  m.options.fsync = StoreOptions::Fsync::none;
  m.options.index = kind;
  m.options.segment_chunks = kind == StoreOptions::IndexKind::hnsw ? 16 : 0;  // 3 sealed segments, 12 in RAM
  const HashEmbedder embedder(64);
  {
    auto store = ChunkStore::open(dir.string(), m.options);
    for (int64_t i = 0; i < 60; ++i) {
      Chunk c;
      c.tokens = {3 * i, 3 * i + 1, 3 * i + 2};
      c.positions = c.tokens;
      c.text = std::string(words[i % 8]) + " " + words[(i / 8) % 8] + " item" + std::to_string(i);
      if (i % 7 == 0) c.kv = at::randn({1, 2, 1, 3, 2});
      store->add(c, embedder.embed(c.text));
      m.texts.push_back(c.text);
    }
  }
  for (const auto& item : fs::directory_iterator(dir))
    m.files[item.path().filename().string()] = test::read_file(item.path());
  const std::string& log = m.files.at(kStoreLogFile);
  for (uint64_t pos = 0; pos + 16 <= log.size();) {
    uint64_t len;
    std::memcpy(&len, log.data() + pos + 8, 8);
    pos += 16 + len;
    m.record_ends.push_back(pos);
  }
  auto store = ChunkStore::open(dir.string(), m.options);
  for (const char* q : {"harbour violin", "item17", "copper falcon delta"}) {
    m.queries.push_back(embedder.embed(q));
    m.hits.push_back(hit_ids(store->search(m.queries.back(), 5)));
  }
  return m;
}

// What one damaged directory must give.
struct MemoryExpect {
  std::string what;
  std::string file;
  bool must_refuse = false;  // damage before an intact record
  bool may_refuse = false;   // meta.json, or a log record rewritten with a valid checksum
  int64_t size = -1;         // records kept when opened (-1: any)
  int64_t intact = 0;        // records [0, intact) read back unchanged
  bool same_hits = false;    // the queries find what they found
};

// Damages one file of `m`'s directory as written to `dir`; returns what opening it must give.
MemoryExpect damage_memory_dir(const MemoryDir& m, const fs::path& dir, std::mt19937_64& rng) {
  const int64_t n = static_cast<int64_t>(m.texts.size());
  std::vector<std::string> derived;
  for (const auto& [name, bytes] : m.files)
    if (name != kStoreLogFile && name != kStoreMetaFile && name != "lock") derived.push_back(name);
  const int pick = static_cast<int>(rng() % 6);
  MemoryExpect e;
  e.file = pick < 2 ? kStoreLogFile : pick == 2 ? kStoreMetaFile : derived[rng() % derived.size()];
  std::string s = m.files.at(e.file);
  const bool log = e.file == kStoreLogFile, index_file = !log && e.file != kStoreMetaFile;
  auto record_of = [&](uint64_t at) {  // the record holding byte `at` of the log: how many end at or before it
    return static_cast<int64_t>(std::upper_bound(m.record_ends.begin(), m.record_ends.end(), at) - m.record_ends.begin());
  };
  std::vector<uint64_t> flipped;
  const int op = static_cast<int>(rng() % 6);
  if (op == 0 || (op == 3 && !log && !index_file)) {
    e.what = "bytes flipped";
    for (int i = 0, k = 1 + static_cast<int>(rng() % 8); i < k && !s.empty(); ++i) {
      flipped.push_back(rng() % s.size());
      s[flipped.back()] = static_cast<char>(s[flipped.back()] ^ (1 + rng() % 255));
    }
  } else if (op == 1) {
    const uint64_t at = rng() % (s.size() + 1);
    e.what = "cut at byte " + std::to_string(at);
    s.resize(at);
    if (log) e.size = e.intact = record_of(at);  // the records that end before the cut
  } else if (op == 2) {
    e.what = "garbage appended";
    std::string junk(1 + rng() % 300, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    if (rng() % 2) junk.replace(0, 4, "SFCK");  // a record's magic, and nothing valid after it
    s += junk;
  } else if (op == 3) {
    // Bytes flipped, then the checksums made valid: the readers' own checks are all that is left.
    e.what = "bytes flipped under valid checksums";
    if (log) {
      const int64_t r = static_cast<int64_t>(rng() % m.record_ends.size());
      const uint64_t begin = r == 0 ? 0 : m.record_ends[static_cast<size_t>(r - 1)], end = m.record_ends[static_cast<size_t>(r)];
      for (int i = 0, k = 1 + static_cast<int>(rng() % 4); i < k; ++i) {
        const uint64_t at = begin + 16 + rng() % (end - begin - 16);
        s[at] = static_cast<char>(s[at] ^ (1 + rng() % 255));
      }
      const uint64_t len = end - begin - 16;
      const uint32_t crc = crc32(s.data() + begin + 16, len, crc32(&len, 8));
      std::memcpy(s.data() + begin + 4, &crc, 4);
      e.may_refuse = true;
      e.size = n;
      e.intact = r;
    } else {
      for (int i = 0, k = 1 + static_cast<int>(rng() % 8); i < k; ++i) {
        const uint64_t at = 8 + rng() % (s.size() - 8);
        s[at] = static_cast<char>(s[at] ^ (1 + rng() % 255));
      }
      const uint32_t payload_crc = crc32(s.data() + 48, s.size() - 48);
      std::memcpy(s.data() + 40, &payload_crc, 4);
      const uint32_t header_crc = crc32(s.data(), 44);
      std::memcpy(s.data() + 44, &header_crc, 4);
      e.size = e.intact = n;
    }
  } else if (op == 4) {
    e.what = "deleted";
    fs::remove(dir / e.file);
    e.must_refuse = log || e.file == kStoreMetaFile;
  } else if (e.file == kStoreMetaFile) {
    e.what = "JSON mutated";
    s = mutate(s, rng);
  } else {
    e.what = "a byte flipped";
    flipped.push_back(rng() % std::max<size_t>(s.size(), 1));
    if (!s.empty()) s[flipped.back()] = static_cast<char>(s[flipped.back()] ^ 0x01);
  }
  if (op != 4) test::write_file(dir / e.file, s);

  if (e.file == kStoreMetaFile) {
    e.may_refuse = true;
    e.size = e.intact = n;
    e.same_hits = true;
  } else if (index_file) {
    e.size = e.intact = n;
    e.same_hits = op != 3;
  } else if (log && !flipped.empty()) {
    // The first damaged record goes with everything after it only when everything after it is damaged too.
    std::vector<bool> damaged(static_cast<size_t>(n), false);
    for (uint64_t at : flipped) damaged[static_cast<size_t>(record_of(at))] = true;
    const int64_t first = std::find(damaged.begin(), damaged.end(), true) - damaged.begin();
    const bool tail = std::all_of(damaged.begin() + first, damaged.end(), [](bool d) { return d; });
    e.must_refuse = !tail;
    e.size = e.intact = first;
  } else if (log && op == 2) {
    e.size = e.intact = n;
    e.same_hits = true;
  }
  return e;
}

void fuzz_memory(int cases) {
  const fs::path root = test::temp_dir("fuzz_memory");
  const auto level = spdlog::get_level();
  spdlog::set_level(spdlog::level::err);  // a repaired directory logs what it dropped and rebuilt
  std::vector<MemoryDir> dirs;
  for (auto kind : {StoreOptions::IndexKind::hnsw, StoreOptions::IndexKind::brute})
    dirs.push_back(make_memory_dir(root / ("pristine" + std::to_string(dirs.size())), kind));
  const fs::path dir = root / "case";
  std::mt19937_64 rng(19);
  Tally tally{"memory dir"};
  std::map<std::string, int> refused;  // by file
  for (int i = 0; i < cases; ++i) {
    const MemoryDir& m = dirs[static_cast<size_t>(i) % dirs.size()];
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const auto& [name, bytes] : m.files) test::write_file(dir / name, bytes);
    const MemoryExpect e = damage_memory_dir(m, dir, rng);
    const Outcome o = run_capped([&]() -> std::string {
      auto store = ChunkStore::open(dir.string(), m.options);
      const int64_t n = store->size();
      if (e.must_refuse) return "opened with " + std::to_string(n) + " records, expected a refusal";
      if (e.size >= 0 && n != e.size) return "opened with " + std::to_string(n) + " records, expected " + std::to_string(e.size);
      for (int64_t id = 0; id < n; ++id)
        if (store->get(id).text != m.texts[static_cast<size_t>(id)] && id < e.intact)
          return "record " + std::to_string(id) + " reads back changed";
      for (size_t q = 0; q < m.queries.size(); ++q)
        if (hit_ids(store->search(m.queries[q], 5)) != m.hits[q] && e.same_hits)
          return "query " + std::to_string(q) + " finds other records";
      return "";
    });
    ++tally.counts[o.code];
    INFO("case " << i << ": " << e.file << " " << e.what << ": exit " << o.code << ": " << o.message);
    REQUIRE(o.code >= 0);
    REQUIRE(o.code != 3);
    if (o.code != 0) {
      ++refused[e.file];
      CHECK((e.must_refuse || e.may_refuse));
      CHECK(o.code == 2);
      CHECK_THAT(o.message, Catch::Contains(e.file));
    }
  }
  spdlog::set_level(level);
  tally.print();
  std::string files;
  for (const auto& [file, k] : refused) files += " " + file + " (" + std::to_string(k) + ")";
  std::fprintf(stderr, "fuzz memory dir: refused, by file:%s\n", files.c_str());
}

}  // namespace

TEST_CASE("fuzz: mutated config.json, safetensors, tokenizer.json, YAML, JSONL, chat templates and messages never crash (60 each)", "[fuzz]") {
  fuzz_all(60);
}

TEST_CASE("fuzz: 1,000 mutations of each file kind never crash", "[fuzz][.slow]") { fuzz_all(1000); }

TEST_CASE("fuzz: mutated config.json fields and safetensors headers of six checkpoints never load as another model", "[fuzz]") {
  fuzz_models(12);
}

TEST_CASE("fuzz: 200 config.json and 200 header mutations of each of six checkpoints", "[fuzz][.slow]") { fuzz_models(200); }

TEST_CASE("fuzz: damaged memory directories are recovered from the log or refused naming the file (60 cases)", "[fuzz]") {
  fuzz_memory(60);
}

TEST_CASE("fuzz: 1000 damaged memory directories", "[fuzz][.slow]") { fuzz_memory(1000); }
