// Chat templates: the Jinja engine (models/text/jinja.h) construct by construct, its errors and bounds; the real
// templates of tests/data/chat_templates against jinja2's renders (expected.json, tools/make_template_fixtures.py);
// loading a model folder's template (chat_template.h) and reading a messages file.
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <string>

#include "models/text/chat_template.h"
#include "models/text/jinja.h"
#include "tests/test_util.h"

// test_util.h brings ATen, whose logging defines its own CHECK: Catch's must win.
#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
using nlohmann::json;

namespace {

const std::filesystem::path kData = std::filesystem::path(SINKFLOW_SOURCE_DIR) / "tests/data/chat_templates";

std::string render(const std::string& source, const json& vars = json::object(), const jinja::Limits& limits = {}) {
  return jinja::Template(source, "t.jinja", limits).render(vars);
}

// The message of the std::invalid_argument that rendering (or parsing) `source` throws; "" when none.
std::string render_error(const std::string& source, const json& vars = json::object(), const jinja::Limits& limits = {}) {
  try {
    render(source, vars, limits);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

// 2024-07-26 12:00 local time: the date tools/make_template_fixtures.py gives strftime_now.
std::time_t fixture_now() {
  std::tm tm{};
  tm.tm_year = 2024 - 1900;
  tm.tm_mon = 6;
  tm.tm_mday = 26;
  tm.tm_hour = 12;
  tm.tm_isdst = -1;
  return std::mktime(&tm);
}

}  // namespace

TEST_CASE("jinja: text, a trailing newline dropped, expressions print as Python prints them", "[jinja]") {
  CHECK(render("a\n") == "a");
  CHECK(render("a\n\n") == "a\n");
  CHECK(render("a\r\nb") == "a\nb");
  CHECK(render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 1 / 2 }} {{ 2 ** 10 }} {{ 'a' ~ 1 ~ none }}") ==
        "7 3 2 0.5 1024 a1None");
  CHECK(render("{{ none }} {{ true }} {{ 1.0 }} {{ 1e20 }} {{ 0.0001 }} {{ [1, 'a', none, {'k': \"it's\"}] }} {{ (1,) }}") ==
        "None True 1.0 1e+20 0.0001 [1, 'a', None, {'k': \"it's\"}] (1,)");
  CHECK(render("{{ {'a': 1, 'b': [1, 2]} }}|{{ {'a': 1}['a'] }}|{{ [1, [2, 3]][1][0] }}") == "{'a': 1, 'b': [1, 2]}|1|2");
  CHECK(render("{{ 'a' 'b' }}|{{ '\\u00e9\\x41\\t' }}|{{ \"it's\" }}") == "ab|\xC3\xA9" "A\t|it's");
  CHECK(render("{# a comment #}x{# another\nover lines #}") == "x");
}

TEST_CASE("jinja: whitespace control as transformers sets jinja2 up (trim_blocks, lstrip_blocks, '-', '+')", "[jinja]") {
  CHECK(render("{% if x %}y{% endif %}\n  {% if true %}\n    z\n  {% endif %}\nend") == "    z\nend");
  CHECK(render("a  {%- if true -%}  b  {%- endif -%}  c") == "abc");
  CHECK(render("  {%+ if true %}x{% endif %}|  {# c #}\n|{{ 'v' }}\n|") == "  x|  |v\n|");
  CHECK(render("{%- for m in ms -%}\n  {{- m -}}\n{%- endfor -%}\n", {{"ms", {"a", "b"}}}) == "ab");
  CHECK(render("  {{ 'x' }}\n") == "  x");  // lstrip_blocks leaves {{ }} alone
}

