#include "models/nn/decoder.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include "models/nn/amx.h"
#include "models/nn/gemv.h"
#include "models/nn/tiled_attention.h"
#include "models/nn/quant.h"
#include "models/nn/runtime.h"

#include <algorithm>
#include <limits>
#include <set>
#include <stdexcept>
#include <vector>

#include "models/io/checkpoint.h"
#include "models/cache/rope.h"

namespace sinkflow {

std::shared_ptr<Decoder> make_llama(const ModelConfig& config, at::Device device, at::ScalarType dtype,
                                    bool zero_weights);
std::shared_ptr<Decoder> make_gpt2(const ModelConfig& config, at::Device device, at::ScalarType dtype);

std::unique_ptr<KvCache> Decoder::make_cache(const CacheConfig& config) const {
  return std::make_unique<KvCache>(config_, config, rope(), device_, dtype_);
}

void Decoder::load_weights(const Fetch& fetch) { fill_parameters(named_parameters(), fetch); }

void Decoder::load_weights_narrow(const Fetch& fetch, at::ScalarType matrix_dtype) {
  load_weights(fetch);
  store_matrices_as(matrix_dtype);
}

at::Tensor Decoder::forward_full(const at::Tensor& tokens, int64_t start_position) const {
  return output_logits(hidden_full(tokens, start_position));
}

at::Tensor Decoder::output_logits(const at::Tensor& hidden) const {
  return at::matmul(hidden, head_weight().to(hidden.scalar_type()).t());
}

at::Tensor Decoder::first_layer_kv(const std::vector<int64_t>&, const std::vector<int64_t>&) const {
  throw std::logic_error("first_layer_kv: model_type '" + config_.model_type + "' has no learned absolute positions");
}

std::shared_ptr<Decoder> make_decoder(const ModelConfig& config, at::Device device, at::ScalarType dtype,
                                      bool zero_weights) {
  switch (config.family) {
    case Family::llama: return make_llama(config, device, dtype, zero_weights);
    case Family::gpt2: return make_gpt2(config, device, dtype);
    default:
      throw std::invalid_argument("model_type '" + config.model_type + "' is not a decoder (expected a llama or gpt2 family model)");
  }
}

void Decoder::store_matrices_as(at::ScalarType dtype) {
  throw std::invalid_argument("model_type '" + config_.model_type + "': " + dtype_name(dtype) +
                              " matrices with " + dtype_name(dtype_) + " compute are implemented for the llama family only");
}

std::shared_ptr<Decoder> load_decoder(const std::string& dir, at::Device device, at::ScalarType dtype) {
  ModelConfig config = load_model_config(dir);
  if (device.is_cpu() && dtype == at::kHalf)
    throw std::invalid_argument(dir + ": dtype float16 cannot run on the CPU (LibTorch has no half-precision matrix "
                                "product there); use bfloat16 (bfloat16 weights, float32 compute) or float32");
  if (!device.is_cpu() && dtype == at::kChar)
    throw std::invalid_argument(dir + ": dtype int8 runs on the CPU only (int8 matrices, float32 compute); on " +
                                device.str() + " use float16 or bfloat16");
  // bfloat16 or int8 on the CPU: float32 compute over narrower matrices.
  const bool split = device.is_cpu() && (dtype == at::kBFloat16 || dtype == at::kChar);
  const at::ScalarType compute = split ? at::kFloat : dtype;
  // What the loaded weights take (matrices narrowed one by one when split): more than this machine's memory is an
  // error before any allocation.
  const double element = !split ? static_cast<double>(c10::elementSize(compute))
                         : dtype == at::kChar ? 1.0 + 2.0 / 32.0  // int8 values and a float16 scale per 32
                                              : static_cast<double>(c10::elementSize(dtype));
  if (device.is_cpu()) check_model_fits(dir, config, element, dtype_name(split ? dtype : compute));
  auto decoder = make_decoder(config, device, compute, /*zero_weights=*/!split);
  CheckpointTensors tensors(dir);
  std::set<std::string> used;
  // A parameter stored whole, or rows of a fused matrix (phi3's qkv_proj and gate_up_proj), copied out.
  const Decoder::Fetch fetch = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const StoredSlice slice = stored_slice(config, name);
    if (slice.rows < 0) {
      used.insert(tensors.resolve(name));
      return tensors.load(name, shape, compute, device);
    }
    used.insert(tensors.resolve(slice.name));
    std::vector<int64_t> whole = shape;
    whole[0] = slice.total;
    return tensors.load(slice.name, whole, compute, device).narrow(0, slice.begin, slice.rows).clone();
  };
  // Gives back the file pages of what `name` was read from (a fused matrix once its last rows are read).
  const auto release = [&](const std::string& name) {
    const StoredSlice slice = stored_slice(config, name);
    if (slice.rows < 0) tensors.release(name);
    else if (slice.begin + slice.rows == slice.total) tensors.release(slice.name);
  };
  if (split) {
    // Each matrix is copied out of the file, narrowed, and its file pages and float32 copy given back at once:
    // the peak stays near the narrowed model (glibc is told to return freed blocks while loading).
    const bool kept = keeps_freed_memory();
    return_freed_memory();
    decoder->load_weights_narrow(
        [&](const std::string& name, const std::vector<int64_t>& shape) {
          at::Tensor t = fetch(name, shape);
          const std::string stored = tensors.resolve(name);
          if (!stored.empty() && tensors.dtype(stored) == "F32") t = t.clone();  // a view of the file: copy it out
          release(name);
          return t;
        },
        dtype);
    if (kept) keep_freed_memory();
  } else {
    decoder->load_weights(fetch);
  }
  check_all_used(tensors, used, config);
  return decoder;
}

