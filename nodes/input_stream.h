// Input a source node reads (a file, or standard input for "-"), through the file descriptor: a read waits at
// most 100 ms at a time and asks `stop` in between, so that SIGINT stops a run at once even while the input is
// silent (a terminal, a pipe nobody writes to). std::cin cannot do that: its read blocks until data arrives.
#pragma once

#include <functional>
#include <string>

namespace sinkflow {

class InputStream {
 public:
  // "-" = standard input; otherwise a path, opened now. Throws std::runtime_error "path 'X' cannot be opened: ..."
  // and std::invalid_argument for a directory.
  InputStream(const std::string& path, std::function<bool()> stop);
  ~InputStream();
  InputStream(const InputStream&) = delete;
  InputStream& operator=(const InputStream&) = delete;

  // Up to n bytes (fewer only at the end or on a stop); 0 = the end of the input, or stopped.
  size_t read(char* buf, size_t n);
  // The next line without its '\n'; false at the end of the input or on a stop. A line longer than max_line
  // bytes is std::invalid_argument naming the path and the line number.
  bool getline(std::string& line, size_t max_line = size_t{1} << 26);
  bool stopped() const { return stopped_; }

 private:
  size_t fill(char* buf, size_t n);  // one read(2), after waiting for data; 0 at the end or on a stop

  std::string path_;
  std::function<bool()> stop_;
  int fd_ = -1;
  bool own_ = false;
  bool end_ = false;
  bool stopped_ = false;
  std::string buffer_;  // read but not yet returned by getline
  size_t line_no_ = 0;
};

}  // namespace sinkflow
