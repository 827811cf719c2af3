#include "models/nn/runtime.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <cctype>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace sinkflow {

bool is_device_name(const std::string& name) {
  if (name == "cpu" || name == "cuda" || name == "mps") return true;
  if (name.rfind("cuda:", 0) != 0 || name.size() == 5) return false;
  for (size_t i = 5; i < name.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return false;
  return true;
}

at::Device parse_device(const std::string& name) {
  if (name == "cpu") return at::Device(at::kCPU);
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    if (!at::hasCUDA()) {
      throw std::runtime_error("device '" + name + "' is not available: this LibTorch has no CUDA support or no GPU is present (use --device cpu)");
    }
    return at::Device(name);
  }
  if (name == "mps") {
    if (!at::hasMPS()) {
      throw std::runtime_error("device 'mps' is not available: this LibTorch was built without MPS (Apple GPUs only; use --device cpu)");
    }
    return at::Device(at::kMPS);
  }
  throw std::invalid_argument("unknown device '" + name + "': expected cpu, cuda, cuda:N or mps");
}

at::ScalarType parse_dtype(const std::string& name, at::Device device) {
  if (name == "auto") return device.is_cpu() ? at::kFloat : at::kHalf;
  if (name == "float32" || name == "f32" || name == "fp32") return at::kFloat;
  if (name == "float16" || name == "f16" || name == "fp16") return at::kHalf;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "int8" || name == "q8_0") return at::kChar;
  throw std::invalid_argument("unknown dtype '" + name + "': expected float32, float16, bfloat16, int8 or auto");
}

at::ScalarType parse_kv_dtype(const std::string& name) {
  if (name == "auto") return at::ScalarType::Undefined;
  // parse_dtype's names, less its "auto" (the accelerators' float16) and int8 (a matrix format, not a cache's).
  at::ScalarType dtype = at::ScalarType::Undefined;
  try {
    dtype = parse_dtype(name, at::kCPU);
  } catch (const std::invalid_argument&) {
  }
  if (dtype == at::ScalarType::Undefined || dtype == at::kChar)
    throw std::invalid_argument("unknown KV cache dtype '" + name + "': expected auto, float32, bfloat16 or float16");
  return dtype;
}

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kChar: return "int8";
    default: return c10::toString(dtype);
  }
}

void configure_threads(int intra_op_threads) {
  if (intra_op_threads > 0) at::set_num_threads(intra_op_threads);
  // OpenBLAS runs on one thread whatever the count: linear_rows splits a product across LibTorch's OpenMP threads
  // instead. OpenBLAS's own threads and the OpenMP workers spin-wait between calls and took each other's cores:
  // prefill of the SmolLM2-135M shape ran at 190-250 tokens/s on 2 threads, 410-470 on one.
  using SetThreads = void (*)(int);
  if (auto fn = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(1);
}

namespace {
bool g_keep_freed = false;
}  // namespace

bool keeps_freed_memory() { return g_keep_freed; }

void keep_freed_memory() {
  g_keep_freed = true;
#if defined(__GLIBC__)
  // Blocks above the mmap threshold (32 MB at most) are otherwise mapped per allocation and unmapped on free,
  // and the heap's top is trimmed back to the OS; both make the next step fault its pages in again.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
#endif
}

std::string select_blas_kernels() {
  using Name = char* (*)();
  using Call = void (*)();
  const auto corename = reinterpret_cast<Name>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  const auto quit = reinterpret_cast<Call>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit"));
  const auto init = reinterpret_cast<Call>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init"));
  if (!corename || !quit || !init || std::getenv("OPENBLAS_CORETYPE")) return "";
  std::string core = corename();
  for (char& c : core) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (core != "prescott") return "";
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512cd");
  const char* pick = nullptr;
  if (avx512 && __builtin_cpu_supports("avx512bf16") && dlsym(RTLD_DEFAULT, "gotoblas_COOPERLAKE")) {
    pick = "Cooperlake";
  } else if (avx512 && dlsym(RTLD_DEFAULT, "gotoblas_SKYLAKEX")) {
    pick = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && dlsym(RTLD_DEFAULT, "gotoblas_HASWELL")) {
    pick = "Haswell";
  }
  if (!pick) return "";
  // OpenBLAS reads the variable when it (re)initialises its dispatch table; nothing has used the table yet.
  setenv("OPENBLAS_CORETYPE", pick, 0);
  quit();
  init();
  unsetenv("OPENBLAS_CORETYPE");
  return corename();
}

void return_freed_memory() {
  g_keep_freed = false;
#if defined(__GLIBC__)
  // glibc's defaults raise the mmap threshold, as mapped blocks are freed, up to 32 MB and trim at twice it.
  mallopt(M_MMAP_MAX, 65536);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
}

namespace {
int64_t status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string k(key);
  while (std::getline(in, line)) {
    if (line.rfind(k, 0) == 0) return std::atoll(line.c_str() + k.size()) * 1024;
  }
  return 0;
}
}  // namespace

int64_t peak_rss_bytes() { return status_kb("VmHWM:"); }
int64_t current_rss_bytes() { return status_kb("VmRSS:"); }

}  // namespace sinkflow
