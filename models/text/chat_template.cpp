// Chat templates of model folders and the built-in formats (chat_template.h).
#include "models/text/chat_template.h"

#include <filesystem>
#include <utility>

#include "models/io/json_read.h"
#include "models/io/message_text.h"

namespace sinkflow {

namespace {

// The built-in formats, byte for byte the files tests/data/chat_templates/builtin/NAME.jinja (a test checks it;
// tools/make_template_fixtures.py renders those files with jinja2 for the oracle).
const std::vector<std::pair<std::string, std::string>>& builtin_formats() {
  static const std::vector<std::pair<std::string, std::string>> formats = {
    {"chatml", R"JINJA({%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)JINJA"},
    {"llama3", R"JINJA({{- '<|begin_of_text|>' }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)JINJA"},
    {"llama2", R"JINJA({#- Meta's Llama-2 chat format: the system message inside the first [INST], each user turn in its own <s>. #}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system = '<<SYS>>\n' + messages[0]['content'] | trim + '\n<</SYS>>\n\n' %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system = '' %}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- '<s>[INST] ' + (system if loop.first else '') + message['content'] | trim + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] | trim + ' </s>' }}
    {%- else %}
        {{- raise_exception("llama2 format: roles are system (first message only), user and assistant, found '" + message['role'] + "'") }}
    {%- endif %}
{%- endfor %}
)JINJA"},
    {"gemma", R"JINJA({#- Gemma's turns; Gemma has no system role: a system message is prefixed to the first turn. #}
{{- '<bos>' }}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set prefix = messages[0]['content'] | trim + '\n\n' %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set prefix = '' %}
{%- endif %}
{%- for message in messages %}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
    {{- '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}
)JINJA"},
    {"phi3", R"JINJA({%- for message in messages %}
    {{- '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\n' }}
{%- endif %}
)JINJA"},
    {"mistral", R"JINJA({#- Mistral's [INST] format (v3 tokenizer): the system message goes into the last user turn. #}
{{- '<s>' }}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] + '\n\n' %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system = '' %}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {%- set ns.last_user = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- '[INST]' + (system if loop.index0 == ns.last_user else '') + message['content'] + '[/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + '</s>' }}
    {%- else %}
        {{- raise_exception("mistral format: roles are system (first message only), user and assistant, found '" + message['role'] + "'") }}
    {%- endif %}
{%- endfor %}
)JINJA"},
    {"plain", R"JINJA({#- For a base model without a template: "User: ...\nAssistant: ...", a system message as a plain first paragraph. #}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {{- message['content'] + '\n\n' }}
    {%- else %}
        {{- message['role'] | capitalize + ': ' + message['content'] + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- 'Assistant:' }}
{%- endif %}
)JINJA"},
  };
  return formats;
}

// A special token of tokenizer_config.json: a string, {"content": "..."} (an AddedToken), or null / absent.
std::optional<std::string> special_token(const nlohmann::json& config, const std::string& field, const std::string& file) {
  const auto it = config.find(field);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  throw std::invalid_argument(file + ": " + field + ": expected a string, {\"content\": string} or null, found " +
                              json_preview(*it));
}

std::string describe(const nlohmann::json& v) {
  return std::string(v.type_name()) + " " + json_preview(v);
}

}  // namespace

const std::vector<std::string>& chat_format_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& [name, source] : builtin_formats()) out.push_back(name);
    return out;
  }();
  return names;
}