namespace {

// Whether the result must carry an autograd graph (training): then the kernels, which write raw memory, step aside.
bool needs_grad(std::initializer_list<at::Tensor> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor& t : tensors)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

}  // namespace

at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& w_scales) {
  const bool q8 = w.scalar_type() == at::kChar;
  if (q8 && !(w_scales.defined() && w.dim() == 2 && w_scales.dim() == 2 && w_scales.size(0) == w.size(0) &&
              w_scales.size(1) == q8_blocks(w.size(1)) && w_scales.scalar_type() == at::kHalf))
    throw std::invalid_argument("linear_rows: an int8 matrix needs its float16 block scales [rows, q8_blocks(cols)]");
  const bool row = x.device().is_cpu() && (x.dim() == 1 || (x.dim() == 2 && x.size(0) == 1));
  const bool kernel = w.dim() == 2 && w.is_contiguous() && x.scalar_type() == at::kFloat &&
                      (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16 || q8) &&
                      (!q8 || w_scales.is_contiguous());
  const bool grad = needs_grad({x, w, b});
  // Several rows with narrow matrices: AMX products that keep float32 accuracy (amx.h), where the CPU has them.
  const int64_t rows = x.dim() == 0 ? 0 : x.numel() / x.size(-1);
  if (!row && kernel && !grad && x.device().is_cpu() && w.scalar_type() != at::kFloat && rows >= kAmxMinRows &&
      amx_available()) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    return amx_linear(x.reshape({rows, x.size(-1)}).contiguous(), w, w_scales, b).view(shape);
  }
  if (!row || !kernel || grad) {
    // Rows [r0, r0 + n) of the product; matrices kept in a narrower dtype (store_matrices_as) are widened.
    const auto part = [&](int64_t r0, int64_t n) {
      const at::Tensor wp = n == w.size(0) ? w : w.narrow(0, r0, n);
      const at::Tensor bp = !b.defined() || n == w.size(0) ? b : b.narrow(0, r0, n);
      if (q8) return at::linear(x, dequantize_q8(wp, w_scales.narrow(0, r0, n), x.scalar_type()), bp);
      return at::linear(x, wp.scalar_type() == x.scalar_type() ? wp : wp.to(x.scalar_type()), bp);
    };
    // Several rows on several CPU threads: each thread multiplies a slice of W with one-threaded BLAS
    // (configure_threads), as OpenBLAS's own threads and LibTorch's OpenMP workers would spin against each other.
    const int64_t parts = std::min<int64_t>(at::get_num_threads(), w.size(0) / 64);
    if (!x.device().is_cpu() || parts < 2 || x.numel() == x.size(-1) || grad) return part(0, w.size(0));
    std::vector<at::Tensor> outs(static_cast<size_t>(parts));
    parallel_each(parts, [&](int64_t i) {
      const int64_t r0 = w.size(0) * i / parts, r1 = w.size(0) * (i + 1) / parts;
      outs[static_cast<size_t>(i)] = part(r0, r1 - r0);
    });
    return at::cat(outs, -1);
  }
  // A decode step makes seven of these a layer: no LibTorch op here but the result's allocation (each costs ~1 us).
  const at::Tensor xc = x.is_contiguous() ? at::Tensor() : x.reshape({-1}).contiguous();
  const float* xv = (xc.defined() ? xc : x).data_ptr<float>();
  at::Tensor y = x.dim() == 2 ? at::empty({1, w.size(0)}, x.options()) : at::empty({w.size(0)}, x.options());
  float* yp = y.data_ptr<float>();
  if (w.scalar_type() == at::kFloat) {
    gemv_f32(w.data_ptr<float>(), xv, yp, w.size(0), w.size(1));
  } else if (q8) {
    gemv_q8(w.data_ptr<int8_t>(), reinterpret_cast<const uint16_t*>(w_scales.data_ptr<at::Half>()), xv, yp, w.size(0),
            w.size(1));
  } else {
    gemv_bf16(reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), xv, yp, w.size(0), w.size(1));
  }
  if (b.defined()) y.add_(b.scalar_type() == at::kFloat ? b : b.to(at::kFloat));
  return y;
}

