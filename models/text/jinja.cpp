// The Jinja2 subset of jinja.h: a lexer that applies whitespace control as jinja2's does, a recursive-descent
// parser with jinja2's operator precedence, and a tree-walking interpreter over Python-like values.
#include "models/text/jinja.h"
#include "models/text/tokenizer_internal.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <functional>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sinkflow::jinja {

namespace {

using tokenizer_detail::append_utf8;

// ---------------------------------------------------------------------------------------------------------------
// Errors. Inside the engine a failure is an Error (the message) or a Raised (raise_exception); Template turns
// them into std::invalid_argument / TemplateRaised with the template's name and the line.

struct Error {
  std::string what;
  int line = 0;  // 0 = the line of the node being evaluated
};
struct Raised {
  std::string message;
};

[[noreturn]] void fail(std::string what, int line = 0) { throw Error{std::move(what), line}; }

// ---------------------------------------------------------------------------------------------------------------
// UTF-8 and Python's whitespace.

// Byte offsets where each code point of `s` starts (an invalid byte counts as one code point), plus s.size().
std::vector<std::size_t> code_point_starts(std::string_view s) {
  std::vector<std::size_t> out;
  std::size_t i = 0;
  while (i < s.size()) {
    out.push_back(i);
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + len > s.size()) len = 1;
    for (std::size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) len = 1;
    i += len;
  }
  out.push_back(s.size());
  return out;
}

uint32_t decode_at(std::string_view s, std::size_t begin, std::size_t end) {
  const auto c = static_cast<unsigned char>(s[begin]);
  if (end - begin == 1) return c;
  uint32_t cp = end - begin == 2 ? (c & 0x1F) : end - begin == 3 ? (c & 0x0F) : (c & 0x07);
  for (std::size_t k = begin + 1; k < end; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[k]) & 0x3F);
  return cp;
}

// str.isspace() of Python for one code point.
bool py_space(uint32_t cp) {
  return (cp >= 9 && cp <= 13) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// Python's str.strip/lstrip/rstrip: `chars` = nullopt strips whitespace, else the code points of *chars.
std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
  const auto starts = code_point_starts(s);
  std::vector<uint32_t> set;
  if (chars) {
    const auto cs = code_point_starts(*chars);
    for (std::size_t k = 0; k + 1 < cs.size(); ++k) set.push_back(decode_at(*chars, cs[k], cs[k + 1]));
  }
  auto strip_it = [&](std::size_t k) {
    const uint32_t cp = decode_at(s, starts[k], starts[k + 1]);
    return chars ? std::find(set.begin(), set.end(), cp) != set.end() : py_space(cp);
  };
  std::size_t b = 0, e = starts.size() - 1;
  if (left)
    while (b < e && strip_it(b)) ++b;
  if (right)
    while (e > b && strip_it(e - 1)) --e;
  return std::string(s.substr(starts[b], starts[e] - starts[b]));
}

// ---------------------------------------------------------------------------------------------------------------
// Values: what Python objects a template sees. Lists and dicts are immutable once built (transformers renders in
// an ImmutableSandboxedEnvironment); a namespace is the one value a template can change (set ns.x = ...).

struct Value;
struct Dict;
struct CallArgs;
using ValueList = std::vector<Value>;
using Function = std::function<Value(CallArgs&)>;

enum class Kind { undefined, none, boolean, integer, floating, string, list, dict, ns, function };

struct Value {
  Kind kind = Kind::undefined;
  bool b = false;  // boolean; for a list: true when it is a tuple
  int64_t i = 0;
  double f = 0;
  std::string s;  // string; for undefined: why ("'x' is undefined")
  std::shared_ptr<const ValueList> list;
  std::shared_ptr<Dict> dict;  // dict or namespace
  std::shared_ptr<const Function> fn;

  static Value undefined(std::string why) {
    Value v;
    v.s = std::move(why);
    return v;
  }
  static Value none() { return make(Kind::none); }
  static Value boolean(bool x) {
    Value v = make(Kind::boolean);
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v = make(Kind::integer);
    v.i = x;
    return v;
  }
  static Value floating(double x) {
    Value v = make(Kind::floating);
    v.f = x;
    return v;
  }
  static Value string(std::string x) {
    Value v = make(Kind::string);
    v.s = std::move(x);
    return v;
  }
  static Value of_list(ValueList items, bool tuple = false) {
    Value v = make(Kind::list);
    v.list = std::make_shared<const ValueList>(std::move(items));
    v.b = tuple;
    return v;
  }
  static Value function(Function f) {
    Value v = make(Kind::function);
    v.fn = std::make_shared<const Function>(std::move(f));
    return v;
  }
  static Value make(Kind k) {
    Value v;
    v.kind = k;
    return v;
  }
  bool is(Kind k) const { return kind == k; }
  bool is_number() const { return kind == Kind::integer || kind == Kind::floating || kind == Kind::boolean; }
  double number() const { return kind == Kind::floating ? f : kind == Kind::boolean ? (b ? 1.0 : 0.0) : double(i); }
  int64_t whole() const { return kind == Kind::boolean ? (b ? 1 : 0) : i; }  // integer or boolean
};

// Insertion-ordered string keys (dicts of a template are small: a linear search is the fast way).
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(std::string_view key) const {
    for (const auto& [k, v] : items)
      if (k == key) return &v;
    return nullptr;
  }
  void set(const std::string& key, Value v) {
    for (auto& [k, old] : items)
      if (k == key) {
        old = std::move(v);
        return;
      }
    items.emplace_back(key, std::move(v));
  }
};

Value make_dict(Dict d, Kind kind = Kind::dict) {
  Value v = Value::make(kind);
  v.dict = std::make_shared<Dict>(std::move(d));
  return v;
}

class Interp;
struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  Interp& interp;
  std::string what;  // the function's name, for messages

  // Argument `index` or keyword `name`; nullopt when neither was given.
  std::optional<Value> get(std::size_t index, std::string_view name) const {
    if (index < pos.size()) return pos[index];
    for (const auto& [k, v] : kw)
      if (k == name) return v;
    return std::nullopt;
  }
  void at_most(std::size_t n) const {
    if (pos.size() > n) fail(what + " takes at most " + std::to_string(n) + " positional arguments, found " + std::to_string(pos.size()));
  }
};

// Bounds of the render in progress on this thread (Template::render sets them): printing, JSON and comparisons
// walk nested values element by element, and a template can build a value that shares one list many times over
// (`set ns.l = [ns.l, ns.l]` in a loop) whose walk would take exponential time.
struct WalkBudget {
  std::size_t max_bytes = SIZE_MAX;   // longest string a walk may build
  std::size_t steps_left = SIZE_MAX;  // elements walked, all walks of the render together
  std::size_t max_depth = 128;        // nesting of the values walked (a namespace can hold itself)
};
thread_local WalkBudget tl_walk;

void walk_step() {
  if (tl_walk.steps_left == 0) fail("a value too large to print, convert or compare (over the step limit)");
  --tl_walk.steps_left;
}
void walk_size(std::size_t bytes) {
  if (bytes > tl_walk.max_bytes) fail("a printed value longer than " + std::to_string(tl_walk.max_bytes) + " bytes");
}

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Kind::undefined: return "undefined";
    case Kind::none: return "none";
    case Kind::boolean: return "boolean";
    case Kind::integer: return "integer";
    case Kind::floating: return "float";
    case Kind::string: return "string";
    case Kind::list: return v.b ? "tuple" : "list";
    case Kind::dict: return "dict";
    case Kind::ns: return "namespace";
    case Kind::function: return "function";
  }
  return "value";
}

// "a string", "an integer", ... for messages.
std::string a_type(const Value& v) {
  const std::string name = type_name(v);
  return (name[0] == 'u' || name[0] == 'i' ? "an " : "a ") + name;
}

[[noreturn]] void fail_undefined(const Value& v, const std::string& use) {
  fail((v.s.empty() ? std::string("an undefined value") : v.s) + " (" + use + ")");
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::undefined:
    case Kind::none: return false;
    case Kind::boolean: return v.b;
    case Kind::integer: return v.i != 0;
    case Kind::floating: return v.f != 0.0;
    case Kind::string: return !v.s.empty();
    case Kind::list: return !v.list->empty();
    case Kind::dict: return !v.dict->items.empty();
    default: return true;
  }
}

// float.__repr__ of Python: the shortest digits that round-trip, positional for exponents in [-4, 16).
std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const auto e_pos = sci.find('e');
  const int exp = std::stoi(sci.substr(e_pos + 1));
  std::string digits;
  for (char c : sci.substr(0, e_pos))
    if (c != '.') digits += c;
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int n = static_cast<int>(digits.size());
  if (exp >= -4 && exp < 16) {
    const int point = exp + 1;
    if (point <= 0) return sign + "0." + std::string(-point, '0') + digits;
    if (point >= n) return sign + digits + std::string(point - n, '0') + ".0";
    return sign + digits.substr(0, point) + "." + digits.substr(point);
  }
  std::string out = sign + digits.substr(0, 1);
  if (n > 1) out += "." + digits.substr(1);
  const int a = std::abs(exp);
  return out + (exp < 0 ? "e-" : "e+") + (a < 10 ? "0" : "") + std::to_string(a);
}

// repr() of a Python str.
std::string py_repr_string(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == quote || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\r') {
      out += "\\r";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
  return out + quote;
}

std::string py_str(const Value& v, std::size_t depth = 0);

std::string py_repr(const Value& v, std::size_t depth) {
  if (v.is(Kind::string)) return py_repr_string(v.s);
  if (v.is(Kind::undefined)) return "Undefined";
  return py_str(v, depth);
}


// str() of a Python value, as {{ }} prints it.
std::string py_str(const Value& v, std::size_t depth) {
  walk_step();
  if (depth > tl_walk.max_depth)
    fail("a value nested deeper than " + std::to_string(tl_walk.max_depth) + " levels (a namespace that holds itself?)");
  switch (v.kind) {
    case Kind::undefined: return "";
    case Kind::none: return "None";
    case Kind::boolean: return v.b ? "True" : "False";
    case Kind::integer: return std::to_string(v.i);
    case Kind::floating: return py_float(v.f);
    case Kind::string: return v.s;
    case Kind::list: {
      std::string out = v.b ? "(" : "[";
      for (std::size_t k = 0; k < v.list->size(); ++k) {
        out += (k ? ", " : "") + py_repr((*v.list)[k], depth + 1);
        walk_size(out.size());
      }
      if (v.b && v.list->size() == 1) out += ",";
      return out + (v.b ? ")" : "]");
    }
    case Kind::dict:
    case Kind::ns: {
      std::string out = v.is(Kind::ns) ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, item] : v.dict->items) {
        out += (first ? "" : ", ") + py_repr_string(k) + ": " + py_repr(item, depth + 1);
        first = false;
        walk_size(out.size());
      }
      return out + (v.is(Kind::ns) ? "}>" : "}");
    }
    case Kind::function: return "<function>";
  }
  return "";
}

// How json.dumps writes: indent < 0 = on one line; separators default to (", ", ": "), (",", ": ") with an indent.
struct JsonStyle {
  int indent = -1;
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::optional<std::pair<std::string, std::string>> separators;
};

