// A bad value in one field of an options struct. validate() functions of models/ throw it so that a caller
// that knows where the value was written (a YAML file:line, a --set, a command-line flag) can name that place
// (nodes/param_map.h: ParamOrigin::check).
#pragma once

#include <stdexcept>
#include <string>

namespace sinkflow {

class FieldError : public std::invalid_argument {
 public:
  // field: the struct's field ("n_recent"); message: the whole sentence ("n_recent must be > 0, found 0").
  FieldError(std::string field, const std::string& message) : std::invalid_argument(message), field_(std::move(field)) {}
  const std::string& field() const { return field_; }

 private:
  std::string field_;
};

// "<where>: <what>", or just <what> when where is empty.
inline std::string at_where(const std::string& where, const std::string& what) {
  return where.empty() ? what : where + ": " + what;
}

}  // namespace sinkflow
