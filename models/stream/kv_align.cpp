#include "models/stream/kv_align.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include "models/nn/decoder.h"
#include "models/cache/kv_cache.h"
#include "models/io/safetensors.h"
#include "models/io/json_read.h"
#include "models/io/message_text.h"

namespace sinkflow {

namespace fs = std::filesystem;
namespace nn = torch::nn;

namespace {

std::string str(int64_t v) { return std::to_string(v); }

// One realignment network (keys or values).
struct AlignNetImpl : nn::Module {
  nn::Embedding pos_from{nullptr}, pos_to{nullptr}, group{nullptr};
  nn::Linear fc1{nullptr}, fc2{nullptr}, out{nullptr};
  torch::Tensor mu, sd;  // [G, d_head], [G, 1]: per-group statistics of the inputs

  explicit AlignNetImpl(const KvAlignConfig& c) {
    pos_from = register_module("pos_from", nn::Embedding(c.max_positions, c.embed_dim));
    pos_to = register_module("pos_to", nn::Embedding(c.max_positions, c.embed_dim));
    group = register_module("group", nn::Embedding(c.groups(), c.embed_dim));
    fc1 = register_module("fc1", nn::Linear(c.d_head + 3 * c.embed_dim, c.hidden));
    fc2 = register_module("fc2", nn::Linear(c.hidden, c.hidden));
    out = register_module("out", nn::Linear(c.hidden, c.d_head));
    mu = register_buffer("mu", torch::zeros({c.groups(), c.d_head}));
    sd = register_buffer("sd", torch::ones({c.groups(), 1}));
    torch::NoGradGuard no_grad;
    for (auto* e : {&pos_from, &pos_to, &group}) (*e)->weight.normal_(0.0, 0.1);
    out->weight.zero_();  // starts as the identity: the stale cache
    out->bias.zero_();
  }

  // x [N, d_head] float32; from, to, g [N] int64.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& from, const torch::Tensor& to,
                        const torch::Tensor& g) {
    torch::Tensor m = mu.index_select(0, g), s = sd.index_select(0, g);
    torch::Tensor h = torch::cat({(x - m) / s, pos_from(from), pos_to(to), group(g)}, 1);
    h = torch::gelu(fc1(h));
    h = torch::gelu(fc2(h));
    return x + s * out(h);
  }
};
TORCH_MODULE(AlignNet);

}  // namespace

struct KvAlign::Impl {
  AlignNet key{nullptr}, value{nullptr};
  std::vector<std::pair<std::string, torch::Tensor>> tensors() const {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (auto [prefix, net] : {std::pair<std::string, AlignNet>{"key.", key}, {"value.", value}}) {
      for (const auto& p : net->named_parameters()) out.emplace_back(prefix + p.key(), p.value());
      for (const auto& b : net->named_buffers()) out.emplace_back(prefix + b.key(), b.value());
    }
    return out;
  }
};

KvAlignConfig KvAlignConfig::for_model(const ModelConfig& model) {
  KvAlignConfig c;
  c.n_layer = model.n_layer;
  c.n_kv_head = model.n_kv_head;
  c.d_head = model.d_head;
  c.max_positions = model.max_positions;
  c.model_type = model.model_type;
  return c;
}

void KvAlignConfig::validate(const std::string& where) const {
  auto positive = [&](const char* field, int64_t v) {
    if (v <= 0) throw std::invalid_argument(where + ": field '" + field + "' must be > 0, found " + str(v));
  };
  positive("n_layer", n_layer);
  positive("n_kv_head", n_kv_head);
  positive("d_head", d_head);
  positive("max_positions", max_positions);
  positive("embed_dim", embed_dim);
  positive("hidden", hidden);
}

KvAlign::KvAlign(const KvAlignConfig& config) : config_(config), impl_(std::make_unique<Impl>()) {
  config_.validate("kv-align config");
  impl_->key = AlignNet(config_);
  impl_->value = AlignNet(config_);
  impl_->key->eval();
  impl_->value->eval();
}

KvAlign::~KvAlign() = default;

