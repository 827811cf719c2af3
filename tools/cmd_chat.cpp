// chat: an endless conversation with memory. Runs the built-in pipelines/chat.yaml (a pipeline like the others:
// token-source format chat -> model-step with the chat template -> chat-out, and the memory path), with the
// command line's settings applied as --set overrides. --conversation DIR keeps the memory directory and the
// state after each reply, and resumes from them.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "chat_pipeline.h"
#include "graph/graph.h"
#include "graph/yaml_spec.h"
#include "models/io/json_read.h"
#include "models/memory/memory_dir.h"
#include "models/nn/runtime.h"
#include "nodes/model_step.h"
#include "nodes/nodes.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace sinkflow::cli {

namespace {

namespace fs = std::filesystem;

struct ChatArgs {
  std::string model, conversation, input = "-", placement = "prompt", chat_template = "auto", system, format = "auto";
  bool no_memory = false, show_retrieval = false;
  int64_t max_new_tokens = 256, n_sink = 4, n_memory = -1, n_recent = -1, chunk = 64, overlap = 32, retrieve_k = 2;
  SamplerConfig sampler;
  int64_t seed = 0;
  bool sampling_given = false;
  std::vector<std::string> stop, sets;
  RuntimeOptions rt;
};

std::string yaml_string(const std::string& s) { return nlohmann::json(s).dump(); }  // a JSON string is YAML

// DIR/conversation.json: the model a conversation was started with, so that resuming needs no --model.
std::string conversation_model(const fs::path& dir, const std::string& given) {
  const fs::path file = dir / "conversation.json";
  if (fs::exists(file)) {
    const nlohmann::ordered_json j = parse_ordered_json(read_json_text(file.string()), file.string());
    if (!j.is_object() || !j.contains("model") || !j["model"].is_string())
      throw std::invalid_argument(file.string() + ": expected an object with a string field 'model'");
    const std::string recorded = j["model"].get<std::string>();
    if (given.empty()) return recorded;
    if (fs::weakly_canonical(given) != fs::weakly_canonical(recorded))
      spdlog::warn("chat: {} was started with the model {}; --model {} is used (its weights and cache must match "
                   "the saved state)", dir.string(), recorded, given);
    return given;
  }
  if (given.empty())
    throw std::invalid_argument("--model: required (the conversation " + dir.string() + " has no conversation.json yet)");
  std::ofstream(file) << nlohmann::ordered_json{{"model", fs::absolute(given).string()}}.dump(2) << "\n";
  return given;
}

void run_chat(const ChatArgs& a) {
  a.rt.apply();
  std::string model = a.model, memory_dir, checkpoint;
  std::unique_ptr<fs::path> scratch;  // a conversation without --conversation: its memory lives in a temp dir
  if (!a.conversation.empty()) {
    const fs::path dir(a.conversation);
    if (fs::exists(dir) && !fs::is_directory(dir))
      throw std::invalid_argument("--conversation: expected a directory, found a file: " + dir.string());
    fs::create_directories(dir);
    model = conversation_model(dir, a.model);
    memory_dir = (dir / "memory").string();
    checkpoint = (dir / "state.safetensors").string();
  } else {
    if (model.empty()) throw std::invalid_argument("--model: required (or --conversation DIR of a saved conversation)");
    std::string tmpl = (fs::temp_directory_path() / "sinkflow-chat-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("cannot create a temporary memory directory in " + tmpl);
    scratch = std::make_unique<fs::path>(tmpl);
    memory_dir = (*scratch / "memory").string();
  }
  // The cache: 320 slots by default, all sinks and window with placement prompt, 64 of them a memory region with
  // placement region.
  const int64_t n_memory = a.n_memory >= 0 ? a.n_memory : a.placement == "region" ? 64 : 0;
  const int64_t n_recent = a.n_recent >= 0 ? a.n_recent : std::max<int64_t>(1, 320 - a.n_sink - n_memory);
  PipelineSpec spec = parse_pipeline(kChatPipeline, "pipelines/chat.yaml (built in)");
  std::vector<std::string> sets = {
      "resources.models.lm.path=" + yaml_string(model),
      "resources.models.lm.device=" + yaml_string(a.rt.device),
      "resources.models.lm.dtype=" + yaml_string(a.rt.dtype),
      "resources.memories.mem.dir=" + yaml_string(memory_dir),
      "src.path=" + yaml_string(a.input),
      "model.threads=" + std::to_string(a.rt.threads),
      "model.max_new_tokens=" + std::to_string(a.max_new_tokens),
      "model.cache={n_sink: " + std::to_string(a.n_sink) + ", n_memory: " + std::to_string(n_memory) +
          ", n_recent: " + std::to_string(n_recent) + "}",
      "model.memory=" + std::string(a.no_memory ? "false" : "true"),
      "model.retrieval.placement=" + yaml_string(a.placement),
      "model.chat.template=" + yaml_string(a.chat_template),
      "model.chat.system=" + yaml_string(a.system),
      "model.checkpoint=" + yaml_string(checkpoint),
      "model.show_retrieval=" + std::string(a.show_retrieval ? "true" : "false"),
      "eviction.chunk_size=" + std::to_string(a.chunk),
      "eviction.overlap=" + std::to_string(a.overlap),
      "retrieve.select.k=" + std::to_string(a.retrieve_k),
      "reinject.max_chunks=" + std::to_string(a.retrieve_k),
      "out.format=" + yaml_string(a.format),
  };
  if (a.sampling_given) {
    sets.push_back("model.sampler={temperature: " + std::to_string(a.sampler.temperature) +
                   ", top_k: " + std::to_string(a.sampler.top_k) + ", top_p: " + std::to_string(a.sampler.top_p) +
                   ", min_p: " + std::to_string(a.sampler.min_p) +
                   ", repetition_penalty: " + std::to_string(a.sampler.repetition_penalty) +
                   ", seed: " + std::to_string(a.seed) + "}");
  } else {
    sets.push_back("model.sampler={model_defaults: true, seed: " + std::to_string(a.seed) + "}");
  }
  if (!a.stop.empty()) {
    std::string list = "[";
    for (size_t i = 0; i < a.stop.size(); ++i) list += (i ? ", " : "") + yaml_string(a.stop[i]);
    sets.push_back("model.stop=" + list + "]");
  }
  for (const std::string& s : sets) apply_set_override(spec, s);
  for (const std::string& s : a.sets) apply_set_override(spec, s);
  Registry registry;
  register_builtin_nodes(registry);
  ModelStepStats stats;
  {
    Pipeline pipeline(spec, registry);
    StopOnSignal stop(pipeline.context());
    pipeline.run();
    stats = model_step_stats(pipeline.node("model"));
  }
  if (scratch) {
    std::error_code ec;
    fs::remove_all(*scratch / "memory", ec);  // ours alone: a fresh temporary directory
    fs::remove(*scratch, ec);
  }
  if (!a.conversation.empty())
    std::fprintf(stderr, "conversation %s: %ld turns (%ld tokens in this run)%s; resume with: sinkflow chat --conversation %s\n",
                 a.conversation.c_str(), static_cast<long>(stats.turns),
                 static_cast<long>(stats.prefill_tokens + stats.decode_tokens), stats.resumed ? " (this run resumed it)" : "",
                 a.conversation.c_str());
}

}  // namespace

void add_chat_commands(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* c = app.add_subcommand(
      "chat", "An endless conversation with memory: the model's chat template, a sink cache, retrieval per turn");
  c->add_option("--model", a->model, "model folder (Hugging Face layout); optional when --conversation has one");
  c->add_option("--conversation", a->conversation,
                "directory that keeps the conversation (memory + state after each reply); resumed when it exists");
  c->add_option("--input", a->input, "messages: '-' (stdin: a terminal, or JSONL {\"role\", \"content\"} per line) or a file")
      ->capture_default_str();
  c->add_option("--format", a->format, "output: auto (text on a terminal, else JSONL), text or jsonl")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}))
      ->capture_default_str();
  c->add_option("--template", a->chat_template,
                "chat template: auto (the folder's own, else plain) or a built-in format (chatml, llama3, llama2, "
                "gemma, phi3, mistral, plain)")
      ->capture_default_str();
  c->add_option("--system", a->system, "system message");
  c->add_flag("--no-memory", a->no_memory, "no memory path: plain StreamingLLM");
  c->add_option("--placement", a->placement, "where retrieved chunks go: prompt (text before the message) or region (the cache's memory region)")
      ->check(CLI::IsMember({"region", "prompt"}))
      ->capture_default_str();
  c->add_option("--max-new-tokens", a->max_new_tokens, "reply length limit")->capture_default_str();
  c->add_option("--n-sink", a->n_sink, "attention sinks")->capture_default_str();
  c->add_option("--n-memory", a->n_memory, "memory-region slots (default: 64 with placement region, else 0)");
  c->add_option("--n-recent", a->n_recent, "recent-window slots (default: 320 slots in all)");
  c->add_option("--chunk", a->chunk, "tokens per memory chunk")->capture_default_str();
  c->add_option("--overlap", a->overlap, "tokens each chunk repeats from the one before")->capture_default_str();
  c->add_option("--retrieve-k", a->retrieve_k, "chunks retrieved per turn")->capture_default_str();
  c->add_option("--temperature", a->sampler.temperature, "0 = greedy (default: the folder's generation_config.json)");
  c->add_option("--top-k", a->sampler.top_k, "keep the k most likely tokens (0 = all)");
  c->add_option("--top-p", a->sampler.top_p, "nucleus sampling threshold");
  c->add_option("--min-p", a->sampler.min_p, "keep tokens at least min-p x the most likely one's probability");
  c->add_option("--repetition-penalty", a->sampler.repetition_penalty, "penalty of tokens among the last 64 (1 = off)");
  c->add_option("--seed", a->seed, "sampling seed")->capture_default_str();
  c->add_option("--stop", a->stop, "stop string (repeatable); the plain format stops at \"\\nUser:\" by default");
  c->add_flag("--show-retrieval", a->show_retrieval, "print each retrieved chunk to stderr");
  c->add_option("--set", a->sets, "any pipeline override, as for `sinkflow run` (e.g. resources.memories.mem.embedder.kind=bert)");
  a->rt.add_to(*c);
  c->callback([a, c] {
    a->sampling_given = c->count("--temperature") + c->count("--top-k") + c->count("--top-p") + c->count("--min-p") +
                        c->count("--repetition-penalty") > 0;
    if (a->seed < 0) throw std::invalid_argument("--seed: expected an integer >= 0, found " + std::to_string(a->seed));
    run_chat(*a);
  });
}

}  // namespace sinkflow::cli