// json.dumps(value, ...) of Python.
void to_json(const Value& v, const JsonStyle& style, std::size_t depth, std::string& out) {
  walk_step();
  walk_size(out.size());
  if (depth > tl_walk.max_depth) fail("tojson: a value nested deeper than " + std::to_string(tl_walk.max_depth) + " levels");
  const int indent = style.indent;
  const std::string pad = indent >= 0 ? "\n" + std::string(static_cast<std::size_t>(indent) * (depth + 1), ' ') : "";
  const std::string close_pad = indent >= 0 ? "\n" + std::string(static_cast<std::size_t>(indent) * depth, ' ') : "";
  const std::string sep = style.separators ? style.separators->first : indent >= 0 ? "," : ", ";
  const std::string key_sep = style.separators ? style.separators->second : ": ";
  static const char* hex = "0123456789abcdef";
  auto u_escape = [&](uint32_t unit) {
    out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out += hex[(unit >> shift) & 15];
  };
  switch (v.kind) {
    case Kind::undefined: fail("tojson: an undefined value is not JSON serializable");
    case Kind::none: out += "null"; return;
    case Kind::boolean: out += v.b ? "true" : "false"; return;
    case Kind::integer: out += std::to_string(v.i); return;
    case Kind::floating:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f < 0 ? "-Infinity" : "Infinity") : py_float(v.f);
      return;
    case Kind::string: {
      out += '"';
      const auto starts = code_point_starts(v.s);
      for (std::size_t k = 0; k + 1 < starts.size(); ++k) {
        const std::size_t b = starts[k], e = starts[k + 1];
        const char ch = v.s[b];
        const auto c = static_cast<unsigned char>(ch);
        if (e - b > 1 || c >= 0x80) {
          if (!style.ensure_ascii) {
            out.append(v.s, b, e - b);
            continue;
          }
          const uint32_t cp = decode_at(v.s, b, e);
          if (cp >= 0x10000) {
            u_escape(0xD800 + ((cp - 0x10000) >> 10));
            u_escape(0xDC00 + ((cp - 0x10000) & 0x3FF));
          } else {
            u_escape(cp);
          }
          continue;
        }
        switch (ch) {
          case '"': out += "\\\""; break;
          case '\\': out += "\\\\"; break;
          case '\n': out += "\\n"; break;
          case '\r': out += "\\r"; break;
          case '\t': out += "\\t"; break;
          case '\b': out += "\\b"; break;
          case '\f': out += "\\f"; break;
          default:
            if (c < 0x20 || (c == 0x7F && style.ensure_ascii)) {
              u_escape(c);
            } else {
              out += ch;
            }
        }
      }
      out += '"';
      return;
    }
    case Kind::list:
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += "[";
      for (std::size_t k = 0; k < v.list->size(); ++k) {
        out += k ? sep + pad : pad;
        to_json((*v.list)[k], style, depth + 1, out);
      }
      out += close_pad + "]";
      return;
    case Kind::dict:
    case Kind::ns: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& item : v.dict->items) items.push_back(&item);
      if (style.sort_keys) std::sort(items.begin(), items.end(), [](auto* x, auto* y) { return x->first < y->first; });
      out += "{";
      bool first = true;
      for (const auto* item : items) {
        out += first ? pad : sep + pad;
        first = false;
        to_json(Value::string(item->first), style, depth + 1, out);
        out += key_sep;
        to_json(item->second, style, depth + 1, out);
      }
      out += close_pad + "}";
      return;
    }
    case Kind::function: fail("tojson: a function is not JSON serializable");
  }
}

// Python ==. Numbers compare by value (True == 1), an undefined equals only an undefined.
bool py_eq(const Value& a, const Value& b, std::size_t depth = 0) {
  walk_step();
  if (depth > tl_walk.max_depth) fail("a value nested deeper than " + std::to_string(tl_walk.max_depth) + " levels");
  if (a.is_number() && b.is_number()) {
    if (a.is(Kind::floating) || b.is(Kind::floating)) return a.number() == b.number();
    return a.whole() == b.whole();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::undefined:
    case Kind::none: return true;
    case Kind::string: return a.s == b.s;
    case Kind::list:
      if (a.list->size() != b.list->size()) return false;
      for (std::size_t k = 0; k < a.list->size(); ++k)
        if (!py_eq((*a.list)[k], (*b.list)[k], depth + 1)) return false;
      return true;
    case Kind::dict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* other = b.dict->find(k);
        if (!other || !py_eq(v, *other, depth + 1)) return false;
      }
      return true;
    }
    default: return a.dict == b.dict && a.fn == b.fn;
  }
}

// Python <, for numbers, strings and lists; anything else is a type error.
bool py_less(const Value& a, const Value& b, const char* op) {
  if (a.is_number() && b.is_number()) return a.number() < b.number();
  if (a.is(Kind::string) && b.is(Kind::string)) return a.s < b.s;
  if (a.is(Kind::list) && b.is(Kind::list)) {
    const auto& x = *a.list;
    const auto& y = *b.list;
    for (std::size_t k = 0; k < x.size() && k < y.size(); ++k) {
      if (py_eq(x[k], y[k])) continue;
      return py_less(x[k], y[k], op);
    }
    return x.size() < y.size();
  }
  if (a.is(Kind::undefined)) fail_undefined(a, std::string("operand of '") + op + "'");
  if (b.is(Kind::undefined)) fail_undefined(b, std::string("operand of '") + op + "'");
  fail(std::string("'") + op + "' is not supported between " + a_type(a) + " and " + a_type(b));
}

Value from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::floating(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::floating(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      ValueList items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e));
      return Value::of_list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.items.emplace_back(it.key(), from_json(it.value()));
      return make_dict(std::move(d));
    }
    default: fail("a JSON value of an unsupported type (binary)");
  }
}

// The code points of a string as one-character strings.
ValueList string_chars(const std::string& s) {
  const auto starts = code_point_starts(s);
  ValueList out;
  for (std::size_t k = 0; k + 1 < starts.size(); ++k) out.push_back(Value::string(s.substr(starts[k], starts[k + 1] - starts[k])));
  return out;
}

// What `for x in v` walks over: a list's items, a dict's keys, a string's characters, nothing for undefined.
ValueList iterate(const Value& v, const std::string& use) {
  switch (v.kind) {
    case Kind::undefined: return {};
    case Kind::list: return *v.list;
    case Kind::dict: {
      ValueList keys;
      for (const auto& [k, item] : v.dict->items) keys.push_back(Value::string(k));
      return keys;
    }
    case Kind::string: return string_chars(v.s);
    default: fail(a_type(v) + " is not iterable (" + use + ")");
  }
}

int64_t py_len(const Value& v, const std::string& use) {
  switch (v.kind) {
    case Kind::undefined: return 0;
    case Kind::string: return static_cast<int64_t>(code_point_starts(v.s).size() - 1);
    case Kind::list: return static_cast<int64_t>(v.list->size());
    case Kind::dict:
    case Kind::ns: return static_cast<int64_t>(v.dict->items.size());
    default: fail(a_type(v) + " has no length (" + use + ")");
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Lexer. Whitespace control is applied here, as jinja2's lexer applies it: `{%-`/`-%}` strip all whitespace on
// that side; trim_blocks drops the first newline after a block or comment tag; lstrip_blocks drops spaces and tabs
// from the start of a line up to a block or comment tag (`{%+` keeps them).

enum class T { text, var_begin, var_end, block_begin, block_end, name, string, integer, floating, op, eof };

struct Token {
  T type;
  std::string text;
  int line;
};

bool is_name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(std::move(source)) {
    // jinja2 reads every newline sequence as "\n" and drops one newline at the end of the source.
    std::string norm;
    norm.reserve(src_.size());
    for (std::size_t k = 0; k < src_.size(); ++k) {
      if (src_[k] == '\r') {
        norm += '\n';
        if (k + 1 < src_.size() && src_[k + 1] == '\n') ++k;
      } else {
        norm += src_[k];
      }
    }
    if (!norm.empty() && norm.back() == '\n') norm.pop_back();
    src_ = std::move(norm);
  }

  std::vector<Token> run() {
    bool strip_next = false;  // the previous tag ended with '-'
    while (pos_ < src_.size()) {
      std::size_t open = pos_;
      while (true) {
        open = src_.find('{', open);
        if (open == std::string::npos || open + 1 >= src_.size()) {
          open = std::string::npos;
          break;
        }
        const char c = src_[open + 1];
        if (c == '{' || c == '%' || c == '#') break;
        ++open;
      }
      const std::size_t text_end = open == std::string::npos ? src_.size() : open;
      std::string text = src_.substr(pos_, text_end - pos_);
      const int text_line = line_;
      const bool text_at_line_start = pos_ == 0 || src_[pos_ - 1] == '\n';
      count_lines(pos_, text_end);
      if (strip_next) text = lstrip_all(text);
      if (open == std::string::npos) {
        push_text(text, text_line);
        break;
      }
      const char kind = src_[open + 1];
      const char sign = open + 2 < src_.size() ? src_[open + 2] : '\0';
      if (sign == '-') {
        text = rstrip_all(text);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: spaces and tabs between the start of the line and the tag go.
        const std::size_t nl = text.rfind('\n');
        const std::size_t line_begin = nl == std::string::npos ? 0 : nl + 1;
        if ((nl != std::string::npos || text_at_line_start) &&
            text.find_first_not_of(" \t\f\v", line_begin) == std::string::npos)
          text.resize(line_begin);
      }
      push_text(text, text_line);
      pos_ = open + 2 + ((sign == '-' || (sign == '+' && kind != '{')) ? 1 : 0);
      if (kind == '#') {
        const std::size_t close = src_.find("#}", pos_);
        if (close == std::string::npos) fail("unclosed comment: '{#' without '#}'", line_);
        strip_next = close > pos_ && src_[close - 1] == '-';
        count_lines(pos_, close);
        pos_ = close + 2;
        if (!strip_next) trim_newline();
        continue;
      }
      const bool block = kind == '%';
      out_.push_back({block ? T::block_begin : T::var_begin, "", line_});
      strip_next = lex_tag(block);
    }
    out_.push_back({T::eof, "", line_});
    return std::move(out_);
  }

 private:
  void count_lines(std::size_t from, std::size_t to) {
    line_ += static_cast<int>(std::count(src_.begin() + static_cast<long>(from), src_.begin() + static_cast<long>(to), '\n'));
  }
  static std::string lstrip_all(const std::string& s) {
    const std::size_t b = s.find_first_not_of(" \t\n\r\f\v");
    return b == std::string::npos ? "" : s.substr(b);
  }
  static std::string rstrip_all(const std::string& s) {
    const std::size_t e = s.find_last_not_of(" \t\n\r\f\v");
    return e == std::string::npos ? "" : s.substr(0, e + 1);
  }
  void push_text(const std::string& text, int line) {
    if (!text.empty()) out_.push_back({T::text, text, line});
  }
  void trim_newline() {  // trim_blocks
    if (pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
      ++line_;
    }
  }

  // Tokens of one {{ }} or {% %} up to its end; returns true when the end carried '-'.
  bool lex_tag(bool block) {
    const int open_line = line_;
    int balance = 0;  // open ( [ {
    while (true) {
      while (pos_ < src_.size() && std::isspace(static_cast<unsigned char>(src_[pos_]))) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ >= src_.size()) fail(std::string("unclosed ") + (block ? "'{%' without '%}'" : "'{{' without '}}'"), open_line);
      const std::string_view rest(src_.data() + pos_, src_.size() - pos_);
      if (balance == 0) {
        const char* end = block ? "%}" : "}}";
        const bool minus = rest.size() >= 3 && rest[0] == '-' && rest.substr(1, 2) == end;
        const bool plus = block && rest.size() >= 3 && rest[0] == '+' && rest.substr(1, 2) == end;
        if (minus || plus || rest.substr(0, 2) == end) {
          out_.push_back({block ? T::block_end : T::var_end, "", line_});
          pos_ += (minus || plus) ? 3 : 2;
          if (block && !minus && !plus) trim_newline();
          return minus;
        }
      }
      const char c = rest[0];
      if (is_name_start(c)) {
        std::size_t n = 1;
        while (n < rest.size() && is_name_char(rest[n])) ++n;
        out_.push_back({T::name, std::string(rest.substr(0, n)), line_});
        pos_ += n;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        std::size_t n = 0;
        while (n < rest.size() && (std::isdigit(static_cast<unsigned char>(rest[n])) || rest[n] == '_')) ++n;
        bool is_float = false;
        if (n + 1 < rest.size() && rest[n] == '.' && std::isdigit(static_cast<unsigned char>(rest[n + 1]))) {
          is_float = true;
          ++n;
          while (n < rest.size() && (std::isdigit(static_cast<unsigned char>(rest[n])) || rest[n] == '_')) ++n;
        }
        if (n < rest.size() && (rest[n] == 'e' || rest[n] == 'E')) {
          std::size_t m = n + 1;
          if (m < rest.size() && (rest[m] == '+' || rest[m] == '-')) ++m;
          if (m < rest.size() && std::isdigit(static_cast<unsigned char>(rest[m]))) {
            is_float = true;
            n = m;
            while (n < rest.size() && std::isdigit(static_cast<unsigned char>(rest[n]))) ++n;
          }
        }
        std::string digits;
        for (char d : rest.substr(0, n))
          if (d != '_') digits += d;
        out_.push_back({is_float ? T::floating : T::integer, digits, line_});
        pos_ += n;
      } else if (c == '\'' || c == '"') {
        lex_string(c);
      } else {
        static const char* two[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* t : two)
          if (rest.substr(0, 2) == t) op = t;
        if (op.empty()) {
          if (std::string_view("+-*/%~<>=()[]{},.:|").find(c) == std::string_view::npos)
            fail(std::string("unexpected character '") + c + "' in a tag", line_);
          op = std::string(1, c);
          if (c == '(' || c == '[' || c == '{') ++balance;
          if ((c == ')' || c == ']' || c == '}') && balance > 0) --balance;
        }
        out_.push_back({T::op, op, line_});
        pos_ += op.size();
      }
    }
  }

  // A string literal with Python's escapes (\n \t \r \\ \' \" \xNN \uNNNN \UNNNNNNNN, octal; others kept).
  void lex_string(char quote) {
    const int start_line = line_;
    std::string value;
    std::size_t k = pos_ + 1;
    while (true) {
      if (k >= src_.size()) fail("unclosed string literal", start_line);
      const char c = src_[k];
      if (c == quote) break;
      if (c == '\n') ++line_;
      if (c != '\\') {
        value += c;
        ++k;
        continue;
      }
      if (k + 1 >= src_.size()) fail("unclosed string literal", start_line);
      const char e = src_[k + 1];
      k += 2;
      auto hex = [&](int n) {
        uint32_t cp = 0;
        for (int d = 0; d < n; ++d, ++k) {
          if (k >= src_.size() || !std::isxdigit(static_cast<unsigned char>(src_[k])))
            fail("a truncated \\x, \\u or \\U escape in a string literal", start_line);
          const char h = static_cast<char>(std::tolower(static_cast<unsigned char>(src_[k])));
          cp = cp * 16 + static_cast<uint32_t>(h <= '9' ? h - '0' : h - 'a' + 10);
        }
        if (cp > 0x10FFFF) fail("an escape beyond U+10FFFF in a string literal", start_line);
        append_utf8(value, cp);
      };
      switch (e) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'v': value += '\v'; break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case '\n': ++line_; break;
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int d = 0; d < 2 && k < src_.size() && src_[k] >= '0' && src_[k] <= '7'; ++d, ++k)
              cp = cp * 8 + static_cast<uint32_t>(src_[k] - '0');
            append_utf8(value, cp);
          } else {
            value += '\\';
            value += e;
          }
      }
    }
    out_.push_back({T::string, value, start_line});
    pos_ = k + 1;
  }

  std::string src_;
  std::size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> out_;
};

