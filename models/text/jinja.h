// A small Jinja2 engine for the chat templates of Hugging Face models: the subset their templates use, rendered the
// way transformers' apply_chat_template renders them (jinja2 ImmutableSandboxedEnvironment with trim_blocks=True,
// lstrip_blocks=True and the loopcontrols extension; a `tojson` filter that is json.dumps(ensure_ascii=False); the
// globals raise_exception and strftime_now). Values follow Python: `{{ none }}` prints "None", `{{ [1, 'a'] }}`
// prints "[1, 'a']", 1/2 is 0.5, a missing key or index is jinja2's default Undefined (prints "", false in a test,
// empty when iterated, an error when its attribute is read or it takes part in arithmetic).
//
// Supported: text, {{ }}, {% %}, {# #}, whitespace control (-, +), tags if/elif/else, for (tuple targets, `if`
// filter, else, loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem/cycle), break, continue,
// set (names, namespace attributes, block set), generation (its body is output as is); expressions with
// literals (strings, numbers, lists, tuples, dicts, true/false/none), attribute and item access, slices, calls,
// filters, tests, `x if c else y`, and/or/not, in/not in, comparisons, + - * / // % ** ~.
// Not supported (a clear error naming the construct): macro, call, include/import/extends/block, filter blocks,
// with, autoescape, raw, string % formatting and str.format. Differences from Python kept on purpose: upper/lower/
// title/capitalize change ASCII letters only.
//
// Hostile templates are bounded: source size, nesting depth (parse and render), steps (loop iterations and
// statements) and output size; every failure is std::invalid_argument "<name>: line N: ...".
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <ctime>
#include <memory>
#include <stdexcept>
#include <string>

namespace sinkflow::jinja {

struct Limits {
  std::size_t max_template_bytes = std::size_t{1} << 20;  // template source (real chat templates: under 20 KB)
  std::size_t max_output_bytes = std::size_t{16} << 20;   // rendered text, and any one string or list built
  std::size_t max_steps = 10'000'000;                     // loop iterations + statements executed in one render
  std::size_t max_depth = 128;                            // nesting of tags, expressions and values
};

// Thrown when the template calls raise_exception(message): what() is "<name>: line N: <message>",
// template_message() the template's own words.
class TemplateRaised : public std::invalid_argument {
 public:
  TemplateRaised(const std::string& what, std::string message)
      : std::invalid_argument(what), message_(std::move(message)) {}
  const std::string& template_message() const { return message_; }

 private:
  std::string message_;
};

struct RenderOptions {
  std::time_t now = -1;  // the time strftime_now formats (local time); -1 = the clock
};

struct Program;  // the parsed template (jinja.cpp)

class Template {
 public:
  // Parses `source`. `name` labels every error (a file path, "DIR/tokenizer_config.json (chat_template)").
  // Throws std::invalid_argument "<name>: line N: ..." for a syntax error, an unsupported tag, a source over
  // limits.max_template_bytes or nesting deeper than limits.max_depth.
  Template(const std::string& source, std::string name, const Limits& limits = {});
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `variables` (a JSON object, or null for none: each key a template variable; a JSON null value is
  // Python None, a key that is absent is undefined). Throws TemplateRaised for raise_exception(), std::invalid_argument
  // "<name>: line N: ..." for anything the template cannot do (an unknown filter, a type error, an undefined
  // value used as an object, a bound exceeded).
  // Dicts keep the key order of `variables` (an nlohmann::json converted here has sorted keys).
  std::string render(const nlohmann::ordered_json& variables, const RenderOptions& options = {}) const;

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  Limits limits_;
  std::unique_ptr<Program> program_;
};

}  // namespace sinkflow::jinja
