// Cluster sinks: batched k-means++ seeding, online mini-batch k-means, centroids as memory-region pseudo-tokens.
#include "models/stream/cluster.h"

#include <spdlog/spdlog.h>

#include <c10/util/Exception.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace sinkflow {

namespace {

std::string str(int64_t v) { return std::to_string(v); }
std::string shape(const at::Tensor& t) { return t.defined() ? std::string(c10::str(t.sizes())) : "undefined"; }

// Uniform double in [0, 1) from 53 random bits: the same on every standard library (std distributions are not).
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// The r-th (0-based) index i of [0, n) with taken[i] == 0.
int64_t nth_free(const uint8_t* taken, int64_t n, int64_t r) {
  for (int64_t i = 0; i < n; ++i) {
    if (!taken[i] && r-- == 0) return i;
  }
  return -1;
}

// Per-centre sums and sizes of an assignment: x [G, n, D], a [G, n] -> sums [G, k, D] float32, counts [G, k] int64.
std::pair<at::Tensor, at::Tensor> cluster_sums(const at::Tensor& x, const at::Tensor& a, int64_t k) {
  const int64_t g = x.size(0), n = x.size(1), d = x.size(2);
  at::Tensor flat = (a + at::arange(g, a.options()).unsqueeze(1) * k).reshape({g * n});
  at::Tensor sums = at::zeros({g * k, d}, x.options()).index_add_(0, flat, x.reshape({g * n, d}));
  at::Tensor counts = at::bincount(flat, {}, g * k);
  return {sums.view({g, k, d}), counts.view({g, k})};
}

}  // namespace

at::Tensor kmeans_pp_init(const at::Tensor& points, int64_t k, std::mt19937_64& rng) {
  if (!points.defined() || points.dim() != 3 || !at::isFloatingType(points.scalar_type())) {
    throw std::invalid_argument("kmeans_pp_init: points must be a floating tensor of shape [G, n, D], found " +
                                shape(points));
  }
  if (k < 1) throw std::invalid_argument("kmeans_pp_init: k must be >= 1, found " + str(k));
  const int64_t g = points.size(0), n = points.size(1), d = points.size(2);
  if (n < k) {
    throw std::invalid_argument("kmeans_pp_init: points " + shape(points) + " has n=" + str(n) +
                                " points per group, expected at least k=" + str(k));
  }
  at::Tensor x = points.to(at::kFloat).contiguous();
  std::vector<uint8_t> taken(static_cast<size_t>(g * n), 0);
  std::vector<int64_t> chosen(static_cast<size_t>(g * k));  // [G, k] point indices
  std::vector<int64_t> pick(static_cast<size_t>(g));
  at::Tensor d2;      // [G, n] squared distance to the nearest chosen centre
  at::Tensor d2_cpu;  // its double copy on the CPU, for the draw
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t gi = 0; gi < g; ++gi) {
      uint8_t* tk = taken.data() + gi * n;
      int64_t i = -1;
      if (j > 0) {
        const double* w = d2_cpu.data_ptr<double>() + gi * n;
        double total = 0.0;
        for (int64_t p = 0; p < n; ++p) {
          if (!tk[p] && w[p] > 0.0) total += w[p];
        }
        if (total > 0.0 && std::isfinite(total)) {
          const double u = uniform01(rng) * total;
          double cum = 0.0;
          for (int64_t p = 0; p < n; ++p) {
            if (tk[p] || !(w[p] > 0.0)) continue;
            i = p;  // the last eligible point absorbs rounding at the top end
            cum += w[p];
            if (cum > u) break;
          }
        }
      }
      if (i < 0) {  // the first centre, or every remaining point sits on a chosen centre: uniform
        const int64_t r = static_cast<int64_t>(uniform01(rng) * static_cast<double>(n - j));
        i = nth_free(tk, n, std::min(r, n - j - 1));
      }
      tk[i] = 1;
      pick[gi] = i;
      chosen[gi * k + j] = i;
    }
    at::Tensor sel = at::tensor(pick, at::kLong).to(x.device()).view({g, 1, 1}).expand({g, 1, d});
    at::Tensor dist = (x - x.gather(1, sel)).pow(2).sum(-1);  // [G, n], exactly 0 at the chosen point
    d2 = j == 0 ? dist : at::minimum(d2, dist);
    if (j + 1 < k) d2_cpu = d2.to(at::kCPU, at::kDouble).contiguous();
  }
  at::Tensor idx = at::tensor(chosen, at::kLong).to(x.device()).view({g, k, 1}).expand({g, k, d});
  return x.gather(1, idx).contiguous();
}

