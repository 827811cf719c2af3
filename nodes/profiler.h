// Per-node execution records for the throughput profile: (node, start, end, thread, queue depth).
// Recording is two steady_clock reads and an append to a buffer owned by the calling thread; when
// profiling is off the node wrappers hold a null Profiler* and pay one branch.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace sinkflow {

struct ProfileEvent {
  uint32_t node = 0;      // index of the node in the pipeline (NodeRuntime::index)
  uint32_t thread = 0;    // 0, 1, ... in order of first record by each OS thread
  int64_t start_ns = 0;   // since Profiler construction, steady clock
  int64_t end_ns = 0;
  int32_t depth = 0;      // messages queued or running at the node when this execution started
};

class Profiler {
 public:
  Profiler();
  ~Profiler();
  Profiler(const Profiler&) = delete;
  Profiler& operator=(const Profiler&) = delete;

  // Nanoseconds since this profiler was made (steady clock).
  int64_t now_ns() const;
  // Thread-safe; appends to the calling thread's buffer (registered on first use, under a mutex).
  void record(uint32_t node, int64_t start_ns, int64_t end_ns, int32_t depth);
  // All records, sorted by start. Call once the run is over (no concurrent record()).
  std::vector<ProfileEvent> events() const;
  size_t thread_count() const;

 private:
  struct Buffer;
  Buffer* thread_buffer();

  uint64_t id_;                       // unique per Profiler, so thread-local caches never alias
  int64_t epoch_ns_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Buffer>> buffers_;
};

}  // namespace sinkflow
