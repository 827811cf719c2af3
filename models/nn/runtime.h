// Devices, dtypes and CPU threading.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace sinkflow {

// Whether `name` is spelled as a device ("cpu", "cuda", "cuda:N", "mps"), without asking whether it is present.
bool is_device_name(const std::string& name);

// "cpu" | "cuda" | "cuda:N" | "mps". Throws std::invalid_argument for an unknown name and
// std::runtime_error when the device is not compiled into this LibTorch or not present.
at::Device parse_device(const std::string& name);
// "float32" | "float16" | "bfloat16" | "int8" (also f32/f16/bf16/q8_0; "auto" = float32 on CPU, float16 on
// CUDA/MPS). int8 = at::kChar: int8 matrices with float32 compute (load_decoder).
at::ScalarType parse_dtype(const std::string& name, at::Device device);
// The KV cache's element type (CacheConfig::kv_dtype): "auto" (Undefined: the model's dtype) | "float32" |
// "bfloat16" | "float16" (also f32/bf16/f16). Throws std::invalid_argument for another name.
at::ScalarType parse_kv_dtype(const std::string& name);
std::string dtype_name(at::ScalarType dtype);

// LibTorch intra-op threads (OpenMP; n <= 0 keeps LibTorch's default) over one-threaded OpenBLAS: the decode
// kernels split rows across the threads and linear_rows splits longer products by slices of the weight. One
// thread is the launcher's default: the second core belongs to the memory path.
void configure_threads(int intra_op_threads);

// Keeps freed memory in the process (glibc: no mmap'ed blocks, no trimming) so that tensors of the next step
// reuse pages already mapped. Where page faults are slow (this project's sandbox: a fresh 33 MB tensor cost
// 110 ms of faults for 2 ms of arithmetic), a training step of the shipped Llama ran 1.44x faster with it
// (sinkflow bench loss, whole-logits arms); the price is that the process keeps its peak heap. Call once, first
// thing in main(). No-op without glibc.
void keep_freed_memory();
// OpenBLAS picks its kernels from the CPU model at load time and falls back to its slowest (Prescott: SSE3) for
// a model it does not know, as this project's machines (family 6, model 207, AVX-512): prefill of 687 tokens of
// the SmolLM2-135M shape ran at 119 tokens/s on them, 436 with the Cooperlake kernels. When OpenBLAS is the BLAS,
// chose Prescott and OPENBLAS_CORETYPE is unset, this re-selects by the CPU's features (AVX-512 with bfloat16:
// Cooperlake; AVX-512: SkylakeX; AVX2 + FMA: Haswell) and returns the kernels' name ("" = left as they were).
// Call before any matrix product, first thing in main().
std::string select_blas_kernels();

// Back to glibc's behaviour at its steady state (blocks above 32 MB mapped per allocation, the heap's top
// trimmed above 64 MB): the other arm of `sinkflow bench loss`.
void return_freed_memory();
// Whether keep_freed_memory() is in force (the last of the two called).
bool keeps_freed_memory();

// Peak resident set size of this process in bytes (VmHWM), and the current one (VmRSS).
int64_t peak_rss_bytes();
int64_t current_rss_bytes();

}  // namespace sinkflow