TEST_CASE("jinja: for loops (loop.*, else, filter, break/continue, unpacking, nesting) and if/elif/else", "[jinja]") {
  CHECK(render("{% for m in ms %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}"
               "{{ loop.length }};{% endfor %}",
               {{"ms", {"a", "b"}}}) == "102TrueFalse2;211FalseTrue2;");
  CHECK(render("{% for m in [] %}x{% else %}empty{% endfor %}") == "empty");
  CHECK(render("{% for m in [1,2,3,4,5] if m is odd %}{{ m }}{{ loop.length }}{% endfor %}") == "133353");
  CHECK(render("{% for m in [1,2,3,4,5] %}{% if m == 2 %}{% continue %}{% endif %}{% if m == 4 %}{% break %}{% endif %}"
               "{{ m }}{% endfor %}") == "13");
  CHECK(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in d | items %}{{ k }}{% endfor %}",
               {{"d", {{"a", 1}, {"b", "x"}}}}) == "a=1;b=x;ab");
  CHECK(render("{% for a in [1, 2] %}{% for b in ['x', 'y'] %}{{ a }}{{ b }}{{ loop.index }}{% endfor %}"
               "{{ loop.index }};{% endfor %}") == "1x11y21;2x12y22;");
  CHECK(render("{% for m in ms %}{{ loop.previtem }}>{{ m }}<{{ loop.nextitem }} {% endfor %}", {{"ms", {1, 2}}}) ==
        ">1<2 1>2< ");
  CHECK(render("{% if a == 1 %}one{% elif a == 2 %}two{% else %}other{% endif %}", {{"a", 2}}) == "two");
  CHECK(render("{% if a == 1 %}one{% elif a == 2 %}two{% else %}other{% endif %}", {{"a", 5}}) == "other");
}

TEST_CASE("jinja: set is scoped to the loop body, a namespace is not, block set captures output", "[jinja]") {
  CHECK(render("{% set x = 1 %}{% for m in [1, 2] %}{% set x = m %}{{ x }}{% endfor %}{{ x }}") == "121");
  CHECK(render("{% for x in [1, 2, 3] %}{% if loop.first %}{% set y = 5 %}{% endif %}{{ y }},{% endfor %}") == "5,,,");
  CHECK(render("{% set ns = namespace(x=1) %}{% for m in [1, 2] %}{% set ns.x = ns.x + m %}{% endfor %}{{ ns.x }}") == "4");
  CHECK(render("{% set b %}in {{ 1 + 1 }}{% endset %}[{{ b }}]") == "[in 2]");
  CHECK(render("{% set messages = messages[1:] %}{{ messages | length }}", {{"messages", {1, 2, 3}}}) == "2");
  CHECK(render("{% generation %}g{% endgeneration %}") == "g");
}

TEST_CASE("jinja: filters", "[jinja]") {
  CHECK(render("{{ '  x  ' | trim }}|{{ 'abc' | length }}|{{ [1,2] | length }}|{{ 'ab' | upper }}{{ 'AB' | lower }}|"
               "{{ 'hello world' | capitalize }}|{{ 'hello world' | title }}") == "x|3|2|ABab|Hello world|Hello World");
  CHECK(render("{{ x | default('d') }}|{{ '' | default('d', true) }}|{{ [1,2,3] | first }}{{ [1,2,3] | last }}|"
               "{{ ['a','b'] | join(', ') }}|{{ 'aXbX' | replace('X', '-') }}|{{ 3 | string }}{{ '42' | int + 1 }}|"
               "{{ 'ab' | list }}|{{ '<b>' | safe }}") == "d|d|13|a, b|a-b-|343|['a', 'b']|<b>");
  CHECK(render("{{ x | tojson }}", {{"x", {{"a", "\xC3\xA9"}, {"b", {1, 2.5, true, nullptr}}, {"q", "say \"hi\"\n"}}}}) ==
        "{\"a\": \"\xC3\xA9\", \"b\": [1, 2.5, true, null], \"q\": \"say \\\"hi\\\"\\n\"}");
  CHECK(render("{{ {'a': [1, {}], 'b': []} | tojson(indent=2) }}") == "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}");
  const json ms = {{{"role", "user"}, {"content", "a"}},
                   {{"role", "assistant"}, {"content", "b"}},
                   {{"role", "user"}, {"content", "c"}, {"extra", 1}}};
  CHECK(render("{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|"
               "{{ ms | rejectattr('role', 'equalto', 'user') | list | length }}|"
               "{{ ms | selectattr('extra', 'undefined') | list | length }}",
               {{"ms", ms}}) == "a,c|1|2");
  CHECK(render("{{ ['a', 'b'] | map('upper') | join }}") == "AB");
  CHECK(jinja::Template("{{ m | tojson }}|{{ m }}", "t").render(nlohmann::ordered_json::parse(R"({"m": {"z": 1, "a": 2}})")) ==
        "{\"z\": 1, \"a\": 2}|{'z': 1, 'a': 2}");  // dicts keep their key order, as Python's
  CHECK(render("{{ x | tojson(ensure_ascii=true) }}|{{ {'b': 1, 'a': [1, 2]} | tojson(sort_keys=true, separators=(',', ':')) }}",
               {{"x", "\xC3\xA9\xF0\x9F\x99\x82\x7F"}}) == "\"\\u00e9\\ud83d\\ude42\\u007f\"|{\"a\":[1,2],\"b\":1}");
  // The title filter (words begin after '-', spaces, brackets) is not str.title() (words begin after any non-letter).
  CHECK(render("{{ \"they're here-now (ok) [x]\" | title }}|{{ \"they're\".title() }}") == "They're Here-Now (Ok) [X]|They'Re");
}

