#include "models/io/json_read.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <unordered_set>
#include <vector>

namespace sinkflow {

namespace {

using json = nlohmann::json;

// At most 60 characters of a key, for a message.
std::string key_excerpt(const std::string& key) {
  return key.size() > 60 ? key.substr(0, 57) + "..." : key;
}

// The streaming check: nlohmann's SAX parser keeps its own state on the heap, and this keeps one set of keys per
// open object, so that no input can make either recurse.
class Checker final : public nlohmann::json_sax<json> {
 public:
  explicit Checker(std::size_t max_depth) : max_depth_(max_depth) {}
  const std::string& error() const { return error_; }

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return open(); }
  bool key(string_t& k) override {
    if (frames_.back().insert(k).second) return true;
    error_ = "key '" + key_excerpt(k) + "' appears twice in one object";
    return false;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(); }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& e) override {
    error_ = "malformed JSON at byte " + std::to_string(position) + " (" + e.what() + ")";
    return false;
  }

 private:
  bool open() {
    if (frames_.size() >= max_depth_) {
      error_ = "arrays and objects nested deeper than " + std::to_string(max_depth_) + " levels";
      return false;
    }
    frames_.emplace_back();
    return true;
  }
  bool close() {
    frames_.pop_back();
    return true;
  }

  std::size_t max_depth_;
  std::vector<std::unordered_set<std::string>> frames_;  // keys seen per open object (empty for arrays)
  std::string error_;
};

// The streaming check every reader runs before building a value.
void check_json(std::string_view text, const std::string& what, const JsonLimits& limits) {
  if (text.size() > limits.max_bytes)
    throw std::invalid_argument(what + ": " + std::to_string(text.size()) + " bytes of JSON, more than the limit of " +
                                std::to_string(limits.max_bytes));
  Checker checker(limits.max_depth);
  if (!json::sax_parse(text.begin(), text.end(), &checker)) {
    throw std::invalid_argument(what + ": " + (checker.error().empty() ? std::string("malformed JSON") : checker.error()));
  }
}

}  // namespace

json parse_json(std::string_view text, const std::string& what, const JsonLimits& limits) {
  check_json(text, what, limits);
  return json::parse(text.begin(), text.end());
}

nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& what, const JsonLimits& limits) {
  check_json(text, what, limits);
  return nlohmann::ordered_json::parse(text.begin(), text.end());
}

std::string read_bounded_file(const std::string& path, std::size_t max_bytes, const std::string& label,
                              const std::string& kind) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw std::invalid_argument(label + ": is a directory, expected a " + kind + " file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(label + ": cannot open the file");
  // Read at most one byte past the limit, whatever the file claims (a device such as /dev/zero has no size).
  std::string text;
  char buf[1 << 16];
  while (text.size() <= max_bytes && in.read(buf, sizeof buf).gcount() > 0)
    text.append(buf, static_cast<size_t>(in.gcount()));
  if (in.bad()) throw std::runtime_error(label + ": reading the file failed");
  if (text.size() > max_bytes)
    throw std::invalid_argument(label + ": more than " + std::to_string(max_bytes) + " bytes, the limit for a " +
                                kind + " file");
  return text;
}

std::string read_json_text(const std::string& path, const JsonLimits& limits) {
  return read_bounded_file(path, limits.max_bytes, path, "JSON");
}

json read_json_file(const std::string& path, const JsonLimits& limits) {
  return parse_json(read_json_text(path, limits), path, limits);
}

}  // namespace sinkflow
