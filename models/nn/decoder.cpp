#include "models/nn/decoder.h"

#include <limits>
#include <stdexcept>

#include "models/io/checkpoint.h"
#include "models/cache/rope.h"

namespace sinkflow {

std::shared_ptr<Decoder> make_llama(const ModelConfig& config, at::Device device, at::ScalarType dtype);
std::shared_ptr<Decoder> make_gpt2(const ModelConfig& config, at::Device device, at::ScalarType dtype);

std::unique_ptr<KvCache> Decoder::make_cache(const CacheConfig& config) const {
  return std::make_unique<KvCache>(config_, config, rope(), device_, dtype_);
}

void Decoder::load_weights(
    const std::function<at::Tensor(const std::string&, const std::vector<int64_t>&)>& fetch) {
  fill_parameters(named_parameters(), fetch);
}

at::Tensor Decoder::forward_full(const at::Tensor& tokens, int64_t start_position) const {
  return at::matmul(hidden_full(tokens, start_position), head_weight().t());
}

at::Tensor Decoder::first_layer_kv(const std::vector<int64_t>&, const std::vector<int64_t>&) const {
  throw std::logic_error("first_layer_kv: model_type '" + config_.model_type + "' has no learned absolute positions");
}

std::shared_ptr<Decoder> make_decoder(const ModelConfig& config, at::Device device, at::ScalarType dtype) {
  switch (config.family) {
    case Family::llama: return make_llama(config, device, dtype);
    case Family::gpt2: return make_gpt2(config, device, dtype);
    default:
      throw std::invalid_argument("model_type '" + config.model_type + "' is not a decoder (expected a llama or gpt2 family model)");
  }
}

std::shared_ptr<Decoder> load_decoder(const std::string& dir, at::Device device, at::ScalarType dtype) {
  ModelConfig config = load_model_config(dir);
  auto decoder = make_decoder(config, device, dtype);
  CheckpointTensors tensors(dir);
  decoder->load_weights([&](const std::string& name, const std::vector<int64_t>& shape) {
    return tensors.load(name, shape, dtype, device);
  });
  return decoder;
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                  double scale) {
  const int64_t h = q.size(0), t = q.size(1), dh = q.size(2);
  const int64_t kv = k.size(0), e = k.size(1);
  const int64_t g = h / kv;
  at::Tensor qg = q.reshape({kv, g * t, dh});
  at::Tensor scores = at::bmm(qg, k.transpose(1, 2));  // [KV, G*T, E]
  scores = scores.to(at::kFloat).mul_(scale);
  if (mask.defined()) scores = (scores.view({kv, g, t, e}) + mask).view({kv, g * t, e});
  at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());
  at::Tensor out = at::bmm(probs, v);  // [KV, G*T, dh]
  return out.view({h, t, dh}).transpose(0, 1).reshape({t, h * dh});
}

at::Tensor attend_causal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), dh = q.size(3);
  const int64_t kv = k.size(1);
  const int64_t g = h / kv;
  at::Tensor qg = q.view({b, kv, g, t, dh});
  at::Tensor scores = at::matmul(qg, k.unsqueeze(2).transpose(-1, -2)).to(at::kFloat) * scale;  // [B,KV,G,T,T]
  at::Tensor causal = at::ones({t, t}, at::TensorOptions().dtype(at::kBool).device(q.device())).triu(1);
  scores = scores.masked_fill(causal, -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());
  at::Tensor out = at::matmul(probs, v.unsqueeze(2));  // [B, KV, G, T, dh]
  return out.view({b, h, t, dh}).transpose(1, 2).reshape({b, t, h * dh});
}

}  // namespace sinkflow
