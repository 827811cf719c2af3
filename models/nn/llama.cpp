// Llama family (Llama-2/3, TinyLlama, SmolLM2, Mistral, Qwen2): RoPE, RMSNorm, SwiGLU, grouped-query
// attention, optional q/k/v and o_proj biases, tied or untied embeddings. Submodules carry Hugging Face
// names, so that loading is a name lookup.
#include <torch/torch.h>

#include <cmath>

#include "models/nn/decoder.h"
#include "models/nn/quant.h"
#include "models/cache/rope.h"

namespace sinkflow {
namespace {

namespace nn = torch::nn;

// A matrix under Hugging Face's names (`weight`, optional `bias`). After store_matrices_as(int8) the weight holds
// the int8 values and `scales` their float16 block scales (quant.h).
struct MatrixImpl : nn::Module {
  torch::Tensor weight, bias, scales;
  MatrixImpl(int64_t rows, int64_t cols, bool has_bias) {
    weight = register_parameter("weight", torch::empty({rows, cols}));
    if (has_bias) bias = register_parameter("bias", torch::empty({rows}));
  }
  void store_as(at::ScalarType dtype) {
    if (dtype == at::kChar) {
      Q8Matrix q = quantize_q8(weight);
      weight.set_data(q.values);
      scales = std::move(q.scales);
    } else {
      weight.set_data(weight.to(dtype).contiguous());
    }
  }
  // The matrix in `dtype`, whatever it is stored as.
  torch::Tensor dense(at::ScalarType dtype) const {
    return scales.defined() ? dequantize_q8(weight, scales, dtype) : weight.to(dtype);
  }
};

// A projection x W^T + b through linear_rows (matrix-vector for one-token steps).
struct ProjImpl : MatrixImpl {
  using MatrixImpl::MatrixImpl;
  torch::Tensor forward(const torch::Tensor& x) const { return linear_rows(x, weight, bias, scales); }
};
TORCH_MODULE(Proj);

// Token embedding rows (also the tied output projection).
struct EmbedImpl : MatrixImpl {
  EmbedImpl(int64_t vocab, int64_t d) : MatrixImpl(vocab, d, false) {}
  torch::Tensor forward(const torch::Tensor& ids) {
    if (!scales.defined()) return at::embedding(weight, ids);
    const torch::Tensor flat = ids.reshape({-1});
    std::vector<int64_t> shape = ids.sizes().vec();
    shape.push_back(weight.size(1));
    return dequantize_q8(weight.index_select(0, flat), scales.index_select(0, flat)).view(shape);
  }
};
TORCH_MODULE(Embed);

Proj linear(int64_t in, int64_t out, bool bias) { return Proj(out, in, bias); }
torch::Tensor proj(const Proj& l, const torch::Tensor& x) { return l->forward(x); }

struct RmsNormImpl : nn::Module {
  torch::Tensor weight;
  double eps;
  RmsNormImpl(int64_t d, double eps_) : eps(eps_) { weight = register_parameter("weight", torch::ones({d})); }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor xf = x.to(torch::kFloat);
    xf = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps);
    return weight * xf.to(x.scalar_type());
  }
};
TORCH_MODULE(RmsNorm);

struct LlamaAttentionImpl : nn::Module {
  Proj q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t n_head, n_kv_head, d_head;
  explicit LlamaAttentionImpl(const ModelConfig& c) : n_head(c.n_head), n_kv_head(c.n_kv_head), d_head(c.d_head) {
    q_proj = register_module("q_proj", linear(c.d_model, c.n_head * c.d_head, c.attention_bias));
    k_proj = register_module("k_proj", linear(c.d_model, c.n_kv_head * c.d_head, c.attention_bias));
    v_proj = register_module("v_proj", linear(c.d_model, c.n_kv_head * c.d_head, c.attention_bias));
    o_proj = register_module("o_proj", linear(c.n_head * c.d_head, c.d_model, c.attention_out_bias));
  }
};
TORCH_MODULE(LlamaAttention);

struct LlamaMlpImpl : nn::Module {
  Proj gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  explicit LlamaMlpImpl(const ModelConfig& c) {
    gate_proj = register_module("gate_proj", linear(c.d_model, c.d_ff, c.mlp_bias));
    up_proj = register_module("up_proj", linear(c.d_model, c.d_ff, c.mlp_bias));
    down_proj = register_module("down_proj", linear(c.d_ff, c.d_model, c.mlp_bias));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return proj(down_proj, torch::silu(proj(gate_proj, x)) * proj(up_proj, x));
  }
};
TORCH_MODULE(LlamaMlp);

struct LlamaLayerImpl : nn::Module {
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
  explicit LlamaLayerImpl(const ModelConfig& c) {
    input_layernorm = register_module("input_layernorm", RmsNorm(c.d_model, c.norm_eps));
    self_attn = register_module("self_attn", LlamaAttention(c));
    post_attention_layernorm = register_module("post_attention_layernorm", RmsNorm(c.d_model, c.norm_eps));
    mlp = register_module("mlp", LlamaMlp(c));
  }
};
TORCH_MODULE(LlamaLayer);

struct LlamaModelImpl : nn::Module {
  Embed embed_tokens{nullptr};
  nn::ModuleList layers;
  RmsNorm norm{nullptr};
  explicit LlamaModelImpl(const ModelConfig& c) {
    embed_tokens = register_module("embed_tokens", Embed(c.vocab_size, c.d_model));
    for (int64_t i = 0; i < c.n_layer; ++i) layers->push_back(LlamaLayer(c));
    register_module("layers", layers);
    norm = register_module("norm", RmsNorm(c.d_model, c.norm_eps));
  }
};
TORCH_MODULE(LlamaModel);

