#include "graph/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace sinkflow {

namespace {
int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}
}  // namespace

Progress::Progress(std::string label, int64_t total, ProgressOptions options)
    : label_(std::move(label)), options_(std::move(options)), start_ns_(steady_ns()) {
  total_ = total;
  if (!options_.stream) options_.stream = stderr;
  tty_ = options_.tty < 0 ? ::isatty(::fileno(options_.stream)) != 0 : options_.tty > 0;
  const double interval = tty_ ? options_.tty_interval_s : options_.plain_interval_s;
  next_draw_ns_ = start_ns_ + static_cast<int64_t>(interval * 1e9);
}

Progress::~Progress() { done(); }

void Progress::add(int64_t n) {
  count_.fetch_add(n, std::memory_order_relaxed);
  maybe_draw();
}

void Progress::set(int64_t count) {
  count_.store(count, std::memory_order_relaxed);
  maybe_draw();
}

void Progress::set_total(int64_t total) { total_.store(total); }

double Progress::elapsed_s() const { return static_cast<double>(steady_ns() - start_ns_) / 1e9; }

std::string Progress::format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m" + (s % 60 < 10 ? "0" : "") + std::to_string(s % 60) + "s";
  const int64_t m = (s / 60) % 60;
  return std::to_string(s / 3600) + "h" + (m < 10 ? "0" : "") + std::to_string(m) + "m";
}

std::string Progress::status() const {
  const int64_t count = count_.load();
  const int64_t total = total_.load();
  const double elapsed = elapsed_s();
  const double rate = elapsed > 0 ? static_cast<double>(count) / elapsed : 0.0;
  std::string s;
  if (total > 0) {
    s = std::to_string(count) + "/" + std::to_string(total) + " (" +
        fixed(100.0 * static_cast<double>(count) / static_cast<double>(total), 1) + "%)";
  } else {
    s = std::to_string(count) + " " + options_.unit;
  }
  s += ", " + fixed(rate, rate < 10 ? 1 : 0) + " " + options_.unit + "/s";
  if (total > 0 && count < total)
    s += ", ETA " + (rate > 0 ? format_duration(static_cast<double>(total - count) / rate) : std::string("?"));
  return s;
}

void Progress::maybe_draw() {
  const int64_t now = steady_ns();
  int64_t due = next_draw_ns_.load(std::memory_order_relaxed);
  if (now < due) return;
  const double interval = tty_ ? options_.tty_interval_s : options_.plain_interval_s;
  if (!next_draw_ns_.compare_exchange_strong(due, now + static_cast<int64_t>(interval * 1e9))) return;
  std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock() || done_) return;
  draw(false);
}

void Progress::draw(bool final) {
  FILE* f = options_.stream;
  const int64_t count = count_.load();
  const int64_t total = total_.load();
  if (final) {
    const double elapsed = elapsed_s();
    const double rate = elapsed > 0 ? static_cast<double>(count) / elapsed : 0.0;
    const std::string line = label_ + ": done, " + std::to_string(count) + " " + options_.unit + " in " +
                             format_duration(elapsed) + " (" + fixed(rate, rate < 10 ? 1 : 0) + " " + options_.unit +
                             "/s)";
    std::fprintf(f, tty_ ? "\r%s\x1b[K\n" : "%s\n", line.c_str());
  } else if (tty_) {
    std::string bar;
    if (total > 0) {
      const int width = options_.bar_width;
      const int filled = static_cast<int>(std::min<int64_t>(width, width * count / total));
      bar = " [" + std::string(filled, '#') + std::string(width - filled, '-') + "]";
    }
    std::fprintf(f, "\r%s%s %s\x1b[K", label_.c_str(), bar.c_str(), status().c_str());
  } else {
    std::fprintf(f, "%s: %s\n", label_.c_str(), status().c_str());
  }
  std::fflush(f);
}

void Progress::done() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (done_) return;
  done_ = true;
  draw(true);
}

}  // namespace sinkflow
