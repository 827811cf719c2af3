// Training loop for sinkflow's own small decoders. See train.h.
#include "models/lab/train.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include "models/io/checkpoint.h"
#include "models/nn/decoder.h"
#include "models/io/message_text.h"
#include "models/io/json_read.h"
#include "models/nn/runtime.h"
#include "models/text/tokenizer.h"

namespace sinkflow {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_text_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(what + " '" + path + "' cannot be opened");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string type_of(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return json_preview(v);
}

// Field readers: "<source>: field 'x' must be ..., found ...".
struct Fields {
  const json& j;
  std::string source;
  std::string prefix;  // "model." for the nested object

  [[noreturn]] void fail(const std::string& key, const std::string& expected) const {
    throw std::invalid_argument(source + ": field '" + prefix + key + "' must be " + expected + ", found " +
                                type_of(j.at(key)));
  }
  int64_t integer(const std::string& key, int64_t def, int64_t min) const {
    if (!j.contains(key)) return def;
    const json& v = j.at(key);
    const std::string expected = "an integer >= " + std::to_string(min);
    if (!v.is_number_integer()) fail(key, expected);
    const int64_t x = v.get<int64_t>();
    if (x < min) fail(key, expected);
    return x;
  }
  int64_t required_integer(const std::string& key, int64_t min) const {
    if (!j.contains(key)) {
      throw std::invalid_argument(source + ": field '" + prefix + key + "' is required (an integer >= " +
                                  std::to_string(min) + "), found none");
    }
    return integer(key, 0, min);
  }
  double number(const std::string& key, double def, double min, double max) const {
    if (!j.contains(key)) return def;
    const json& v = j.at(key);
    std::ostringstream e;
    e << "a number in [" << min << ", " << max << "]";
    if (!v.is_number()) fail(key, e.str());
    const double x = v.get<double>();
    if (!(x >= min && x <= max)) fail(key, e.str());
    return x;
  }
  bool boolean(const std::string& key, bool def) const {
    if (!j.contains(key)) return def;
    if (!j.at(key).is_boolean()) fail(key, "true or false");
    return j.at(key).get<bool>();
  }
  std::string string(const std::string& key, const std::string& def) const {
    if (!j.contains(key)) return def;
    if (!j.at(key).is_string()) fail(key, "a string");
    return j.at(key).get<std::string>();
  }
  void only(const std::set<std::string>& allowed) const {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!allowed.count(it.key())) {
        std::string list;
        for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
        throw std::invalid_argument(source + ": unknown field '" + prefix + it.key() + "' (expected one of " + list + ")");
      }
    }
  }
};

json config_to_json(const TrainConfig& c) {
  json m = json::parse(c.model.to_json_text());
  return {{"model", m},
          {"tokenizer", c.tokenizer},
          {"train_text", c.train_text},
          {"heldout_text", c.heldout_text},
          {"train_ids", c.train_ids},
          {"heldout_ids", c.heldout_ids},
          {"init_from", c.init_from},
          {"seq_len", c.seq_len},
          {"batch", c.batch},
          {"steps", c.steps},
          {"warmup", c.warmup},
          {"lr", c.lr},
          {"min_lr", c.min_lr},
          {"weight_decay", c.weight_decay},
          {"beta1", c.beta1},
          {"beta2", c.beta2},
          {"eps", c.eps},
          {"clip", c.clip},
          {"seed", c.seed},
          {"eval_interval", c.eval_interval},
          {"eval_batches", c.eval_batches},
          {"checkpoint_interval", c.checkpoint_interval},
          {"log_interval", c.log_interval},
          {"prepend_bos", c.prepend_bos},
          {"copy_fraction", c.copy_fraction},
          {"copy_random", c.copy_random},
          {"copy_substitute", c.copy_substitute},
          {"copy_min_gap", c.copy_min_gap},
          {"copy_min_len", c.copy_min_len},
          {"copy_max_len", c.copy_max_len},
          {"threads", c.threads},
          {"max_minutes", c.max_minutes},
          {"device", c.device},
          {"bos_id", c.bos_id},
          {"eos_id", c.eos_id}};
}

// ---- corpus -------------------------------------------------------------------------------------------------

uint64_t fnv1a(const std::string& bytes) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : bytes) {
    h ^= ch;
    h *= 1099511628211ULL;
  }
  return h;
}

std::string tokenizer_dir(const std::string& path) {
  return fs::is_directory(path) ? path : fs::path(path).parent_path().string();
}

std::string tokenizer_file(const std::string& path) {
  if (!fs::is_directory(path)) return path;
  for (const char* name : {"tokenizer.model", "tokenizer.json", "vocab.txt"}) {
    if (fs::exists(fs::path(path) / name)) return (fs::path(path) / name).string();
  }
  return path;
}

std::vector<int32_t> read_ids_bin(const std::string& path, const std::string& field, int64_t vocab) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument("field '" + field + "': '" + path + "' cannot be opened");
  in.seekg(0, std::ios::end);
  const auto bytes = static_cast<int64_t>(in.tellg());
  in.seekg(0);
  if (bytes % 4 != 0) {
    throw std::invalid_argument("field '" + field + "': '" + path + "' has " + std::to_string(bytes) +
                                " bytes, expected a multiple of 4 (raw int32 ids)");
  }
  std::vector<int32_t> ids(bytes / 4);
  in.read(reinterpret_cast<char*>(ids.data()), bytes);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw std::invalid_argument("field '" + field + "': '" + path + "' holds id " + std::to_string(ids[i]) +
                                  " at index " + std::to_string(i) + ", expected ids in [0, " + std::to_string(vocab) + ")");
    }
  }
  return ids;
}

