// Typed node parameters: what graph/yaml_spec.cpp makes of a node's `params:` block, and the helpers a
// node kind's config struct uses to read them (ParamReader) and to report bad values (ParamOrigin).
// No YAML here: a ParamMap can be built in code as well as from a file.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "models/io/names.h"

namespace sinkflow {

class ParamMap;

// One parameter of a node kind, as listed by `sinkflow kinds` (collected by running the kind's
// from_params on a probe map, so the listing cannot drift from the code).
struct ParamInfo {
  std::string name;
  std::string type;           // "int", "number", "bool", "string", "list of string", "one of a|b", ...
  std::string default_value;  // the in-class default, YAML-like; "(required)" for required ones
  bool operator==(const ParamInfo&) const = default;
};


// One parameter value: bool, integer, number, string, list or nested map, plus where it was written
// ("pipelines/stream.yaml:12", "--set model.n_sink=4"; empty when built in code).
class ParamValue {
 public:
  enum class Type { boolean, integer, number, string, list, map };

  ParamValue() = default;  // an empty string
  ParamValue(bool v, std::string where = {});
  ParamValue(int64_t v, std::string where = {});
  ParamValue(int v, std::string where = {});
  ParamValue(double v, std::string where = {});
  ParamValue(std::string v, std::string where = {});
  ParamValue(const char* v, std::string where = {});
  ParamValue(std::vector<ParamValue> v, std::string where = {});
  ParamValue(ParamMap v, std::string where = {});

  Type type() const { return type_; }
  bool is_number() const { return type_ == Type::integer || type_ == Type::number; }
  // Accessors require the matching type (as_double also takes an integer); they throw std::logic_error
  // otherwise: readers check type() first and report the file:line.
  bool as_bool() const;
  int64_t as_int() const;
  double as_double() const;
  const std::string& as_string() const;
  const std::vector<ParamValue>& as_list() const;
  const ParamMap& as_map() const;

  const std::string& where() const { return where_; }
  void set_where(std::string where) { where_ = std::move(where); }

  // "integer 5", "string 'abc'", "list [1, 2]", "map {a: 1}": for "found ..." in messages.
  std::string describe() const;
  // The value alone, YAML-like: 5, abc, [1, 2], {a: 1}.
  std::string to_string() const;

  // Compares values only (where() is ignored); integer 2 != number 2.0.
  bool operator==(const ParamValue& other) const;

 private:
  Type type_ = Type::string;
  bool bool_ = false;
  int64_t int_ = 0;
  double double_ = 0.0;
  std::string string_;
  std::vector<ParamValue> list_;
  std::shared_ptr<const ParamMap> map_;  // immutable once stored, so copies may share it
  std::string where_;
};

const char* param_type_name(ParamValue::Type type);

// An ordered map name -> ParamValue (document order is kept for messages and listings), plus where
// the map itself was written (a node's params: a node's line).
class ParamMap {
 public:
  using Entry = std::pair<std::string, ParamValue>;

  ParamMap() = default;
  explicit ParamMap(std::string where) : where_(std::move(where)) {}
  ParamMap(std::initializer_list<Entry> entries);

  const ParamValue* find(std::string_view key) const;  // nullptr when absent
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  // Replaces the value of `key` (keeping its place) or appends it.
  void set(std::string key, ParamValue value);
  bool erase(std::string_view key);
  // Overlays `over`: its keys replace ours, except that two maps are merged key by key.
  void merge(const ParamMap& over);

  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  std::vector<std::string> keys() const;
  std::vector<Entry>::const_iterator begin() const { return entries_.begin(); }
  std::vector<Entry>::const_iterator end() const { return entries_.end(); }

  const std::string& where() const { return where_; }
  void set_where(std::string where) { where_ = std::move(where); }

  // Same keys with equal values, in any order; where() is ignored.
  bool operator==(const ParamMap& other) const;

 private:
  friend class ParamReader;
  friend ParamMap make_probe_map(std::vector<ParamInfo>* sink);

  std::vector<Entry> entries_;
  std::string where_;
  std::vector<ParamInfo>* probe_ = nullptr;  // set only on describe_params' probe map
};

// Where each field of a config struct came from, so that validate() can name the file, line and
// parameter: "pipelines/stream.yaml:12: node 'model' parameter 'n_sink': expected an integer >= 0, found -3".
// Filled by ParamReader; a default-constructed origin (config built in code) gives "parameter 'n_sink': ...".
class ParamOrigin {
 public:
  ParamOrigin() = default;
  ParamOrigin(std::string subject, std::string where) : subject_(std::move(subject)), where_(std::move(where)) {}

  // "<file:line>: <subject> parameter '<field>'" (the value's line, or the node's for a default).
  std::string at(std::string_view field) const;
  // Throws std::invalid_argument("<at(field)>: expected <expected>, found <found>").
  [[noreturn]] void fail(std::string_view field, std::string_view expected, std::string_view found) const;
  // fail() unless ok; `found` is printed with operator<< (strings quoted).
  template <class T>
  void require(bool ok, std::string_view field, std::string_view expected, const T& found) const {
    if (ok) return;
    std::ostringstream s;
    if constexpr (std::is_convertible_v<const T&, std::string_view>) {
      s << '\'' << std::string_view(found) << '\'';
    } else if constexpr (std::is_same_v<T, bool>) {
      s << (found ? "true" : "false");
    } else {
      s << found;
    }
    fail(field, expected, s.str());
  }

