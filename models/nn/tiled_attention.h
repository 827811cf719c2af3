// Attention of many query rows at once (prefill, `sinkflow ppl`) in float32 on AVX-512, without writing the scores.
//
// The general path (attend, attend_causal) writes [KV, G*T, E] scores, adds a [T, E] mask to them, writes their
// softmax and multiplies every pair, the masked half of a causal prefill included: in a 512-token int8 prefill of
// the SmolLM2-135M shape that was about a quarter of the time (OpenBLAS, softmax, memset). Here each task takes one
// KV head and a tile of query rows (all the head's query heads), walks the blocks of cached keys that some row of
// the tile sees, and folds each block into the output with a running softmax (as FlashAttention does on GPUs): the
// scores of a block stay in L1, blocks no row of the tile sees are skipped, and the mask is only read where a block
// is partly visible. Same result as the general path up to summation order and exp's last bit.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace sinkflow {

// The keys each query row t sees: s in [lo[t], hi[t]), where mask[t, s] (additive, [T, E] row-major) is added to the
// score unless whole[t] says the row's keys in that range are all visible with 0 added. mask may be null when every
// row is whole.
struct VisibleKeys {
  std::vector<int64_t> lo, hi;
  std::vector<uint8_t> whole;
  const float* mask = nullptr;
  int64_t mask_ld = 0;
};

// From an additive [T, E] float32 CPU mask (0 = visible, -inf = hidden; undefined: all of [0, e) visible). The
// tensor must outlive the result.
VisibleKeys visible_from_mask(const at::Tensor& mask, int64_t t, int64_t e);
// Causal over t rows of a fresh sequence: row i sees keys max(0, i - window + 1) .. i (window <= 0: 0 .. i).
VisibleKeys visible_causal(int64_t t, int64_t window);

// Whether tiled_attention runs these: float32 CPU queries, float32 or bfloat16 keys and values (a bfloat16 cache is
// widened a block at a time), outside autograd, rows of d_head (a multiple of 16) contiguous, an AVX-512 CPU.
// SINKFLOW_TILED_ATTENTION=0 in the environment turns it off (side-by-side runs).
bool tiled_attention_ok(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// q [H, T, dh], k and v [KV, E, dh] (H a multiple of KV: grouped-query attention) -> [T, H * dh]: for each head,
// softmax(scale * q k^T + mask) v over the keys `keys` gives each row. A row that sees no key gives NaN, as the
// softmax of all -inf does. Tasks (KV head, tile of rows) run on LibTorch's intra-op threads.
at::Tensor tiled_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const VisibleKeys& keys,
                           double scale);

// s[r, i] = softmax over i < n of (scale * s[r, i] + add[i]) for rows r < rows, `ld` floats apart, in place
// (add may be null): a decode step's attention probabilities. A row of all -inf gives NaN, as LibTorch's softmax
// does. AVX-512 where the CPU has it.
void softmax_scaled_rows(float* s, int64_t rows, int64_t n, int64_t ld, float scale, const float* add);

}  // namespace sinkflow