void KvAlign::check_model(const ModelConfig& model, const std::string& where) const {
  auto same = [&](const char* field, int64_t mine, int64_t theirs) {
    if (mine != theirs) {
      throw std::invalid_argument(where + ": the kv-align networks were trained for " + field + " = " + str(mine) +
                                  ", the model has " + str(theirs));
    }
  };
  if (model.family != Family::gpt2) {
    throw std::invalid_argument(where + ": kv-align needs a model with learned absolute positions (GPT-2 family), found "
                                "model_type '" + model.model_type + "'");
  }
  same("n_layer", config_.n_layer, model.n_layer);
  same("n_kv_head", config_.n_kv_head, model.n_kv_head);
  same("d_head", config_.d_head, model.d_head);
  same("max_positions", config_.max_positions, model.max_positions);
}

std::pair<at::Tensor, at::Tensor> KvAlign::realign(const at::Tensor& k, const at::Tensor& v,
                                                   const std::vector<int64_t>& tokens,
                                                   const std::vector<int64_t>& from, const std::vector<int64_t>& to,
                                                   const Decoder* model) const {
  const int64_t n = static_cast<int64_t>(from.size());
  const std::vector<int64_t> want = {config_.n_layer, config_.n_kv_head, n, config_.d_head};
  if (k.sizes() != at::IntArrayRef(want) || v.sizes() != at::IntArrayRef(want) || to.size() != from.size() ||
      tokens.size() != from.size()) {
    throw std::invalid_argument("kv-align: realign expects k and v of shape " + std::string(c10::str(at::IntArrayRef(want))) +
                                " and as many tokens and target indices, found k " + std::string(c10::str(k.sizes())) +
                                ", v " + std::string(c10::str(v.sizes())) + ", " + str(static_cast<int64_t>(tokens.size())) +
                                " tokens, " + str(static_cast<int64_t>(to.size())) + " targets");
  }
  if (config_.exact_first_layer && model == nullptr) {
    throw std::invalid_argument("kv-align: these networks leave the first layer to the model (exact_first_layer); "
                                "realign needs the model");
  }
  std::vector<int64_t> moved, f, t, toks;
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t p : {from[j], to[j]}) {
      if (p < 0 || p >= config_.max_positions) {
        throw std::invalid_argument("kv-align: in-cache index " + str(p) + " outside the networks' " +
                                    str(config_.max_positions) + " positions");
      }
    }
    if (from[j] != to[j]) {
      moved.push_back(j);
      f.push_back(from[j]);
      t.push_back(to[j]);
      toks.push_back(tokens[j]);
    }
  }
  if (moved.empty()) return {k, v};
  torch::NoGradGuard no_grad;
  const int64_t m = static_cast<int64_t>(moved.size());
  const int64_t first = config_.exact_first_layer ? 1 : 0;  // first layer served by the networks
  const int64_t layers = config_.n_layer - first, heads = config_.n_kv_head, dh = config_.d_head;
  const int64_t groups = layers * heads;
  const auto cpu_long = torch::TensorOptions().dtype(torch::kLong);
  torch::Tensor idx = torch::tensor(moved, cpu_long).to(k.device());
  at::Tensor k_out = k.clone(), v_out = v.clone();
  if (groups > 0) {
    // Rows ordered (group, token): group g = layer * n_kv_head + head.
    torch::Tensor g = torch::arange(first * heads, config_.n_layer * heads, cpu_long).repeat_interleave(m).to(k.device());
    torch::Tensor fr = torch::tensor(f, cpu_long).repeat({groups}).to(k.device());
    torch::Tensor tt = torch::tensor(t, cpu_long).repeat({groups}).to(k.device());
    // The networks stay where they were built or loaded (the CPU); a cache on another device sends them the
    // moved rows and takes the result back (no-op moves on the CPU).
    auto run = [&](AlignNet& net, const at::Tensor& x, at::Tensor& outp) {
      const at::Device nd = net->mu.device();
      torch::Tensor sel = x.narrow(0, first, layers).index_select(2, idx);  // [layers, KV, m, dh]
      torch::Tensor y = net->forward(sel.reshape({groups * m, dh}).to(nd, torch::kFloat), fr.to(nd), tt.to(nd), g.to(nd));
      outp.narrow(0, first, layers).index_copy_(2, idx, y.reshape({layers, heads, m, dh}).to(x.device(), x.scalar_type()));
    };
    run(impl_->key, k, k_out);
    run(impl_->value, v, v_out);
  }
  if (first == 1) {
    at::Tensor kv0 = model->first_layer_kv(toks, t).to(k.device(), k.scalar_type());  // [2, KV, m, dh]
    k_out.select(0, 0).index_copy_(1, idx, kv0.select(0, 0));
    v_out.select(0, 0).index_copy_(1, idx, kv0.select(0, 1));
  }
  return {k_out, v_out};
}

