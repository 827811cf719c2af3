// Llama family (Llama-2/3.x, TinyLlama, SmolLM2, Mistral, Qwen2/Qwen3, Gemma 2/3): RoPE (with its scalings),
// RMSNorm, SwiGLU, grouped-query attention, optional q/k/v and o_proj biases, tied or untied embeddings; the
// variants as transformers' modeling code has them: per-head q/k RMSNorm (qwen3, gemma3), sliding-window layers
// with their own RoPE base (mistral, gemma), and Gemma's scaled embeddings, (1 + w) RMSNorm, norms after attention
// and around the MLP, GeGLU, query_pre_attn_scalar and logit soft-capping. Submodules carry Hugging Face names,
// so that loading is a name lookup.
#include <torch/torch.h>

#include <cmath>
#include <map>

#include "models/nn/decoder.h"
#include "models/nn/fused.h"
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
  void store_as(at::ScalarType dtype) { scales = store_narrowed(weight, weight, dtype); }
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
  torch::Tensor forward(const torch::Tensor& ids) { return embedding_rows(weight, scales, ids); }
};
TORCH_MODULE(Embed);

Proj linear(int64_t in, int64_t out, bool bias) { return Proj(out, in, bias); }
torch::Tensor proj(const Proj& l, const torch::Tensor& x) { return l->forward(x); }

// RMSNorm in float32. Llama: w * normed.to(dtype); Gemma: (normed * (1 + w)).to(dtype).
struct RmsNormImpl : nn::Module {
  torch::Tensor weight;
  double eps;
  bool plus_one;
  RmsNormImpl(int64_t d, double eps_, bool plus_one_ = false) : eps(eps_), plus_one(plus_one_) {
    weight = register_parameter("weight", torch::ones({d}));
  }
  torch::Tensor forward(const torch::Tensor& x) { return rms_norm(x, weight, eps, plus_one); }
};
TORCH_MODULE(RmsNorm);

struct LlamaAttentionImpl : nn::Module {
  Proj q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RmsNorm q_norm{nullptr}, k_norm{nullptr};  // qwen3, gemma3: over each head, before RoPE
  int64_t n_head, n_kv_head, d_head;
  explicit LlamaAttentionImpl(const ModelConfig& c) : n_head(c.n_head), n_kv_head(c.n_kv_head), d_head(c.d_head) {
    q_proj = register_module("q_proj", linear(c.d_model, c.n_head * c.d_head, c.attention_bias));
    k_proj = register_module("k_proj", linear(c.d_model, c.n_kv_head * c.d_head, c.attention_bias));
    v_proj = register_module("v_proj", linear(c.d_model, c.n_kv_head * c.d_head, c.attention_bias));
    o_proj = register_module("o_proj", linear(c.n_head * c.d_head, c.d_model, c.attention_out_bias));
    if (c.qk_norm) {
      q_norm = register_module("q_norm", RmsNorm(c.d_head, c.norm_eps, c.gemma()));
      k_norm = register_module("k_norm", RmsNorm(c.d_head, c.norm_eps, c.gemma()));
    }
  }
  // x [..., T, D] -> q [..., T, H, dh], k and v [..., T, KV, dh] (q/k normed per head where the model does).
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> qkv(const torch::Tensor& x) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = -1;
    shape.push_back(d_head);
    torch::Tensor q = proj(q_proj, x).view(shape), k = proj(k_proj, x).view(shape), v = proj(v_proj, x).view(shape);
    if (q_norm) {
      q = q_norm(q);
      k = k_norm(k);
    }
    return {q, k, v};
  }
};
TORCH_MODULE(LlamaAttention);

struct LlamaMlpImpl : nn::Module {
  Proj gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  bool gelu;  // gemma: GeGLU with the tanh-approximated GELU (gelu_pytorch_tanh); else SwiGLU
  explicit LlamaMlpImpl(const ModelConfig& c) : gelu(c.gemma()) {
    gate_proj = register_module("gate_proj", linear(c.d_model, c.d_ff, c.mlp_bias));
    up_proj = register_module("up_proj", linear(c.d_model, c.d_ff, c.mlp_bias));
    down_proj = register_module("down_proj", linear(c.d_ff, c.d_model, c.mlp_bias));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return proj(down_proj, gated_activation(proj(gate_proj, x), proj(up_proj, x), gelu));
  }
};
TORCH_MODULE(LlamaMlp);

