// Fixtures shared by the memory store tests (test_memory.cpp, test_memory_segments.cpp). Include it after
// <catch2/catch.hpp> (and after `#undef CHECK` where ATen is included first).
#pragma once

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "models/memory/vector_index.h"

namespace sinkflow::memory_test {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& prefix = "sinkflow_test_memory_") {
    static int counter = 0;
    path = fs::temp_directory_path() / (prefix + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// Captures what the default spdlog logger prints while it lives.
struct LogCapture {
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256);
  std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  LogCapture() { spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink)); }
  ~LogCapture() { spdlog::set_default_logger(previous); }
  bool contains(const std::string& needle) const {
    for (const auto& line : sink->last_formatted())
      if (line.find(needle) != std::string::npos) return true;
    return false;
  }
};

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// Byte offsets of the records of a chunks.log (header: u32 magic, u32 crc, u64 payload length).
inline std::vector<uint64_t> record_offsets(const std::string& log) {
  const auto b = read_bytes(log);
  std::vector<uint64_t> out;
  uint64_t pos = 0;
  while (pos + 16 <= b.size()) {
    uint64_t len;
    std::memcpy(&len, b.data() + pos + 8, 8);
    out.push_back(pos);
    pos += 16 + len;
  }
  return out;
}

// Mean recall@k of `approx` against `exact` over the queries (rows of dim floats).
inline double recall_at(const VectorIndex& approx, const VectorIndex& exact, const std::vector<float>& queries,
                        int64_t dim, int k) {
  const int64_t nq = int64_t(queries.size()) / dim;
  double total = 0;
  for (int64_t q = 0; q < nq; ++q) {
    auto a = approx.search(queries.data() + q * dim, k);
    auto e = exact.search(queries.data() + q * dim, k);
    std::set<int64_t> truth;
    for (const auto& h : e) truth.insert(h.id);
    int got = 0;
    for (const auto& h : a) got += int(truth.count(h.id));
    total += double(got) / double(e.size());
  }
  return total / double(nq);
}

inline void require_same_hits(const std::vector<SearchHit>& a, const std::vector<SearchHit>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].id == b[i].id);
    REQUIRE(a[i].score == b[i].score);
  }
}

}  // namespace sinkflow::memory_test