TEST_CASE("jinja: tests, operators, conditional expressions", "[jinja]") {
  CHECK(render("{{ x is defined }}{{ y is undefined }}{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}"
               "{{ [] is iterable }}{{ 'a' is sequence }}{{ 1.5 is number }}{{ true is true }}{{ 0 is false }}"
               "{{ 1 is equalto 1 }}{{ 2 is eq(2) }}{{ x is not none }}",
               {{"x", 1}}) == "TrueTrueTrueTrueTrueTrueTrueTrueTrueFalseTrueTrueTrue");
  CHECK(render("{{ true and 'x' }}|{{ false or 'y' }}|{{ not 0 }}|{{ 'a' in 'cat' }}|{{ 2 not in [1, 3] }}|"
               "{{ 'k' in {'k': 1} }}|{{ 1 == 1.0 }}|{{ 1 != 2 }}|{{ 1 < 2 }}|{{ 'b' > 'a' }}|{{ x is none }}|"
               "{{ 'yes' if 1 > 2 else 'no' }}") == "x|y|True|True|True|True|True|True|True|True|False|no");
  // The filter binds tighter than '+': only the content is trimmed (Llama-3's template relies on it).
  CHECK(render("{{ '[' + m | trim + ']' }}", {{"m", "  x  "}}) == "[x]");
}

TEST_CASE("jinja: string methods, slices, subscripts and attributes of dicts", "[jinja]") {
  CHECK(render("{{ '  ab  '.strip() }}|{{ 'xxabxx'.lstrip('x') }}|{{ 'xxabxx'.rstrip('x') }}|{{ 'abc'.startswith('ab') }}"
               "{{ 'abc'.endswith(('x', 'bc')) }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'Ab'.upper() }}"
               "{{ 'Ab'.lower() }}|{{ 'hello there'.title() }}|{{ 'aaa'.replace('a', 'b', 2) }}") ==
        "ab|abxx|xxab|TrueTrue|['a', 'b', '', 'c']|['a', 'b']|ABab|Hello There|bba");
  CHECK(render("{{ 'h\xC3\xA9llo'[::-1] }}|{{ [1,2,3][1:] }}|{{ [1,2,3][-1] }}|{{ 'abcdef'[1:4] }}|{{ 'abcdef'[::2] }}|"
               "{{ [1,2,3,4][:-1] }}|{{ 'h\xC3\xA9llo'[1] }}") == "oll\xC3\xA9h|[2, 3]|3|bcd|ace|[1, 2, 3]|\xC3\xA9");
  const json m = {{"role", "user"}, {"content", "hi"}};
  CHECK(render("{{ m['content'] }}|{{ m.content }}|{{ m.missing }}|{{ m['missing'] is defined }}|"
               "{% if m.missing %}t{% else %}f{% endif %}|{{ [1][5] }}|{{ m.get('role', 'none') }}",
               {{"m", m}}) == "hi|hi||False|f||user");
}

