// Golden check of the shipped models: the C++ forward (full, and streaming through the cache in blocks) against
// logits written by tools/reference_forward.py, an independent re-implementation of Hugging Face's Llama and
// GPT-2 forward in Debian's python3-torch (tests/data/golden/*.safetensors). After retraining a shipped model,
// regenerate: /usr/bin/python3 tools/reference_forward.py data/models/M tests/data/golden/M.safetensors
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "models/nn/decoder.h"
#include "models/io/safetensors.h"
#include "models/stream/stream.h"

using namespace sinkflow;

namespace {

const std::string kSource = SINKFLOW_SOURCE_DIR;

void check_model(const std::string& name) {
  c10::InferenceMode guard;
  const SafetensorsFile golden(kSource + "/tests/data/golden/" + name + ".safetensors");
  const at::Tensor tokens = golden.tensor("tokens").to(at::kLong);
  const at::Tensor positions = golden.tensor("positions").to(at::kLong);
  const at::Tensor expected = golden.tensor("logits").to(at::kFloat);
  INFO(name << ": golden logits of model.safetensors sha256 " << golden.metadata().at("model_sha256")
            << " (regenerate with tools/reference_forward.py after retraining)");
  auto decoder = load_decoder(kSource + "/data/models/" + name, at::kCPU, at::kFloat);
  REQUIRE(expected.size(1) == decoder->config().vocab_size);

  // Full causal forward.
  const at::Tensor full = decoder->forward_full(tokens.unsqueeze(0), 0)[0].index_select(0, positions);
  const double scale = expected.abs().max().item<double>();
  const double full_err = (full - expected).abs().max().item<double>();
  INFO("largest |logit| " << scale << ", full-forward error " << full_err);
  CHECK(full_err < 1e-4 * scale + 1e-4);
  CHECK(at::equal(full.argmax(-1), expected.argmax(-1)));

  // Streaming: the same tokens fed through a dense cache in blocks of 7, every token's logits kept.
  StreamConfig sc;
  sc.policy = Policy::dense;
  sc.cache.n_recent = tokens.size(0);
  sc.prefill_block = 7;
  StreamSession session(decoder, sc);
  const std::vector<int64_t> ids(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.size(0));
  const at::Tensor streamed = session.feed(ids, nullptr, true).index_select(0, positions);
  const double stream_err = (streamed - expected).abs().max().item<double>();
  INFO("streaming error " << stream_err);
  CHECK(stream_err < 1e-4 * scale + 1e-4);
}

}  // namespace

TEST_CASE("golden: sinkflow-llama equals the reference Llama forward (rotate_half RoPE, repeat_kv, RMSNorm, SwiGLU)",
          "[golden]") {
  check_model("sinkflow-llama");
}

TEST_CASE("golden: sinkflow-gpt2 equals the reference GPT-2 forward (Conv1D, fused c_attn, gelu_new, LayerNorm)",
          "[golden]") {
  check_model("sinkflow-gpt2");
}
