// GPT-2 family: learned absolute positions, LayerNorm, GELU (tanh), Conv1D weights stored [in, out],
// lm_head tied to the token embedding. Submodules carry Hugging Face names (transformer.h.N.attn.c_attn).
// In a streaming cache the new tokens' input position is their in-cache index; cached K/V keep the
// positions they were computed at (the `none` scheme; `recompute` and `kv-align` live above this file).
#include <torch/torch.h>

#include <cmath>

#include "models/nn/decoder.h"
#include "models/nn/quant.h"

namespace sinkflow {
namespace {

namespace nn = torch::nn;

// Hugging Face's Conv1D: y = x @ weight + bias with weight [in, out]. Narrowed (store_as), the weight is kept
// transposed, [out, in] as the Llama family's matrices, in bfloat16 or as int8 blocks with `scales` (quant.h), so
// that the same kernels serve both families.
struct Conv1dImpl : nn::Module {
  torch::Tensor weight, bias, scales;
  bool transposed = false;
  Conv1dImpl(int64_t in, int64_t out) {
    weight = register_parameter("weight", torch::zeros({in, out}));
    bias = register_parameter("bias", torch::zeros({out}));
  }
  void store_as(at::ScalarType dtype) {
    scales = store_narrowed(weight, weight.t().contiguous(), dtype);
    transposed = true;
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return transposed ? linear_rows(x, weight, bias, scales) : linear_rows_t(x, weight, bias);
  }
};
TORCH_MODULE(Conv1d);

struct Gpt2AttentionImpl : nn::Module {
  Conv1d c_attn{nullptr}, c_proj{nullptr};
  explicit Gpt2AttentionImpl(const ModelConfig& c) {
    c_attn = register_module("c_attn", Conv1d(c.d_model, 3 * c.d_model));
    c_proj = register_module("c_proj", Conv1d(c.d_model, c.d_model));
  }
};
TORCH_MODULE(Gpt2Attention);

struct Gpt2MlpImpl : nn::Module {
  Conv1d c_fc{nullptr}, c_proj{nullptr};
  explicit Gpt2MlpImpl(const ModelConfig& c) {
    c_fc = register_module("c_fc", Conv1d(c.d_model, c.d_ff));
    c_proj = register_module("c_proj", Conv1d(c.d_ff, c.d_model));
  }
  torch::Tensor forward(const torch::Tensor& x) { return c_proj(torch::gelu(c_fc(x), "tanh")); }
};
TORCH_MODULE(Gpt2Mlp);

nn::LayerNorm layer_norm(int64_t d, double eps) {
  return nn::LayerNorm(nn::LayerNormOptions({d}).eps(eps));
}

struct Gpt2BlockImpl : nn::Module {
  nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  Gpt2Attention attn{nullptr};
  Gpt2Mlp mlp{nullptr};
  explicit Gpt2BlockImpl(const ModelConfig& c) {
    ln_1 = register_module("ln_1", layer_norm(c.d_model, c.norm_eps));
    attn = register_module("attn", Gpt2Attention(c));
    ln_2 = register_module("ln_2", layer_norm(c.d_model, c.norm_eps));
    mlp = register_module("mlp", Gpt2Mlp(c));
  }
};
TORCH_MODULE(Gpt2Block);

struct Gpt2ModelImpl : nn::Module {
  nn::Embedding wte{nullptr}, wpe{nullptr};
  nn::ModuleList h;
  nn::LayerNorm ln_f{nullptr};
  explicit Gpt2ModelImpl(const ModelConfig& c) {
    wte = register_module("wte", nn::Embedding(c.vocab_size, c.d_model));
    wpe = register_module("wpe", nn::Embedding(c.max_positions, c.d_model));
    for (int64_t i = 0; i < c.n_layer; ++i) h->push_back(Gpt2Block(c));
    register_module("h", h);
    ln_f = register_module("ln_f", layer_norm(c.d_model, c.norm_eps));
  }
};
TORCH_MODULE(Gpt2Model);

struct Gpt2LmHeadImpl : nn::Module {
  Gpt2Model transformer{nullptr};
  explicit Gpt2LmHeadImpl(const ModelConfig& c) { transformer = register_module("transformer", Gpt2Model(c)); }
};
TORCH_MODULE(Gpt2LmHead);

class Gpt2 final : public Decoder {
 public:
  Gpt2(const ModelConfig& c, at::Device device, at::ScalarType dtype) : Decoder(c, device, dtype), net_(c) {
    net_->to(device, dtype);
    net_->eval();
    torch::NoGradGuard no_grad;
    for (auto& p : net_->parameters()) p.zero_().set_requires_grad(false);
    for (auto& m : *net_->transformer->h) blocks_.push_back(m->as<Gpt2BlockImpl>());
    scale_ = 1.0 / std::sqrt(static_cast<double>(c.d_head));
  }

  const Rope* rope() const override { return nullptr; }

  // bfloat16 or int8 matrices with float32 compute on the CPU: the Conv1D weights (transposed, see Conv1dImpl)
  // and the token embedding, which is also the output projection. The learned positions stay float32 (one row
  // is read per token).
  void store_matrices_as(at::ScalarType dtype) override {
    if (!device_.is_cpu() || dtype_ != at::kFloat || (dtype != at::kBFloat16 && dtype != at::kChar))
      Decoder::store_matrices_as(dtype);  // throws
    torch::NoGradGuard no_grad;
    for (Gpt2BlockImpl* b : blocks_)
      for (Conv1dImpl* m : {b->attn->c_attn.get(), b->attn->c_proj.get(), b->mlp->c_fc.get(), b->mlp->c_proj.get()})
        m->store_as(dtype);
    torch::Tensor& wte = net_->transformer->wte->weight;
    wte_scales_ = store_narrowed(wte, wte, dtype);
    weight_dtype_ = dtype;
  }