// ---------------------------------------------------------------------------------------------------------------
// Syntax tree: one node type; which fields a kind uses is written next to the kind.

enum class N {
  // statements
  text,        // str
  output,      // kids[0]
  if_,         // kids = conditions, bodies[k] = body of condition k, else_body
  for_,        // targets, kids[0] = iterable, kids[1] = filter (may be null), body, else_body
  set,         // targets, kids[0]
  set_attr,    // str = namespace variable, attr, kids[0]
  set_block,   // targets[0], body
  break_,
  continue_,
  generation,  // body
  // expressions
  literal,     // value
  name,        // str
  attr,        // kids[0], attr
  item,        // kids[0], kids[1]
  slice,       // kids[0], kids[1..3] = start, stop, step (each may be null)
  call,        // kids[0] = callee, kids[1..] = arguments, kw
  filter,      // kids[0] = operand, str = filter, kids[1..] = arguments, kw
  test,        // kids[0] = operand, str = test, kids[1..] = arguments, negate
  neg,         // kids[0]
  pos,         // kids[0]
  not_,        // kids[0]
  and_,        // kids[0], kids[1]
  or_,         // kids[0], kids[1]
  binary,      // str = operator, kids[0], kids[1]
  compare,     // kids[0..n], ops (n of them)
  cond,        // kids[0] = value, kids[1] = condition, kids[2] = else value (may be null)
  list,        // kids
  tuple,       // kids
  dict,        // kids = key, value, key, value, ...
};

struct Node;
using NodeP = std::unique_ptr<Node>;
using Body = std::vector<NodeP>;

struct Node {
  N kind;
  int line;
  std::string str;
  std::string attr;
  Value value;
  std::vector<NodeP> kids;
  std::vector<std::pair<std::string, NodeP>> kw;
  std::vector<std::string> targets;
  std::vector<std::string> ops;
  std::vector<Body> bodies;
  Body body, else_body;
  bool negate = false;
};

