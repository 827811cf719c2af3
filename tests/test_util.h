// Shared fixtures for the tests: small random models built in memory, temp directories.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include <cstdlib>

#include "models/io/config.h"
#include "models/nn/decoder.h"
#include "models/stream/stream.h"
#include "models/text/tokenizer.h"

namespace sinkflow::test {

// The device of the equivalence tests: SINKFLOW_TEST_DEVICE (cpu, cuda or cuda:N; default cpu). Naming a CUDA
// device that this LibTorch or machine lacks is an error, not a silent fall-back to the CPU. On CUDA, float32
// matrix products are kept TF32-free so that float32 stays float32 (the tolerances below assume it).
inline at::Device device() {
  const char* env = std::getenv("SINKFLOW_TEST_DEVICE");
  const std::string name = env && *env ? env : "cpu";
  if (name == "cpu") return at::Device(at::kCPU);
  if (name != "cuda" && name.rfind("cuda:", 0) != 0)
    throw std::invalid_argument("SINKFLOW_TEST_DEVICE: expected cpu, cuda or cuda:N, found '" + name + "'");
  if (!at::hasCUDA())
    throw std::runtime_error("SINKFLOW_TEST_DEVICE=" + name +
                             " but CUDA is not available (a LibTorch without CUDA, or no GPU visible)");
  at::globalContext().setAllowTF32CuBLAS(false);
  return at::Device(name);
}

// A tolerance written for the CPU, widened tenfold on a GPU: its kernels (cuBLAS split-K, fused softmax) sum
// in other orders than the CPU's, and differently for a 1-row and an n-row product, so two float32 paths
// that agree to ~1e-7 on the CPU agree to ~1e-6 there.
inline double tol(double cpu_tolerance) { return device().is_cpu() ? cpu_tolerance : 10 * cpu_tolerance; }

inline ModelConfig tiny_llama_config() {
  ModelConfig c;
  c.family = Family::llama;
  c.model_type = "llama";
  c.vocab_size = 97;
  c.d_model = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.d_head = 8;
  c.d_ff = 48;
  c.max_positions = 4096;
  c.rope_theta = 10000.0;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  return c;
}

inline ModelConfig tiny_gpt2_config() {
  ModelConfig c;
  c.family = Family::gpt2;
  c.model_type = "gpt2";
  c.vocab_size = 97;
  c.d_model = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 4;
  c.d_head = 8;
  c.d_ff = 128;
  c.max_positions = 256;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  return c;
}

// A decoder with seeded random weights: matrices N(0, std), norm weights 1 + N(0, 0.1), biases N(0, 0.02).
// The weights are drawn on the CPU (the same values on every device), then placed on `on`.
inline std::shared_ptr<Decoder> random_decoder(const ModelConfig& config, uint64_t seed, double std = 0.2,
                                               at::Device on = at::Device(at::kCPU)) {
  auto d = make_decoder(config, on, at::kFloat);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  d->load_weights([&](const std::string& name, const std::vector<int64_t>& shape) {
    at::Tensor noise = at::normal(0.0, 1.0, shape, gen);
    const bool norm = name.find("norm") != std::string::npos || name.find("ln_") != std::string::npos;
    if (norm && name.find("bias") == std::string::npos) return 1.0 + 0.1 * noise;
    if (name.find("bias") != std::string::npos) return 0.02 * noise;
    return std * noise;
  });
  return d;
}

inline std::vector<int64_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> out(n);
  for (auto& t : out) t = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
  return out;
}

// Writes `bytes` to `path` (replacing it), and reads a whole file back (empty when it cannot be opened).
inline void write_file(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("sinkflow_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Largest |a - b|, compared on the CPU in double (a and b may live on different devices).
inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU, at::kDouble) - b.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

// The bare loop the graph must equal: BOS + the prompt fed to a StreamSession of `cache` in blocks of `block`
// tokens, then greedy decoding (argmax until EOS or max_new tokens). The model folder's own tokenizer.
inline std::vector<int64_t> bare_greedy_loop(const std::string& model_dir, const std::string& prompt,
                                             const CacheConfig& cache, int64_t block, int64_t max_new) {
  auto decoder = load_decoder(model_dir, at::kCPU, at::kFloat);
  auto tokenizer = load_tokenizer(model_dir);
  StreamConfig sc;
  sc.policy = Policy::sink;
  sc.cache = cache;
  sc.prefill_block = block;
  StreamSession session(decoder, sc);
  std::vector<int64_t> ids;
  if (tokenizer->bos_id() >= 0) ids.push_back(tokenizer->bos_id());
  const auto body = tokenizer->encode(prompt);
  ids.insert(ids.end(), body.begin(), body.end());
  at::Tensor logits;
  for (size_t b = 0; b < ids.size(); b += static_cast<size_t>(block))
    logits = session.feed({ids.begin() + static_cast<long>(b),
                           ids.begin() + static_cast<long>(std::min(ids.size(), b + static_cast<size_t>(block)))});
  std::vector<int64_t> out;
  for (int64_t i = 0; i < max_new; ++i) {
    const int64_t next = logits.argmax(-1).item<int64_t>();
    if (next == tokenizer->eos_id()) break;
    out.push_back(next);
    logits = session.feed({next});
  }
  return out;
}

}  // namespace sinkflow::test