// Llama: x += attn(norm(x)); x += mlp(post_attention_layernorm(x)).
// Gemma: x += post_attention_layernorm(attn(norm(x))); x += post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x))).
struct LlamaLayerImpl : nn::Module {
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  RmsNorm pre_feedforward_layernorm{nullptr}, post_feedforward_layernorm{nullptr};  // gemma
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
  explicit LlamaLayerImpl(const ModelConfig& c) {
    const bool g = c.gemma();
    input_layernorm = register_module("input_layernorm", RmsNorm(c.d_model, c.norm_eps, g));
    self_attn = register_module("self_attn", LlamaAttention(c));
    post_attention_layernorm = register_module("post_attention_layernorm", RmsNorm(c.d_model, c.norm_eps, g));
    if (g) {
      pre_feedforward_layernorm = register_module("pre_feedforward_layernorm", RmsNorm(c.d_model, c.norm_eps, true));
      post_feedforward_layernorm = register_module("post_feedforward_layernorm", RmsNorm(c.d_model, c.norm_eps, true));
    }
    mlp = register_module("mlp", LlamaMlp(c));
  }
  // The residual stream after attention output `attn_out`, then after the MLP.
  torch::Tensor finish(const torch::Tensor& x, const torch::Tensor& attn_out) {
    if (!pre_feedforward_layernorm) {
      const torch::Tensor y = add_into(x, attn_out);
      return add_into(y, mlp(post_attention_layernorm(y)));
    }
    const torch::Tensor y = add_into(x, post_attention_layernorm(attn_out));
    return add_into(y, post_feedforward_layernorm(mlp(pre_feedforward_layernorm(y))));
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
    norm = register_module("norm", RmsNorm(c.d_model, c.norm_eps, c.gemma()));
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
  Llama(const ModelConfig& c, at::Device device, at::ScalarType dtype, bool zero_weights)
      : Decoder(c, device, dtype), net_(c), rope_(c) {
    net_->to(device, dtype);
    net_->eval();
    torch::NoGradGuard no_grad;
    // Inference by default: the trainer turns gradients on for the parameters it optimizes.
    for (auto& p : net_->parameters()) (zero_weights ? p.zero_() : p).set_requires_grad(false);
    for (auto& m : *net_->model->layers) layers_.push_back(m->as<LlamaLayerImpl>());
    scale_ = 1.0 / std::sqrt(c.query_pre_attn_scalar > 0.0 ? c.query_pre_attn_scalar : static_cast<double>(c.d_head));
    for (int64_t l = 0; l < c.n_layer; ++l) window_.push_back(c.is_sliding(l) ? c.sliding_window : 0);
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

  void load_weights_narrow(const Fetch& fetch, at::ScalarType dtype) override {
    if (!device_.is_cpu() || dtype_ != at::kFloat || (dtype != at::kBFloat16 && dtype != at::kChar))
      Decoder::store_matrices_as(dtype);  // throws
    torch::NoGradGuard no_grad;
    std::map<std::string, MatrixImpl*> matrices;  // "model.layers.0.self_attn.q_proj" -> its module
    for (const auto& item : net_->named_modules())
      if (auto* m = dynamic_cast<MatrixImpl*>(item.value().get())) matrices[item.key()] = m;
    for (auto& [name, param] : named_parameters()) {
      const std::vector<int64_t> shape = param.sizes().vec();
      const at::Tensor src = fetch(name, shape);
      if (src.sizes().vec() != shape)
        throw std::invalid_argument("tensor '" + name + "' has shape " + std::string(c10::str(src.sizes())) +
                                    ", expected " + std::string(c10::str(param.sizes())));
      const size_t dot = name.rfind('.');
      const auto matrix = matrices.find(name.substr(0, dot));
      if (matrix != matrices.end() && name.compare(dot, std::string::npos, ".weight") == 0) {
        // The untouched float32 allocation is dropped for the loaded matrix, which is narrowed at once.
        param.set_data(src.to(param.device(), param.scalar_type()).contiguous());
        matrix->second->store_as(dtype);
      } else {
        param.copy_(src.to(param.device(), param.scalar_type()));
      }
    }
    weight_dtype_ = dtype;
  }

  at::Tensor forward(const StepPlan& plan, KvCache& cache, bool last_only, at::Tensor* hidden_out) const override {
    const int64_t t = static_cast<int64_t>(plan.tokens.size());
    torch::Tensor ids = torch::from_blob(const_cast<int64_t*>(plan.tokens.data()), {t}, torch::kLong).to(device_);
    torch::Tensor x = embed(ids);  // [T, D]
    const std::vector<int64_t> positions = cache.input_positions(plan);
    const Tables tables = make_tables(positions, 0);
    const torch::Tensor mask = cache.attention_mask(plan);
    torch::Tensor window_mask;
    if (config_.sliding_window > 0) window_mask = cache.attention_mask(plan, config_.sliding_window);
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      auto& layer = *layers_[l];
      auto& attn = *layer.self_attn;
      const auto& [cos, sin] = tables.of(config_, l);
      auto [q, k, v] = attn.qkv(layer.input_layernorm(x));  // [T, H|KV, dh]
      q = rope_.apply(rope_.scale_qk(q.transpose(0, 1)), cos, sin);
      k = rope_.scale_qk(k.transpose(0, 1));
      cache.store(l, plan, k, rope_.apply(k, cos, sin), v.transpose(0, 1));
      auto [kc, vc] = cache.layer_kv(l);
      const torch::Tensor o = attend(q, kc, vc, window_[l] ? window_mask : mask, scale_, config_.attn_softcap);
      x = layer.finish(x, proj(attn.o_proj, o));
    }
    if (last_only) x = x.narrow(0, t - 1, 1);
    x = net_->model->norm(x);
    if (hidden_out) *hidden_out = x;
    return softcap_logits(net_->logits(x)).to(torch::kFloat);
  }

  at::Tensor hidden_full(const at::Tensor& tokens, int64_t start_position) const override {
    const int64_t t = tokens.size(1);
    std::vector<int64_t> positions(t);
    for (int64_t j = 0; j < t; ++j) positions[j] = start_position + j;
    const Tables tables = make_tables(positions, start_position + t);
    torch::Tensor x = embed(tokens.to(device_));  // [B, T, D]
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      auto& layer = *layers_[l];
      auto& attn = *layer.self_attn;
      const auto& [cos, sin] = tables.of(config_, l);
      auto [q, k, v] = attn.qkv(layer.input_layernorm(x));  // [B, T, H|KV, dh]
      q = rope_.apply(rope_.scale_qk(q.transpose(1, 2)), cos, sin);
      k = rope_.apply(rope_.scale_qk(k.transpose(1, 2)), cos, sin);
      const torch::Tensor o = attend_causal(q, k, v.transpose(1, 2), scale_, window_[l], config_.attn_softcap);
      x = layer.finish(x, proj(attn.o_proj, o));
    }
    return net_->model->norm(x);
  }

