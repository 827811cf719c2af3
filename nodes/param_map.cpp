#include "nodes/param_map.h"

#include "models/io/field_error.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace sinkflow {

namespace {

std::string format_double(double v) {
  if (std::isnan(v)) return ".nan";
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, res.ptr);
  // Keep a number recognisable as one: 2 -> 2.0.
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

// open + body + close (appends: "[" + std::string&& trips GCC 12's -Wrestrict).
std::string wrap(const char* open, const std::string& body, const char* close) {
  std::string s(open);
  s += body;
  s += close;
  return s;
}

std::string prefix(const std::string& where) { return where.empty() ? std::string() : where + ": "; }

}  // namespace

const char* param_type_name(ParamValue::Type type) {
  switch (type) {
    case ParamValue::Type::boolean: return "bool";
    case ParamValue::Type::integer: return "integer";
    case ParamValue::Type::number: return "number";
    case ParamValue::Type::string: return "string";
    case ParamValue::Type::list: return "list";
    case ParamValue::Type::map: return "map";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------- ParamValue

ParamValue::ParamValue(bool v, std::string where) : type_(Type::boolean), bool_(v), where_(std::move(where)) {}
ParamValue::ParamValue(int64_t v, std::string where) : type_(Type::integer), int_(v), where_(std::move(where)) {}
ParamValue::ParamValue(int v, std::string where) : type_(Type::integer), int_(v), where_(std::move(where)) {}
ParamValue::ParamValue(double v, std::string where) : type_(Type::number), double_(v), where_(std::move(where)) {}
ParamValue::ParamValue(std::string v, std::string where)
    : type_(Type::string), string_(std::move(v)), where_(std::move(where)) {}
ParamValue::ParamValue(const char* v, std::string where)
    : type_(Type::string), string_(v), where_(std::move(where)) {}
ParamValue::ParamValue(std::vector<ParamValue> v, std::string where)
    : type_(Type::list), list_(std::move(v)), where_(std::move(where)) {}
ParamValue::ParamValue(ParamMap v, std::string where)
    : type_(Type::map), map_(std::make_shared<const ParamMap>(std::move(v))), where_(std::move(where)) {}

namespace {
[[noreturn]] void bad_access(const ParamValue& v, const char* wanted) {
  throw std::logic_error(std::string("ParamValue: asked for a ") + wanted + ", holds " + v.describe());
}
}  // namespace

bool ParamValue::as_bool() const {
  if (type_ != Type::boolean) bad_access(*this, "bool");
  return bool_;
}
int64_t ParamValue::as_int() const {
  if (type_ != Type::integer) bad_access(*this, "integer");
  return int_;
}
double ParamValue::as_double() const {
  if (type_ == Type::integer) return static_cast<double>(int_);
  if (type_ != Type::number) bad_access(*this, "number");
  return double_;
}
const std::string& ParamValue::as_string() const {
  if (type_ != Type::string) bad_access(*this, "string");
  return string_;
}
const std::vector<ParamValue>& ParamValue::as_list() const {
  if (type_ != Type::list) bad_access(*this, "list");
  return list_;
}
const ParamMap& ParamValue::as_map() const {
  if (type_ != Type::map) bad_access(*this, "map");
  return *map_;
}

std::string ParamValue::to_string() const {
  switch (type_) {
    case Type::boolean: return bool_ ? "true" : "false";
    case Type::integer: return std::to_string(int_);
    case Type::number: return format_double(double_);
    case Type::string: return string_;
    case Type::list: {
      std::vector<std::string> items;
      for (const auto& v : list_) items.push_back(v.to_string());
      return wrap("[", join(items, ", "), "]");
    }
    case Type::map: {
      std::vector<std::string> items;
      for (const auto& [k, v] : *map_) items.push_back(k + ": " + v.to_string());
      return wrap("{", join(items, ", "), "}");
    }
  }
  return {};
}

std::string ParamValue::describe() const {
  if (type_ == Type::string) return "string '" + string_ + "'";
  return std::string(param_type_name(type_)) + " " + to_string();
}

bool ParamValue::operator==(const ParamValue& o) const {
  if (type_ != o.type_) return false;
  switch (type_) {
    case Type::boolean: return bool_ == o.bool_;
    case Type::integer: return int_ == o.int_;
    case Type::number: return double_ == o.double_ || (std::isnan(double_) && std::isnan(o.double_));
    case Type::string: return string_ == o.string_;
    case Type::list: return list_ == o.list_;
    case Type::map: return *map_ == *o.map_;
  }
  return false;
}

// ------------------------------------------------------------------------------------------------ ParamMap

ParamMap::ParamMap(std::initializer_list<Entry> entries) {
  for (const auto& e : entries) set(e.first, e.second);
}

const ParamValue* ParamMap::find(std::string_view key) const {
  for (const auto& e : entries_)
    if (e.first == key) return &e.second;
  return nullptr;
}

void ParamMap::set(std::string key, ParamValue value) {
  for (auto& e : entries_) {
    if (e.first == key) {
      e.second = std::move(value);
      return;
    }
  }
  entries_.emplace_back(std::move(key), std::move(value));
}

bool ParamMap::erase(std::string_view key) {
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.first == key; });
  if (it == entries_.end()) return false;
  entries_.erase(it);
  return true;
}