// ---- files -------------------------------------------------------------------------------------------------

namespace {

constexpr const char* kFormat = "sinkflow-kv-align";

nlohmann::json config_json(const KvAlignConfig& c) {
  return {{"format", kFormat},          {"version", 1},         {"model_type", c.model_type},
          {"n_layer", c.n_layer},       {"n_kv_head", c.n_kv_head}, {"d_head", c.d_head},
          {"max_positions", c.max_positions}, {"embed_dim", c.embed_dim}, {"hidden", c.hidden},
          {"exact_first_layer", c.exact_first_layer}};
}

}  // namespace

void KvAlign::save(const std::string& dir, const std::string& report_json) const {
  fs::create_directories(dir);
  save_safetensors((fs::path(dir) / "model.safetensors").string(), impl_->tensors(), {{"format", kFormat}});
  nlohmann::json j = config_json(config_);
  j["training"] = nlohmann::json::parse(report_json);
  const fs::path path = fs::path(dir) / "kv_align.json";
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(1) << "\n";
    if (!out) throw std::runtime_error(tmp.string() + ": cannot be written");
  }
  fs::rename(tmp, path);
}

std::shared_ptr<KvAlign> KvAlign::load(const std::string& dir) {
  const fs::path cfg_path = fs::path(dir) / "kv_align.json";
  std::ifstream in(cfg_path);
  if (!in) {
    throw std::invalid_argument(cfg_path.string() + ": not found (train one with `sinkflow train-kv-align --model DIR "
                                "--text FILE`)");
  }
  const nlohmann::json j = read_json_file(cfg_path.string());
  const std::string where = cfg_path.string();
  if (!j.is_object() || !j.contains("format") || j["format"] != kFormat) {
    throw std::invalid_argument(where + ": field 'format' must be \"" + std::string(kFormat) + "\", found " +
                                (j.is_object() && j.contains("format") ? json_preview(j["format"]) : std::string("nothing")));
  }
  auto integer = [&](const char* field) -> int64_t {
    if (!j.contains(field) || !j[field].is_number_integer()) {
      throw std::invalid_argument(where + ": field '" + field + "' must be an integer, found " +
                                  (j.contains(field) ? json_preview(j[field]) : std::string("nothing")));
    }
    return j[field].get<int64_t>();
  };
  KvAlignConfig c;
  c.n_layer = integer("n_layer");
  c.n_kv_head = integer("n_kv_head");
  c.d_head = integer("d_head");
  c.max_positions = integer("max_positions");
  c.embed_dim = integer("embed_dim");
  c.hidden = integer("hidden");
  if (j.contains("model_type") && j["model_type"].is_string()) c.model_type = j["model_type"].get<std::string>();
  if (!j.contains("exact_first_layer") || !j["exact_first_layer"].is_boolean()) {
    throw std::invalid_argument(where + ": field 'exact_first_layer' must be true or false, found " +
                                (j.contains("exact_first_layer") ? json_preview(j["exact_first_layer"]) : std::string("nothing")));
  }
  c.exact_first_layer = j["exact_first_layer"].get<bool>();
  c.validate(where);
  auto out = std::make_shared<KvAlign>(c);
  const std::string st_path = (fs::path(dir) / "model.safetensors").string();
  SafetensorsFile file(st_path);
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : out->impl_->tensors()) {
    if (!file.contains(name)) throw std::invalid_argument(st_path + ": tensor '" + name + "' is missing");
    at::Tensor src = file.tensor(name);
    if (src.sizes() != t.sizes()) {
      throw std::invalid_argument(st_path + ": tensor '" + name + "' has shape " + std::string(c10::str(src.sizes())) +
                                  ", expected " + std::string(c10::str(t.sizes())) + " (from kv_align.json)");
    }
    if (!at::isFloatingType(src.scalar_type())) {
      throw std::invalid_argument(st_path + ": tensor '" + name + "' must be floating point");
    }
    t.copy_(src.to(torch::kFloat));
  }
  return out;
}