// Encodes `text_path` with the tokenizer in chunks cut after blank lines (~64 KiB each), cached as
// <text_path>.ids.bin (a header with the text's and the tokenizer's FNV-1a hashes, then int32 ids).
std::vector<int32_t> encode_corpus(const std::string& text_path, const std::string& field, const Tokenizer& tok,
                                   const std::string& tokenizer_bytes) {
  const std::string text = read_text_file(text_path, "field '" + field + "':");
  const uint64_t h_text = fnv1a(text), h_tok = fnv1a(tokenizer_bytes);
  const std::string cache = text_path + ".ids.bin";
  {
    std::ifstream in(cache, std::ios::binary);
    uint64_t head[4] = {0, 0, 0, 0};
    if (in && in.read(reinterpret_cast<char*>(head), sizeof head) && head[0] == 0x5346494453763031ULL &&
        head[1] == h_text && head[2] == h_tok) {
      std::vector<int32_t> ids(head[3]);
      if (in.read(reinterpret_cast<char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 4))) {
        spdlog::info("{}: {} tokens (cached in {})", text_path, ids.size(), cache);
        return ids;
      }
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  size_t pos = 0;
  const size_t chunk = 64 * 1024;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + chunk);
    if (end < text.size()) {
      const size_t cut = text.find("\n\n", end);
      end = cut == std::string::npos ? text.size() : cut + 2;
    }
    for (int64_t id : tok.encode(std::string_view(text).substr(pos, end - pos))) ids.push_back(static_cast<int32_t>(id));
    pos = end;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("{}: encoded {} bytes into {} tokens in {:.1f} s", text_path, text.size(), ids.size(), secs);
  const std::string tmp = cache + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    const uint64_t head[4] = {0x5346494453763031ULL, h_text, h_tok, ids.size()};
    out.write(reinterpret_cast<const char*>(head), sizeof head);
    out.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 4));
    if (!out) spdlog::warn("cannot write the token cache {}", tmp);
  }
  std::error_code ec;
  fs::rename(tmp, cache, ec);
  return ids;
}

// ---- batches ------------------------------------------------------------------------------------------------

// Tokens of one sequence of seq_len + 1 (inputs = [0, seq_len), targets = [1, seq_len]).
void fill_sequence(const std::vector<int32_t>& ids, int64_t offset, const TrainConfig& c, int64_t bos, int64_t* dst) {
  int64_t k = 0;
  if (c.prepend_bos) dst[k++] = bos;
  for (; k < c.seq_len + 1; ++k) dst[k] = ids[offset++];
}

int64_t text_tokens_per_sequence(const TrainConfig& c) { return c.seq_len + 1 - (c.prepend_bos ? 1 : 0); }

// The longest copy span that fits twice in a row after BOS, at least copy_min_gap + 1 tokens apart.
int64_t longest_copy_span(const TrainConfig& c) { return (text_tokens_per_sequence(c) - 2 - c.copy_min_gap) / 2; }

}  // namespace

// The batch of `step`: offsets and copy-task choices from a generator seeded by (seed, step) alone, so that a
// resumed run draws exactly the batches of an uninterrupted one.
at::Tensor training_batch(const std::vector<int32_t>& ids, const TrainConfig& c, int64_t bos, int64_t step) {
  std::seed_seq seq{static_cast<uint32_t>(c.seed), static_cast<uint32_t>(c.seed >> 32), static_cast<uint32_t>(step),
                    static_cast<uint32_t>(step >> 32), 0x5eedu};
  std::mt19937_64 rng(seq);
  const int64_t n_text = text_tokens_per_sequence(c);
  const int64_t max_off = static_cast<int64_t>(ids.size()) - n_text;
  at::Tensor batch = at::empty({c.batch, c.seq_len + 1}, at::kLong);
  int64_t* p = batch.data_ptr<int64_t>();
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  const int64_t first = c.prepend_bos ? 1 : 0;
  for (int64_t b = 0; b < c.batch; ++b) {
    const int64_t off = static_cast<int64_t>(rng() % static_cast<uint64_t>(max_off + 1));
    int64_t* row = p + b * (c.seq_len + 1);
    fill_sequence(ids, off, c, bos, row);
    // Copy task: a span [a, a+L) of the text is written again at [d, d+L), later in the same sequence.
    if (c.copy_fraction > 0 && u01(rng) < c.copy_fraction) {
      const int64_t room = c.seq_len + 1 - first;
      const int64_t max_len = std::min(c.copy_max_len, longest_copy_span(c));
      const int64_t len = c.copy_min_len + static_cast<int64_t>(rng() % static_cast<uint64_t>(max_len - c.copy_min_len + 1));
      const int64_t a = first + static_cast<int64_t>(rng() % static_cast<uint64_t>(room - 2 * len - 1 - c.copy_min_gap));
      const int64_t lo = a + len + 1 + c.copy_min_gap, hi = c.seq_len + 1 - len;  // d in [lo, hi]
      const int64_t d = lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
      if (c.copy_random > 0 && u01(rng) < c.copy_random) {
        for (int64_t i = 0; i < len; ++i) row[a + i] = ids[rng() % ids.size()];
      } else if (c.copy_substitute > 0) {
        for (int64_t i = 0; i < len; ++i) {
          if (u01(rng) < c.copy_substitute) row[a + i] = ids[rng() % ids.size()];
        }
      }
      std::memmove(row + d, row + a, static_cast<size_t>(len) * sizeof(int64_t));
    }
  }
  return batch;
}

