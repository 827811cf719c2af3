// Decoder-only language models (Llama family, GPT-2 family) in LibTorch. Weights are shared and read-only
// once loaded; all per-sequence state lives in a KvCache passed in explicitly.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/io/config.h"
#include "models/cache/kv_cache.h"

namespace sinkflow {

class Rope;

class Decoder {
 public:
  virtual ~Decoder() = default;

  const ModelConfig& config() const { return config_; }
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }  // activations, the KV cache, logits
  // The dtype of the matrices (projections, embeddings): dtype(), or bfloat16 after store_matrices_as.
  at::ScalarType weight_dtype() const { return weight_dtype_; }
  // Keeps every matrix (2-D parameter) in `dtype` while computing in dtype(): bfloat16 weights with float32
  // activations halve the bytes a CPU decode step streams, int8 blocks with float16 scales (kChar, quant.h) quarter
  // them (matrix-vector kernels accumulate in float32; longer inputs go through AMX (amx.h) or widen each matrix
  // on the fly). Llama and GPT-2 families on the CPU only; others throw std::invalid_argument. With int8,
  // named_parameters() shows the int8 values and head_weight() the dequantized matrix; GPT-2's Conv1D weights are
  // then stored transposed ([out, in]).
  virtual void store_matrices_as(at::ScalarType dtype);
  // The rotary embedding (Llama family) or nullptr (learned absolute positions).
  virtual const Rope* rope() const = 0;

  // A cache shaped for this model, on its device and dtype.
  std::unique_ptr<KvCache> make_cache(const CacheConfig& config) const;

  // Streaming forward of one step that was planned and applied to `cache` (plan_step + KvCache::apply):
  // computes the new tokens' K/V into the cache and attends over the cache. Returns float32 logits
  // [T, vocab], or [1, vocab] for the last token when last_only. When hidden_out is given it receives the
  // final (normed) hidden states [T, d_model] (the `lm` embedder pools them).
  virtual at::Tensor forward(const StepPlan& plan, KvCache& cache, bool last_only,
                             at::Tensor* hidden_out = nullptr) const = 0;

  // Full causal forward without a cache (training, oracles): tokens [B, T] int64 at positions
  // start .. start+T-1 -> logits [B, T, vocab] in the model dtype. Autograd-capable outside InferenceMode.
  at::Tensor forward_full(const at::Tensor& tokens, int64_t start_position = 0) const;
  // The same forward up to the final (normed) hidden states [B, T, d_model]: forward_full is
  // hidden_full @ head_weight()^T (the trainer's fused loss never forms the logits whole).
  virtual at::Tensor hidden_full(const at::Tensor& tokens, int64_t start_position = 0) const = 0;
  // The output projection [vocab, d_model]: the tied token embedding, or lm_head.
  virtual at::Tensor head_weight() const = 0;
  // Logits of final hidden states: hidden @ head_weight()^T, soft-capped where the model does (gemma2).
  virtual at::Tensor output_logits(const at::Tensor& hidden) const;

  // Learned absolute positions only (GPT-2 family): the first layer's K and V of `tokens` at `positions`,
  // [2, n_kv_head, n, d_head]; they depend on nothing else (KV-Align computes them exactly). Other families
  // throw std::logic_error.
  virtual at::Tensor first_layer_kv(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions) const;

  // Parameters under their Hugging Face names (tied lm_head not listed).
  virtual std::vector<std::pair<std::string, at::Tensor>> named_parameters() const = 0;

  // Fills every parameter from `fetch(name, expected_shape)` (which must return a tensor of that shape).
  using Fetch = std::function<at::Tensor(const std::string&, const std::vector<int64_t>&)>;
  void load_weights(const Fetch& fetch);
  // load_weights, then store_matrices_as(matrix_dtype), but each matrix is narrowed as soon as it is read (Llama
  // family): the float32 copy of the whole model never exists, so a 7B checkpoint loads as int8 in ~8 GB of RAM.
  // For a decoder made with zero_weights = false.
  virtual void load_weights_narrow(const Fetch& fetch, at::ScalarType matrix_dtype);

 protected:
  Decoder(ModelConfig config, at::Device device, at::ScalarType dtype)
      : config_(std::move(config)), device_(device), dtype_(dtype), weight_dtype_(dtype) {}
  ModelConfig config_;
  at::Device device_;
  at::ScalarType dtype_;
  at::ScalarType weight_dtype_;
};

// A model of `config` with zero weights (fill them with load_weights) on device/dtype. zero_weights = false leaves
// the matrices allocated but never written (their pages untouched) until load_weights_narrow replaces them.
std::shared_ptr<Decoder> make_decoder(const ModelConfig& config, at::Device device, at::ScalarType dtype,
                                      bool zero_weights = true);

// Loads a Hugging Face folder (config.json + model.safetensors or sharded index). dtype: float32; float16 or
// bfloat16 on accelerators. On the CPU, bfloat16 means bfloat16 matrices with float32 compute
// (store_matrices_as) and int8 (kChar) int8 matrices with float32 compute (CPU only); float16 on the CPU is
// refused (std::invalid_argument: LibTorch has no half-precision matrix product there), as int8 elsewhere.
std::shared_ptr<Decoder> load_decoder(const std::string& dir, at::Device device, at::ScalarType dtype);

// Scaled dot-product attention over a cache. q: [H, T, dh]; k, v: [KV, E, dh] (H a multiple of KV, query
// heads grouped per KV head as Hugging Face's repeat_kv); mask: [T, E] additive or undefined.
// softcap > 0: scores -> softcap * tanh(scores / softcap) before the mask (gemma2). Returns [T, H * dh].
// Softmax in float32.
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                  double scale, double softcap = 0.0);
// x W^T + b, as nn::Linear computes it. A single float32 row on the CPU ([1, K] or [K]) runs as a matrix-vector
// product (gemv.h), which streams the weight once: OpenBLAS runs the same product as a GEMM and first copies
// (packs) the whole weight, 2-3x slower for one-token decode steps. Other shapes: at::linear, with a narrower
// stored matrix widened first. W may be float32, bfloat16, or int8 with its block scales `w_scales` (quant.h).
// b may be undefined.
at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {},
                       const at::Tensor& w_scales = {});

// x W + b with W [K, N] (Hugging Face's Conv1D, GPT-2): one row on the CPU in float32 streams W once
// (gemv_t_f32); other shapes: at::addmm / at::matmul.
at::Tensor linear_rows_t(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

// Batched causal attention without cache. q: [B, H, T, dh]; k, v: [B, KV, T, dh]. window > 0: query i sees keys
// i - window + 1 .. i only (sliding-window layers). softcap as attend(). Returns [B, T, H * dh].
at::Tensor attend_causal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                         int64_t window = 0, double softcap = 0.0);

}  // namespace sinkflow