std::string KvAlign::default_dir(const std::string& model_dir) { return (fs::path(model_dir) / "kv-align").string(); }

std::shared_ptr<KvAlign> KvAlign::load_for(const std::string& model_dir, const std::string& dir) {
  return load(dir.empty() ? default_dir(model_dir) : dir);
}

std::string KvAlignTrainReport::to_json() const {
  nlohmann::json j = {{"train_vectors", train_vectors},
                      {"heldout_vectors", heldout_vectors},
                      {"heldout_mse_stale_key", heldout_stale_key},
                      {"heldout_mse_stale_value", heldout_stale_value},
                      {"heldout_mse_key", heldout_key},
                      {"heldout_mse_value", heldout_value},
                      {"final_loss", final_loss},
                      {"seconds_pairs", seconds_pairs},
                      {"seconds_train", seconds_train}};
  return j.dump();
}

// ---- training ----------------------------------------------------------------------------------------------

namespace {

struct Pairs {
  std::vector<torch::Tensor> xk, yk, xv, yv, from, to, group;
  torch::Tensor XK, YK, XV, YV, F, T, G;
  void finish() {
    XK = torch::cat(xk);
    YK = torch::cat(yk);
    XV = torch::cat(xv);
    YV = torch::cat(yv);
    F = torch::cat(from);
    T = torch::cat(to);
    G = torch::cat(group);
    xk.clear(), yk.clear(), xv.clear(), yv.clear(), from.clear(), to.clear(), group.clear();
  }
  int64_t size() const { return XK.defined() ? XK.size(0) : 0; }
};

// K and V of `tokens` computed from scratch at in-cache indices 0..n-1: [n_layer, KV, n, dh] each.
std::pair<at::Tensor, at::Tensor> window_kv(const Decoder& model, KvCache& cache, const std::vector<int64_t>& tokens) {
  cache.reset(0);
  StepPlan plan = plan_step(cache, tokens);
  cache.apply(plan);
  model.forward(plan, cache, true);
  const int64_t n = static_cast<int64_t>(tokens.size());
  return {cache.keys().narrow(2, 0, n).to(at::kCPU, at::kFloat).clone(), cache.values().narrow(2, 0, n).to(at::kCPU, at::kFloat).clone()};
}

// Masked normalised MSE of pred against y: mean over rows and dims of ((pred - y) / sd[g])^2.
torch::Tensor nmse(const torch::Tensor& pred, const torch::Tensor& y, const torch::Tensor& sd_rows) {
  return ((pred - y) / sd_rows).pow(2).mean();
}

}  // namespace

