// Devices, dtypes and CPU threading.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace sinkflow {

// "cpu" | "cuda" | "cuda:N" | "mps". Throws std::invalid_argument for an unknown name and
// std::runtime_error when the device is not compiled into this LibTorch or not present.
at::Device parse_device(const std::string& name);
// "float32" | "float16" | "bfloat16" (also f32/f16/bf16; "auto" = float32 on CPU, float16 on CUDA/MPS).
at::ScalarType parse_dtype(const std::string& name, at::Device device);
std::string dtype_name(at::ScalarType dtype);

// One LibTorch intra-op thread and single-threaded OpenBLAS by default: the second core belongs to the
// memory path. n <= 0 keeps LibTorch's default.
void configure_threads(int intra_op_threads);

// Peak resident set size of this process in bytes (VmHWM), and the current one (VmRSS).
int64_t peak_rss_bytes();
int64_t current_rss_bytes();

}  // namespace sinkflow