NodeP node(N kind, int line) {
  auto n = std::make_unique<Node>();
  n->kind = kind;
  n->line = line;
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Parser: recursive descent with jinja2's precedence (lowest first): x if c else y; or; and; not; comparisons and
// in; + -; ~; * / // %; **; unary - +; then postfix . [] () and the filter/test chain | and is.

class Parser {
 public:
  Parser(std::vector<Token> tokens, std::size_t max_depth) : t_(std::move(tokens)), max_depth_(max_depth) {}

  Body parse_template() {
    std::string end;
    Body body = parse_body({}, &end);
    return body;
  }

 private:
  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& parser) : p(parser) {
      if (++p.depth_ > p.max_depth_)
        fail("tags or expressions nested deeper than " + std::to_string(p.max_depth_) + " levels", p.cur().line);
    }
    ~DepthGuard() { --p.depth_; }
  };

  // A left-leaning chain (a.b.c, a + b + c, x|f|g) deepens the tree without recursing here: each link counts.
  struct ChainGuard {
    Parser& p;
    std::size_t links = 0;
    explicit ChainGuard(Parser& parser) : p(parser) {}
    void grow() {
      if (++p.depth_ > p.max_depth_)
        fail("expressions nested deeper than " + std::to_string(p.max_depth_) + " levels", p.cur().line);
      ++links;
    }
    ~ChainGuard() { p.depth_ -= links; }
  };

  const Token& cur() const { return t_[i_]; }
  const Token& peek(std::size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool at_op(std::string_view op) const { return cur().type == T::op && cur().text == op; }
  bool at_name(std::string_view n) const { return cur().type == T::name && cur().text == n; }
  Token take() { return t_[i_ < t_.size() - 1 ? i_++ : i_]; }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case T::text: return "text";
      case T::var_begin: return "'{{'";
      case T::var_end: return "'}}'";
      case T::block_begin: return "'{%'";
      case T::block_end: return "'%}'";
      case T::eof: return "the end of the template";
      case T::string: return "a string";
      default: return "'" + t.text + "'";
    }
  }
  [[noreturn]] void unexpected(const std::string& expected) const {
    fail("expected " + expected + ", found " + describe(cur()), cur().line);
  }
  void expect_op(std::string_view op) {
    if (!at_op(op)) unexpected("'" + std::string(op) + "'");
    ++i_;
  }
  void expect(T type, const std::string& what) {
    if (cur().type != type) unexpected(what);
    ++i_;
  }
  std::string expect_name(const std::string& what) {
    if (cur().type != T::name) unexpected(what);
    return take().text;
  }
  void expect_block_end(const std::string& tag) {
    if (cur().type != T::block_end) unexpected("'%}' to end the '" + tag + "' tag");
    ++i_;
  }

  // Statements up to one of `ends` (a block tag name); *end gets the name found ("" at the end of the template).
  Body parse_body(std::initializer_list<std::string_view> ends, std::string* end) {
    DepthGuard guard(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == T::eof) {
        if (ends.size()) {
          std::string names;
          for (auto e : ends) names += (names.empty() ? "" : " or ") + std::string("'{% ") + std::string(e) + " %}'";
          fail("the template ended where " + names + " was expected", t.line);
        }
        *end = "";
        return body;
      }
      if (t.type == T::text) {
        auto n = node(N::text, t.line);
        n->str = t.text;
        body.push_back(std::move(n));
        ++i_;
        continue;
      }
      if (t.type == T::var_begin) {
        ++i_;
        auto n = node(N::output, t.line);
        n->kids.push_back(parse_expression());
        expect(T::var_end, "'}}'");
        body.push_back(std::move(n));
        continue;
      }
      if (t.type != T::block_begin) unexpected("text, '{{' or '{%'");
      ++i_;
      const int line = cur().line;
      const std::string tag = expect_name("a tag name after '{%'");
      if (std::find(ends.begin(), ends.end(), tag) != ends.end()) {
        *end = tag;
        return body;
      }
      body.push_back(parse_tag(tag, line));
    }
  }

  NodeP parse_tag(const std::string& tag, int line) {
    if (tag == "if") return parse_if(line);
    if (tag == "for") return parse_for(line);
    if (tag == "set") return parse_set(line);
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) fail("'" + tag + "' outside a for loop", line);
      expect_block_end(tag);
      return node(tag == "break" ? N::break_ : N::continue_, line);
    }
    if (tag == "generation") {
      expect_block_end(tag);
      auto n = node(N::generation, line);
      std::string end;
      n->body = parse_body({"endgeneration"}, &end);
      expect_block_end("endgeneration");
      return n;
    }
    static const char* unsupported[] = {"macro", "call", "include", "import", "from", "extends", "block", "filter",
                                        "with", "autoescape", "raw", "do"};
    for (const char* u : unsupported)
      if (tag == u) fail("the tag '" + tag + "' is not supported by this engine", line);
    fail("unknown tag '" + tag + "'", line);
  }

  NodeP parse_if(int line) {
    auto n = node(N::if_, line);
    n->kids.push_back(parse_expression());
    expect_block_end("if");
    while (true) {
      std::string end;
      Body body = parse_body({"elif", "else", "endif"}, &end);
      n->bodies.push_back(std::move(body));
      if (end == "elif") {
        n->kids.push_back(parse_expression());
        expect_block_end("elif");
        continue;
      }
      if (end == "else") {
        expect_block_end("else");
        n->else_body = parse_body({"endif"}, &end);
      }
      expect_block_end("endif");
      return n;
    }
  }

  NodeP parse_for(int line) {
    auto n = node(N::for_, line);
    n->targets = parse_targets("for");
    if (!at_name("in")) unexpected("'in' in the 'for' tag");
    ++i_;
    n->kids.push_back(parse_or());  // no `x if c else y` here: `if` starts the loop filter
    if (at_name("if")) {
      ++i_;
      n->kids.push_back(parse_expression());
    } else {
      n->kids.push_back(nullptr);
    }
    if (at_name("recursive")) fail("recursive for loops are not supported by this engine", line);
    expect_block_end("for");
    ++loop_depth_;
    std::string end;
    n->body = parse_body({"else", "endfor"}, &end);
    --loop_depth_;
    if (end == "else") {
      expect_block_end("else");
      n->else_body = parse_body({"endfor"}, &end);
    }
    expect_block_end("endfor");
    return n;
  }

  std::vector<std::string> parse_targets(const std::string& tag) {
    std::vector<std::string> names;
    const bool paren = at_op("(");
    if (paren) ++i_;
    names.push_back(expect_name("a variable name in the '" + tag + "' tag"));
    while (at_op(",")) {
      ++i_;
      names.push_back(expect_name("a variable name after ',' in the '" + tag + "' tag"));
    }
    if (paren) expect_op(")");
    static const char* reserved[] = {"true", "false", "none", "True", "False", "None", "loop"};
    for (const auto& name : names)
      for (const char* r : reserved)
        if (name == r && !(tag == "set" && name == "loop")) fail("cannot assign to '" + name + "'", cur().line);
    return names;
  }

  NodeP parse_set(int line) {
    if (cur().type == T::name && peek().type == T::op && peek().text == ".") {
      auto n = node(N::set_attr, line);
      n->str = take().text;
      ++i_;
      n->attr = expect_name("an attribute name after '.' in the 'set' tag");
      expect_op("=");
      n->kids.push_back(parse_tuple_expression());
      expect_block_end("set");
      return n;
    }
    std::vector<std::string> targets = parse_targets("set");
    if (cur().type == T::block_end) {  // block set: {% set x %}...{% endset %}
      if (targets.size() != 1) fail("a block 'set' assigns one name", line);
      ++i_;
      auto n = node(N::set_block, line);
      n->targets = std::move(targets);
      std::string end;
      n->body = parse_body({"endset"}, &end);
      expect_block_end("endset");
      return n;
    }
    expect_op("=");
    auto n = node(N::set, line);
    n->targets = std::move(targets);
    n->kids.push_back(parse_tuple_expression());
    expect_block_end("set");
    return n;
  }

  // `a, b` without parentheses (the right side of set).
  NodeP parse_tuple_expression() {
    const int line = cur().line;
    NodeP first = parse_expression();
    if (!at_op(",")) return first;
    auto t = node(N::tuple, line);
    t->kids.push_back(std::move(first));
    while (at_op(",")) {
      ++i_;
      if (cur().type == T::block_end) break;
      t->kids.push_back(parse_expression());
    }
    return t;
  }

  NodeP parse_expression() {
    DepthGuard guard(*this);
    NodeP value = parse_or();
    if (at_name("if")) {
      const int line = cur().line;
      ++i_;
      auto n = node(N::cond, line);
      NodeP condition = parse_or();
      NodeP otherwise;
      if (at_name("else")) {
        ++i_;
        otherwise = parse_expression();
      }
      n->kids.push_back(std::move(value));
      n->kids.push_back(std::move(condition));
      n->kids.push_back(std::move(otherwise));
      return n;
    }
    return value;
  }

  NodeP parse_or() {
    NodeP left = parse_and();
    ChainGuard chain(*this);
    while (at_name("or")) {
      chain.grow();
      auto n = node(N::or_, take().line);
      n->kids.push_back(std::move(left));
      n->kids.push_back(parse_and());
      left = std::move(n);
    }
    return left;
  }

  NodeP parse_and() {
    NodeP left = parse_not();
    ChainGuard chain(*this);
    while (at_name("and")) {
      chain.grow();
      auto n = node(N::and_, take().line);
      n->kids.push_back(std::move(left));
      n->kids.push_back(parse_not());
      left = std::move(n);
    }
    return left;
  }

  NodeP parse_not() {
    if (at_name("not")) {
      DepthGuard guard(*this);
      auto n = node(N::not_, take().line);
      n->kids.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }

  NodeP parse_compare() {
    const int line = cur().line;
    NodeP left = parse_math1();
    NodeP n;
    ChainGuard chain(*this);
    while (true) {
      std::string op;
      if (cur().type == T::op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == ">" ||
                                  cur().text == "<=" || cur().text == ">=")) {
        op = take().text;
      } else if (at_name("in")) {
        ++i_;
        op = "in";
      } else if (at_name("not") && peek().type == T::name && peek().text == "in") {
        i_ += 2;
        op = "not in";
      } else {
        break;
      }
      chain.grow();
      if (!n) {
        n = node(N::compare, line);
        n->kids.push_back(std::move(left));
      }
      n->ops.push_back(op);
      n->kids.push_back(parse_math1());
    }
    return n ? std::move(n) : std::move(left);
  }

  NodeP binary(std::string op, NodeP l, NodeP r, int line) {
    auto n = node(N::binary, line);
    n->str = std::move(op);
    n->kids.push_back(std::move(l));
    n->kids.push_back(std::move(r));
    return n;
  }

  NodeP parse_math1() {
    NodeP left = parse_concat();
    ChainGuard chain(*this);
    while (at_op("+") || at_op("-")) {
      chain.grow();
      const Token op = take();
      left = binary(op.text, std::move(left), parse_concat(), op.line);
    }
    return left;
  }

  NodeP parse_concat() {
    NodeP left = parse_math2();
    ChainGuard chain(*this);
    while (at_op("~")) {
      chain.grow();
      const Token op = take();
      left = binary("~", std::move(left), parse_math2(), op.line);
    }
    return left;
  }

  NodeP parse_math2() {
    NodeP left = parse_pow();
    ChainGuard chain(*this);
    while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
      chain.grow();
      const Token op = take();
      left = binary(op.text, std::move(left), parse_pow(), op.line);
    }
    return left;
  }

  NodeP parse_pow() {
    NodeP left = parse_unary(true);
    ChainGuard chain(*this);
    while (at_op("**")) {
      chain.grow();
      const Token op = take();
      left = binary("**", std::move(left), parse_unary(true), op.line);
    }
    return left;
  }

  NodeP parse_unary(bool with_filter) {
    DepthGuard guard(*this);
    NodeP n;
    if (at_op("-") || at_op("+")) {
      const Token op = take();
      n = node(op.text == "-" ? N::neg : N::pos, op.line);
      n->kids.push_back(parse_unary(false));
    } else {
      n = parse_postfix(parse_primary());
    }
    if (with_filter) n = parse_filter_chain(std::move(n));
    return n;
  }

  NodeP parse_primary() {
    const Token& t = cur();
    const int line = t.line;
    if (t.type == T::name) {
      const std::string name = take().text;
      if (name == "true" || name == "True") return literal(Value::boolean(true), line);
      if (name == "false" || name == "False") return literal(Value::boolean(false), line);
      if (name == "none" || name == "None") return literal(Value::none(), line);
      auto n = node(N::name, line);
      n->str = name;
      return n;
    }
    if (t.type == T::string) {
      std::string s;
      while (cur().type == T::string) s += take().text;  // adjacent literals join, as in Python
      return literal(Value::string(std::move(s)), line);
    }
    if (t.type == T::integer) {
      const std::string digits = take().text;
      int64_t v = 0;
      const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), v);
      if (r.ec != std::errc()) return literal(Value::floating(std::strtod(digits.c_str(), nullptr)), line);
      return literal(Value::integer(v), line);
    }
    if (t.type == T::floating) return literal(Value::floating(std::strtod(take().text.c_str(), nullptr)), line);
    if (at_op("(")) {
      ++i_;
      if (at_op(")")) {
        ++i_;
        auto n = node(N::tuple, line);
        return n;
      }
      NodeP first = parse_expression();
      if (at_op(")")) {
        ++i_;
        return first;
      }
      auto n = node(N::tuple, line);
      n->kids.push_back(std::move(first));
      while (at_op(",")) {
        ++i_;
        if (at_op(")")) break;
        n->kids.push_back(parse_expression());
      }
      expect_op(")");
      return n;
    }
    if (at_op("[")) {
      ++i_;
      auto n = node(N::list, line);
      while (!at_op("]")) {
        n->kids.push_back(parse_expression());
        if (!at_op(",")) break;
        ++i_;
      }
      expect_op("]");
      return n;
    }
    if (at_op("{")) {
      ++i_;
      auto n = node(N::dict, line);
      while (!at_op("}")) {
        n->kids.push_back(parse_expression());
        expect_op(":");
        n->kids.push_back(parse_expression());
        if (!at_op(",")) break;
        ++i_;
      }
      expect_op("}");
      return n;
    }
    unexpected("a value");
  }

  NodeP literal(Value v, int line) {
    auto n = node(N::literal, line);
    n->value = std::move(v);
    return n;
  }

  NodeP parse_postfix(NodeP n) {
    ChainGuard chain(*this);
    while (true) {
      if (at_op(".") || at_op("[") || at_op("(")) chain.grow();
      if (at_op(".")) {
        const int line = take().line;
        if (cur().type == T::integer) {  // x.0 is x[0]
          auto item = node(N::item, line);
          item->kids.push_back(std::move(n));
          int64_t index = 0;
          const std::string digits = take().text;
          if (std::from_chars(digits.data(), digits.data() + digits.size(), index).ec != std::errc())
            fail("index '" + digits + "' is too large", line);
          item->kids.push_back(literal(Value::integer(index), line));
          n = std::move(item);
          continue;
        }
        auto a = node(N::attr, line);
        a->attr = expect_name("an attribute name after '.'");
        a->kids.push_back(std::move(n));
        n = std::move(a);
      } else if (at_op("[")) {
        n = parse_subscript(std::move(n));
      } else if (at_op("(")) {
        n = parse_call(std::move(n));
      } else {
        return n;
      }
    }
  }

  NodeP parse_subscript(NodeP obj) {
    const int line = take().line;  // '['
    auto slice_part = [&]() -> NodeP {
      if (at_op(":") || at_op("]")) return nullptr;
      return parse_expression();
    };
    NodeP start = slice_part();
    if (!at_op(":")) {
      if (!start) unexpected("an index inside '[]'");
      expect_op("]");
      auto n = node(N::item, line);
      n->kids.push_back(std::move(obj));
      n->kids.push_back(std::move(start));
      return n;
    }
    ++i_;
    NodeP stop = slice_part();
    NodeP step;
    if (at_op(":")) {
      ++i_;
      step = slice_part();
    }
    expect_op("]");
    auto n = node(N::slice, line);
    n->kids.push_back(std::move(obj));
    n->kids.push_back(std::move(start));
    n->kids.push_back(std::move(stop));
    n->kids.push_back(std::move(step));
    return n;
  }

  // Arguments "(a, b, k=v)" into n->kids (after what is there) and n->kw.
  void parse_args(Node& n) {
    expect_op("(");
    while (!at_op(")")) {
      if (cur().type == T::name && peek().type == T::op && peek().text == "=") {
        std::string key = take().text;
        ++i_;
        n.kw.emplace_back(std::move(key), parse_expression());
      } else {
        if (!n.kw.empty()) fail("a positional argument after a keyword argument", cur().line);
        n.kids.push_back(parse_expression());
      }
      if (!at_op(",")) break;
      ++i_;
    }
    expect_op(")");
  }

  NodeP parse_call(NodeP callee) {
    auto n = node(N::call, cur().line);
    n->kids.push_back(std::move(callee));
    parse_args(*n);
    return n;
  }

  NodeP parse_filter_chain(NodeP n) {
    ChainGuard chain(*this);
    while (true) {
      if (at_op("|") || at_name("is") || at_op("(")) chain.grow();
      if (at_op("|")) {
        const int line = take().line;
        auto f = node(N::filter, line);
        f->str = expect_name("a filter name after '|'");
        f->kids.push_back(std::move(n));
        if (at_op("(")) parse_args(*f);
        n = std::move(f);
      } else if (at_name("is")) {
        const int line = take().line;
        auto t = node(N::test, line);
        if (at_name("not")) {
          ++i_;
          t->negate = true;
        }
        t->str = expect_name("a test name after 'is'");
        t->kids.push_back(std::move(n));
        if (at_op("(")) {
          parse_args(*t);
        } else if ((cur().type == T::name || cur().type == T::string || cur().type == T::integer ||
                    cur().type == T::floating || at_op("[") || at_op("{")) &&
                   !at_name("else") && !at_name("or") && !at_name("and") && !at_name("if") && !at_name("is") &&
                   !at_name("in") && !at_name("not")) {
          t->kids.push_back(parse_postfix(parse_primary()));  // `x is divisibleby 3`
        }
        n = std::move(t);
      } else if (at_op("(")) {
        n = parse_call(std::move(n));
      } else {
        return n;
      }
    }
  }

  std::vector<Token> t_;
  std::size_t i_ = 0;
  std::size_t depth_ = 0;
  std::size_t max_depth_;
  int loop_depth_ = 0;
};