std::shared_ptr<KvAlign> train_kv_align(const Decoder& model, const std::vector<int64_t>& ids,
                                        const KvAlignTrainOptions& o, KvAlignTrainReport* report) {
  const ModelConfig& mc = model.config();
  if (mc.family != Family::gpt2) {
    throw std::invalid_argument("train-kv-align: the model has model_type '" + mc.model_type +
                                "'; kv-align is for learned absolute positions (GPT-2 family)");
  }
  if (o.caches.empty()) throw std::invalid_argument("train-kv-align: no cache sizes given");
  const int64_t max_cache = *std::max_element(o.caches.begin(), o.caches.end());
  for (int64_t c : o.caches) {
    if (c <= o.n_sink + 2 || c > mc.max_positions) {
      throw std::invalid_argument("train-kv-align: cache size " + str(c) + " must be in (" + str(o.n_sink + 2) + ", " +
                                  str(mc.max_positions) + "] (n_sink + 2, the model's positions)");
    }
  }
  const int64_t n_ids = static_cast<int64_t>(ids.size());
  const int64_t split = o.n_sink + static_cast<int64_t>((1.0 - o.heldout_fraction) * (n_ids - o.n_sink));
  const int64_t need = 2 * max_cache;  // each region must hold a window and its largest shift
  if (split - o.n_sink < need || n_ids - split < need) {
    throw std::invalid_argument("train-kv-align: the text has " + str(n_ids) + " tokens; the training and held-out parts "
                                "need at least " + str(need) + " tokens each (twice the largest cache, " + str(max_cache) + ")");
  }
  KvAlignConfig c = KvAlignConfig::for_model(mc);
  c.embed_dim = o.embed_dim;
  c.hidden = o.hidden;
  c.exact_first_layer = o.exact_first_layer;
  auto align = std::make_shared<KvAlign>(c);
  KvAlignTrainReport rep;
  torch::manual_seed(o.seed);
  std::mt19937_64 rng(o.seed);
  const int64_t dh = c.d_head;
  const int64_t first = c.exact_first_layer ? 1 : 0;  // first layer the networks learn
  const int64_t groups = (c.n_layer - first) * c.n_kv_head;  // groups they learn
  const std::vector<int64_t> sinks(ids.begin(), ids.begin() + o.n_sink);

  // 1. Pairs from exact forwards.
  const auto t0 = std::chrono::steady_clock::now();
  CacheConfig cc;
  cc.n_sink = 0;
  cc.n_memory = 0;
  cc.n_recent = max_cache;
  cc.allow_evict = false;
  std::unique_ptr<KvCache> cache = model.make_cache(cc);
  Pairs train, held;
  const int64_t n_held = std::max<int64_t>(1, static_cast<int64_t>(std::lround(o.heldout_fraction * o.windows)));
  for (int64_t w = 0; w < o.windows; ++w) {
    c10::InferenceMode guard;
    const bool is_held = w >= o.windows - n_held;
    Pairs& dst = is_held ? held : train;
    const int64_t L = o.caches[static_cast<size_t>(w) % o.caches.size()];
    const int64_t W = L - o.n_sink;
    const int64_t lo = is_held ? split : o.n_sink, hi = is_held ? n_ids : split;
    const int64_t a = lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo - 2 * W + 1));
    auto tokens_at = [&](int64_t off) {
      std::vector<int64_t> t(sinks);
      t.insert(t.end(), ids.begin() + off, ids.begin() + off + W);
      return t;
    };
    auto [k0, v0] = window_kv(model, *cache, tokens_at(a));
    for (int64_t si = 0; si < o.shifts; ++si) {
      const int64_t s = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(W - 1));
      auto [k1, v1] = window_kv(model, *cache, tokens_at(a + s));
      // Tokens j in [a+s, a+W) are in both windows: index p0 = n_sink + j - a before, p0 - s after.
      const int64_t common = W - s;
      const int64_t take = std::min(common, o.samples_per_pair);
      std::vector<int64_t> p0, p1;
      for (int64_t q = 0; q < take; ++q) {
        const int64_t j = s + static_cast<int64_t>(rng() % static_cast<uint64_t>(common));  // j - a
        p0.push_back(o.n_sink + j);
        p1.push_back(o.n_sink + j - s);
      }
      torch::Tensor i0 = torch::tensor(p0), i1 = torch::tensor(p1);
      auto rows = [&](const torch::Tensor& t, const torch::Tensor& idx) {  // (group, token) rows
        return t.narrow(0, first, c.n_layer - first).index_select(2, idx).reshape({groups * take, dh}).clone();
      };
      dst.xk.push_back(rows(k0, i0));
      dst.yk.push_back(rows(k1, i1));
      dst.xv.push_back(rows(v0, i0));
      dst.yv.push_back(rows(v1, i1));
      dst.from.push_back(i0.repeat({groups}));
      dst.to.push_back(i1.repeat({groups}));
      dst.group.push_back(torch::arange(first * c.n_kv_head, c.groups(), torch::kLong).repeat_interleave(take));
    }
    if (o.on_pairs) o.on_pairs(w + 1, o.windows);
  }
  train.finish();
  held.finish();
  rep.train_vectors = train.size();
  rep.heldout_vectors = held.size();
  rep.seconds_pairs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // 2. Per-group input statistics.
  KvAlign::Impl& im = align->impl();
  {
    torch::NoGradGuard no_grad;
    for (auto [net, x] : {std::pair<AlignNet*, torch::Tensor*>{&im.key, &train.XK}, {&im.value, &train.XV}}) {
      const int64_t all = c.groups();
      torch::Tensor sum = torch::zeros({all, dh}).index_add_(0, train.G, *x);
      torch::Tensor cnt = torch::zeros({all}).index_add_(0, train.G, torch::ones({x->size(0)})).clamp_min(1);
      torch::Tensor mu = sum / cnt.unsqueeze(1);
      torch::Tensor dev = (*x - mu.index_select(0, train.G)).pow(2).sum(1);
      torch::Tensor var = torch::zeros({all}).index_add_(0, train.G, dev) / (cnt * dh);
      (*net)->mu.copy_(mu);
      (*net)->sd.copy_(var.sqrt().clamp_min(1e-4).unsqueeze(1));
    }
  }

  // 3. Training: AdamW, linear warm-up then cosine to lr/20, on the normalised MSE of keys plus values.
  const auto t1 = std::chrono::steady_clock::now();
  im.key->train();
  im.value->train();
  std::vector<torch::Tensor> params;
  for (auto* net : {&im.key, &im.value}) {
    for (auto& p : (*net)->parameters()) params.push_back(p);
  }
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(o.lr).weight_decay(0.0));
  const int64_t warmup = std::min<int64_t>(100, o.steps / 10);
  double loss_avg = 0;
  for (int64_t step = 0; step < o.steps; ++step) {
    double lr = o.lr;
    if (step < warmup) {
      lr = o.lr * (step + 1) / warmup;
    } else {
      const double prog = static_cast<double>(step - warmup) / std::max<int64_t>(1, o.steps - warmup);
      lr = o.lr / 20 + (o.lr - o.lr / 20) * 0.5 * (1 + std::cos(M_PI * prog));
    }
    for (auto& group : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    torch::Tensor b = torch::randint(train.size(), {o.batch}, torch::kLong);
    torch::Tensor g = train.G.index_select(0, b), f = train.F.index_select(0, b), t = train.T.index_select(0, b);
    torch::Tensor lk = nmse(im.key->forward(train.XK.index_select(0, b), f, t, g), train.YK.index_select(0, b),
                            im.key->sd.index_select(0, g));
    torch::Tensor lv = nmse(im.value->forward(train.XV.index_select(0, b), f, t, g), train.YV.index_select(0, b),
                            im.value->sd.index_select(0, g));
    torch::Tensor loss = lk + lv;
    opt.zero_grad();
    loss.backward();
    opt.step();
    const double l = loss.item<double>();
    loss_avg = step == 0 ? l : 0.98 * loss_avg + 0.02 * l;
    if (o.on_step) o.on_step(step + 1, o.steps, loss_avg);
  }
  im.key->eval();
  im.value->eval();
  rep.final_loss = loss_avg;
  rep.seconds_train = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();

  // 4. Held-out error, stale vs realigned.
  {
    torch::NoGradGuard no_grad;
    double sk = 0, sv = 0, ak = 0, av = 0;
    const int64_t n = held.size(), chunk = 65536;
    for (int64_t b0 = 0; b0 < n; b0 += chunk) {
      const int64_t m = std::min(chunk, n - b0);
      auto part = [&](const torch::Tensor& t) { return t.narrow(0, b0, m); };
      torch::Tensor g = part(held.G), f = part(held.F), t = part(held.T);
      torch::Tensor sdk = im.key->sd.index_select(0, g), sdv = im.value->sd.index_select(0, g);
      sk += nmse(part(held.XK), part(held.YK), sdk).item<double>() * m;
      sv += nmse(part(held.XV), part(held.YV), sdv).item<double>() * m;
      ak += nmse(im.key->forward(part(held.XK), f, t, g), part(held.YK), sdk).item<double>() * m;
      av += nmse(im.value->forward(part(held.XV), f, t, g), part(held.YV), sdv).item<double>() * m;
    }
    rep.heldout_stale_key = sk / n;
    rep.heldout_stale_value = sv / n;
    rep.heldout_key = ak / n;
    rep.heldout_value = av / n;
  }
  if (report) *report = rep;
  return align;
}

}  // namespace sinkflow
