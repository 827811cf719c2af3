// Chat templates: the Jinja template a model folder ships (chat_template.jinja or tokenizer_config.json's
// chat_template), or a built-in format, rendered over a list of messages as Hugging Face transformers'
// apply_chat_template(messages, tokenize=False, add_generation_prompt=...) renders it (models/text/jinja.h).
#pragma once

#include <nlohmann/json.hpp>

#include <ctime>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "models/text/jinja.h"

namespace sinkflow {

// A chat format: Jinja source and the special tokens it is rendered with.
struct ChatTemplate {
  std::string source;                    // the Jinja text
  std::string origin;                    // where it came from: "DIR/chat_template.jinja",
                                         // "DIR/tokenizer_config.json (chat_template)", "built-in format 'chatml'"
  std::optional<std::string> bos_token;  // the template's bos_token (nullopt = undefined there)
  std::optional<std::string> eos_token;  // the template's eos_token (nullopt = undefined there)
};

// Names of the built-in formats, in the order --help lists them: chatml, llama3, llama2, gemma, phi3, mistral,
// plain ("User: ...\nAssistant:" for a base model without a template).
const std::vector<std::string>& chat_format_names();

// The built-in format `name` (its Jinja source writes its special tokens itself; bos/eos are left undefined).
// Throws std::invalid_argument "unknown chat format 'x' (expected one of chatml, ...)".
ChatTemplate builtin_chat_template(std::string_view name);

// The model folder's own template: DIR/chat_template.jinja when it exists (transformers lets it win), else the
// field chat_template of DIR/tokenizer_config.json: a string, or a list of {"name", "template"} of which the one
// named "default" is used. bos_token/eos_token come from tokenizer_config.json (a string, {"content": ...}, or null
// = undefined). nullopt when the folder has no template. Throws std::invalid_argument naming the file and field
// for a malformed file (a chat_template that is neither a string nor such a list, a list without "default", a
// token of another type), for a template file over 1 MiB, and naming model_dir when it is not a directory.
std::optional<ChatTemplate> load_chat_template(const std::string& model_dir);

// The template a run uses: the built-in `format_name` when it is not empty; else the folder's own template; else
// the built-in "plain" format (*fell_back set to true; false otherwise). An empty model_dir has no template.
ChatTemplate select_chat_template(const std::string& model_dir, const std::string& format_name,
                                  bool* fell_back = nullptr);

// Reads a conversation: a JSON array of messages, or an object whose "messages" is that array. Each message is an
// object with "role" (a string) and "content" (a string, null, or a list of parts as multimodal templates take
// them); other fields (tool_calls, ...) pass through to the template. Throws std::invalid_argument naming the file
// and the field ("conv.json: messages[1].role: expected a string, found 3"); at most 64 MiB and 64 levels deep.
nlohmann::ordered_json read_chat_messages(const std::string& path);

struct ChatRenderOptions {
  bool add_generation_prompt = false;  // end with the header of an assistant turn
  std::time_t now = -1;                // what strftime_now() formats (-1 = the clock)
  jinja::Limits limits;                // bounds of the template engine
};

// A parsed template, rendered as many times as needed (once per turn of a chat).
class ChatFormatter {
 public:
  // Parses t.source; errors are std::invalid_argument naming t.origin and the line.
  explicit ChatFormatter(ChatTemplate t, const jinja::Limits& limits = {});

  // The prompt text of `messages` (a JSON array as read_chat_messages returns it: objects keep their key order),
  // rendered with the variables
  // transformers passes: messages, add_generation_prompt, tools = None, documents = None, and bos_token/eos_token
  // when defined. Throws jinja::TemplateRaised when the template calls raise_exception (its message kept),
  // std::invalid_argument "ORIGIN: line N: ..." for anything else the template cannot do.
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt, std::time_t now = -1) const;

  const ChatTemplate& chat_template() const { return template_; }

 private:
  ChatTemplate template_;
  jinja::Template compiled_;
};

// ChatFormatter(t, options.limits).render(messages, options.add_generation_prompt, options.now).
std::string render_chat(const ChatTemplate& t, const nlohmann::ordered_json& messages,
                        const ChatRenderOptions& options = {});

}  // namespace sinkflow