namespace {

// Fixed held-out batches: eval_batches * batch sequences at evenly spaced offsets.
std::vector<at::Tensor> heldout_batches(const std::vector<int32_t>& ids, const TrainConfig& c, int64_t bos) {
  const int64_t n_text = text_tokens_per_sequence(c);
  const int64_t n = c.eval_batches * c.batch;
  const int64_t span = static_cast<int64_t>(ids.size()) - n_text;
  std::vector<at::Tensor> out;
  for (int64_t e = 0; e < c.eval_batches; ++e) {
    at::Tensor batch = at::empty({c.batch, c.seq_len + 1}, at::kLong);
    for (int64_t b = 0; b < c.batch; ++b) {
      const int64_t i = e * c.batch + b;
      const int64_t off = n > 1 ? span * i / (n - 1) : 0;
      fill_sequence(ids, off, c, bos, batch.data_ptr<int64_t>() + b * (c.seq_len + 1));
    }
    out.push_back(batch);
  }
  return out;
}

double heldout_loss(const Decoder& model, const std::vector<at::Tensor>& batches, at::Device device) {
  torch::NoGradGuard no_grad;
  double sum = 0;
  for (const auto& b : batches) sum += lm_loss(model, b, device).item<double>();
  return batches.empty() ? -1 : sum / static_cast<double>(batches.size());
}

bool is_decayed(const std::string& name, const at::Tensor& p) {
  if (p.dim() < 2) return false;  // norms, biases
  return name.find("embed_tokens") == std::string::npos && name.find("wte") == std::string::npos &&
         name.find("wpe") == std::string::npos;
}

std::string now_utc() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

struct RunState {
  int64_t step = 0;
  double wall_s = 0;
  std::vector<double> step_losses;
  json heldout = json::array();  // [{step, loss, ppl}]
};

void write_json_file(const fs::path& path, const json& j) {
  std::ofstream out(path);
  out << j.dump(1) << "\n";
  if (!out) throw std::runtime_error("cannot write '" + path.string() + "'");
}

void save_training_checkpoint(const fs::path& out_dir, const TrainConfig& c, const Decoder& model,
                              torch::optim::AdamW& opt, const RunState& st) {
  const fs::path final_dir = out_dir / "checkpoint";
  const fs::path tmp = out_dir / "checkpoint.tmp";
  const fs::path old = out_dir / "checkpoint.old";
  fs::remove_all(tmp);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& [name, p] : model.named_parameters()) tensors.emplace_back(name, p.detach().to(at::kCPU, at::kFloat));
  save_checkpoint(tmp.string(), c.model, tensors);
  torch::save(opt, (tmp / "optimizer.pt").string());
  json state = {{"step", st.step},
                {"wall_s", st.wall_s},
                {"step_losses", st.step_losses},
                {"heldout", st.heldout},
                {"config", config_to_json(c)}};
  write_json_file(tmp / "state.json", state);
  fs::remove_all(old);
  if (fs::exists(final_dir)) fs::rename(final_dir, old);
  fs::rename(tmp, final_dir);
  fs::remove_all(old);
}

// The MLP's output side: its columns (llama down_proj) or rows (gpt2 mlp.c_proj) of new units start at zero.
bool mlp_output_side(const std::string& name) {
  return name.find("mlp.down_proj") != std::string::npos || name.find("mlp.c_proj") != std::string::npos;
}

}  // namespace

ModelConfig init_from_model(const std::string& dir, const ModelConfig& target, Decoder& model) {
  const std::string what = "field 'init_from': '" + dir + "'";
  const ModelConfig src = load_model_config(dir);
  const std::vector<std::tuple<const char*, int64_t, int64_t>> dims = {
      {"vocab_size", src.vocab_size, target.vocab_size}, {"d_model", src.d_model, target.d_model},
      {"n_layer", src.n_layer, target.n_layer},          {"n_head", src.n_head, target.n_head},
      {"n_kv_head", src.n_kv_head, target.n_kv_head},    {"d_head", src.d_head, target.d_head}};
  if (src.family != target.family) {
    throw std::invalid_argument(what + " is a " + src.model_type + " model, expected the config's family (" +
                                target.model_type + ")");
  }
  if (src.gemma() || src.qk_norm || src.sliding_window > 0 || !src.rope_scaling.type.empty())
    throw std::invalid_argument(what + " is a " + src.model_type +
                                " model with an architecture the trainer does not build (q/k norms, gemma layers, "
                                "sliding windows or rope scaling); training starts from llama, mistral, qwen2 or gpt2");
  for (const auto& [field, found, expected] : dims) {
    if (found != expected) {
      throw std::invalid_argument(what + " has " + field + " " + std::to_string(found) + ", expected the config's " +
                                  std::to_string(expected) + " (only the MLP width d_ff may grow)");
    }
  }
  if (src.d_ff > target.d_ff) {
    throw std::invalid_argument(what + " has d_ff " + std::to_string(src.d_ff) + ", expected at most the config's " +
                                std::to_string(target.d_ff) + " (the MLP may grow, not shrink)");
  }
  CheckpointTensors t(dir);
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : model.named_parameters()) {
    const std::vector<int64_t> have = t.shape(name), want = p.sizes().vec();
    const at::Tensor w = t.load(name, have, at::kFloat, at::kCPU).to(p.device());
    if (have == want) {
      p.copy_(w);
      continue;
    }
    // A grown MLP: the old units are copied, the new ones keep the run's random init on the input side and
    // start at zero on the output side, so that the model computes what the source computed.
    at::Tensor dst = p;
    if (mlp_output_side(name)) p.zero_();
    for (size_t i = 0; i < want.size() && have.size() == want.size(); ++i) {
      if (have[i] != want[i]) {
        if (have[i] != src.d_ff || want[i] != target.d_ff) break;
        dst = dst.narrow(static_cast<int64_t>(i), 0, have[i]);
      }
    }
    if (dst.sizes().vec() != have) {
      throw std::invalid_argument(what + ": tensor '" + name + "' has shape " + shape_text(have) + ", expected " +
                                  shape_text(want) + " (only the MLP width d_ff may differ, " +
                                  std::to_string(src.d_ff) + " -> " + std::to_string(target.d_ff) + ")");
    }
    dst.copy_(w);
  }
  return src;
}

