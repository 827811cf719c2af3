#include "models/memory/segmented_index.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace sinkflow {

// Threads that share the tiers of one search at a time with its caller. Tiers are taken in turn from a counter;
// the caller waits until every helper has left the search (its tiers' results are then all written).
class SegmentedIndex::Helpers {
 public:
  explicit Helpers(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~Helpers() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // body(i) for every i in [0, count), on the caller and the helpers; false (and nothing run) when another search
  // holds them. The first exception a body throws is rethrown here once all are done.
  bool run(int64_t count, const std::function<void(int64_t)>& body) {
    std::unique_lock busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard lock(mutex_);
      body_ = &body;
      count_ = count;
      next_.store(0);
      error_ = nullptr;
      working_ = int(threads_.size());
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return working_ == 0; });
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void work() {
    for (int64_t i = next_.fetch_add(1); i < count_; i = next_.fetch_add(1)) {
      try {
        (*body_)(i);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }
  void loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      work();
      std::lock_guard lock(mutex_);
      if (--working_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex busy_;  // held by the search being run
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* body_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
  int working_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

SegmentedIndex::SegmentedIndex(int64_t dim, std::vector<std::unique_ptr<MappedHnswIndex>> sealed,
                               std::unique_ptr<HnswIndex> active, ExactVector exact, int64_t fresh_capacity,
                               int search_threads)
    : dim_(dim),
      sealed_(std::move(sealed)),
      active_(std::move(active)),
      exact_(std::move(exact)),
      fresh_capacity_(fresh_capacity) {
  if (!active_ || active_->dim() != dim) throw std::invalid_argument("SegmentedIndex: active segment missing or of another dim");
  if (search_threads < 1 || search_threads > 64)
    throw std::invalid_argument("SegmentedIndex: search_threads is " + std::to_string(search_threads) +
                                ", expected [1, 64]");
  if (search_threads > 1) helpers_ = std::make_unique<Helpers>(search_threads - 1);
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
    // Tier 0 is the active segment, tier i > 0 sealed segment i - 1.
    const int64_t tiers = 1 + int64_t(sealed_.size());
    std::vector<std::vector<SearchHit>> found(static_cast<size_t>(tiers));
    const std::function<void(int64_t)> one = [&](int64_t i) {
      found[size_t(i)] = i == 0 ? active_->search(q.data(), wide) : sealed_[size_t(i - 1)]->search(q.data(), wide);
    };
    if (!helpers_ || tiers < 2 || !helpers_->run(tiers, one))
      for (int64_t i = 0; i < tiers; ++i) one(i);
    for (const auto& hits : found) all.insert(all.end(), hits.begin(), hits.end());
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