ChatTemplate builtin_chat_template(std::string_view name) {
  for (const auto& [n, source] : builtin_formats())
    if (n == name) return ChatTemplate{source, "built-in format '" + n + "'", std::nullopt, std::nullopt};
  std::string expected;
  for (const auto& n : chat_format_names()) expected += (expected.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown chat format '" + std::string(name) + "' (expected one of " + expected + ")");
}

std::optional<ChatTemplate> load_chat_template(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(model_dir);
  const std::string config_path = (dir / "tokenizer_config.json").string();
  const std::string jinja_path = (dir / "chat_template.jinja").string();
  if (!fs::is_directory(dir)) throw std::invalid_argument(model_dir + ": not a model folder (no such directory)");
  nlohmann::json config = nlohmann::json::object();
  if (fs::exists(config_path)) {
    config = read_json_file(config_path);
    if (!config.is_object()) throw std::invalid_argument(config_path + ": expected a JSON object, found " + describe(config));
  }
  ChatTemplate t;
  t.bos_token = special_token(config, "bos_token", config_path);
  t.eos_token = special_token(config, "eos_token", config_path);
  if (fs::exists(jinja_path)) {
    t.source = read_bounded_file(jinja_path, jinja::Limits{}.max_template_bytes, jinja_path, "Jinja template");
    t.origin = jinja_path;
    return t;
  }
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) {
    t.source = it->get<std::string>();
    t.origin = config_path + " (chat_template)";
    return t;
  }
  if (!it->is_array())
    throw std::invalid_argument(config_path + ": chat_template: expected a string or a list of {\"name\", \"template\"}, found " + describe(*it));
  std::string names;
  for (std::size_t k = 0; k < it->size(); ++k) {
    const auto& entry = (*it)[k];
    const std::string where = config_path + ": chat_template[" + std::to_string(k) + "]";
    if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() || !entry.contains("template") ||
        !entry["template"].is_string())
      throw std::invalid_argument(where + ": expected {\"name\": string, \"template\": string}, found " + describe(entry));
    const std::string name = entry["name"].get<std::string>();
    if (name == "default") {
      t.source = entry["template"].get<std::string>();
      t.origin = config_path + " (chat_template 'default')";
      return t;
    }
    names += (names.empty() ? "" : ", ") + name;
  }
  throw std::invalid_argument(config_path + ": chat_template: a list of named templates without one named 'default' (found: " +
                              (names.empty() ? std::string("none") : names) + ")");
}

ChatTemplate select_chat_template(const std::string& model_dir, const std::string& format_name, bool* fell_back) {
  if (fell_back) *fell_back = false;
  if (!format_name.empty()) return builtin_chat_template(format_name);
  if (!model_dir.empty())
    if (auto own = load_chat_template(model_dir)) return *std::move(own);
  if (fell_back) *fell_back = true;
  return builtin_chat_template("plain");
}

nlohmann::ordered_json read_chat_messages(const std::string& path) {
  JsonLimits limits;
  limits.max_bytes = std::size_t{64} << 20;
  nlohmann::ordered_json doc = parse_ordered_json(read_json_text(path, limits), path, limits);
  std::string field = "messages";
  if (doc.is_object()) {
    if (!doc.contains("messages"))
      throw std::invalid_argument(path + ": expected a list of messages or an object with \"messages\", found an object without it");
    doc = doc["messages"];
  }
  if (!doc.is_array()) throw std::invalid_argument(path + ": " + field + ": expected a list of messages, found " + describe(doc));
  for (std::size_t k = 0; k < doc.size(); ++k) {
    const auto& m = doc[k];
    const std::string where = path + ": " + field + "[" + std::to_string(k) + "]";
    if (!m.is_object()) throw std::invalid_argument(where + ": expected an object with \"role\" and \"content\", found " + describe(m));
    if (!m.contains("role")) throw std::invalid_argument(where + ": the field \"role\" is missing");
    if (!m["role"].is_string()) throw std::invalid_argument(where + ".role: expected a string, found " + describe(m["role"]));
    if (!m.contains("content")) throw std::invalid_argument(where + ": the field \"content\" is missing");
    const auto& c = m["content"];
    if (!c.is_string() && !c.is_null() && !c.is_array())
      throw std::invalid_argument(where + ".content: expected a string, null or a list of parts, found " + describe(c));
  }
  return doc;
}

ChatFormatter::ChatFormatter(ChatTemplate t, const jinja::Limits& limits)
    : template_(std::move(t)), compiled_(template_.source, template_.origin, limits) {}

std::string ChatFormatter::render(const nlohmann::ordered_json& messages, bool add_generation_prompt, std::time_t now) const {
  nlohmann::ordered_json vars = {{"messages", messages},
                         {"add_generation_prompt", add_generation_prompt},
                         {"tools", nullptr},
                         {"documents", nullptr}};
  if (template_.bos_token) vars["bos_token"] = *template_.bos_token;
  if (template_.eos_token) vars["eos_token"] = *template_.eos_token;
  jinja::RenderOptions options;
  options.now = now;
  return compiled_.render(vars, options);
}

std::string render_chat(const ChatTemplate& t, const nlohmann::ordered_json& messages, const ChatRenderOptions& options) {
  return ChatFormatter(t, options.limits).render(messages, options.add_generation_prompt, options.now);
}

}  // namespace sinkflow