void ParamMap::merge(const ParamMap& over) {
  for (const auto& [key, value] : over) {
    const ParamValue* mine = find(key);
    if (mine && mine->type() == ParamValue::Type::map && value.type() == ParamValue::Type::map) {
      ParamMap merged = mine->as_map();
      merged.merge(value.as_map());
      set(key, ParamValue(std::move(merged), value.where()));
    } else {
      set(key, value);
    }
  }
}

std::vector<std::string> ParamMap::keys() const {
  std::vector<std::string> out;
  for (const auto& e : entries_) out.push_back(e.first);
  return out;
}

bool ParamMap::operator==(const ParamMap& other) const {
  if (entries_.size() != other.entries_.size()) return false;
  for (const auto& [k, v] : entries_) {
    const ParamValue* o = other.find(k);
    if (!o || !(*o == v)) return false;
  }
  return true;
}

ParamMap make_probe_map(std::vector<ParamInfo>* sink) {
  ParamMap m;
  m.probe_ = sink;
  return m;
}

std::vector<ParamInfo> collect_params(void (*run)(const ParamMap& probe)) {
  std::vector<ParamInfo> out;
  run(make_probe_map(&out));
  return out;
}

// --------------------------------------------------------------------------------------------- ParamOrigin

std::string ParamOrigin::at(std::string_view field) const {
  auto it = fields_.find(field);
  const std::string& where = it != fields_.end() && !it->second.empty() ? it->second : where_;
  std::string subject = subject_.empty() ? std::string() : subject_ + " ";
  return prefix(where) + subject + "parameter '" + std::string(field) + "'";
}

void ParamOrigin::check(std::string_view field, const std::function<void()>& check) const {
  try {
    check();
  } catch (const FieldError& e) {
    const std::string full = field.empty() ? e.field() : std::string(field) + "." + e.field();
    throw std::invalid_argument(at(full) + ": " + e.what());
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(at(field) + ": " + e.what());
  }
}

void ParamOrigin::fail(std::string_view field, std::string_view expected, std::string_view found) const {
  throw std::invalid_argument(at(field) + ": expected " + std::string(expected) + ", found " + std::string(found));
}

void ParamOrigin::require_in(int64_t value, std::string_view field, int64_t low, int64_t high,
                             std::string_view note) const {
  if (value < low || value > high)
    fail(field, "an integer in [" + std::to_string(low) + ", " + std::to_string(high) + "]" + std::string(note),
         std::to_string(value));
}

// --------------------------------------------------------------------------------------------- ParamReader

ParamReader::ParamReader(const ParamMap& params, std::string where, ParamOrigin& origin)
    : params_(params), where_(std::move(where)), origin_(origin), probe_(params.probe_) {
  origin_ = ParamOrigin(where_, params.where());
}

ParamReader::ParamReader(const ParamMap& params, std::string where, ParamOrigin& origin, std::string prefix,
                         std::vector<ParamInfo>* probe)
    : params_(params), where_(std::move(where)), origin_(origin), prefix_(std::move(prefix)), probe_(probe) {}

const ParamValue* ParamReader::take(std::string_view name, const std::string& type,
                                    const std::string& default_value) {
  known_.emplace_back(name);
  if (probe_) {
    probe_->push_back({prefix_ + std::string(name), type, default_value});
    return nullptr;
  }
  const ParamValue* v = params_.find(name);
  if (v) origin_.set_field(prefix_ + std::string(name), v->where());
  return v;
}

void ParamReader::wrong_type(std::string_view name, const ParamValue& v, std::string_view expected) const {
  origin_.fail(prefix_ + std::string(name), expected, v.describe());
}

void ParamReader::missing(std::string_view name) const {
  throw std::invalid_argument(prefix(params_.where()) + where_ + " is missing required parameter '" + prefix_ +
                              std::string(name) + "'");
}

void ParamReader::nested(std::string_view name, const std::function<void(ParamReader&)>& fields) {
  known_.emplace_back(name);
  const ParamValue* v = probe_ ? nullptr : params_.find(name);
  if (v && v->type() != ParamValue::Type::map) wrong_type(name, *v, "a map of options");
  if (v) origin_.set_field(prefix_ + std::string(name), v->where());
  const ParamMap empty(params_.where());
  ParamReader sub(v ? v->as_map() : empty, where_, origin_, prefix_ + std::string(name) + ".", probe_);
  fields(sub);
  sub.done();
}

