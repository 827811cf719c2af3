#include "models/memory/segmented_index.h"

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>

namespace sinkflow {

SegmentedIndex::SegmentedIndex(int64_t dim, std::vector<std::unique_ptr<MappedHnswIndex>> sealed,
                               std::unique_ptr<HnswIndex> active, ExactVector exact, int64_t fresh_capacity)
    : dim_(dim),
      sealed_(std::move(sealed)),
      active_(std::move(active)),
      exact_(std::move(exact)),
      fresh_capacity_(fresh_capacity) {
  if (!active_ || active_->dim() != dim) throw std::invalid_argument("SegmentedIndex: active segment missing or of another dim");
}

SegmentedIndex::~SegmentedIndex() = default;

int64_t SegmentedIndex::size() const {
  std::shared_lock lock(mutex_);
  int64_t n = active_->size();
  for (const auto& s : sealed_) n += s->size();
  return n;
}

void SegmentedIndex::add(int64_t id, const float* vector) {
  std::shared_lock lock(mutex_);
  active_->add(id, vector);
}

std::vector<SearchHit> SegmentedIndex::search(const float* query, int k) const {
  if (k <= 0) return {};
  bool nonzero = false;
  const std::vector<float> q = normalized(query, dim_, "SegmentedIndex::search: query", &nonzero);
  if (!nonzero) return {};
  const int wide = k + std::max(k, 16);
  std::vector<SearchHit> all;
  {
    std::shared_lock lock(mutex_);
    all = active_->search(q.data(), wide);
    for (const auto& s : sealed_) {
      auto hits = s->search(q.data(), wide);
      all.insert(all.end(), hits.begin(), hits.end());
    }
  }
  std::sort(all.begin(), all.end(), hit_before);
  if (all.size() > size_t(wide)) all.resize(size_t(wide));
  std::vector<float> e(static_cast<size_t>(dim_));
  for (SearchHit& h : all) {
    exact_(h.id, e.data());
    const std::vector<float> u = normalized(e.data(), dim_, "SegmentedIndex: stored embedding");
    h.score = inner_product(q.data(), u.data(), dim_);
  }
  std::sort(all.begin(), all.end(), hit_before);
  if (all.size() > size_t(k)) all.resize(size_t(k));
  return all;
}

bool SegmentedIndex::contains(int64_t id) const {
  std::shared_lock lock(mutex_);
  if (active_->contains(id)) return true;
  for (const auto& s : sealed_) {
    const auto [lo, hi] = s->id_range();
    if (id >= lo && id <= hi) return true;  // a sealed range is contiguous
  }
  return false;
}

std::vector<float> SegmentedIndex::vector(int64_t id) const {
  if (!contains(id)) throw std::invalid_argument("SegmentedIndex::vector: id " + std::to_string(id) + " is not in the index");
  std::vector<float> e(static_cast<size_t>(dim_));
  exact_(id, e.data());
  return normalized(e.data(), dim_, "SegmentedIndex: stored embedding");
}

void SegmentedIndex::save(const std::string& path, uint64_t tag) const {
  std::shared_lock lock(mutex_);
  active_->save(path, tag);
}

void SegmentedIndex::seal(std::unique_ptr<MappedHnswIndex> sealed) {
  std::unique_lock lock(mutex_);
  sealed_.push_back(std::move(sealed));
  HnswParams params = active_->params();
  params.initial_capacity = fresh_capacity_;
  active_.reset();
  active_ = std::make_unique<HnswIndex>(dim_, params);
}

std::vector<std::unique_ptr<MappedHnswIndex>> SegmentedIndex::replace(int64_t lo, int64_t hi,
                                                                       std::unique_ptr<MappedHnswIndex> merged) {
  std::unique_lock lock(mutex_);
  size_t first = sealed_.size(), last = 0;
  for (size_t i = 0; i < sealed_.size(); ++i) {
    const auto [a, b] = sealed_[i]->id_range();
    if (a >= lo && b <= hi) {
      first = std::min(first, i);
      last = i + 1;
    }
  }
  auto range_of = [&](size_t i) { return sealed_[i]->id_range(); };
  if (first >= last || range_of(first).first != lo || range_of(last - 1).second != hi || merged->id_range() != std::pair{lo, hi})
    throw std::logic_error("SegmentedIndex::replace: ids " + std::to_string(lo) + ".." + std::to_string(hi) +
                           " are not those of adjacent sealed segments and of the merged one");
  for (size_t i = first + 1; i < last; ++i)
    if (range_of(i).first != range_of(i - 1).second + 1)
      throw std::logic_error("SegmentedIndex::replace: the segments of ids " + std::to_string(lo) + ".." +
                             std::to_string(hi) + " are not adjacent");
  std::vector<std::unique_ptr<MappedHnswIndex>> old;
  for (size_t i = first; i < last; ++i) old.push_back(std::move(sealed_[i]));
  sealed_.erase(sealed_.begin() + std::ptrdiff_t(first + 1), sealed_.begin() + std::ptrdiff_t(last));
  sealed_[first] = std::move(merged);
  return old;
}

int64_t SegmentedIndex::sealed_count() const {
  std::shared_lock lock(mutex_);
  return int64_t(sealed_.size());
}

uint64_t SegmentedIndex::sealed_bytes() const {
  std::shared_lock lock(mutex_);
  uint64_t n = 0;
  for (const auto& s : sealed_) n += s->file_bytes();
  return n;
}

}  // namespace sinkflow