  at::Tensor forward(const StepPlan& plan, KvCache& cache, bool last_only, at::Tensor* hidden_out) const override {
    const int64_t t = static_cast<int64_t>(plan.tokens.size());
    const int64_t n_head = config_.n_head, d_head = config_.d_head, d = config_.d_model;
    std::vector<int64_t> pos = cache.input_positions(plan);
    for (int64_t p : pos) {
      if (p >= config_.max_positions) {
        throw std::invalid_argument("gpt2: input position " + std::to_string(p) + " is beyond the model's " +
                                    std::to_string(config_.max_positions) + " learned positions");
      }
    }
    auto to_dev = [&](std::vector<int64_t>& v) {
      return torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kLong).to(device_);
    };
    std::vector<int64_t> toks = plan.tokens;
    auto& tr = *net_->transformer;
    torch::Tensor x = embed(to_dev(toks)) + tr.wpe(to_dev(pos));  // [T, D]
    const torch::Tensor mask = cache.attention_mask(plan);
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      auto& block = *blocks_[l];
      torch::Tensor qkv = block.attn->c_attn(block.ln_1(x));  // [T, 3D]
      torch::Tensor q = qkv.narrow(1, 0, d).view({t, n_head, d_head}).transpose(0, 1);
      torch::Tensor k = qkv.narrow(1, d, d).view({t, n_head, d_head}).transpose(0, 1);
      torch::Tensor v = qkv.narrow(1, 2 * d, d).view({t, n_head, d_head}).transpose(0, 1);
      cache.store(l, plan, k, k, v);
      auto [kc, vc] = cache.layer_kv(l);
      x = x + block.attn->c_proj(attend(q, kc, vc, mask, scale_));
      x = x + block.mlp(block.ln_2(x));
    }
    if (last_only) x = x.narrow(0, t - 1, 1);
    x = tr.ln_f(x);
    if (hidden_out) *hidden_out = x;
    return linear_rows(x, tr.wte->weight, {}, wte_scales_).to(torch::kFloat);
  }

  at::Tensor hidden_full(const at::Tensor& tokens, int64_t start_position) const override {
    const int64_t b = tokens.size(0), t = tokens.size(1);
    const int64_t n_head = config_.n_head, d_head = config_.d_head, d = config_.d_model;
    if (start_position + t > config_.max_positions) {
      throw std::invalid_argument("gpt2: positions up to " + std::to_string(start_position + t) +
                                  " exceed the model's " + std::to_string(config_.max_positions) + " learned positions");
    }
    auto& tr = *net_->transformer;
    torch::Tensor pos = torch::arange(start_position, start_position + t, torch::TensorOptions().dtype(torch::kLong).device(device_));
    torch::Tensor x = embed(tokens.to(device_)) + tr.wpe(pos);  // [B, T, D]
    for (int64_t l = 0; l < config_.n_layer; ++l) {
      auto& block = *blocks_[l];
      torch::Tensor qkv = block.attn->c_attn(block.ln_1(x));  // [B, T, 3D]
      torch::Tensor q = qkv.narrow(2, 0, d).view({b, t, n_head, d_head}).transpose(1, 2);
      torch::Tensor k = qkv.narrow(2, d, d).view({b, t, n_head, d_head}).transpose(1, 2);
      torch::Tensor v = qkv.narrow(2, 2 * d, d).view({b, t, n_head, d_head}).transpose(1, 2);
      x = x + block.attn->c_proj(attend_causal(q, k, v, scale_));
      x = x + block.mlp(block.ln_2(x));
    }
    return tr.ln_f(x);
  }

  at::Tensor head_weight() const override {
    const torch::Tensor& w = net_->transformer->wte->weight;
    return wte_scales_.defined() ? dequantize_q8(w, wte_scales_, dtype_) : w.to(dtype_);
  }

  at::Tensor first_layer_kv(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions) const override {
    const int64_t n = static_cast<int64_t>(tokens.size()), d = config_.d_model;
    auto to_dev = [&](const std::vector<int64_t>& v) {
      return torch::tensor(v, torch::kLong).to(device_);
    };
    auto& tr = *net_->transformer;
    auto& block = *blocks_[0];
    torch::Tensor x = embed(to_dev(tokens)) + tr.wpe(to_dev(positions));  // [n, D]
    torch::Tensor kv = block.attn->c_attn(block.ln_1(x)).narrow(1, d, 2 * d);  // [n, 2D]: keys then values
    return kv.view({n, 2, config_.n_head, config_.d_head}).permute({1, 2, 0, 3});
  }

  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const override {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& item : net_->named_parameters()) out.emplace_back(item.key(), item.value());
    return out;
  }

 private:
  // Token embeddings in the compute dtype, whatever the matrix is stored as.
  torch::Tensor embed(const torch::Tensor& ids) const {
    return embedding_rows(net_->transformer->wte->weight, wte_scales_, ids).to(dtype_);
  }

  mutable Gpt2LmHead net_;  // module calls are non-const; the weights are never written after loading
  torch::Tensor wte_scales_;  // int8 token embedding: its block scales
  std::vector<Gpt2BlockImpl*> blocks_;
  double scale_;
};

}  // namespace

std::shared_ptr<Decoder> make_gpt2(const ModelConfig& config, at::Device device, at::ScalarType dtype) {
  return std::make_shared<Gpt2>(config, device, dtype);
}

}  // namespace sinkflow
