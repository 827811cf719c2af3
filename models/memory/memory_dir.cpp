#include "models/memory/memory_dir.h"

#include "models/memory/chunk_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string_view>

namespace sinkflow {

namespace fs = std::filesystem;

namespace {

constexpr std::array<std::string_view, 3> kStoreFiles = {kStoreMetaFile, kStoreLogFile, kStoreIndexFile};
constexpr std::string_view kLockFile = "lock";

bool is_store_file(const std::string& name) {
  for (std::string_view f : kStoreFiles)
    if (name == f || name == std::string(f) + ".tmp") return true;
  return is_store_segment_file(name);
}

}  // namespace

bool is_memory_dir_entry(const std::string& file_name) { return file_name == kLockFile || is_store_file(file_name); }

MemoryDirLock::MemoryDirLock(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dir, ec);
  if (fs::exists(st) && !fs::is_directory(st)) {
    const char* what = fs::is_regular_file(st) ? "a regular file" : fs::is_symlink(st) ? "a symbolic link" : "not a directory";
    throw std::invalid_argument("memory directory '" + dir + "' is " + what +
                                ", expected a directory (nothing was changed)");
  }
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error("memory directory '" + dir + "': cannot create it (" + ec.message() + ")");
  std::vector<std::string> foreign;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!is_memory_dir_entry(name) || !e.is_regular_file()) foreign.push_back(name);
  }
  if (ec) throw std::runtime_error("memory directory '" + dir + "': cannot list it (" + ec.message() + ")");
  if (!foreign.empty()) {
    std::sort(foreign.begin(), foreign.end());
    throw std::invalid_argument("memory directory '" + dir + "' holds '" + foreign.front() + "'" +
                                (foreign.size() > 1 ? " and " + std::to_string(foreign.size() - 1) + " other entries"
                                                    : std::string()) +
                                ", expected an empty directory or a sinkflow memory directory (meta.json, chunks.log, "
                                "index.bin, segment-*.bin, lock); nothing was changed");
  }
  const std::string lock = (fs::path(dir) / std::string(kLockFile)).string();
  fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error("memory directory '" + dir + "': cannot open " + lock + " (" + std::strerror(errno) + ")");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK)
      throw std::runtime_error("memory directory '" + dir + "' is in use by another run (its lock " + lock +
                               " is held); wait for that run or name another directory");
    throw std::runtime_error("memory directory '" + dir + "': cannot lock " + lock + " (" + std::strerror(err) + ")");
  }
}

MemoryDirLock::~MemoryDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

std::vector<std::string> MemoryDirLock::reset() {
  std::vector<std::string> deleted;
  for (std::string_view f : kStoreFiles) {
    for (const std::string& name : {std::string(f), std::string(f) + ".tmp"}) {
      std::error_code ec;
      const fs::path p = fs::path(dir_) / name;
      if (!fs::is_regular_file(fs::symlink_status(p, ec))) continue;
      if (fs::remove(p, ec)) deleted.push_back(name);
      if (ec) throw std::runtime_error("memory directory '" + dir_ + "': cannot delete " + p.string() + " (" + ec.message() + ")");
    }
  }
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (!is_store_segment_file(name) || !e.is_regular_file()) continue;
    if (fs::remove(e.path(), ec)) deleted.push_back(name);
    if (ec) throw std::runtime_error("memory directory '" + dir_ + "': cannot delete " + e.path().string() + " (" + ec.message() + ")");
  }
  if (ec) throw std::runtime_error("memory directory '" + dir_ + "': cannot list it (" + ec.message() + ")");
  return deleted;
}

}  // namespace sinkflow