namespace {

void copy_weights_from(const std::string& dir, Decoder& model) {
  CheckpointTensors t(dir);
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : model.named_parameters()) {
    p.copy_(t.load(name, p.sizes().vec(), at::kFloat, at::kCPU).to(p.device()));
  }
}

}  // namespace

// ---- loss ---------------------------------------------------------------------------------------------------

namespace {

// The chunked loss of linear_cross_entropy. forward returns the mean loss and keeps, when with_grad, the
// gradients of the mean; backward scales them by the incoming gradient.
struct LinearCrossEntropy : torch::autograd::Function<LinearCrossEntropy> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk_rows, bool with_grad) {
    const int64_t n = hidden.size(0);
    const at::Tensor w = weight.to(at::kFloat);
    at::Tensor grad_hidden, grad_weight;
    if (with_grad) {
      grad_hidden = at::empty({n, hidden.size(1)}, w.options());
      grad_weight = at::zeros_like(w);
    }
    at::Tensor total = at::zeros({}, w.options());
    for (int64_t s = 0; s < n; s += chunk_rows) {
      const int64_t m = std::min(chunk_rows, n - s);
      const at::Tensor h = hidden.narrow(0, s, m).to(at::kFloat);
      const at::Tensor y = targets.narrow(0, s, m).unsqueeze(1);
      at::Tensor z = at::matmul(h, w.t());  // [m, vocab]: the only logits ever held
      const at::Tensor lse = at::logsumexp(z, 1, true);
      total += (lse - z.gather(1, y)).sum();
      if (!with_grad) continue;
      // d(mean loss)/d(logits) = (softmax - onehot) / n, formed in place.
      z.sub_(lse).exp_().scatter_add_(1, y, at::full({m, 1}, -1.0, z.options())).mul_(1.0 / static_cast<double>(n));
      grad_hidden.narrow(0, s, m).copy_(at::matmul(z, w));
      grad_weight.addmm_(z.t(), h);
    }
    if (with_grad) ctx->save_for_backward({grad_hidden.to(hidden.scalar_type()), grad_weight.to(weight.scalar_type())});
    return total / static_cast<double>(n);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& g = grad_out[0];
    return {saved[0] * g.to(saved[0].scalar_type()), saved[1] * g.to(saved[1].scalar_type()), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                int64_t chunk_rows) {
  const bool shapes_ok = hidden.dim() == 2 && weight.dim() == 2 && targets.dim() == 1 && hidden.size(0) >= 1 &&
                         hidden.size(1) == weight.size(1) && targets.size(0) == hidden.size(0);
  if (!shapes_ok || targets.scalar_type() != at::kLong) {
    throw std::invalid_argument("linear_cross_entropy: expected hidden [N, D], weight [V, D] and int64 targets [N] "
                                "(N >= 1); found " + shape_text(hidden.sizes().vec()) + ", " +
                                shape_text(weight.sizes().vec()) + " and " + std::string(c10::toString(targets.scalar_type())) +
                                " " + shape_text(targets.sizes().vec()));
  }
  if (chunk_rows <= 0) {
    // A chunk of logits of about 2 MB stays in cache on CPU; on a GPU, bigger chunks keep the kernels busy.
    const int64_t elems = hidden.device().is_cpu() ? (int64_t{1} << 19) : (int64_t{1} << 26);
    chunk_rows = std::max<int64_t>(16, elems / weight.size(0));
  }
  const bool with_grad = torch::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());
  return LinearCrossEntropy::apply(hidden, weight, targets, chunk_rows, with_grad);
}

at::Tensor lm_loss(const Decoder& model, const at::Tensor& batch, at::Device device) {
  at::Tensor tokens = batch.to(device);
  const int64_t t = tokens.size(1) - 1;
  at::Tensor inputs = tokens.narrow(1, 0, t);
  at::Tensor targets = tokens.narrow(1, 1, t);
  at::Tensor hidden = model.hidden_full(inputs, 0);
  return linear_cross_entropy(hidden.reshape({-1, hidden.size(-1)}), model.head_weight(), targets.reshape({-1}));
}

// ---- config -------------------------------------------------------------------------------------------------