TEST_CASE("jinja: undefined prints empty, is false, iterates as empty, reading from it is an error", "[jinja]") {
  CHECK(render("{{ x }}|{{ x | length }}|{% for i in x %}i{% endfor %}|{{ x ~ 'a' }}") == "|0||a");
  CHECK_THAT(render_error("{{ x.y }}"), Catch::Contains("'x' is undefined") && Catch::Contains("attribute 'y'"));
  CHECK_THAT(render_error("{{ x + 1 }}"), Catch::Contains("'x' is undefined"));
  CHECK_THAT(render_error("{{ m.a.b }}", {{"m", json::object()}}), Catch::Contains("dict has no attribute 'a'"));
}

TEST_CASE("jinja: errors name the template, the line and the construct", "[jinja]") {
  CHECK_THAT(render_error("a\n\n{{ 1 |\n nosuch }}"), Catch::StartsWith("t.jinja: line 3: ") && Catch::Contains("unknown filter 'nosuch'"));
  CHECK_THAT(render_error("{{ 1 is nosuch }}"), Catch::Contains("unknown test 'nosuch'"));
  CHECK_THAT(render_error("x\n{% macro f() %}{% endmacro %}"), Catch::StartsWith("t.jinja: line 2: ") && Catch::Contains("the tag 'macro' is not supported"));
  CHECK_THAT(render_error("{% frobnicate %}"), Catch::Contains("unknown tag 'frobnicate'"));
  CHECK_THAT(render_error("{% if x %}never closed"), Catch::Contains("'{% endif %}'"));
  CHECK_THAT(render_error("{{ x "), Catch::Contains("unclosed '{{'"));
  CHECK_THAT(render_error("{{ 'abc }}"), Catch::Contains("unclosed string literal"));
  CHECK_THAT(render_error("{{ 1 + }}"), Catch::Contains("expected a value"));
  CHECK_THAT(render_error("{% break %}"), Catch::Contains("'break' outside a for loop"));
  CHECK_THAT(render_error("{{ 'a' + 1 }}"), Catch::Contains("unsupported operand types for '+': a string and an integer"));
  CHECK_THAT(render_error("{{ 1 / 0 }}"), Catch::Contains("division by zero"));
  CHECK_THAT(render_error("{{ 9223372036854775807 + 1 }}"), Catch::Contains("integer overflow"));
  CHECK_THAT(render_error("{% set x = 1 %}{% set x.y = 2 %}"), Catch::Contains("only a namespace() can be changed"));
  CHECK_THAT(render_error("{{ '{}'.format(1) }}"), Catch::Contains("str.format() is not supported"));
  try {
    render("line one\n{{ raise_exception('Roles must alternate') }}");
    FAIL("raise_exception did not throw");
  } catch (const jinja::TemplateRaised& e) {
    CHECK(e.template_message() == "Roles must alternate");
    CHECK_THAT(e.what(), Catch::StartsWith("t.jinja: line 2: ") && Catch::Contains("Roles must alternate"));
  }
}

