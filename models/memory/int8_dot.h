// Inner products of int8 codes, the inner loop of the int8 hnsw graphs (HnswParams::Storage::i8): every distance an
// insert or a search computes is one of these over dim codes.
//
// Every kernel returns the same int32 sum as the portable loop, for every input (int8's whole range, any n), so
// the graphs built and the hits found do not depend on the CPU. The sum must fit int32 (n * 128 * 128 < 2^31:
// n < 131,072).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sinkflow {

enum class Int8DotKernel {
  portable,    // a plain loop (vectorized by the compiler as far as the build's -march allows)
  avx512bw,    // 32 codes widened to int16, vpmaddwd into int32 lanes
  avx512vnni,  // the same widening, vpdpwssd (multiply, add pairs and accumulate in one instruction)
};

// "portable" | "avx512bw" | "avx512vnni".
const char* int8_dot_kernel_name(Int8DotKernel kernel);
// Whether this CPU runs `kernel` (portable: always).
bool int8_dot_supported(Int8DotKernel kernel);
// The fastest kernel this CPU runs, chosen once (SINKFLOW_INT8_DOT=portable|avx512bw|avx512vnni picks one for
// side-by-side measurements; one the CPU lacks is ignored).
Int8DotKernel int8_dot_best();

using Int8DotFn = int32_t (*)(const int8_t* x, const int8_t* y, size_t n);

// sum x[i] * y[i] over [0, n) with `kernel`, which must be supported.
int32_t int8_dot(Int8DotKernel kernel, const int8_t* x, const int8_t* y, size_t n);
// The same with int8_dot_best().
int32_t int8_dot(const int8_t* x, const int8_t* y, size_t n);
// The function that computes int8_dot(kernel, ...), for a caller that calls it in a loop (no check per call);
// throws std::invalid_argument if this CPU lacks `kernel`.
Int8DotFn int8_dot_fn(Int8DotKernel kernel);

}  // namespace sinkflow