  // require() for an integer in [low, high]: "expected an integer in [low, high]<note>, found <value>".
  void require_in(int64_t value, std::string_view field, int64_t low, int64_t high, std::string_view note = {}) const;

  // Runs `check` (a models/ struct's own validate()) and turns its std::invalid_argument into one naming the
  // file:line of the value: a FieldError names "<field>.<its field>" ("<file:line>: node 'model' parameter
  // 'cache.n_recent': n_recent (the window) must be > 0, found 0"), any other names `field`.
  void check(std::string_view field, const std::function<void()>& check) const;

  void set_field(std::string field, std::string where) { fields_[std::move(field)] = std::move(where); }
  const std::string& subject() const { return subject_; }

 private:
  std::string subject_;                        // "node 'model'"
  std::string where_;                          // the node's own location, for defaults
  std::map<std::string, std::string, std::less<>> fields_;  // field -> location of its value
};

// Reads a ParamMap into a config struct's fields, in a kind's from_params:
//
//   static ScaleConfig from_params(const ParamMap& params, const std::string& where) {
//     ScaleConfig c;
//     ParamReader r(params, where, c.origin);
//     r.read("factor", c.factor);
//     r.read_choice("mode", c.mode, {"fast", "exact"});
//     r.done();  // rejects unknown parameters
//     return c;
//   }
//
// `where` names the subject ("node 'scale'"); file:line come from the values themselves. A field that
// is absent keeps its in-class default. Wrong types throw std::invalid_argument:
// "<file>:<line>: node 'scale' parameter 'factor': expected an integer, found string 'two'".
// Supported field types: bool, int, int64_t, double (an integer is accepted), std::string,
// std::vector<std::string>, std::vector<int64_t>, std::vector<double>, ParamMap (a nested map, raw).
class ParamReader {
 public:
  ParamReader(const ParamMap& params, std::string where, ParamOrigin& origin);

  void read(std::string_view name, bool& field);
  void read(std::string_view name, int& field);
  void read(std::string_view name, int64_t& field);
  void read(std::string_view name, double& field);
  void read(std::string_view name, std::string& field);
  void read(std::string_view name, std::vector<std::string>& field);
  void read(std::string_view name, std::vector<int64_t>& field);
  void read(std::string_view name, std::vector<double>& field);
  void read(std::string_view name, ParamMap& field);
  // A string restricted to `choices`; the error lists them.
  void read_choice(std::string_view name, std::string& field, const std::vector<std::string>& choices);
  // An enum by the names of its table (models/io/names.h); the error lists them.
  template <class E, size_t N>
  void read_enum(std::string_view name, E& field, const NameTable<E, N>& table) {
    std::string text = enum_name(table, field);
    read_choice(name, text, enum_names(table));
    enum_lookup(table, text, field);
  }
  // A nested map of options (`cache: {n_sink: 4}`), read by `fields` with a reader whose messages name
  // "cache.n_sink" and which rejects unknown keys; absent = every field keeps its default.
  void nested(std::string_view name, const std::function<void(ParamReader&)>& fields);
  // As read(), but a missing parameter is an error ("<node line>: node 'x' is missing required parameter 'path'").
  template <class T>
  void require(std::string_view name, T& field) {
    if (!probe_ && !params_.contains(name)) missing(name);
    read(name, field);
    if (probe_) probe_->back().default_value = "(required)";
  }
  // Throws std::invalid_argument for the first parameter that no read() asked for, listing the known ones.
  void done();

 private:
  ParamReader(const ParamMap& params, std::string where, ParamOrigin& origin, std::string prefix,
              std::vector<ParamInfo>* probe);
  const ParamValue* take(std::string_view name, const std::string& type, const std::string& default_value);
  [[noreturn]] void wrong_type(std::string_view name, const ParamValue& v, std::string_view expected) const;
  [[noreturn]] void missing(std::string_view name) const;

  const ParamMap& params_;
  std::string where_;
  ParamOrigin& origin_;
  std::string prefix_;  // "cache." inside a nested map
  std::vector<std::string> known_;
  std::vector<ParamInfo>* probe_ = nullptr;
};

// Lists the parameters of a config type: runs Config::from_params on a probe map that records each
// read() instead of reading it.
std::vector<ParamInfo> collect_params(void (*run)(const ParamMap& probe));
template <class Config>
std::vector<ParamInfo> describe_params() {
  return collect_params([](const ParamMap& probe) { (void)Config::from_params(probe, "probe"); });
}

// Implementation detail of describe_params: a ParamMap that carries a sink for ParamInfo records.
ParamMap make_probe_map(std::vector<ParamInfo>* sink);

}  // namespace sinkflow