TrainConfig parse_train_config(const std::string& json_text, const std::string& source_name, Family family) {
  if (family != Family::llama && family != Family::gpt2) {
    throw std::invalid_argument(source_name + ": --family must be llama or gpt2, found " + family_name(family));
  }
  const json j = parse_json(json_text, source_name);
  if (!j.is_object()) throw std::invalid_argument(source_name + ": expected a JSON object at the top, found " + type_of(j));
  Fields f{j, source_name, ""};
  f.only({"model", "tokenizer", "train_text", "heldout_text", "train_ids", "heldout_ids", "init_from", "seq_len", "batch", "steps",
          "warmup", "lr", "min_lr", "weight_decay", "beta1", "beta2", "eps", "clip", "seed", "eval_interval",
          "eval_batches", "checkpoint_interval", "log_interval", "prepend_bos", "copy_fraction", "copy_random", "copy_substitute", "copy_min_gap", "copy_min_len",
          "copy_max_len", "threads",
          "max_minutes", "device", "comment", "bos_id", "eos_id"});
  TrainConfig c;
  if (!j.contains("model") || !j.at("model").is_object()) {
    throw std::invalid_argument(source_name + ": field 'model' must be an object with the model sizes, found " +
                                (j.contains("model") ? type_of(j.at("model")) : std::string("none")));
  }
  const json& mj = j.at("model");
  Fields m{mj, source_name, "model."};
  m.only({"d_model", "n_layer", "n_head", "n_kv_head", "d_ff", "max_positions", "rope_theta", "tie_word_embeddings",
          "norm_eps", "vocab_size", "attention_bias"});
  ModelConfig& mc = c.model;
  mc.family = family;
  mc.model_type = family == Family::llama ? "llama" : "gpt2";
  mc.d_model = m.required_integer("d_model", 1);
  mc.n_layer = m.required_integer("n_layer", 1);
  mc.n_head = m.required_integer("n_head", 1);
  if (mc.d_model % mc.n_head != 0) {
    throw std::invalid_argument(source_name + ": field 'model.n_head' must divide model.d_model (" +
                                std::to_string(mc.d_model) + "), found " + std::to_string(mc.n_head));
  }
  mc.d_head = mc.d_model / mc.n_head;
  mc.n_kv_head = family == Family::llama ? m.integer("n_kv_head", mc.n_head, 1) : mc.n_head;
  if (family == Family::gpt2 && mj.contains("n_kv_head") && m.integer("n_kv_head", mc.n_head, 1) != mc.n_head) {
    throw std::invalid_argument(source_name + ": field 'model.n_kv_head' must equal model.n_head for gpt2, found " +
                                type_of(mj.at("n_kv_head")));
  }
  if (mc.n_head % mc.n_kv_head != 0) {
    throw std::invalid_argument(source_name + ": field 'model.n_kv_head' must divide model.n_head (" +
                                std::to_string(mc.n_head) + "), found " + std::to_string(mc.n_kv_head));
  }
  mc.d_ff = m.integer("d_ff", family == Family::llama ? (8 * mc.d_model / 3 + 63) / 64 * 64 : 4 * mc.d_model, 1);
  mc.max_positions = m.integer("max_positions", family == Family::llama ? 2048 : 1024, 1);
  mc.rope_theta = m.number("rope_theta", 10000.0, 1.0, 1e9);
  mc.norm_eps = m.number("norm_eps", 1e-5, 0.0, 1.0);
  mc.tie_word_embeddings = family == Family::gpt2 ? true : m.boolean("tie_word_embeddings", true);
  if (family == Family::gpt2 && mj.contains("attention_bias")) {
    throw std::invalid_argument(source_name + ": field 'model.attention_bias' is for the llama family (gpt2 always has biases), found " +
                                json_preview(mj.at("attention_bias")));
  }
  // Llama's attention_bias (q/k/v and o_proj): with RoPE, q and k biases give attention by relative position alone.
  if (family == Family::llama) mc.attention_bias = mc.attention_out_bias = m.boolean("attention_bias", false);
  mc.vocab_size = m.integer("vocab_size", 0, 0);  // 0 = from the tokenizer
  mc.torch_dtype = "float32";

  c.tokenizer = f.string("tokenizer", "");
  c.train_text = f.string("train_text", "");
  c.heldout_text = f.string("heldout_text", "");
  c.train_ids = f.string("train_ids", "");
  c.heldout_ids = f.string("heldout_ids", "");
  c.init_from = f.string("init_from", "");
  if (c.tokenizer.empty()) {
    throw std::invalid_argument(source_name + ": field 'tokenizer' is required (path of tokenizer.model), found none");
  }
  if (c.train_text.empty() == c.train_ids.empty()) {
    throw std::invalid_argument(source_name + ": exactly one of the fields 'train_text' and 'train_ids' must be given, found " +
                                (c.train_text.empty() ? "neither" : "both"));
  }
  if (c.heldout_text.empty() == c.heldout_ids.empty()) {
    throw std::invalid_argument(source_name + ": exactly one of the fields 'heldout_text' and 'heldout_ids' must be given, found " +
                                (c.heldout_text.empty() ? "neither" : "both"));
  }
  c.seq_len = f.integer("seq_len", c.seq_len, 2);
  if (c.seq_len > mc.max_positions) {
    throw std::invalid_argument(source_name + ": field 'seq_len' must be <= model.max_positions (" +
                                std::to_string(mc.max_positions) + "), found " + std::to_string(c.seq_len));
  }
  c.batch = f.integer("batch", c.batch, 1);
  c.steps = f.integer("steps", c.steps, 1);
  c.warmup = f.integer("warmup", c.warmup, 0);
  if (c.warmup >= c.steps) {
    throw std::invalid_argument(source_name + ": field 'warmup' must be < steps (" + std::to_string(c.steps) +
                                "), found " + std::to_string(c.warmup));
  }
  c.lr = f.number("lr", c.lr, 0.0, 1.0);
  c.min_lr = f.number("min_lr", std::min(c.min_lr, c.lr), 0.0, c.lr);
  c.weight_decay = f.number("weight_decay", c.weight_decay, 0.0, 10.0);
  c.beta1 = f.number("beta1", c.beta1, 0.0, 0.999999);
  c.beta2 = f.number("beta2", c.beta2, 0.0, 0.999999);
  c.eps = f.number("eps", c.eps, 0.0, 1.0);
  c.clip = f.number("clip", c.clip, 0.0, 1e9);
  c.seed = static_cast<uint64_t>(f.integer("seed", static_cast<int64_t>(c.seed), 0));
  c.eval_interval = f.integer("eval_interval", c.eval_interval, 0);
  c.eval_batches = f.integer("eval_batches", c.eval_batches, 1);
  c.checkpoint_interval = f.integer("checkpoint_interval", c.checkpoint_interval, 0);
  c.log_interval = f.integer("log_interval", c.log_interval, 1);
  c.prepend_bos = f.boolean("prepend_bos", c.prepend_bos);
  c.copy_fraction = f.number("copy_fraction", c.copy_fraction, 0.0, 1.0);
  c.copy_random = f.number("copy_random", c.copy_random, 0.0, 1.0);
  c.copy_substitute = f.number("copy_substitute", c.copy_substitute, 0.0, 1.0);
  c.copy_min_gap = f.integer("copy_min_gap", c.copy_min_gap, 0);
  c.copy_min_len = f.integer("copy_min_len", c.copy_min_len, 1);
  c.copy_max_len = f.integer("copy_max_len", c.copy_max_len, 1);
  if (c.copy_max_len < c.copy_min_len) {
    throw std::invalid_argument(source_name + ": field 'copy_max_len' must be >= copy_min_len (" +
                                std::to_string(c.copy_min_len) + "), found " + std::to_string(c.copy_max_len));
  }
  const int64_t copy_room = longest_copy_span(c);
  if (c.copy_fraction > 0 && c.copy_min_len > copy_room) {
    throw std::invalid_argument(source_name + ": field 'copy_min_len' must be <= " + std::to_string(copy_room) +
                                " (a span and its repeat fit in seq_len " + std::to_string(c.seq_len) + " with copy_min_gap " +
                                std::to_string(c.copy_min_gap) + " between them), found " +
                                std::to_string(c.copy_min_len));
  }
  c.threads = static_cast<int>(f.integer("threads", c.threads, 0));
  c.max_minutes = f.number("max_minutes", c.max_minutes, 0.0, 1e7);
  c.device = f.string("device", c.device);
  c.bos_id = f.integer("bos_id", -1, -1);
  c.eos_id = f.integer("eos_id", -1, -1);
  return c;
}