at::Tensor nearest_centroid(const at::Tensor& points, const at::Tensor& centroids) {
  at::Tensor x = points.to(at::kFloat);
  at::Tensor c = centroids.to(x.device(), at::kFloat);
  at::Tensor x2 = x.pow(2).sum(-1, /*keepdim=*/true);  // [G, n, 1]
  at::Tensor c2 = c.pow(2).sum(-1).unsqueeze(1);       // [G, 1, k]
  at::Tensor dist = at::baddbmm(x2 + c2, x, c.transpose(1, 2), /*beta=*/1, /*alpha=*/-2);  // [G, n, k]
  return dist.argmin(-1);
}

OnlineKMeans::OnlineKMeans(int64_t groups, int64_t k, int64_t dim, uint64_t seed)
    : groups_(groups), k_(k), dim_(dim), rng_(seed) {
  if (groups < 1) throw std::invalid_argument("OnlineKMeans: groups must be >= 1, found " + str(groups));
  if (k < 1) throw std::invalid_argument("OnlineKMeans: k (centres per group) must be >= 1, found " + str(k));
  if (dim < 1) throw std::invalid_argument("OnlineKMeans: dim must be >= 1, found " + str(dim));
}

at::Tensor OnlineKMeans::check_points(const at::Tensor& points, const char* what) const {
  if (!points.defined() || points.dim() != 3 || points.size(0) != groups_ || points.size(2) != dim_ ||
      !at::isFloatingType(points.scalar_type())) {
    throw std::invalid_argument(std::string("OnlineKMeans::") + what + ": points must have shape [" + str(groups_) +
                                ", n, " + str(dim_) + "] (groups, points, dim) and a floating dtype, found " +
                                shape(points) + (points.defined() ? " " + std::string(c10::toString(
                                                                              points.scalar_type()))
                                                                  : std::string()));
  }
  const at::Tensor& state = centroids_.defined() ? centroids_ : buffer_;
  return points.to(state.defined() ? state.device() : points.device(), at::kFloat);
}

void OnlineKMeans::update(const at::Tensor& points) {
  at::Tensor x = check_points(points, "update");
  const int64_t n = x.size(1);
  if (n == 0) return;
  n_seen_ += n;
  if (!ready()) {
    buffer_ = buffer_.defined() ? at::cat({buffer_, x}, 1) : x.contiguous();
    if (buffer_.size(1) >= k_) seed_from_buffer();
    return;
  }
  // Sculley's mini-batch step, batched: assignments against the centres at the start of the batch; a centre with
  // count v that receives m points x_1..x_m (learning rate 1/count, count incremented per point) ends at
  // c + (sum x - m c) / (v + m), its running mean.
  at::Tensor a = nearest_centroid(x, centroids_);
  auto [sums, cnt] = cluster_sums(x, a, k_);
  at::Tensor total = counts_ + cnt;
  at::Tensor step = (sums - cnt.to(at::kFloat).unsqueeze(-1) * centroids_) / total.clamp_min(1).to(at::kFloat).unsqueeze(-1);
  centroids_ = centroids_ + step;
  counts_ = total;
}

void OnlineKMeans::seed_from_buffer() {
  at::Tensor c = kmeans_pp_init(buffer_, k_, rng_);
  at::Tensor a, cnt;
  for (int64_t it = 0; it < kLloydIterations; ++it) {
    at::Tensor next = nearest_centroid(buffer_, c);
    if (a.defined() && at::equal(next, a)) break;  // converged: c already holds the means of this assignment
    a = next;
    at::Tensor sums;
    std::tie(sums, cnt) = cluster_sums(buffer_, a, k_);
    at::Tensor mean = sums / cnt.clamp_min(1).to(at::kFloat).unsqueeze(-1);
    c = at::where(cnt.unsqueeze(-1) > 0, mean, c);  // an empty centre keeps its seed
  }
  spdlog::debug("OnlineKMeans: seeded groups={} k={} dim={} from {} points per group", groups_, k_, dim_,
                buffer_.size(1));
  centroids_ = c;
  counts_ = cnt;
  buffer_ = at::Tensor();
}

at::Tensor OnlineKMeans::assign(const at::Tensor& points) const {
  at::Tensor x = check_points(points, "assign");
  if (!ready()) {
    throw std::invalid_argument("OnlineKMeans::assign: no centres yet (" + str(n_seen_) +
                                " points per group seen, expected at least k=" + str(k_) + ")");
  }
  return nearest_centroid(x, centroids_);
}