  at::Tensor head_weight() const override {
    const MatrixImpl& m = net_->head();
    return m.scales.defined() ? m.dense(dtype_) : m.weight;
  }

  at::Tensor output_logits(const at::Tensor& hidden) const override {
    return softcap_logits(at::matmul(hidden, head_weight().to(hidden.scalar_type()).t()));
  }

  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const override {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& item : net_->named_parameters()) out.emplace_back(item.key(), item.value());
    return out;
  }

 private:
  // cos/sin of the full-attention layers and, when they differ, of the sliding-window layers.
  struct Tables {
    std::pair<at::Tensor, at::Tensor> global, local;
    const std::pair<at::Tensor, at::Tensor>& of(const ModelConfig& c, int64_t layer) const {
      return local.first.defined() && c.is_sliding(layer) ? local : global;
    }
  };
  Tables make_tables(const std::vector<int64_t>& positions, int64_t seq_len) const {
    Tables out;
    int64_t first_local = -1, first_global = -1;
    for (int64_t l = 0; l < config_.n_layer; ++l) (config_.is_sliding(l) ? first_local : first_global) = l;
    out.global = rope_.tables(positions, device_, first_global, seq_len);
    if (rope_.per_layer() && first_local >= 0) out.local = rope_.tables(positions, device_, first_local, seq_len);
    return out;
  }

  // Token embeddings; gemma scales them by sqrt(hidden_size), rounded to the dtype transformers multiplies in
  // (gemma3: the weights'; gemma2: the activations').
  torch::Tensor embed(const torch::Tensor& ids) const {
    torch::Tensor x = net_->model->embed_tokens(ids).to(dtype_);
    if (!config_.gemma()) return x;
    const at::ScalarType rounding = config_.model_type == "gemma3_text" && weight_dtype_ != at::kChar ? weight_dtype_ : dtype_;
    return x * at::scalar_tensor(std::sqrt(static_cast<double>(config_.d_model)), rounding).item<double>();
  }

  torch::Tensor softcap_logits(const torch::Tensor& logits) const {
    if (config_.final_softcap <= 0.0) return logits;
    return torch::tanh(logits / config_.final_softcap) * config_.final_softcap;
  }

  mutable LlamaForCausalLm net_;  // module calls are non-const; the weights are never written after loading
  std::vector<LlamaLayerImpl*> layers_;
  Rope rope_;
  double scale_;
  std::vector<int64_t> window_;  // per layer: sliding window (0 = full attention)
};

}  // namespace

std::shared_ptr<Decoder> make_llama(const ModelConfig& config, at::Device device, at::ScalarType dtype,
                                    bool zero_weights) {
  return std::make_shared<Llama>(config, device, dtype, zero_weights);
}

}  // namespace sinkflow