void ParamReader::read(std::string_view name, bool& field) {
  const ParamValue* v = take(name, "bool", field ? "true" : "false");
  if (!v) return;
  if (v->type() != ParamValue::Type::boolean) wrong_type(name, *v, "a bool (true or false)");
  field = v->as_bool();
}

void ParamReader::read(std::string_view name, int64_t& field) {
  const ParamValue* v = take(name, "int", std::to_string(field));
  if (!v) return;
  if (v->type() != ParamValue::Type::integer) wrong_type(name, *v, "an integer");
  field = v->as_int();
}

void ParamReader::read(std::string_view name, int& field) {
  const ParamValue* v = take(name, "int", std::to_string(field));
  if (!v) return;
  if (v->type() != ParamValue::Type::integer) wrong_type(name, *v, "an integer");
  const int64_t x = v->as_int();
  if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
    wrong_type(name, *v, "an integer in 32-bit range");
  field = static_cast<int>(x);
}

void ParamReader::read(std::string_view name, double& field) {
  const ParamValue* v = take(name, "number", format_double(field));
  if (!v) return;
  if (!v->is_number()) wrong_type(name, *v, "a number");
  field = v->as_double();
}

void ParamReader::read(std::string_view name, std::string& field) {
  const ParamValue* v = take(name, "string", field.empty() ? "''" : field);
  if (!v) return;
  if (v->type() != ParamValue::Type::string) wrong_type(name, *v, "a string");
  field = v->as_string();
}

namespace {
template <class T>
std::string list_default(const std::vector<T>& items) {
  std::vector<std::string> s;
  for (const auto& x : items) {
    if constexpr (std::is_same_v<T, std::string>) s.push_back(x);
    else if constexpr (std::is_same_v<T, double>) s.push_back(format_double(x));
    else s.push_back(std::to_string(x));
  }
  return wrap("[", join(s, ", "), "]");
}
}  // namespace

void ParamReader::read(std::string_view name, std::vector<std::string>& field) {
  const ParamValue* v = take(name, "list of string", list_default(field));
  if (!v) return;
  if (v->type() != ParamValue::Type::list) wrong_type(name, *v, "a list of strings");
  std::vector<std::string> out;
  for (const auto& item : v->as_list()) {
    if (item.type() != ParamValue::Type::string) wrong_type(name, *v, "a list of strings");
    out.push_back(item.as_string());
  }
  field = std::move(out);
}

void ParamReader::read(std::string_view name, std::vector<int64_t>& field) {
  const ParamValue* v = take(name, "list of int", list_default(field));
  if (!v) return;
  if (v->type() != ParamValue::Type::list) wrong_type(name, *v, "a list of integers");
  std::vector<int64_t> out;
  for (const auto& item : v->as_list()) {
    if (item.type() != ParamValue::Type::integer) wrong_type(name, *v, "a list of integers");
    out.push_back(item.as_int());
  }
  field = std::move(out);
}

void ParamReader::read(std::string_view name, std::vector<double>& field) {
  const ParamValue* v = take(name, "list of number", list_default(field));
  if (!v) return;
  if (v->type() != ParamValue::Type::list) wrong_type(name, *v, "a list of numbers");
  std::vector<double> out;
  for (const auto& item : v->as_list()) {
    if (!item.is_number()) wrong_type(name, *v, "a list of numbers");
    out.push_back(item.as_double());
  }
  field = std::move(out);
}

void ParamReader::read(std::string_view name, ParamMap& field) {
  const ParamValue* v = take(name, "map", ParamValue(field).to_string());
  if (!v) return;
  if (v->type() != ParamValue::Type::map) wrong_type(name, *v, "a map");
  field = v->as_map();
}

void ParamReader::read_choice(std::string_view name, std::string& field, const std::vector<std::string>& choices) {
  const ParamValue* v = take(name, "one of " + join(choices, "|"), field);
  if (!v) return;
  const std::string expected = "one of " + join(choices, ", ");
  if (v->type() != ParamValue::Type::string) wrong_type(name, *v, expected);
  if (std::find(choices.begin(), choices.end(), v->as_string()) == choices.end()) wrong_type(name, *v, expected);
  field = v->as_string();
}

void ParamReader::done() {
  if (probe_) return;
  for (const auto& [key, value] : params_) {
    if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
    std::string where = value.where().empty() ? params_.where() : value.where();
    throw std::invalid_argument(prefix(where) + where_ + " has unknown parameter '" + prefix_ + key + "'; known: " +
                                (known_.empty() ? std::string("none") : join(known_, ", ")));
  }
}

}  // namespace sinkflow