// ---------------------------------------------------------------------------------------------------------------
// Interpreter.

class Interp {
 public:
  Interp(const Limits& limits, std::time_t now) : limits_(limits), now_(now) {}

  enum class Flow { normal, break_, continue_ };

  std::string run(const Body& body, const nlohmann::ordered_json& variables) {
    frames_.emplace_back();
    if (!variables.is_object() && !variables.is_null()) fail("the template's variables must be a JSON object");
    if (variables.is_object())
      for (auto it = variables.begin(); it != variables.end(); ++it) frames_.back()[it.key()] = from_json(it.value());
    frames_.emplace_back();  // the template's own top-level set
    exec(body);
    return std::move(out_);
  }

  int line() const { return line_; }
  const Limits& limits() const { return limits_; }

  void check_size(std::size_t bytes, const char* what) const {
    if (bytes > limits_.max_output_bytes)
      fail(std::string(what) + " longer than " + std::to_string(limits_.max_output_bytes) + " bytes");
  }

 private:
  void step() {
    if (++steps_ > limits_.max_steps)
      fail("more than " + std::to_string(limits_.max_steps) + " steps (loop iterations and statements)");
  }

  Flow exec(const Body& body) {
    for (const auto& n : body) {
      const Flow f = exec(*n);
      if (f != Flow::normal) return f;
    }
    return Flow::normal;
  }

  Flow exec(const Node& n) {
    step();
    line_ = n.line;
    switch (n.kind) {
      case N::text: emit(n.str); return Flow::normal;
      case N::output: emit(py_str(eval(*n.kids[0]))); return Flow::normal;
      case N::if_:
        for (std::size_t k = 0; k < n.kids.size(); ++k)
          if (truthy(eval(*n.kids[k]))) return exec(n.bodies[k]);
        return exec(n.else_body);
      case N::for_: return exec_for(n);
      case N::set:
        assign(n.targets, eval(*n.kids[0]), n.line);
        return Flow::normal;
      case N::set_attr: {
        Value target = lookup(n.str);
        line_ = n.line;
        if (!target.is(Kind::ns))
          fail("cannot set attribute '" + n.attr + "' of '" + n.str + "', " + a_type(target) + " (only a namespace() can be changed)");
        Value v = eval(*n.kids[0]);
        target.dict->set(n.attr, std::move(v));
        return Flow::normal;
      }
      case N::set_block: {
        const std::size_t mark = out_.size();
        const Flow f = exec(n.body);
        std::string captured = out_.substr(mark);
        out_.resize(mark);
        assign(n.targets, Value::string(std::move(captured)), n.line);
        return f;
      }
      case N::break_: return Flow::break_;
      case N::continue_: return Flow::continue_;
      case N::generation: return exec(n.body);
      default: fail("internal: an expression where a statement was expected", n.line);
    }
  }

  void emit(const std::string& s) {
    check_size(out_.size() + s.size(), "output");
    out_ += s;
  }

