#include "nodes/input_stream.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace sinkflow {

InputStream::InputStream(const std::string& path, std::function<bool()> stop) : path_(path), stop_(std::move(stop)) {
  if (path == "-") {
    fd_ = STDIN_FILENO;
    return;
  }
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error("path '" + path + "' cannot be opened: " + std::strerror(errno));
  own_ = true;
  struct stat st {};
  if (::fstat(fd_, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    throw std::invalid_argument("path '" + path + "' is a directory, expected a file");
  }
}

InputStream::~InputStream() {
  if (own_ && fd_ >= 0) ::close(fd_);
}

size_t InputStream::fill(char* buf, size_t n) {
  while (!end_) {
    if (stop_ && stop_()) {
      stopped_ = true;
      return 0;
    }
    pollfd p{fd_, POLLIN, 0};
    const int ready = ::poll(&p, 1, 100);
    if (ready < 0 && errno != EINTR) throw std::runtime_error("path '" + path_ + "': " + std::strerror(errno));
    if (ready <= 0) continue;
    const ssize_t got = ::read(fd_, buf, n);
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw std::runtime_error("path '" + path_ + "': reading failed: " + std::strerror(errno));
    }
    if (got == 0) end_ = true;
    return static_cast<size_t>(got);
  }
  return 0;
}

size_t InputStream::read(char* buf, size_t n) {
  size_t have = std::min(n, buffer_.size());
  std::memcpy(buf, buffer_.data(), have);
  buffer_.erase(0, have);
  while (have < n) {
    const size_t got = fill(buf + have, n - have);
    if (got == 0) break;
    have += got;
  }
  return have;
}

bool InputStream::getline(std::string& line, size_t max_line) {
  size_t scanned = 0;
  for (;;) {
    const size_t nl = buffer_.find('\n', scanned);
    if (std::min(nl, buffer_.size()) > max_line)
      throw std::invalid_argument(path_ + ":" + std::to_string(line_no_ + 1) + ": a line longer than " +
                                  std::to_string(max_line) + " bytes");
    if (nl != std::string::npos) {
      line.assign(buffer_, 0, nl);
      buffer_.erase(0, nl + 1);
      ++line_no_;
      return true;
    }
    scanned = buffer_.size();
    char chunk[1 << 16];
    const size_t got = fill(chunk, sizeof chunk);
    if (got == 0) {
      if (stopped_ || buffer_.empty()) return false;
      line.swap(buffer_);  // a last line without '\n'
      buffer_.clear();
      ++line_no_;
      return true;
    }
    buffer_.append(chunk, got);
  }
}

}  // namespace sinkflow
