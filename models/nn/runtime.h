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
// "float32" | "float16" | "bfloat16" (also f32/f16/bf16; "auto" = float32 on CPU, float16 on CUDA/MPS).
at::ScalarType parse_dtype(const std::string& name, at::Device device);
std::string dtype_name(at::ScalarType dtype);

// One LibTorch intra-op thread and single-threaded OpenBLAS by default: the second core belongs to the
// memory path. n <= 0 keeps LibTorch's default.
void configure_threads(int intra_op_threads);

// Keeps freed memory in the process (glibc: no mmap'ed blocks, no trimming) so that tensors of the next step
// reuse pages already mapped. Where page faults are slow (this project's sandbox: a fresh 33 MB tensor cost
// 110 ms of faults for 2 ms of arithmetic), a training step of the shipped Llama ran 1.44x faster with it
// (sinkflow bench loss, whole-logits arms); the price is that the process keeps its peak heap. Call once, first
// thing in main(). No-op without glibc.
void keep_freed_memory();
// Back to glibc's behaviour at its steady state (blocks above 32 MB mapped per allocation, the heap's top
// trimmed above 64 MB): the other arm of `sinkflow bench loss`.
void return_freed_memory();

// Peak resident set size of this process in bytes (VmHWM), and the current one (VmRSS).
int64_t peak_rss_bytes();
int64_t current_rss_bytes();

}  // namespace sinkflow