  void assign(const std::vector<std::string>& targets, Value v, int line) {
    if (targets.size() == 1) {
      frames_.back()[targets[0]] = std::move(v);
      return;
    }
    line_ = line;
    const ValueList items = iterate(v, "unpacking into " + std::to_string(targets.size()) + " names");
    if (items.size() != targets.size())
      fail("cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) + " names");
    for (std::size_t k = 0; k < targets.size(); ++k) frames_.back()[targets[k]] = items[k];
  }

  Flow exec_for(const Node& n) {
    const Value iterable = eval(*n.kids[0]);
    line_ = n.line;
    ValueList items = iterate(iterable, "the iterable of a for loop");
    if (n.kids[1]) {  // {% for x in xs if cond %}: the filter runs before loop.* is counted
      ValueList kept;
      for (auto& item : items) {
        step();
        frames_.emplace_back();
        assign(n.targets, item, n.line);
        const bool keep = truthy(eval(*n.kids[1]));
        frames_.pop_back();
        if (keep) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec(n.else_body);
    const auto length = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < length; ++k) {
      step();
      frames_.emplace_back();
      assign(n.targets, items[static_cast<std::size_t>(k)], n.line);
      Dict loop;
      loop.items = {{"index", Value::integer(k + 1)},
                    {"index0", Value::integer(k)},
                    {"revindex", Value::integer(length - k)},
                    {"revindex0", Value::integer(length - k - 1)},
                    {"first", Value::boolean(k == 0)},
                    {"last", Value::boolean(k == length - 1)},
                    {"length", Value::integer(length)},
                    {"depth", Value::integer(1)},
                    {"depth0", Value::integer(0)}};
      if (k > 0) loop.items.emplace_back("previtem", items[static_cast<std::size_t>(k - 1)]);
      if (k + 1 < length) loop.items.emplace_back("nextitem", items[static_cast<std::size_t>(k + 1)]);
      loop.items.emplace_back("cycle", Value::function([k](CallArgs& a) -> Value {
        if (a.pos.empty()) fail("loop.cycle() needs at least one value");
        return a.pos[static_cast<std::size_t>(k) % a.pos.size()];
      }));
      frames_.back()["loop"] = make_dict(std::move(loop));
      const Flow f = exec(n.body);
      frames_.pop_back();
      if (f == Flow::break_) break;
    }
    return Flow::normal;
  }

  Value lookup(const std::string& name) {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      const auto found = it->find(name);
      if (found != it->end()) return found->second;
    }
    if (name == "raise_exception")
      return Value::function([](CallArgs& a) -> Value {
        throw Raised{a.pos.empty() ? std::string() : py_str(a.pos[0])};
      });
    if (name == "strftime_now")
      return Value::function([this](CallArgs& a) -> Value {
        const auto fmt = a.get(0, "format");
        if (!fmt || !fmt->is(Kind::string)) fail("strftime_now() takes a format string");
        std::tm tm{};
        const std::time_t t = now_ >= 0 ? now_ : std::time(nullptr);
        localtime_r(&t, &tm);
        char buf[512];
        const std::size_t n = std::strftime(buf, sizeof buf, fmt->s.c_str(), &tm);
        return Value::string(std::string(buf, n));
      });
    if (name == "namespace" || name == "dict")
      return Value::function([name](CallArgs& a) -> Value {
        Dict d;
        for (const auto& p : a.pos) {
          if (!p.is(Kind::dict)) fail(name + "() takes a dict or keyword arguments, found " + a_type(p));
          for (const auto& [k, v] : p.dict->items) d.set(k, v);
        }
        for (const auto& [k, v] : a.kw) d.set(k, v);
        return make_dict(std::move(d), name == "namespace" ? Kind::ns : Kind::dict);
      });
    if (name == "range")
      return Value::function([this](CallArgs& a) -> Value {
        if (a.pos.empty() || a.pos.size() > 3) fail("range() takes 1 to 3 integers");
        for (const auto& p : a.pos)
          if (!p.is(Kind::integer)) fail(std::string("range() takes integers, found ") + a_type(p));
        const int64_t start = a.pos.size() > 1 ? a.pos[0].i : 0;
        const int64_t stop = a.pos.size() > 1 ? a.pos[1].i : a.pos[0].i;
        const int64_t stride = a.pos.size() > 2 ? a.pos[2].i : 1;
        if (stride == 0) fail("range() step must not be zero");
        const long double count = stride > 0 ? std::ceil((static_cast<long double>(stop) - start) / stride)
                                             : std::ceil((static_cast<long double>(start) - stop) / -stride);
        if (count > static_cast<long double>(limits_.max_steps))
          fail("range() of more than " + std::to_string(limits_.max_steps) + " values");
        ValueList out;
        for (int64_t k = 0; k < static_cast<int64_t>(std::max<long double>(count, 0)); ++k)
          out.push_back(Value::integer(static_cast<int64_t>(static_cast<__int128>(start) + static_cast<__int128>(k) * stride)));
        return Value::of_list(std::move(out));
      });
    return Value::undefined("'" + name + "' is undefined");
  }

  Value eval(const Node& n) {
    line_ = n.line;
    switch (n.kind) {
      case N::literal: return n.value;
      case N::name: return lookup(n.str);
      case N::attr: {
        Value obj = eval(*n.kids[0]);
        line_ = n.line;
        return get_attr(obj, n.attr);
      }
      case N::item: {
        Value obj = eval(*n.kids[0]);
        Value key = eval(*n.kids[1]);
        line_ = n.line;
        return get_item(obj, key);
      }
      case N::slice: return eval_slice(n);
      case N::call: {
        Value callee = eval(*n.kids[0]);
        CallArgs args = eval_args(n, 1, "call");
        line_ = n.line;
        if (callee.is(Kind::undefined)) fail_undefined(callee, "called as a function");
        if (!callee.is(Kind::function)) fail(a_type(callee) + " is not callable");
        return (*callee.fn)(args);
      }
      case N::filter: {
        Value operand = eval(*n.kids[0]);
        CallArgs args = eval_args(n, 1, "filter '" + n.str + "'");
        line_ = n.line;
        return apply_filter(n.str, operand, args);
      }
      case N::test: {
        Value operand = eval(*n.kids[0]);
        CallArgs args = eval_args(n, 1, "test '" + n.str + "'");
        line_ = n.line;
        return Value::boolean(apply_test(n.str, operand, args) != n.negate);
      }
      case N::neg:
      case N::pos: {
        Value v = eval(*n.kids[0]);
        line_ = n.line;
        if (!v.is_number()) {
          if (v.is(Kind::undefined)) fail_undefined(v, "operand of unary '-'");
          fail(std::string("bad operand for unary ") + (n.kind == N::neg ? "'-'" : "'+'") + ": " + a_type(v));
        }
        if (n.kind == N::pos) return v.is(Kind::boolean) ? Value::integer(v.whole()) : v;
        if (v.is(Kind::floating)) return Value::floating(-v.f);
        if (v.whole() == INT64_MIN) fail("integer overflow in unary '-' (beyond 64 bits)");
        return Value::integer(-v.whole());
      }
      case N::not_: return Value::boolean(!truthy(eval(*n.kids[0])));
      case N::and_: {
        Value l = eval(*n.kids[0]);
        return truthy(l) ? eval(*n.kids[1]) : l;
      }
      case N::or_: {
        Value l = eval(*n.kids[0]);
        return truthy(l) ? l : eval(*n.kids[1]);
      }
      case N::binary: {
        Value l = eval(*n.kids[0]);
        Value r = eval(*n.kids[1]);
        line_ = n.line;
        return binary(n.str, l, r);
      }
      case N::compare: {
        Value left = eval(*n.kids[0]);
        for (std::size_t k = 0; k < n.ops.size(); ++k) {
          Value right = eval(*n.kids[k + 1]);
          line_ = n.line;
          if (!compare(n.ops[k], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case N::cond:
        if (truthy(eval(*n.kids[1]))) return eval(*n.kids[0]);
        return n.kids[2] ? eval(*n.kids[2]) : Value::undefined("the else branch of an 'if' expression without 'else'");
      case N::list:
      case N::tuple: {
        ValueList items;
        for (const auto& k : n.kids) items.push_back(eval(*k));
        return Value::of_list(std::move(items), n.kind == N::tuple);
      }
      case N::dict: {
        Dict d;
        for (std::size_t k = 0; k + 1 < n.kids.size(); k += 2) {
          Value key = eval(*n.kids[k]);
          d.set(key.is(Kind::string) ? key.s : py_str(key), eval(*n.kids[k + 1]));
        }
        return make_dict(std::move(d));
      }
      default: fail("internal: a statement where an expression was expected", n.line);
    }
  }

  CallArgs eval_args(const Node& n, std::size_t first, std::string what) {
    CallArgs a{{}, {}, *this, std::move(what)};
    for (std::size_t k = first; k < n.kids.size(); ++k) a.pos.push_back(eval(*n.kids[k]));
    for (const auto& [key, expr] : n.kw) a.kw.emplace_back(key, eval(*expr));
    return a;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Attribute and item access, as jinja2's sandbox does it: obj.name tries a method/attribute first and then the
  // item; obj[key] the item first. What is not found is undefined; reading from an undefined is an error.

  static Value bound(std::function<Value(CallArgs&)> f) { return Value::function(std::move(f)); }

  Value get_attr(const Value& obj, const std::string& name) {
    if (obj.is(Kind::undefined)) fail_undefined(obj, "reading its attribute '" + name + "'");
    if (obj.is(Kind::dict)) {
      if (Value m = dict_method(obj, name); !m.is(Kind::undefined)) return m;
      if (const Value* v = obj.dict->find(name)) return *v;
      return Value::undefined("dict has no attribute '" + name + "'");
    }
    if (obj.is(Kind::ns)) {
      if (const Value* v = obj.dict->find(name)) return *v;
      return Value::undefined("namespace has no attribute '" + name + "'");
    }
    if (obj.is(Kind::string)) {
      if (Value m = string_method(obj.s, name); !m.is(Kind::undefined)) return m;
    }
    return Value::undefined(std::string(type_name(obj)) + " has no attribute '" + name + "'");
  }

  Value get_item(const Value& obj, const Value& key) {
    if (obj.is(Kind::undefined)) fail_undefined(obj, "reading its item [" + py_repr(key, 0) + "]");
    if (obj.is(Kind::dict) || obj.is(Kind::ns)) {
      if (key.is(Kind::string)) {
        if (const Value* v = obj.dict->find(key.s)) return *v;
        if (obj.is(Kind::dict))
          if (Value m = dict_method(obj, key.s); !m.is(Kind::undefined)) return m;
      }
      return Value::undefined("dict has no key " + py_repr(key, 0));
    }
    if (obj.is(Kind::list) || obj.is(Kind::string)) {
      if (!key.is(Kind::integer) && !key.is(Kind::boolean)) {
        if (key.is(Kind::string) && obj.is(Kind::string)) return get_attr(obj, key.s);
        return Value::undefined(std::string(type_name(obj)) + " has no item " + py_repr(key, 0));
      }
      if (obj.is(Kind::list)) {
        const auto size = static_cast<int64_t>(obj.list->size());
        int64_t k = key.whole();
        if (k < 0) k += size;
        if (k < 0 || k >= size) return Value::undefined("list index " + std::to_string(key.whole()) + " out of range");
        return (*obj.list)[static_cast<std::size_t>(k)];
      }
      const auto starts = code_point_starts(obj.s);
      const auto size = static_cast<int64_t>(starts.size() - 1);
      int64_t k = key.whole();
      if (k < 0) k += size;
      if (k < 0 || k >= size) return Value::undefined("string index " + std::to_string(key.whole()) + " out of range");
      return Value::string(obj.s.substr(starts[static_cast<std::size_t>(k)], starts[static_cast<std::size_t>(k) + 1] - starts[static_cast<std::size_t>(k)]));
    }
    return Value::undefined(std::string(type_name(obj)) + " has no item " + py_repr(key, 0));
  }

  Value eval_slice(const Node& n) {
    Value obj = eval(*n.kids[0]);
    std::optional<int64_t> bounds[3];
    for (int k = 0; k < 3; ++k) {
      if (!n.kids[static_cast<std::size_t>(k) + 1]) continue;
      Value v = eval(*n.kids[static_cast<std::size_t>(k) + 1]);
      if (v.is(Kind::none)) continue;
      line_ = n.line;
      if (!v.is(Kind::integer) && !v.is(Kind::boolean))
        fail(std::string("slice indices must be integers or none, found ") + a_type(v));
      bounds[k] = v.whole();
    }
    line_ = n.line;
    if (obj.is(Kind::undefined)) fail_undefined(obj, "sliced");
    const int64_t stride = bounds[2].value_or(1);
    if (stride == 0) fail("slice step cannot be zero");
    ValueList items;
    std::vector<std::size_t> starts;
    int64_t size = 0;
    if (obj.is(Kind::list)) {
      size = static_cast<int64_t>(obj.list->size());
    } else if (obj.is(Kind::string)) {
      starts = code_point_starts(obj.s);
      size = static_cast<int64_t>(starts.size() - 1);
    } else {
      fail(a_type(obj) + " cannot be sliced");
    }
    // Python's slice.indices().
    auto clamp = [&](std::optional<int64_t> v, int64_t fallback) {
      if (!v) return fallback;
      int64_t x = *v;
      if (x < 0) x += size;
      if (stride > 0) return std::clamp<int64_t>(x, 0, size);
      return std::clamp<int64_t>(x, -1, size - 1);
    };
    const int64_t begin = clamp(bounds[0], stride > 0 ? 0 : size - 1);
    const int64_t end = clamp(bounds[1], stride > 0 ? size : -1);
    std::vector<int64_t> picked;
    for (__int128 k = begin; stride > 0 ? k < end : k > end; k += stride) picked.push_back(static_cast<int64_t>(k));
    if (obj.is(Kind::list)) {
      for (int64_t k : picked) items.push_back((*obj.list)[static_cast<std::size_t>(k)]);
      return Value::of_list(std::move(items), obj.b);
    }
    std::string out;
    for (int64_t k : picked)
      out += obj.s.substr(starts[static_cast<std::size_t>(k)], starts[static_cast<std::size_t>(k) + 1] - starts[static_cast<std::size_t>(k)]);
    return Value::string(std::move(out));
  }

  Value dict_method(const Value& obj, const std::string& name) {
    const auto d = obj.dict;
    if (name == "items")
      return bound([d](CallArgs&) {
        ValueList out;
        for (const auto& [k, v] : d->items) out.push_back(Value::of_list({Value::string(k), v}, true));
        return Value::of_list(std::move(out));
      });
    if (name == "keys")
      return bound([d](CallArgs&) {
        ValueList out;
        for (const auto& [k, v] : d->items) out.push_back(Value::string(k));
        return Value::of_list(std::move(out));
      });
    if (name == "values")
      return bound([d](CallArgs&) {
        ValueList out;
        for (const auto& [k, v] : d->items) out.push_back(v);
        return Value::of_list(std::move(out));
      });
    if (name == "get")
      return bound([d](CallArgs& a) {
        const auto key = a.get(0, "key");
        if (!key) fail("dict.get() needs a key");
        if (key->is(Kind::string))
          if (const Value* v = d->find(key->s)) return *v;
        return a.get(1, "default").value_or(Value::none());
      });
    return Value::undefined("");
  }

  static std::string string_arg(const CallArgs& a, std::size_t index, std::string_view name) {
    const auto v = a.get(index, name);
    if (!v || !v->is(Kind::string))
      fail(a.what + " needs a string as argument '" + std::string(name) + "'" + (v ? std::string(", found ") + a_type(*v) : ""));
    return v->s;
  }

  static std::optional<std::string> chars_arg(const CallArgs& a) {
    const auto v = a.get(0, "chars");
    if (!v || v->is(Kind::none)) return std::nullopt;
    if (!v->is(Kind::string)) fail(a.what + " takes a string of characters, found " + a_type(*v));
    return v->s;
  }

  Value string_method(const std::string& s, const std::string& name) {
    const std::string what = "str." + name + "()";
    auto method = [&](std::function<Value(CallArgs&)> f) {
      return bound([f = std::move(f), what](CallArgs& a) {
        a.what = what;
        return f(a);
      });
    };
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const bool left = name != "rstrip", right = name != "lstrip";
      return method([s, left, right](CallArgs& a) { return Value::string(py_strip(s, chars_arg(a), left, right)); });
    }
    if (name == "startswith" || name == "endswith") {
      const bool start = name == "startswith";
      return method([s, start](CallArgs& a) {
        const auto arg = a.get(0, "prefix");
        if (!arg) fail(a.what + " needs an argument");
        ValueList options = arg->is(Kind::list) ? *arg->list : ValueList{*arg};
        for (const auto& o : options) {
          if (!o.is(Kind::string)) fail(a.what + " takes a string or a tuple of strings, found " + a_type(o));
          if (o.s.size() <= s.size() && (start ? s.compare(0, o.s.size(), o.s) == 0 : s.compare(s.size() - o.s.size(), o.s.size(), o.s) == 0))
            return Value::boolean(true);
        }
        return Value::boolean(false);
      });
    }
    if (name == "split" || name == "rsplit")
      return method([s, right = name == "rsplit", this](CallArgs& a) { return py_split(s, a, right); });
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize")
      return method([s, name](CallArgs&) { return Value::string(change_case(s, name)); });
    if (name == "replace")
      return method([s, this](CallArgs& a) {
        const std::string from = string_arg(a, 0, "old"), to = string_arg(a, 1, "new");
        const auto count = a.get(2, "count");
        return Value::string(py_replace(s, from, to, count && count->is(Kind::integer) ? count->i : -1));
      });
    if (name == "find" || name == "count")
      return method([s, find = name == "find"](CallArgs& a) {
        const std::string sub = string_arg(a, 0, "sub");
        if (find) {
          const auto at = s.find(sub);
          if (at == std::string::npos) return Value::integer(-1);
          return Value::integer(static_cast<int64_t>(code_point_starts(s.substr(0, at)).size() - 1));
        }
        if (sub.empty()) return Value::integer(static_cast<int64_t>(code_point_starts(s).size()));
        int64_t c = 0;
        for (auto at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++c;
        return Value::integer(c);
      });
    if (name == "join")
      return method([s, this](CallArgs& a) {
        const auto items = a.get(0, "iterable");
        if (!items) fail(a.what + " needs an iterable");
        std::string out;
        bool first = true;
        for (const auto& v : iterate(*items, a.what)) {
          if (!v.is(Kind::string)) fail(a.what + " joins strings, found " + a_type(v));
          out += (first ? "" : s) + v.s;
          first = false;
          check_size(out.size(), "a joined string");
        }
        return Value::string(std::move(out));
      });
    if (name == "format") return method([](CallArgs& a) -> Value { fail(a.what + " is not supported by this engine"); });
    return Value::undefined("");
  }

  Value py_split(const std::string& s, const CallArgs& a, bool from_right) {
    const auto sep = a.get(0, "sep");
    const auto max_arg = a.get(1, "maxsplit");
    const int64_t maxsplit = max_arg && max_arg->is(Kind::integer) ? max_arg->i : -1;
    std::vector<std::string> parts;
    if (!sep || sep->is(Kind::none)) {  // runs of whitespace, no empty parts
      const auto starts = code_point_starts(s);
      const std::size_t n = starts.size() - 1;
      auto space = [&](std::size_t k) { return py_space(decode_at(s, starts[k], starts[k + 1])); };
      if (!from_right) {
        std::size_t k = 0;
        while (true) {
          while (k < n && space(k)) ++k;
          if (k >= n) break;
          if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
            std::size_t e = n;
            while (e > k && space(e - 1)) --e;
            parts.push_back(s.substr(starts[k], starts[e] - starts[k]));
            break;
          }
          std::size_t b = k;
          while (k < n && !space(k)) ++k;
          parts.push_back(s.substr(starts[b], starts[k] - starts[b]));
        }
      } else {
        std::size_t k = n;
        while (true) {
          while (k > 0 && space(k - 1)) --k;
          if (k == 0) break;
          if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
            std::size_t b = 0;
            while (b < k && space(b)) ++b;
            parts.push_back(s.substr(starts[b], starts[k] - starts[b]));
            break;
          }
          std::size_t e = k;
          while (k > 0 && !space(k - 1)) --k;
          parts.push_back(s.substr(starts[k], starts[e] - starts[k]));
        }
        std::reverse(parts.begin(), parts.end());
      }
    } else {
      if (!sep->is(Kind::string)) fail(a.what + " takes a string separator, found " + a_type(*sep));
      if (sep->s.empty()) fail(a.what + ": empty separator");
      const std::string& d = sep->s;
      if (!from_right) {
        std::size_t b = 0;
        for (auto at = s.find(d); at != std::string::npos; at = s.find(d, b)) {
          if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) break;
          parts.push_back(s.substr(b, at - b));
          b = at + d.size();
        }
        parts.push_back(s.substr(b));
      } else {
        std::size_t e = s.size();
        while (e >= d.size()) {
          if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) break;
          const auto at = s.rfind(d, e - d.size());
          if (at == std::string::npos) break;
          parts.push_back(s.substr(at + d.size(), e - at - d.size()));
          e = at;
        }
        parts.push_back(s.substr(0, e));
        std::reverse(parts.begin(), parts.end());
      }
    }
    ValueList out;
    for (auto& p : parts) out.push_back(Value::string(std::move(p)));
    return Value::of_list(std::move(out));
  }

  static std::string change_case(const std::string& s, const std::string& how) {
    std::string out = s;
    bool prev_letter = false;
    for (std::size_t k = 0; k < out.size(); ++k) {
      const auto c = static_cast<unsigned char>(out[k]);
      const bool letter = std::isalpha(c) != 0;
      if (how == "upper") {
        out[k] = static_cast<char>(std::toupper(c));
      } else if (how == "lower") {
        out[k] = static_cast<char>(std::tolower(c));
      } else if (how == "title") {
        out[k] = static_cast<char>(prev_letter ? std::tolower(c) : std::toupper(c));
      } else {  // capitalize
        out[k] = static_cast<char>(k == 0 ? std::toupper(c) : std::tolower(c));
      }
      prev_letter = letter || c >= 0x80;
    }
    return out;
  }

  std::string py_replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
    std::string out;
    if (from.empty()) {  // Python inserts `to` around every character
      const auto starts = code_point_starts(s);
      int64_t done = 0;
      for (std::size_t k = 0; k + 1 < starts.size(); ++k) {
        if (count < 0 || done < count) {
          out += to;
          ++done;
        }
        out += s.substr(starts[k], starts[k + 1] - starts[k]);
        check_size(out.size(), "a replaced string");
      }
      if (count < 0 || done < count) out += to;
      return out;
    }
    std::size_t b = 0;
    int64_t done = 0;
    for (auto at = s.find(from); at != std::string::npos && (count < 0 || done < count); at = s.find(from, b)) {
      out += s.substr(b, at - b) + to;
      b = at + from.size();
      ++done;
      check_size(out.size(), "a replaced string");
    }
    return out + s.substr(b);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Operators.

  Value binary(const std::string& op, const Value& l, const Value& r) {
    if (op == "~") {
      std::string s = py_str(l) + py_str(r);
      check_size(s.size(), "a string");
      return Value::string(std::move(s));
    }
    if (l.is(Kind::undefined)) fail_undefined(l, "left operand of '" + op + "'");
    if (r.is(Kind::undefined)) fail_undefined(r, "right operand of '" + op + "'");
    auto type_error = [&]() -> Value {
      fail("unsupported operand types for '" + op + "': " + a_type(l) + " and " + a_type(r));
    };
    if (op == "+") {
      if (l.is(Kind::string) && r.is(Kind::string)) {
        check_size(l.s.size() + r.s.size(), "a string");
        return Value::string(l.s + r.s);
      }
      if (l.is(Kind::list) && r.is(Kind::list)) {
        check_size(l.list->size() + r.list->size(), "a list");
        ValueList out = *l.list;
        out.insert(out.end(), r.list->begin(), r.list->end());
        return Value::of_list(std::move(out), l.b && r.b);
      }
    }
    if (op == "*" && (l.is(Kind::string) || l.is(Kind::list) || r.is(Kind::string) || r.is(Kind::list))) {
      const Value& seq = l.is(Kind::string) || l.is(Kind::list) ? l : r;
      const Value& times = &seq == &l ? r : l;
      if (!times.is(Kind::integer) && !times.is(Kind::boolean)) return type_error();
      const int64_t n = std::max<int64_t>(0, times.whole());
      const std::size_t unit = seq.is(Kind::string) ? seq.s.size() : seq.list->size();
      if (unit && static_cast<uint64_t>(n) > limits_.max_output_bytes / unit) check_size(limits_.max_output_bytes + 1, seq.is(Kind::string) ? "a string" : "a list");
      if (seq.is(Kind::string)) {
        std::string out;
        for (int64_t k = 0; k < n; ++k) out += seq.s;
        return Value::string(std::move(out));
      }
      ValueList out;
      for (int64_t k = 0; k < n; ++k) out.insert(out.end(), seq.list->begin(), seq.list->end());
      return Value::of_list(std::move(out));
    }
    if (!l.is_number() || !r.is_number()) return type_error();
    const bool ints = !l.is(Kind::floating) && !r.is(Kind::floating);
    const double x = l.number(), y = r.number();
    int64_t result = 0;
    auto overflow = [&]() -> Value { fail("integer overflow in '" + op + "' (beyond 64 bits)"); };
    if (op == "+") {
      if (!ints) return Value::floating(x + y);
      return __builtin_add_overflow(l.whole(), r.whole(), &result) ? overflow() : Value::integer(result);
    }
    if (op == "-") {
      if (!ints) return Value::floating(x - y);
      return __builtin_sub_overflow(l.whole(), r.whole(), &result) ? overflow() : Value::integer(result);
    }
    if (op == "*") {
      if (!ints) return Value::floating(x * y);
      return __builtin_mul_overflow(l.whole(), r.whole(), &result) ? overflow() : Value::integer(result);
    }
    if (op == "/") {
      if (y == 0) fail("division by zero");
      return Value::floating(x / y);
    }
    if (op == "//" || op == "%") {
      if (y == 0) fail(op == "//" ? "integer division by zero" : "modulo by zero");
      if (ints) {
        const int64_t a = l.whole(), b = r.whole();
        if (a == INT64_MIN && b == -1) return overflow();
        int64_t q = a / b, m = a % b;
        if (m != 0 && ((m < 0) != (b < 0))) {
          --q;
          m += b;
        }
        return Value::integer(op == "//" ? q : m);
      }
      const double q = std::floor(x / y);
      return Value::floating(op == "//" ? q : x - q * y);
    }
    if (op == "**") {
      if (ints && r.whole() >= 0) {
        const int64_t base = l.whole(), exponent = r.whole();
        if (base == 0 || base == 1) return Value::integer(exponent == 0 ? 1 : base);
        if (base == -1) return Value::integer(exponent % 2 ? -1 : 1);
        int64_t out = 1;
        for (int64_t k = 0; k < exponent; ++k)
          if (__builtin_mul_overflow(out, base, &out)) return overflow();
        return Value::integer(out);
      }
      return Value::floating(std::pow(x, y));
    }
    return type_error();
  }

  bool contains(const Value& container, const Value& item) {
    switch (container.kind) {
      case Kind::undefined: return false;
      case Kind::string:
        if (!item.is(Kind::string)) fail(std::string("'in <string>' needs a string on the left, found ") + a_type(item));
        return container.s.find(item.s) != std::string::npos;
      case Kind::list:
        for (const auto& v : *container.list)
          if (py_eq(v, item)) return true;
        return false;
      case Kind::dict:
        return item.is(Kind::string) && container.dict->find(item.s) != nullptr;
      default: fail(std::string("'in' needs a string, list or dict on the right, found ") + a_type(container));
    }
  }

  bool compare(const std::string& op, const Value& l, const Value& r) {
    if (op == "==") return py_eq(l, r);
    if (op == "!=") return !py_eq(l, r);
    if (op == "in") return contains(r, l);
    if (op == "not in") return !contains(r, l);
    if (op == "<") return py_less(l, r, "<");
    if (op == ">") return py_less(r, l, ">");
    if (op == "<=") return !py_less(r, l, "<=");
    return !py_less(l, r, ">=");
  }

  // -------------------------------------------------------------------------------------------------------------
  // Tests and filters.

  bool apply_test(const std::string& name, const Value& v, const CallArgs& a) {
    auto arg = [&]() -> const Value& {
      if (a.pos.empty()) fail("test '" + name + "' needs an argument");
      return a.pos[0];
    };
    if (name == "defined") return !v.is(Kind::undefined);
    if (name == "undefined") return v.is(Kind::undefined);
    if (name == "none") return v.is(Kind::none);
    if (name == "string") return v.is(Kind::string);
    if (name == "mapping") return v.is(Kind::dict);
    if (name == "iterable") return v.is(Kind::undefined) || v.is(Kind::string) || v.is(Kind::list) || v.is(Kind::dict);
    if (name == "sequence") return v.is(Kind::undefined) || v.is(Kind::string) || v.is(Kind::list) || v.is(Kind::dict);
    if (name == "number") return v.is_number();
    if (name == "integer") return v.is(Kind::integer);
    if (name == "float") return v.is(Kind::floating);
    if (name == "boolean") return v.is(Kind::boolean);
    if (name == "true") return v.is(Kind::boolean) && v.b;
    if (name == "false") return v.is(Kind::boolean) && !v.b;
    if (name == "callable") return v.is(Kind::function);
    if (name == "equalto" || name == "eq" || name == "==" || name == "sameas") return py_eq(v, arg());
    if (name == "ne" || name == "!=") return !py_eq(v, arg());
    if (name == "lt" || name == "lessthan") return py_less(v, arg(), "<");
    if (name == "gt" || name == "greaterthan") return py_less(arg(), v, ">");
    if (name == "le") return !py_less(arg(), v, "<=");
    if (name == "ge") return !py_less(v, arg(), ">=");
    if (name == "in") return contains(arg(), v);
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (!v.is(Kind::integer) && !v.is(Kind::boolean)) fail("test '" + name + "' needs an integer, found " + a_type(v));
      const int64_t d = name == "divisibleby" ? arg().whole() : 2;
      if (d == 0) fail("test 'divisibleby' by zero");
      const bool divisible = v.whole() % d == 0;
      return name == "odd" ? !divisible : divisible;
    }
    if (name == "lower" || name == "upper") {
      if (!v.is(Kind::string)) return false;
      return change_case(v.s, name) == v.s;
    }
    fail("unknown test '" + name + "'");
  }

  // The attribute or item `path` ("a.b") of v, as jinja2's attribute getters read it (the item first).
  Value attribute_path(const Value& v, const std::string& path) {
    Value cur = v;
    std::size_t b = 0;
    while (true) {
      const std::size_t dot = path.find('.', b);
      const std::string part = path.substr(b, dot == std::string::npos ? std::string::npos : dot - b);
      Value key = Value::string(part);
      int64_t index = 0;
      const auto r = std::from_chars(part.data(), part.data() + part.size(), index);
      if (!part.empty() && r.ec == std::errc() && r.ptr == part.data() + part.size()) key = Value::integer(index);
      cur = get_item(cur, key);
      if (dot == std::string::npos) return cur;
      b = dot + 1;
    }
  }

  Value apply_filter(const std::string& name, const Value& v, CallArgs& a) {
    if (name == "safe" || name == "string") return name == "safe" ? v : Value::string(py_str(v));
    if (name == "trim") {
      if (v.is(Kind::undefined)) return Value::string("");
      return Value::string(py_strip(py_str(v), chars_arg(a), true, true));
    }
    if (name == "length" || name == "count") return Value::integer(py_len(v, "filter '" + name + "'"));
    if (name == "tojson") {  // tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
      JsonStyle style;
      if (const auto ascii = a.get(0, "ensure_ascii")) style.ensure_ascii = truthy(*ascii);
      if (const auto indent = a.get(1, "indent"); indent && !indent->is(Kind::none)) {
        if (!indent->is(Kind::integer)) fail("filter 'tojson': indent must be an integer, found " + a_type(*indent));
        style.indent = static_cast<int>(std::clamp<int64_t>(indent->i, 0, 64));
      }
      if (const auto seps = a.get(2, "separators"); seps && !seps->is(Kind::none)) {
        if (!seps->is(Kind::list) || seps->list->size() != 2 || !(*seps->list)[0].is(Kind::string) || !(*seps->list)[1].is(Kind::string))
          fail("filter 'tojson': separators must be two strings");
        style.separators = std::make_pair((*seps->list)[0].s, (*seps->list)[1].s);
      }
      if (const auto sort = a.get(3, "sort_keys")) style.sort_keys = truthy(*sort);
      std::string out;
      to_json(v, style, 0, out);
      check_size(out.size(), "tojson output");
      return Value::string(std::move(out));
    }
    if (name == "items") {
      if (v.is(Kind::undefined)) return Value::of_list({});
      if (!v.is(Kind::dict)) fail("filter 'items' needs a dict, found " + a_type(v));
      CallArgs none{{}, {}, *this, "items"};
      return (*dict_method(v, "items").fn)(none);
    }
    if (name == "title") {  // jinja2's title: words begin after '-', whitespace or an opening bracket
      std::string out = py_str(v);
      bool word_start = true;
      for (char& ch : out) {
        const auto c = static_cast<unsigned char>(ch);
        const bool boundary = ch == '-' || ch == '(' || ch == '{' || ch == '[' || ch == '<' || std::isspace(c);
        if (!boundary) ch = static_cast<char>(word_start ? std::toupper(c) : std::tolower(c));
        word_start = boundary;
      }
      return Value::string(std::move(out));
    }
    if (name == "upper" || name == "lower" || name == "capitalize") return Value::string(change_case(py_str(v), name));
    if (name == "default" || name == "d") {
      const auto fallback = a.get(0, "default_value").value_or(Value::string(""));
      const auto boolean = a.get(1, "boolean");
      const bool use = v.is(Kind::undefined) || (boolean && truthy(*boolean) && !truthy(v));
      return use ? fallback : v;
    }
    if (name == "first" || name == "last") {
      if (v.is(Kind::undefined)) return Value::undefined("filter '" + name + "' of an undefined value");
      ValueList items = iterate(v, "filter '" + name + "'");
      if (items.empty()) return Value::undefined("filter '" + name + "' of an empty sequence");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "join") {
      const auto sep = a.get(0, "d");
      const auto attribute = a.get(1, "attribute");
      std::string out;
      bool first = true;
      for (const auto& item : iterate(v, "filter 'join'")) {
        out += (first ? "" : (sep ? py_str(*sep) : "")) + py_str(attribute ? attribute_path(item, py_str(*attribute)) : item);
        first = false;
        check_size(out.size(), "a joined string");
      }
      return Value::string(std::move(out));
    }
    if (name == "replace") {
      const auto from = a.get(0, "old"), to = a.get(1, "new"), count = a.get(2, "count");
      if (!from || !to) fail("filter 'replace' needs old and new strings");
      return Value::string(py_replace(py_str(v), py_str(*from), py_str(*to), count && count->is(Kind::integer) ? count->i : -1));
    }
    if (name == "int" || name == "float") {
      const auto fallback = a.get(0, "default");
      const bool want_int = name == "int";
      auto whole = [&](double d) -> Value {
        if (!(d > -9.2e18 && d < 9.2e18)) fail("filter 'int': " + py_float(d) + " does not fit 64 bits");
        return Value::integer(static_cast<int64_t>(d));
      };
      if (v.is_number()) return want_int ? (v.is(Kind::floating) ? whole(v.f) : Value::integer(v.whole())) : Value::floating(v.number());
      if (v.is(Kind::string)) {
        const std::string t = py_strip(v.s, std::nullopt, true, true);
        int64_t i = 0;
        const auto r = std::from_chars(t.data(), t.data() + t.size(), i);
        if (!t.empty() && r.ec == std::errc() && r.ptr == t.data() + t.size()) return want_int ? Value::integer(i) : Value::floating(double(i));
        char* end = nullptr;
        const double d = std::strtod(t.c_str(), &end);
        if (!t.empty() && end == t.c_str() + t.size()) return want_int ? whole(d) : Value::floating(d);
      }
      return fallback.value_or(want_int ? Value::integer(0) : Value::floating(0.0));
    }
    if (name == "list") return Value::of_list(iterate(v, "filter 'list'"));
    if (name == "reverse") {
      if (v.is(Kind::string)) {
        ValueList chars = string_chars(v.s);
        std::string out;
        for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += it->s;
        return Value::string(std::move(out));
      }
      ValueList items = iterate(v, "filter 'reverse'");
      std::reverse(items.begin(), items.end());
      return Value::of_list(std::move(items));
    }
    if (name == "abs") {
      if (!v.is_number()) fail("filter 'abs' needs a number, found " + a_type(v));
      if (v.is(Kind::floating)) return Value::floating(std::fabs(v.f));
      if (v.whole() == INT64_MIN) fail("integer overflow in filter 'abs' (beyond 64 bits)");
      return Value::integer(std::llabs(v.whole()));
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
      const bool by_attr = name == "selectattr" || name == "rejectattr";
      const bool keep_if = name == "selectattr" || name == "select";
      std::size_t next = 0;
      std::string attribute;
      if (by_attr) {
        if (a.pos.empty() || !a.pos[0].is(Kind::string)) fail("filter '" + name + "' needs an attribute name");
        attribute = a.pos[0].s;
        next = 1;
      }
      std::optional<std::string> test;
      if (a.pos.size() > next) {
        if (!a.pos[next].is(Kind::string)) fail("filter '" + name + "' needs a test name");
        test = a.pos[next].s;
      }
      CallArgs test_args{{}, {}, *this, "test"};
      if (a.pos.size() > next + 1) test_args.pos.assign(a.pos.begin() + static_cast<long>(next) + 1, a.pos.end());
      ValueList out;
      for (const auto& item : iterate(v, "filter '" + name + "'")) {
        step();
        const Value probe = by_attr ? attribute_path(item, attribute) : item;
        const bool pass = test ? apply_test(*test, probe, test_args) : truthy(probe);
        if (pass == keep_if) out.push_back(item);
      }
      return Value::of_list(std::move(out));
    }
    if (name == "map") {
      ValueList out;
      std::optional<Value> attribute;
      for (const auto& [k, val] : a.kw)
        if (k == "attribute") attribute = val;
      const auto fallback = [&]() -> std::optional<Value> {
        for (const auto& [k, val] : a.kw)
          if (k == "default") return val;
        return std::nullopt;
      }();
      if (!attribute && (a.pos.empty() || !a.pos[0].is(Kind::string))) fail("filter 'map' needs attribute=NAME or a filter name");
      CallArgs filter_args{{}, {}, *this, "map"};
      if (!attribute) filter_args.pos.assign(a.pos.begin() + 1, a.pos.end());
      for (const auto& item : iterate(v, "filter 'map'")) {
        step();
        if (attribute) {
          Value got = attribute_path(item, py_str(*attribute));
          out.push_back(got.is(Kind::undefined) && fallback ? *fallback : got);
        } else {
          out.push_back(apply_filter(a.pos[0].s, item, filter_args));
        }
      }
      return Value::of_list(std::move(out));
    }
    if (name == "unique") {
      ValueList out;
      for (const auto& item : iterate(v, "filter 'unique'")) {
        step();
        if (std::none_of(out.begin(), out.end(), [&](const Value& o) { return py_eq(o, item); })) out.push_back(item);
      }
      return Value::of_list(std::move(out));
    }
    if (name == "round") {
      if (!v.is_number()) fail("filter 'round' needs a number, found " + a_type(v));
      const auto precision = a.get(0, "precision");
      const double scale = std::pow(10.0, precision && precision->is(Kind::integer) ? double(precision->i) : 0.0);
      return Value::floating(std::round(v.number() * scale) / scale);
    }
    fail("unknown filter '" + name + "'");
  }

  const Limits& limits_;
  std::time_t now_;
  std::vector<std::unordered_map<std::string, Value>> frames_;
  std::string out_;
  std::size_t steps_ = 0;
  int line_ = 0;
};

}  // namespace