at::Tensor linear_rows_t(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const bool row = x.device().is_cpu() && x.dim() == 2 && x.size(0) == 1 && x.scalar_type() == at::kFloat &&
                   w.scalar_type() == at::kFloat && w.dim() == 2 && w.is_contiguous();
  if (!row || needs_grad({x, w, b})) {
    if (x.dim() == 2) return at::addmm(b, x, w);
    return at::matmul(x, w) + b;
  }
  const at::Tensor xv = x.reshape({-1}).contiguous();
  at::Tensor y = at::empty({1, w.size(1)}, x.options());
  gemv_t_f32(w.data_ptr<float>(), w.size(1), xv.data_ptr<float>(), y.data_ptr<float>(), w.size(0), w.size(1));
  return b.defined() ? y.add_(b) : y;
}

namespace {

// One query token on the CPU in float32 (a decode step): per KV head, the scores of its query heads are
// matrix-vector products over the cached keys and the output a probability-weighted sum of the cached values,
// read in place (the cache's rows are contiguous; its heads and layers are strided). Same result as the general
// path up to summation order.
// A bfloat16 cache (CacheConfig::kv_dtype) is widened to float32 as it is read.
bool attend_one_ok(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const bool kv_ok = (k.scalar_type() == at::kFloat || k.scalar_type() == at::kBFloat16) &&
                     v.scalar_type() == k.scalar_type();
  return q.size(1) == 1 && q.device().is_cpu() && q.scalar_type() == at::kFloat && kv_ok && k.stride(2) == 1 &&
         v.stride(2) == 1 && !needs_grad({q, k, v});
}

const uint16_t* bf16_data(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

void softcap_(at::Tensor& scores, double softcap) {
  if (softcap > 0.0) scores.div_(softcap).tanh_().mul_(softcap);
}

// Cached rows per task, at least, when attention's KV heads are split across threads.
constexpr int64_t kMinRowsPerPart = 128;

at::Tensor attend_one(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                      double scale, double softcap) {
  const int64_t h = q.size(0), dh = q.size(2), kv = k.size(0), e = k.size(1), g = h / kv;
  // With more threads than KV heads, each head's rows are split into `parts` too (Gemma-3-1b has one KV head):
  // scores by rows, values as partial sums added at the end.
  const int64_t threads = at::get_num_threads();
  const int64_t parts =
      threads > kv ? std::max<int64_t>(1, std::min((threads + kv - 1) / kv, e / kMinRowsPerPart)) : 1;
  const auto rows_of = [&](int64_t p) { return std::pair<int64_t, int64_t>{e * p / parts, e * (p + 1) / parts}; };
  const at::Tensor qc = q.is_contiguous() ? q : q.reshape({h, dh}).contiguous();
  at::Tensor scores = at::empty({h, e}, q.options());
  const float* qp = qc.data_ptr<float>();
  float* sp = scores.data_ptr<float>();
  const bool narrow = k.scalar_type() == at::kBFloat16;
  // Query heads j * g .. j * g + g - 1 share KV head j: its cached rows are read once for all of them.
  parallel_each(kv * parts, [&](int64_t t) {
    const int64_t j = t / parts;
    const auto [r0, r1] = rows_of(t % parts);
    if (narrow) {
      attend_scores_bf16(bf16_data(k) + j * k.stride(0) + r0 * k.stride(1), k.stride(1), qp + j * g * dh,
                         sp + j * g * e + r0, g, dh, e, r1 - r0, dh);
    } else {
      attend_scores_f32(k.data_ptr<float>() + j * k.stride(0) + r0 * k.stride(1), k.stride(1), qp + j * g * dh,
                        sp + j * g * e + r0, g, dh, e, r1 - r0, dh);
    }
  });
  const bool mask_row = !mask.defined() || (mask.numel() == e && mask.scalar_type() == at::kFloat &&
                                            mask.device().is_cpu() && mask.is_contiguous());
  at::Tensor probs = scores;
  if (softcap > 0.0 || !mask_row) {
    scores.mul_(scale);
    softcap_(scores, softcap);
    if (mask.defined()) scores.add_(mask.reshape({1, e}));
    probs = at::softmax(scores, -1).contiguous();
  } else {
    softmax_scaled_rows(sp, h, e, e, static_cast<float>(scale), mask.defined() ? mask.data_ptr<float>() : nullptr);
  }
  at::Tensor out = at::empty({parts, h * dh}, q.options());
  const float* pp = probs.data_ptr<float>();
  float* op = out.data_ptr<float>();
  parallel_each(kv * parts, [&](int64_t t) {
    const int64_t j = t / parts, p = t % parts;
    const auto [r0, r1] = rows_of(p);
    float* o = op + p * h * dh + j * g * dh;
    if (narrow) {
      attend_values_bf16(bf16_data(v) + j * v.stride(0) + r0 * v.stride(1), v.stride(1), pp + j * g * e + r0, o, g,
                         e, dh, r1 - r0, dh);
    } else {
      attend_values_f32(v.data_ptr<float>() + j * v.stride(0) + r0 * v.stride(1), v.stride(1), pp + j * g * e + r0, o,
                        g, e, dh, r1 - r0, dh);
    }
  });
  return parts == 1 ? out : out.sum(0, /*keepdim=*/true);
}

}  // namespace

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                  double scale, double softcap) {
  if (attend_one_ok(q, k, v)) return attend_one(q, k, v, mask, scale, softcap);
  const int64_t h = q.size(0), t = q.size(1), dh = q.size(2);
  const int64_t kv = k.size(0), e = k.size(1);
  const bool mask_rows = !mask.defined() || (mask.dim() == 2 && mask.size(0) == t && mask.size(1) == e &&
                                             mask.scalar_type() == at::kFloat && mask.device().is_cpu() &&
                                             mask.stride(1) == 1);
  if (softcap <= 0.0 && mask_rows && tiled_attention_ok(q, k, v))
    return tiled_attention(q, k, v, visible_from_mask(mask, t, e), scale);
  const int64_t g = h / kv;
  // A cache kept in another dtype (CacheConfig::kv_dtype) on a path without a kernel for it: widened whole.
  if (k.scalar_type() != q.scalar_type())
    return attend(q, k.to(q.scalar_type()), v.to(q.scalar_type()), mask, scale, softcap);
  at::Tensor qg = q.reshape({kv, g * t, dh});
  at::Tensor scores = at::bmm(qg, k.transpose(1, 2));  // [KV, G*T, E]
  scores = scores.to(at::kFloat).mul_(scale);
  softcap_(scores, softcap);
  if (mask.defined()) scores = (scores.view({kv, g, t, e}) + mask).view({kv, g * t, e});
  at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());
  at::Tensor out = at::bmm(probs, v);  // [KV, G*T, dh]
  return out.view({h, t, dh}).transpose(0, 1).reshape({t, h * dh});
}

