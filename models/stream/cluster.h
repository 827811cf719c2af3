// Cluster sinks (the `cluster` cache policy, "Remembering LLM" seed): the keys/values that leave the recent window
// are clustered online, per layer and KV head, into k centroids; the centroids occupy the cache's memory region as
// k pseudo-tokens between the attention sinks and the recent window.
//
//   kmeans_pp_init   k-means++ seeding (Arthur & Vassilvitskii 2007), batched over independent groups
//   OnlineKMeans     mini-batch k-means (Sculley 2010), batched over independent groups
//   ClusterMemory    an OnlineKMeans over [key ; value] of evicted tokens, one group per (layer, KV head),
//                    written into a KvCache's memory region
//
// Everything is batched tensor work (distances by baddbmm, argmin, index_add_), float32 internally, on the
// device of the points first seen; state tensors are replaced, never modified in place, so the same object
// may be driven inside and outside c10::InferenceMode. A seed makes every result deterministic.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <random>

#include "models/cache/kv_cache.h"

namespace sinkflow {

// k-means++ seeding for G independent groups at once.
// points [G, n, D] (any floating dtype, n >= k >= 1) -> centroids [G, k, D] float32, on the points' device: in each
// group the first centre is a point drawn uniformly, each next one a point drawn with probability proportional to
// its squared distance to the nearest centre chosen so far. The k centres of a group are k distinct points of
// that group (distinct indices; when every remaining point coincides with a chosen centre the draw is uniform
// over the remaining points). Deterministic for a given rng state (uses only rng() bits, no std distributions).
// Throws std::invalid_argument when points is not 3-D, k < 1 or n < k (the message names n and k).
at::Tensor kmeans_pp_init(const at::Tensor& points, int64_t k, std::mt19937_64& rng);

// Index of the nearest centre of each point: points [G, n, D], centroids [G, k, D] -> [G, n] int64
// (ties: the lowest index). Squared Euclidean distance, float32.
at::Tensor nearest_centroid(const at::Tensor& points, const at::Tensor& centroids);

// Online mini-batch k-means over G groups of D-dim points, k centres per group.
class OnlineKMeans {
 public:
  static constexpr int64_t kLloydIterations = 5;  // Lloyd passes over the buffer after the k-means++ seeding

  // Throws std::invalid_argument unless groups >= 1, k >= 1 and dim >= 1.
  OnlineKMeans(int64_t groups, int64_t k, int64_t dim, uint64_t seed);

  // points [G, n, D] (n >= 0; any floating dtype). Until k points per group have been seen they are buffered;
  // the update that brings the buffer to >= k points seeds the centres with k-means++ on the whole buffer and runs
  // kLloydIterations Lloyd passes on it (centres = means of their points, counts = their sizes). Afterwards each
  // batch is a mini-batch step: every point is assigned to its nearest centre as the centres stand at the start
  // of the batch, then each of its points moves that centre by (x - c) / count(c) with the centre's count
  // incremented first (the per-centre learning rate 1/count), so a centre always is the running mean of every
  // point ever assigned to it. Throws std::invalid_argument naming the expected and found shapes.
  void update(const at::Tensor& points);

  bool ready() const { return centroids_.defined(); }  // centroids exist
  int64_t groups() const { return groups_; }
  int64_t k() const { return k_; }
  int64_t dim() const { return dim_; }
  int64_t n_seen() const { return n_seen_; }  // points per group seen so far (buffered ones included)
  at::Tensor centroids() const { return centroids_; }  // [G, k, D] float32; undefined before ready()
  // [G, k] int64: points assigned to each centre so far; undefined before ready().
  at::Tensor counts() const { return counts_; }
  // Nearest-centre index of each point, [G, n] int64. Throws std::invalid_argument before ready() or on a
  // shape mismatch.
  at::Tensor assign(const at::Tensor& points) const;

 private:
  at::Tensor check_points(const at::Tensor& points, const char* what) const;  // -> float32 [G, n, D]
  void seed_from_buffer();

  int64_t groups_, k_, dim_;
  std::mt19937_64 rng_;
  int64_t n_seen_ = 0;
  at::Tensor buffer_;     // [G, m, D] float32, m < k points per group seen before ready(); then undefined
  at::Tensor centroids_;  // [G, k, D] float32
  at::Tensor counts_;     // [G, k] int64
};

// The memory region of a cache as k cluster centroids of the evicted K/V.
class ClusterMemory {
 public:
  static constexpr int64_t kChunkId = -7;  // chunk id of the centroid slots in the cache

  // n_memory = k, the number of centroids (= the memory slots they take), >= 1; n_layer, n_kv_head, d_head
  // from the model (each >= 1). Throws std::invalid_argument naming the bad argument.
  ClusterMemory(int64_t n_layer, int64_t n_kv_head, int64_t d_head, int64_t n_memory, uint64_t seed = 0);

  // Clusters the span's K/V: span.kv [n_layer, 2, n_kv_head, n, d_head] (keys un-rotated, any floating dtype),
  // one group per (layer, KV head) over the points [key ; value] (D = 2 * d_head). A span with no tokens and no
  // kv is ignored. Throws std::invalid_argument when kv is undefined ("enable evict_kv") or mis-shaped.
  void observe(const EvictedSpan& span);

  bool ready() const { return kmeans_.ready(); }
  int64_t k() const { return kmeans_.k(); }
  const OnlineKMeans& kmeans() const { return kmeans_; }

  // The write that puts the k centroids into memory slots [first_slot, first_slot + k): kv
  // [n_layer, 2, n_kv_head, k, d_head] (key part and value part of each centroid) in the dtype of the last observed
  // span's kv, tokens all -1, chunk_id kChunkId, positions 0..k-1. Throws std::invalid_argument before ready()
  // or when first_slot < 0.
  MemoryWrite write(int64_t first_slot) const;

  // Replaces the cache's centroid slots: release_memory(kChunkId), then apply(write(cache.config().n_sink)).
  // Does nothing to the cache before ready(). Throws std::invalid_argument when the cache's n_memory != k (the
  // message names both numbers); KvCache::apply throws when a memory slot is held by another chunk.
  void refresh(KvCache& cache) const;

 private:
  int64_t n_layer_, n_kv_head_, d_head_;
  OnlineKMeans kmeans_;
  at::ScalarType dtype_ = at::kFloat;  // of the last observed kv
};

}  // namespace sinkflow