struct Program {
  Body body;
};

Template::Template(const std::string& source, std::string name, const Limits& limits)
    : name_(std::move(name)), limits_(limits) {
  try {
    if (source.size() > limits_.max_template_bytes)
      fail("the template is " + std::to_string(source.size()) + " bytes, more than the limit of " +
               std::to_string(limits_.max_template_bytes),
           1);
    Parser parser(Lexer(source).run(), limits_.max_depth);
    program_ = std::make_unique<Program>();
    program_->body = parser.parse_template();
  } catch (const Error& e) {
    throw std::invalid_argument(name_ + ": line " + std::to_string(e.line) + ": " + e.what);
  }
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const nlohmann::ordered_json& variables, const RenderOptions& options) const {
  Interp interp(limits_, options.now);
  struct BudgetScope {
    WalkBudget saved = tl_walk;
    explicit BudgetScope(const Limits& l) { tl_walk = {l.max_output_bytes, l.max_steps, l.max_depth}; }
    ~BudgetScope() { tl_walk = saved; }
  } budget(limits_);
  try {
    return interp.run(program_->body, variables);
  } catch (const Error& e) {
    const int line = e.line ? e.line : interp.line();
    throw std::invalid_argument(name_ + ": line " + std::to_string(line) + ": " + e.what);
  } catch (const Raised& r) {
    throw TemplateRaised(name_ + ": line " + std::to_string(interp.line()) + ": the template raised an error: " + r.message,
                         r.message);
  }
}

}  // namespace sinkflow::jinja