TrainConfig load_train_config(const std::string& path, Family family) {
  return parse_train_config(read_text_file(path, "--config"), path, family);
}

double scheduled_lr(const TrainConfig& c, int64_t step) {
  if (step < c.warmup) return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup);
  const int64_t span = c.steps - 1 - c.warmup;
  if (span <= 0 || step >= c.steps - 1) return step >= c.steps - 1 ? c.min_lr : c.lr;
  const double progress = static_cast<double>(step - c.warmup) / static_cast<double>(span);
  return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(M_PI * progress));
}

std::vector<std::pair<std::string, std::vector<float>>> read_weights_f32(const std::string& dir, const ModelConfig& config) {
  CheckpointTensors t(dir);
  std::vector<std::pair<std::string, std::vector<float>>> out;
  for (const auto& [name, shape] : expected_tensors(config)) {
    at::Tensor x = t.load(name, shape, at::kFloat, at::kCPU).contiguous();
    out.emplace_back(name, std::vector<float>(x.data_ptr<float>(), x.data_ptr<float>() + x.numel()));
  }
  return out;
}

// ---- training -----------------------------------------------------------------------------------------------

TrainResult train_model(const TrainConfig& config_in, const TrainOptions& options) {
  TrainConfig c = config_in;
  if (options.out_dir.empty()) throw std::invalid_argument("--out: an output folder is required");
  const fs::path out_dir(options.out_dir);
  const at::Device device = parse_device(c.device);
  if (device.is_cpu()) configure_threads(c.threads);
  torch::manual_seed(c.seed);

  // Tokenizer: vocabulary size and BOS/EOS ids. With pre-encoded ids the tokenizer is optional when the config
  // gives model.vocab_size, bos_id and eos_id (a tokenizer.model that this build cannot read is still copied).
  const std::string tok_file = tokenizer_file(c.tokenizer);
  // The tokenizer is read from its folder and copied into the output under its own name, so a file must bear one
  // of the names a model folder's loader reads (else another file of that folder is read, and the output
  // folder holds a tokenizer no loader finds).
  if (const std::string name = fs::path(tok_file).filename().string();
      !fs::is_directory(c.tokenizer) && name != "tokenizer.model" && name != "tokenizer.json" && name != "vocab.txt") {
    throw std::invalid_argument("field 'tokenizer': '" + c.tokenizer +
                                "' must be a folder or a file named tokenizer.model, tokenizer.json or vocab.txt, "
                                "found a file named '" + name + "'");
  }
  std::unique_ptr<Tokenizer> tok;
  int64_t vocab = c.model.vocab_size, bos_id = c.bos_id, eos_id = c.eos_id;
  try {
    tok = load_tokenizer(tokenizer_dir(c.tokenizer));
    vocab = tok->vocab_size();
    if (bos_id < 0) bos_id = tok->bos_id();
    if (eos_id < 0) eos_id = tok->eos_id();
  } catch (const std::exception& e) {
    const bool ids_only = !c.train_ids.empty() && !c.heldout_ids.empty();
    if (!ids_only || c.model.vocab_size <= 0 || (c.prepend_bos && bos_id < 0)) throw;
    spdlog::warn("tokenizer '{}' not loaded ({}); using model.vocab_size {} and bos_id {} from the config", tok_file,
                 e.what(), vocab, bos_id);
  }
  if (c.model.vocab_size == 0) c.model.vocab_size = vocab;
  if (c.model.vocab_size < vocab) {
    throw std::invalid_argument("field 'model.vocab_size' must be >= the tokenizer's vocabulary (" + std::to_string(vocab) +
                                " in '" + tok_file + "'), found " + std::to_string(c.model.vocab_size));
  }
  c.model.bos_token_id = bos_id;
  c.model.eos_token_id = eos_id;
  if (c.prepend_bos && bos_id < 0) {
    throw std::invalid_argument("field 'prepend_bos' is true but the tokenizer '" + tok_file + "' has no BOS token");
  }
  c.model.validate("training config");
  const std::string tok_bytes = read_text_file(tok_file, "field 'tokenizer':");

  const std::vector<int32_t> train_ids = c.train_ids.empty() ? encode_corpus(c.train_text, "train_text", *tok, tok_bytes)
                                                             : read_ids_bin(c.train_ids, "train_ids", c.model.vocab_size);
  const std::vector<int32_t> held_ids = c.heldout_ids.empty() ? encode_corpus(c.heldout_text, "heldout_text", *tok, tok_bytes)
                                                              : read_ids_bin(c.heldout_ids, "heldout_ids", c.model.vocab_size);
  const int64_t n_text = text_tokens_per_sequence(c);
  if (static_cast<int64_t>(train_ids.size()) < n_text + 1) {
    throw std::invalid_argument("training corpus has " + std::to_string(train_ids.size()) + " tokens, expected at least " +
                                std::to_string(n_text + 1) + " (one sequence of seq_len)");
  }
  if (static_cast<int64_t>(held_ids.size()) < n_text + 1) {
    throw std::invalid_argument("held-out corpus has " + std::to_string(held_ids.size()) + " tokens, expected at least " +
                                std::to_string(n_text + 1) + " (one sequence of seq_len)");
  }
  const int64_t bos = bos_id;

  // Model: random init (checkpoint.h's scheme), then trainable.
  auto model = make_decoder(c.model, device, at::kFloat);
  {
    auto init = random_tensors(c.model, c.seed);
    std::map<std::string, at::Tensor> by_name(init.begin(), init.end());
    model->load_weights([&](const std::string& name, const std::vector<int64_t>&) { return by_name.at(name); });
  }
  if (!c.init_from.empty() && !options.resume) {
    const ModelConfig src = init_from_model(c.init_from, c.model, *model);
    spdlog::info("weights from {} (MLP width {} -> {})", c.init_from, src.d_ff, c.model.d_ff);
  }
  auto named = model->named_parameters();
  std::vector<at::Tensor> decay, no_decay, all;
  int64_t n_params = 0;
  for (auto& [name, p] : named) {
    p.set_requires_grad(true);
    (is_decayed(name, p) ? decay : no_decay).push_back(p);
    all.push_back(p);
    n_params += p.numel();
  }
  auto opts = torch::optim::AdamWOptions(c.lr).betas({c.beta1, c.beta2}).eps(c.eps).weight_decay(c.weight_decay);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(opts));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(opts).weight_decay(0.0)));
  torch::optim::AdamW opt(std::move(groups), opts);

  RunState st;
  fs::create_directories(out_dir);
  const fs::path ckpt = out_dir / "checkpoint";
  if (options.resume) {
    fs::path from = ckpt;
    if (!fs::exists(from / "state.json") && fs::exists(out_dir / "checkpoint.old" / "state.json")) from = out_dir / "checkpoint.old";
    if (!fs::exists(from / "state.json")) {
      throw std::invalid_argument("--resume: no checkpoint in '" + ckpt.string() + "' (expected state.json there)");
    }
    const std::string state = (from / "state.json").string();
    json s = parse_json(read_text_file(state, "checkpoint"), state);
    const json saved_model = s.at("config").at("model");
    if (saved_model != json::parse(c.model.to_json_text())) {
      throw std::invalid_argument("--resume: the model in '" + (from / "state.json").string() +
                                  "' differs from the config's model (" + json_preview(saved_model) + ")");
    }
    copy_weights_from(from.string(), *model);
    torch::load(opt, (from / "optimizer.pt").string());
    st.step = s.at("step").get<int64_t>();
    st.wall_s = s.at("wall_s").get<double>();
    st.step_losses = s.at("step_losses").get<std::vector<double>>();
    st.heldout = s.at("heldout");
    spdlog::info("resumed from {} at step {}", from.string(), st.step);
  }

  const auto held = heldout_batches(held_ids, c, bos);
  const int64_t tokens_per_step = c.batch * c.seq_len;
  spdlog::info("train {}: {} parameters, {} train tokens, {} held-out tokens, {} steps x {} tokens ({:.2f} epochs)",
               c.model.model_type, n_params, train_ids.size(), held_ids.size(), c.steps, tokens_per_step,
               static_cast<double>(c.steps * tokens_per_step) / static_cast<double>(train_ids.size()));

  TrainResult r;
  r.parameters = n_params;
  const auto t_start = std::chrono::steady_clock::now();
  const double wall_before = st.wall_s;
  const int64_t step_at_start = st.step;
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(); };
  auto eval_now = [&](int64_t step) {
    const double l = heldout_loss(*model, held, device);
    st.heldout.push_back({{"step", step}, {"loss", l}, {"ppl", std::exp(l)}});
    spdlog::info("step {}/{}: held-out loss {:.4f} (ppl {:.2f})", step, c.steps, l, std::exp(l));
    return l;
  };
  bool stopped_early = false;
  double last_heldout = st.heldout.empty() ? -1 : st.heldout.back().at("loss").get<double>();
  double window_sum = 0;
  int64_t window_n = 0;
  while (st.step < c.steps) {
    const int64_t step = st.step;
    const double lr = scheduled_lr(c, step);
    for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    at::Tensor batch = training_batch(train_ids, c, bos, step);
    opt.zero_grad();
    at::Tensor loss = lm_loss(*model, batch, device);
    loss.backward();
    if (c.clip > 0) torch::nn::utils::clip_grad_norm_(all, c.clip);
    opt.step();
    const double l = loss.item<double>();
    if (!std::isfinite(l)) throw std::runtime_error("training diverged: loss is " + std::to_string(l) + " at step " + std::to_string(step));
    st.step_losses.push_back(l);
    if (step == step_at_start) r.initial_loss = l;
    st.step = step + 1;
    st.wall_s = wall_before + elapsed();
    window_sum += l;
    ++window_n;
    const double tps = static_cast<double>((st.step - step_at_start) * tokens_per_step) / std::max(1e-9, elapsed());
    if (st.step % c.log_interval == 0 || st.step == c.steps) {
      spdlog::info("step {}/{}: loss {:.4f} lr {:.3e} {:.0f} tok/s", st.step, c.steps, window_sum / window_n, lr, tps);
      r.final_loss = window_sum / window_n;
      window_sum = 0;
      window_n = 0;
    }
    const bool time_up = c.max_minutes > 0 && elapsed() > 60.0 * c.max_minutes;
    const bool stop_here = options.stop_after >= 0 && st.step >= options.stop_after;
    if ((c.eval_interval > 0 && st.step % c.eval_interval == 0) || st.step == c.steps || time_up) last_heldout = eval_now(st.step);
    if (options.on_step) {
      TrainStatus s{st.step, c.steps, l, lr, tps, last_heldout, st.wall_s};
      options.on_step(s);
    }
    if ((c.checkpoint_interval > 0 && st.step % c.checkpoint_interval == 0) || st.step == c.steps || time_up || stop_here) {
      save_training_checkpoint(out_dir, c, *model, opt, st);
    }
    if (time_up && st.step < c.steps) {
      spdlog::warn("max_minutes ({}) reached at step {}/{}: stopping early", c.max_minutes, st.step, c.steps);
      stopped_early = true;
      break;
    }
    if (stop_here) break;
  }
  if (window_n > 0) r.final_loss = window_sum / window_n;
  r.steps_done = st.step;
  r.tokens_trained = st.step * tokens_per_step;
  r.heldout_loss = last_heldout;
  r.wall_s = st.wall_s;
  r.step_losses = st.step_losses;

  const bool finished = st.step >= c.steps || stopped_early;
  if (finished && options.write_model) {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (auto& [name, p] : model->named_parameters()) tensors.emplace_back(name, p.detach().to(at::kCPU, at::kHalf));
    ModelConfig mc = c.model;
    mc.torch_dtype = "float16";
    save_checkpoint(out_dir.string(), mc, tensors);
    const std::string ext = fs::path(tok_file).filename().string();
    fs::copy_file(tok_file, out_dir / ext, fs::copy_options::overwrite_existing);
    json log = {{"command", options.command_line},
                {"finished_utc", now_utc()},
                {"config", config_to_json(c)},
                {"parameters", n_params},
                {"steps_done", st.step},
                {"stopped_early", stopped_early},
                {"tokens_per_step", tokens_per_step},
                {"tokens_trained", r.tokens_trained},
                {"train_corpus_tokens", train_ids.size()},
                {"heldout_corpus_tokens", held_ids.size()},
                {"epochs", static_cast<double>(r.tokens_trained) / static_cast<double>(train_ids.size())},
                {"heldout_loss", last_heldout},
                {"heldout_ppl", last_heldout >= 0 ? std::exp(last_heldout) : -1.0},
                {"heldout_history", st.heldout},
                {"wall_s", st.wall_s},
                {"device", c.device},
                {"threads", c.threads},
                {"step_losses", st.step_losses}};
    write_json_file(out_dir / "train_log.json", log);
    spdlog::info("wrote {} (float16, {} parameters; held-out ppl {:.2f}; {:.0f} s)", out_dir.string(), n_params,
                 std::exp(last_heldout), st.wall_s);
  }
  return r;
}

}  // namespace sinkflow
