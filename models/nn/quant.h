// int8 matrices for CPU decode (`--dtype int8`): each row in blocks of kQ8Block weights, one float16 scale per
// block (llama.cpp's q8_0 numbers). gemv_q8 (gemv.h) multiplies them without widening the matrix.
#pragma once

#include <ATen/ATen.h>

namespace sinkflow {

struct Q8Matrix {
  at::Tensor values;  // int8 [N, K]
  at::Tensor scales;  // float16 [N, q8_blocks(K)]
};

// Rounds each block of a row to int8 with scale max|w| / 127 (stored as float16), values rounded against the
// stored scale: a weight's error is at most half its block's scale. w: any floating dtype, 2-D.
Q8Matrix quantize_q8(const at::Tensor& w);

// The matrix the blocks stand for, in `dtype` (rows of it when values/scales are rows of a Q8Matrix).
at::Tensor dequantize_q8(const at::Tensor& values, const at::Tensor& scales, at::ScalarType dtype = at::kFloat);

// Makes `param` hold `matrix` (param itself, or its transpose) narrowed to `dtype` (set_data: the parameter keeps
// its identity): bfloat16, or int8 blocks whose float16 scales are returned (undefined for bfloat16).
at::Tensor store_narrowed(at::Tensor& param, const at::Tensor& matrix, at::ScalarType dtype);

// Rows `ids` (any shape) of an embedding matrix kept as int8 blocks (scales defined: float32 rows) or as it is
// stored (at::embedding): token lookups in a matrix narrowed by store_matrices_as.
at::Tensor embedding_rows(const at::Tensor& w, const at::Tensor& scales, const at::Tensor& ids);

}  // namespace sinkflow
