#include "nodes/profiler.h"

#include <algorithm>
#include <atomic>
#include <chrono>

namespace sinkflow {

namespace {
std::atomic<uint64_t> next_profiler_id{1};

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The buffer this thread last used, and for which profiler.
struct ThreadCache {
  uint64_t profiler_id = 0;
  void* buffer = nullptr;
};
thread_local ThreadCache thread_cache;
}  // namespace

struct Profiler::Buffer {
  uint32_t thread = 0;
  std::vector<ProfileEvent> events;
};

Profiler::Profiler() : id_(next_profiler_id.fetch_add(1)), epoch_ns_(steady_ns()) {}
Profiler::~Profiler() = default;

int64_t Profiler::now_ns() const { return steady_ns() - epoch_ns_; }

Profiler::Buffer* Profiler::thread_buffer() {
  if (thread_cache.profiler_id == id_) return static_cast<Buffer*>(thread_cache.buffer);
  std::lock_guard<std::mutex> lock(mutex_);
  auto buffer = std::make_unique<Buffer>();
  buffer->thread = static_cast<uint32_t>(buffers_.size());
  buffer->events.reserve(4096);
  buffers_.push_back(std::move(buffer));
  thread_cache = {id_, buffers_.back().get()};
  return buffers_.back().get();
}

void Profiler::record(uint32_t node, int64_t start_ns, int64_t end_ns, int32_t depth) {
  Buffer* b = thread_buffer();
  b->events.push_back({node, b->thread, start_ns, end_ns, depth});
}

std::vector<ProfileEvent> Profiler::events() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<ProfileEvent> out;
  for (const auto& b : buffers_) out.insert(out.end(), b->events.begin(), b->events.end());
  std::sort(out.begin(), out.end(), [](const ProfileEvent& a, const ProfileEvent& b) {
    return a.start_ns != b.start_ns ? a.start_ns < b.start_ns : a.node < b.node;
  });
  return out;
}

size_t Profiler::thread_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return buffers_.size();
}

}  // namespace sinkflow