at::Tensor attend_causal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                         int64_t window, double softcap) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), dh = q.size(3);
  const int64_t kv = k.size(1);
  if (softcap <= 0.0 && b > 0 && tiled_attention_ok(q[0], k[0], v[0])) {
    const VisibleKeys keys = visible_causal(t, window);
    std::vector<at::Tensor> outs;
    for (int64_t i = 0; i < b; ++i) outs.push_back(tiled_attention(q[i], k[i], v[i], keys, scale));
    return at::stack(outs);
  }
  const int64_t g = h / kv;
  at::Tensor qg = q.view({b, kv, g, t, dh});
  at::Tensor scores = at::matmul(qg, k.unsqueeze(2).transpose(-1, -2)).to(at::kFloat) * scale;  // [B,KV,G,T,T]
  if (softcap > 0.0) scores = at::tanh(scores / softcap) * softcap;  // out of place: autograd
  at::Tensor causal = at::ones({t, t}, at::TensorOptions().dtype(at::kBool).device(q.device())).triu(1);
  if (window > 0 && window < t)
    causal = causal.logical_or(at::ones({t, t}, causal.options()).tril(-window));  // i - j >= window
  scores = scores.masked_fill(causal, -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());
  at::Tensor out = at::matmul(probs, v.unsqueeze(2));  // [B, KV, G, T, dh]
  return out.view({b, h, t, dh}).transpose(1, 2).reshape({b, t, h * dh});
}

}  // namespace sinkflow