ClusterMemory::ClusterMemory(int64_t n_layer, int64_t n_kv_head, int64_t d_head, int64_t n_memory, uint64_t seed)
    : n_layer_(n_layer),
      n_kv_head_(n_kv_head),
      d_head_(d_head),
      kmeans_([&] {
        auto need = [](const char* name, int64_t v) {
          if (v < 1) throw std::invalid_argument(std::string("cluster: ") + name + " must be >= 1, found " + str(v));
        };
        need("n_layer", n_layer);
        need("n_kv_head", n_kv_head);
        need("d_head", d_head);
        need("n_memory (the number of centroids k)", n_memory);
        return OnlineKMeans(n_layer * n_kv_head, n_memory, 2 * d_head, seed);
      }()) {
  spdlog::info("cluster: k={} groups={} (n_layer={} x n_kv_head={}) dim={} seed={}", n_memory, n_layer * n_kv_head,
               n_layer, n_kv_head, 2 * d_head, seed);
}

void ClusterMemory::observe(const EvictedSpan& span) {
  const at::Tensor& kv = span.kv;
  if (!kv.defined()) {
    if (span.tokens.empty()) return;
    throw std::invalid_argument("cluster: evicted span of " + str(static_cast<int64_t>(span.tokens.size())) +
                                " tokens has no kv (EvictedSpan::kv undefined); enable evict_kv in the cache config");
  }
  const int64_t n = kv.dim() == 5 ? kv.size(3) : -1;
  const bool tokens_match = span.tokens.empty() || static_cast<int64_t>(span.tokens.size()) == n;
  if (kv.dim() != 5 || kv.size(0) != n_layer_ || kv.size(1) != 2 || kv.size(2) != n_kv_head_ ||
      kv.size(4) != d_head_ || !tokens_match || !at::isFloatingType(kv.scalar_type())) {
    const std::string n_str = span.tokens.empty() ? "n" : str(static_cast<int64_t>(span.tokens.size()));
    throw std::invalid_argument("cluster: evicted span kv must be a floating tensor of shape [" + str(n_layer_) +
                                ", 2, " + str(n_kv_head_) + ", " + n_str + ", " + str(d_head_) +
                                "] (n_layer, k/v, n_kv_head, tokens, d_head), found " + shape(kv) + " " +
                                std::string(c10::toString(kv.scalar_type())));
  }
  if (n == 0) return;
  dtype_ = kv.scalar_type();
  // [L, 2, H, n, dh] -> [L, H, n, 2, dh] -> [L*H, n, 2*dh]: one group per (layer, kv head), points [key ; value].
  kmeans_.update(kv.permute({0, 2, 3, 1, 4}).reshape({n_layer_ * n_kv_head_, n, 2 * d_head_}));
}

MemoryWrite ClusterMemory::write(int64_t first_slot) const {
  const int64_t k = kmeans_.k();
  if (!ready()) {
    throw std::invalid_argument("cluster: no centroids yet (" + str(kmeans_.n_seen()) +
                                " evicted tokens observed, expected at least k=" + str(k) + ")");
  }
  if (first_slot < 0) throw std::invalid_argument("cluster: first_slot must be >= 0, found " + str(first_slot));
  MemoryWrite w;
  w.chunk_id = kChunkId;
  for (int64_t i = 0; i < k; ++i) {
    w.slots.push_back(first_slot + i);
    w.tokens.push_back(-1);
    w.positions.push_back(i);
  }
  // [L*H, k, 2*dh] -> [L, H, k, 2, dh] -> [L, 2, H, k, dh]
  w.kv = kmeans_.centroids()
             .view({n_layer_, n_kv_head_, k, 2, d_head_})
             .permute({0, 3, 1, 2, 4})
             .contiguous()
             .to(dtype_);
  return w;
}

void ClusterMemory::refresh(KvCache& cache) const {
  const int64_t n_memory = cache.config().n_memory;
  if (n_memory != kmeans_.k()) {
    throw std::invalid_argument("cluster: the cache has n_memory=" + str(n_memory) + " memory slots, expected k=" +
                                str(kmeans_.k()) + " (one per centroid)");
  }
  if (!ready()) return;
  cache.release_memory(kChunkId);
  cache.apply(write(cache.config().n_sink));
}

}  // namespace sinkflow
