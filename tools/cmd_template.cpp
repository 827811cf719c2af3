// template: the prompt a chat template makes of a conversation (the model's own template, or a built-in format),
// printed as text or, with --ids, as the token ids of the model's tokenizer.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <vector>

#include "models/text/chat_template.h"
#include "models/text/tokenizer.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace sinkflow::cli {

namespace {

struct TemplateArgs {
  std::string model;        // model folder ("" = none: --chat-format is then required)
  std::string messages;     // JSON file of messages
  std::string chat_format;  // built-in format ("" = the model's own template, else plain)
  bool add_generation_prompt = false;
  bool ids = false;
};

void run_template(const TemplateArgs& a) {
  if (a.model.empty() && a.chat_format.empty())
    throw std::invalid_argument("template: give --model (its own chat template) or --chat-format NAME");
  if (a.ids && a.model.empty()) throw std::invalid_argument("template: --ids needs --model (the tokenizer)");
  const nlohmann::json messages = read_chat_messages(a.messages);
  bool fell_back = false;
  ChatFormatter formatter(select_chat_template(a.model, a.chat_format, &fell_back));
  if (fell_back)
    spdlog::warn("template: {} has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json); "
                 "using the plain role format (--chat-format chooses another)",
                 a.model);
  spdlog::info("template: origin={} messages={} add_generation_prompt={}", formatter.chat_template().origin,
               messages.size(), a.add_generation_prompt);
  const std::string prompt = formatter.render(messages, a.add_generation_prompt);
  if (!a.ids) {
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    return;
  }
  const auto tokenizer = load_tokenizer(a.model);
  // The template writes special tokens as text; say so when this tokenizer does not read them back as one token.
  for (const auto& token : {formatter.chat_template().bos_token, formatter.chat_template().eos_token}) {
    if (!token || token->empty() || tokenizer->token_id(*token) < 0) continue;
    if (tokenizer->encode(*token) != std::vector<int64_t>{tokenizer->token_id(*token)})
      spdlog::warn("template: the {} tokenizer of {} does not read the special token '{}' written in the prompt as "
                   "its id {}",
                   tokenizer->kind(), a.model, *token, tokenizer->token_id(*token));
  }
  std::string line;
  for (const int64_t id : tokenizer->encode(prompt)) line += (line.empty() ? "" : " ") + std::to_string(id);
  std::printf("%s\n", line.c_str());
}

}  // namespace

void add_template_commands(CLI::App& app) {
  auto t = std::make_shared<TemplateArgs>();
  CLI::App* c = app.add_subcommand("template", "Print the prompt a chat template makes of a conversation (JSON messages)");
  c->add_option("--model", t->model, "Hugging Face model folder (its chat_template.jinja or tokenizer_config.json)");
  c->add_option("--messages", t->messages, "JSON file: [{\"role\": ..., \"content\": ...}, ...]")->required();
  c->add_flag("--add-generation-prompt", t->add_generation_prompt, "end with the header of an assistant turn");
  c->add_option("--chat-format", t->chat_format, "built-in format instead of the model's: " + [] {
    std::string s;
    for (const auto& n : chat_format_names()) s += (s.empty() ? "" : ", ") + n;
    return s;
  }());
  c->add_flag("--ids", t->ids, "print the token ids of the prompt (the model's tokenizer) instead of its text");
  c->callback([t] { run_template(*t); });
}

}  // namespace sinkflow::cli
