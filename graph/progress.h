// Progress of a long command (ppl, ingest, train, needle). On a terminal: one bar line on stderr,
// redrawn at most ~10 times a second:
//   ppl [#########---------------]  48000/120000  40.0%  1523 tok/s  ETA 47s
// Elsewhere (CI logs, files): a plain line every `plain_interval_s` seconds:
//   ppl: 48000/120000 (40.0%), 1523 tok/s, ETA 47s
// and done() prints the final line: "ppl: done, 120000 tok in 1m19s (1519 tok/s)".
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

namespace sinkflow {

struct ProgressOptions {
  std::string unit = "tok";       // what is counted, shown in rates: "tok/s"
  double plain_interval_s = 10;   // without a terminal: one line every this many seconds; 0 = every update
  double tty_interval_s = 0.1;    // on a terminal: redraw at most this often
  int tty = -1;                   // -1 = isatty(fileno(stream)); 0 = plain lines; 1 = bar
  FILE* stream = stderr;
  int bar_width = 24;             // characters between the brackets
};

class Progress {
 public:
  // total = 0: unknown (no percentage, bar or ETA).
  Progress(std::string label, int64_t total, ProgressOptions options = {});
  ~Progress();  // calls done() if it was not called
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Thread-safe; cheap when no line is due (an atomic add and a clock read).
  void add(int64_t n = 1);
  void set(int64_t count);
  void set_total(int64_t total);
  // Prints the final line (and ends the bar's line). Idempotent.
  void done();

  int64_t count() const { return count_.load(); }
  bool is_tty() const { return tty_; }
  // The status without decoration: "48000/120000 (40.0%), 1523 tok/s, ETA 47s".
  std::string status() const;

  // "42s", "1m40s", "2h03m".
  static std::string format_duration(double seconds);

 private:
  void maybe_draw();
  void draw(bool final);
  double elapsed_s() const;

  std::string label_;
  ProgressOptions options_;
  bool tty_ = false;
  std::atomic<int64_t> count_{0};
  std::atomic<int64_t> total_{0};
  std::atomic<int64_t> next_draw_ns_{0};
  int64_t start_ns_ = 0;
  std::mutex mutex_;
  bool done_ = false;
};

}  // namespace sinkflow