struct LlamaForCausalLmImpl : nn::Module {
  LlamaModel model{nullptr};
  Proj lm_head{nullptr};
  explicit LlamaForCausalLmImpl(const ModelConfig& c) {
    model = register_module("model", LlamaModel(c));
    if (!c.tie_word_embeddings) lm_head = register_module("lm_head", linear(c.d_model, c.vocab_size, false));
  }
  MatrixImpl& head() { return lm_head ? static_cast<MatrixImpl&>(*lm_head) : *model->embed_tokens; }
  torch::Tensor logits(const torch::Tensor& h) {
    const MatrixImpl& m = head();
    return linear_rows(h, m.weight, {}, m.scales);
  }
};
TORCH_MODULE(LlamaForCausalLm);

class Llama final : public Decoder {
 public:
  Llama(const ModelConfig& c, at::Device device, at::ScalarType dtype)
      : Decoder(c, device, dtype), net_(c), rope_(c.n_rot(), c.d_head, c.rope_theta) {
    net_->to(device, dtype);
    net_->eval();
    torch::NoGradGuard no_grad;
    // Inference by default: the trainer turns gradients on for the parameters it optimizes.
    for (auto& p : net_->parameters()) p.zero_().set_requires_grad(false);
    for (auto& m : *net_->model->layers) layers_.push_back(m->as<LlamaLayerImpl>());
    scale_ = 1.0 / std::sqrt(static_cast<double>(c.d_head));
  }

  const Rope* rope() const override { return &rope_; }

  void store_matrices_as(at::ScalarType dtype) override {
    if (!device_.is_cpu() || dtype_ != at::kFloat || (dtype != at::kBFloat16 && dtype != at::kChar))
      Decoder::store_matrices_as(dtype);  // throws
    torch::NoGradGuard no_grad;
    for (const auto& m : net_->modules(false))
      if (auto* matrix = dynamic_cast<MatrixImpl*>(m.get())) matrix->store_as(dtype);
    weight_dtype_ = dtype;
  }

  at::Tensor forward(const StepPlan& plan, KvCache& cache, bool last_only, at::Tensor* hidden_out) const override {
    const int64_t t = static_cast<int64_t>(plan.tokens.size());
    torch::Tensor ids = torch::from_blob(const_cast<int64_t*>(plan.tokens.data()), {t}, torch::kLong).to(device_);
    torch::Tensor x = net_->model->embed_tokens(ids).to(dtype_);  // [T, D]
    auto [cos, sin] = rope_.tables(cache.input_positions(plan), device_);
    const torch::Tensor mask = cache.attention_mask(plan);
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      auto& layer = *layers_[l];
      auto& attn = *layer.self_attn;
      torch::Tensor h = layer.input_layernorm(x);
      torch::Tensor q = proj(attn.q_proj, h).view({t, attn.n_head, attn.d_head}).transpose(0, 1);
      torch::Tensor k = proj(attn.k_proj, h).view({t, attn.n_kv_head, attn.d_head}).transpose(0, 1);
      torch::Tensor v = proj(attn.v_proj, h).view({t, attn.n_kv_head, attn.d_head}).transpose(0, 1);
      q = rope_.apply(q, cos, sin);
      cache.store(l, plan, k, rope_.apply(k, cos, sin), v);
      auto [kc, vc] = cache.layer_kv(l);
      x = x + proj(attn.o_proj, attend(q, kc, vc, mask, scale_));
      x = x + layer.mlp(layer.post_attention_layernorm(x));
    }
    if (last_only) x = x.narrow(0, t - 1, 1);
    x = net_->model->norm(x);
    if (hidden_out) *hidden_out = x;
    return net_->logits(x).to(torch::kFloat);
  }

  at::Tensor hidden_full(const at::Tensor& tokens, int64_t start_position) const override {
    const int64_t b = tokens.size(0), t = tokens.size(1);
    std::vector<int64_t> positions(t);
    for (int64_t j = 0; j < t; ++j) positions[j] = start_position + j;
    auto [cos, sin] = rope_.tables(positions, device_);
    torch::Tensor x = net_->model->embed_tokens(tokens.to(device_)).to(dtype_);  // [B, T, D]
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      auto& layer = *layers_[l];
      auto& attn = *layer.self_attn;
      torch::Tensor h = layer.input_layernorm(x);
      torch::Tensor q = proj(attn.q_proj, h).view({b, t, attn.n_head, attn.d_head}).transpose(1, 2);
      torch::Tensor k = proj(attn.k_proj, h).view({b, t, attn.n_kv_head, attn.d_head}).transpose(1, 2);
      torch::Tensor v = proj(attn.v_proj, h).view({b, t, attn.n_kv_head, attn.d_head}).transpose(1, 2);
      q = rope_.apply(q, cos, sin);
      k = rope_.apply(k, cos, sin);
      x = x + proj(attn.o_proj, attend_causal(q, k, v, scale_));
      x = x + layer.mlp(layer.post_attention_layernorm(x));
    }
    return net_->model->norm(x);
  }

  at::Tensor head_weight() const override {
    const MatrixImpl& m = net_->head();
    return m.scales.defined() ? m.dense(dtype_) : m.weight;
  }

  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const override {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& item : net_->named_parameters()) out.emplace_back(item.key(), item.value());
    return out;
  }

 private:
  mutable LlamaForCausalLm net_;  // module calls are non-const; the weights are never written after loading
  std::vector<LlamaLayerImpl*> layers_;
  Rope rope_;
  double scale_;
};

}  // namespace

std::shared_ptr<Decoder> make_llama(const ModelConfig& config, at::Device device, at::ScalarType dtype) {
  return std::make_shared<Llama>(config, device, dtype);
}

}  // namespace sinkflow