TEST_CASE("jinja: hostile templates hit a bound, not the stack or the memory", "[jinja]") {
  jinja::Limits small;
  small.max_template_bytes = 10;
  CHECK_THAT(render_error("{{ 'abcdefgh' }}", {}, small), Catch::Contains("more than the limit of 10"));
  CHECK_THAT(render_error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"), Catch::Contains("nested deeper than 128"));
  std::string chain = "{{ x";
  for (int k = 0; k < 100000; ++k) chain += ".a";
  CHECK_THAT(render_error(chain + " }}"), Catch::Contains("nested deeper than 128"));
  std::string ifs;
  for (int k = 0; k < 5000; ++k) ifs += "{% if true %}";
  CHECK_THAT(render_error(ifs), Catch::Contains("nested deeper than 128"));
  CHECK_THAT(render_error("{% for i in range(100000000000) %}{% endfor %}"), Catch::Contains("range() of more than"));
  jinja::Limits steps;
  steps.max_steps = 1000;
  CHECK_THAT(render_error("{% for i in range(500) %}{% for j in range(500) %}{% endfor %}{% endfor %}", {}, steps),
             Catch::Contains("more than 1000 steps"));
  jinja::Limits out;
  out.max_output_bytes = 1000;
  CHECK_THAT(render_error("{% for i in range(100) %}{{ 'abcdefghijklmnop' }}{% endfor %}", {}, out), Catch::Contains("output longer than 1000 bytes"));
  CHECK_THAT(render_error("{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", {}, out),
             Catch::Contains("a string longer than 1000 bytes"));
  CHECK_THAT(render_error("{{ 'ab' * 100000000000 }}", {}, out), Catch::Contains("longer than 1000 bytes"));
  // One list shared 2^60 times over: printing it would never end.
  CHECK_THAT(render_error("{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}", {}, out),
             Catch::Contains("longer than 1000 bytes"));
  CHECK_THAT(render_error("{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l == ns.l }}", {}, steps),
             Catch::Contains("over the step limit"));
  CHECK_THAT(render_error("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}"), Catch::Contains("nested deeper than 128"));
}

TEST_CASE("jinja: strftime_now formats the time it is given", "[jinja]") {
  jinja::RenderOptions o;
  o.now = fixture_now();
  CHECK(jinja::Template("{{ strftime_now('%d %b %Y') }}", "t").render(json::object(), o) == "26 Jul 2024");
}

TEST_CASE("chat templates of real models render byte for byte as jinja2 renders them", "[chat_template]") {
  // Ordered: the conversations' dicts keep the key order jinja2 saw.
  const auto expected = nlohmann::ordered_json::parse(test::read_file(kData / "expected.json"));
  std::map<std::string, std::pair<int, int>> per_family;  // family -> (matches, renders)
  for (const auto& r : expected["renders"]) {
    const std::string family = r["family"];
    ChatTemplate t;
    t.source = test::read_file(kData / (family + ".jinja"));
    t.origin = family + ".jinja";
    const auto& tokens = expected["families"][family];
    if (tokens["bos_token"].is_string()) t.bos_token = tokens["bos_token"].get<std::string>();
    if (tokens["eos_token"].is_string()) t.eos_token = tokens["eos_token"].get<std::string>();
    const auto& messages = expected["cases"][r["case"].get<std::string>()];
    std::string got, raised, failed;
    try {
      got = ChatFormatter(t).render(messages, r["add_generation_prompt"].get<bool>(), fixture_now());
    } catch (const jinja::TemplateRaised& e) {
      raised = e.template_message();
    } catch (const std::invalid_argument& e) {
      failed = e.what();
    }
    // Three outcomes: the text, the template's raise_exception message, or (where Python failed, as on None +
    // a string) an error of the engine.
    const bool match = r.contains("output")  ? raised.empty() && failed.empty() && got == r["output"].get<std::string>()
                       : r.contains("error") ? failed.empty() && raised == r["error"].get<std::string>()
                                             : raised.empty() && !failed.empty();
    auto& [ok, n] = per_family[family];
    ok += match;
    ++n;
    if (!match) {
      INFO(family << " " << r["case"] << " add_generation_prompt=" << r["add_generation_prompt"]);
      CHECK(json(got).dump() + raised + failed == r.dump());
    }
  }
  int total_ok = 0, total = 0;
  for (const auto& [family, counts] : per_family) {
    std::printf("chat template %-16s %d/%d renders match jinja2\n", family.c_str(), counts.first, counts.second);
    total_ok += counts.first;
    total += counts.second;
  }
  std::printf("chat templates: %d/%d renders match jinja2 (%zu templates)\n", total_ok, total, per_family.size());
  CHECK(per_family.size() == 19);
  CHECK(total_ok == total);
}

TEST_CASE("built-in chat formats are the files the fixtures render", "[chat_template]") {
  REQUIRE(chat_format_names() == std::vector<std::string>{"chatml", "llama3", "llama2", "gemma", "phi3", "mistral", "plain"});
  for (const auto& name : chat_format_names()) {
    INFO(name);
    CHECK(builtin_chat_template(name).source == test::read_file(kData / "builtin" / (name + ".jinja")));
  }
  CHECK_THROWS_WITH(builtin_chat_template("vicuna"),
                    "unknown chat format 'vicuna' (expected one of chatml, llama3, llama2, gemma, phi3, mistral, plain)");
}

TEST_CASE("a model folder's template: chat_template.jinja, then tokenizer_config.json, bos/eos from the config", "[chat_template]") {
  const auto dir = test::temp_dir("chat_template_load");
  const std::string d = dir.string();
  CHECK_FALSE(load_chat_template(d).has_value());
  bool fell_back = false;
  CHECK(select_chat_template(d, "", &fell_back).origin == "built-in format 'plain'");
  CHECK(fell_back);

  test::write_file(dir / "tokenizer_config.json",
                   R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "chat_template": "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"})");
  auto t = load_chat_template(d);
  REQUIRE(t.has_value());
  CHECK(t->origin == (dir / "tokenizer_config.json").string() + " (chat_template)");
  CHECK(t->bos_token == std::optional<std::string>("<s>"));
  CHECK(render_chat(*t, json::array({{{"role", "user"}, {"content", "hi"}}})) == "<s>hi</s>");
  CHECK(select_chat_template(d, "chatml", &fell_back).origin == "built-in format 'chatml'");
  CHECK_FALSE(fell_back);

  test::write_file(dir / "tokenizer_config.json",
                   R"({"bos_token": null, "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token is defined }}"}]})");
  t = load_chat_template(d);
  REQUIRE(t.has_value());
  CHECK(render_chat(*t, json::array()) == "False");

  test::write_file(dir / "tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "T"}]})");
  CHECK_THROWS_WITH(load_chat_template(d), Catch::Contains("tokenizer_config.json: chat_template: a list of named templates without one named 'default' (found: tool_use)"));
  test::write_file(dir / "tokenizer_config.json", R"({"chat_template": 7})");
  CHECK_THROWS_WITH(load_chat_template(d), Catch::Contains("chat_template: expected a string or a list"));
  test::write_file(dir / "tokenizer_config.json", R"({"eos_token": 2, "chat_template": "x"})");
  CHECK_THROWS_WITH(load_chat_template(d), Catch::Contains("tokenizer_config.json: eos_token: expected a string"));

  test::write_file(dir / "tokenizer_config.json", R"({"chat_template": "from the config"})");
  test::write_file(dir / "chat_template.jinja", "from the file\n");
  t = load_chat_template(d);
  REQUIRE(t.has_value());
  CHECK(t->origin == (dir / "chat_template.jinja").string());
  CHECK(render_chat(*t, json::array()) == "from the file");

  CHECK_THROWS_WITH(load_chat_template((dir / "nowhere").string()), Catch::Contains("not a model folder"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("real tokenizer_config.json files give the template and the tokens the fixtures render with", "[chat_template]") {
  // tests/data/configs/<model>/tokenizer_config.json (SOURCES.md) and the .jinja copied out of it.
  const auto expected = nlohmann::ordered_json::parse(test::read_file(kData / "expected.json"));
  const std::filesystem::path configs = std::filesystem::path(SINKFLOW_SOURCE_DIR) / "tests/data/configs";
  const std::vector<std::pair<std::string, std::string>> cases = {{"microsoft__Phi-3-mini-128k-instruct", "phi3"},
                                                                  {"microsoft__Phi-4-mini-instruct", "phi4_mini"},
                                                                  {"mistralai__Mistral-7B-Instruct-v0.2", "mistral_v0_2"},
                                                                  {"google__gemma-2-2b-it", "gemma2"},
                                                                  {"Qwen__Qwen3-0.6B", "qwen3_0_6b"},
                                                                  {"HuggingFaceTB__SmolLM2-360M-Instruct", "smollm2"}};
  for (const auto& [folder, family] : cases) {
    INFO(folder << " -> " << family);
    const auto t = load_chat_template((configs / folder).string());
    REQUIRE(t.has_value());
    CHECK(t->source == test::read_file(kData / (family + ".jinja")));
    CHECK_THAT(t->origin, Catch::EndsWith("tokenizer_config.json (chat_template)"));
    const auto& tokens = expected["families"][family];
    const auto token = [](const nlohmann::ordered_json& j) {
      return j.is_string() ? std::optional<std::string>(j.get<std::string>()) : std::nullopt;
    };
    CHECK(t->bos_token == token(tokens["bos_token"]));
    CHECK(t->eos_token == token(tokens["eos_token"]));
  }
  // gemma-3-270m-it ships its template as chat_template.jinja (transformers >= 4.54 writes it there, not into
  // tokenizer_config.json): the same bytes as gemma3.jinja, the tokens from its tokenizer_config.json.
  const auto gemma3 = load_chat_template((configs / "google__gemma-3-270m-it").string());
  REQUIRE(gemma3.has_value());
  CHECK_THAT(gemma3->origin, Catch::EndsWith("google__gemma-3-270m-it/chat_template.jinja"));
  CHECK(gemma3->source == test::read_file(kData / "gemma3.jinja"));
  CHECK(gemma3->bos_token == std::optional<std::string>("<bos>"));
  CHECK(gemma3->eos_token == std::optional<std::string>("<eos>"));
  ChatRenderOptions prompt;
  prompt.add_generation_prompt = true;
  CHECK(render_chat(*gemma3, json::array({{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi"}}}),
                    prompt) == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
  // SmolLM2's template adds its own system turn when the conversation has none.
  const auto smollm2 = load_chat_template((configs / "HuggingFaceTB__SmolLM2-360M-Instruct").string());
  REQUIRE(smollm2.has_value());
  CHECK(render_chat(*smollm2, json::array({{{"role", "user"}, {"content", "Hi"}}}), prompt) ==
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // Phi-3's template ends a conversation without a generation prompt with eos_token (<|endoftext|>).
  const auto phi3 = load_chat_template((configs / "microsoft__Phi-3-mini-128k-instruct").string());
  REQUIRE(phi3.has_value());
  CHECK(render_chat(*phi3, json::array({{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi"}}})) ==
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|endoftext|>");
  // Mistral-7B-Instruct-v0.2 refuses a system message with the template's own words.
  const auto mistral = load_chat_template((configs / "mistralai__Mistral-7B-Instruct-v0.2").string());
  REQUIRE(mistral.has_value());
  CHECK_THROWS_WITH(render_chat(*mistral, json::array({{{"role", "system"}, {"content", "x"}}})),
                    Catch::Contains("Conversation roles must alternate user/assistant/user/assistant/..."));
}

TEST_CASE("a bad template names its origin and line when it is parsed", "[chat_template]") {
  ChatTemplate t{"ok\n{% for %}", "model/tokenizer_config.json (chat_template)", std::nullopt, std::nullopt};
  CHECK_THROWS_WITH(ChatFormatter(t), Catch::StartsWith("model/tokenizer_config.json (chat_template): line 2: "));
}

TEST_CASE("a messages file: errors name the file and the field", "[chat_template]") {
  const auto dir = test::temp_dir("chat_messages");
  const std::string path = (dir / "conv.json").string();
  test::write_file(path, R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": null}])");
  CHECK(read_chat_messages(path).size() == 2);
  test::write_file(path, R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})");
  CHECK(read_chat_messages(path).size() == 1);
  test::write_file(path, R"([{"role": "user", "content": "hi"}, {"role": 3, "content": "x"}])");
  CHECK_THROWS_WITH(read_chat_messages(path), path + ": messages[1].role: expected a string, found number 3");
  test::write_file(path, R"([{"role": "user"}])");
  CHECK_THROWS_WITH(read_chat_messages(path), path + ": messages[0]: the field \"content\" is missing");
  test::write_file(path, R"([{"role": "user", "content": 5}])");
  CHECK_THROWS_WITH(read_chat_messages(path), Catch::Contains("messages[0].content: expected a string, null or a list of parts"));
  test::write_file(path, R"({"turns": []})");
  CHECK_THROWS_WITH(read_chat_messages(path), Catch::Contains("an object with \"messages\""));
  test::write_file(path, R"("hello")");
  CHECK_THROWS_WITH(read_chat_messages(path), Catch::Contains("messages: expected a list of messages"));
  test::write_file(path, "[{\"role\": ");
  CHECK_THROWS_WITH(read_chat_messages(path), Catch::StartsWith(path));
  std::filesystem::remove_all(dir);
}
