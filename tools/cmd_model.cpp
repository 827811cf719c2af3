// make-model: random checkpoints in Hugging Face layout. generate: streamed generation from a model folder.
#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <tuple>

#include "models/lab/make_model.h"
#include "models/nn/runtime.h"
#include "models/nn/sampler.h"
#include "models/stream/kv_align.h"
#include "models/stream/stream.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace sinkflow::cli {

namespace {

struct MakeModelArgs {
  std::string family = "llama";
  std::string shape;
  std::string out;
  std::string dtype = "float32";
  std::string tokenizer_text;
  uint64_t seed = 0;
  double shard_mb = 0;
  int64_t vocab = 0, d_model = 0, layers = 0, heads = 0, kv_heads = 0, d_ff = 0, max_pos = 0;
};

void run_make_model(const MakeModelArgs& a) {
  ModelConfig c;
  if (!a.shape.empty()) {
    c = shape_preset(a.shape);
  } else {
    const Family f = parse_family(a.family);
    c = shape_preset(f == Family::llama ? "tiny-llama" : f == Family::gpt2 ? "tiny-gpt2" : "tiny-bert");
  }
  if (a.vocab) c.vocab_size = a.vocab;
  if (a.d_model) c.d_model = a.d_model;
  if (a.layers) c.n_layer = a.layers;
  if (a.heads) c.n_head = a.heads;
  if (a.kv_heads) c.n_kv_head = a.kv_heads;
  if (a.heads && !a.kv_heads && c.family != Family::llama) c.n_kv_head = a.heads;
  if (a.heads && !a.kv_heads && c.family == Family::llama && c.n_head % c.n_kv_head != 0) c.n_kv_head = a.heads;
  if (a.d_model || a.heads) c.d_head = c.d_model / c.n_head;
  if (a.d_ff) c.d_ff = a.d_ff;
  if (a.max_pos) c.max_positions = a.max_pos;
  MakeModelOptions o;
  o.config = c;
  o.seed = a.seed;
  o.dtype = parse_dtype(a.dtype, at::Device(at::kCPU));
  o.max_shard_bytes = static_cast<int64_t>(a.shard_mb * 1024 * 1024);
  if (!a.tokenizer_text.empty()) o.tokenizer_text = read_file(a.tokenizer_text, "--tokenizer-text");
  std::tie(o.pooling, o.max_seq_length) = shape_pooling(a.shape);
  make_model(a.out, o);
  std::cerr << "wrote " << a.out << " (" << c.model_type << ", " << c.n_layer << " layers, d_model " << c.d_model
            << ", vocab " << c.vocab_size << ")\n";
}

struct GenerateArgs {
  std::string model, prompt;
  int64_t max_new_tokens = 64;
  std::string policy = "sink";
  int64_t sinks = 4, window = 0;
  std::string kv_align;  // kv-align networks folder ("" = MODEL/kv-align)
  SamplerConfig sampler;
  bool sampling_given = false;  // --temperature, --top-k or --top-p on the command line
  bool json = false;
  RuntimeOptions rt;
};

// The sampling a model folder asks for (generation_config.json, with_model_defaults) applies when the command line
// gave none.
void run_generate(const GenerateArgs& a) {
  a.rt.apply();
  c10::InferenceMode guard;
  LoadedModel m = load_model(a.model, a.rt);
  StreamConfig sc;
  sc.policy = parse_policy(a.policy);
  sc.cache.n_sink = a.sinks;
  sc.cache.n_recent = resolve_window(a.window, a.sinks, m.decoder->config());
  sc.cache.kv_dtype = parse_kv_dtype(a.rt.kv_dtype);
  // kv-align realigns with the networks the model folder ships (MODEL/kv-align) unless --kv-align names others.
  if (sc.policy == Policy::kv_align) sc.kv_align = KvAlign::load_for(a.model, a.kv_align);
  SamplerConfig sampling = a.sampler;
  if (!a.sampling_given) {
    sampling = with_model_defaults(a.sampler, m.generation);
    if (sampling.temperature > 0.0)
      spdlog::info("generate: sampling as {}/generation_config.json asks (temperature {}, top_k {}, top_p {}); "
                   "--temperature 0 decodes greedily", a.model, sampling.temperature, sampling.top_k, sampling.top_p);
  }
  sampling.validate("generation_config.json");
  Sampler sampler(sampling);
  StreamSession session(m.decoder, sc);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  std::vector<int64_t> prompt = encode_prompt(m, a.prompt);
  at::Tensor logits = session.feed(prompt);
  const auto t1 = clock::now();
  TextStreamer streamer(*m.tokenizer);
  std::FILE* text_out = table_stream(a.json);  // the text streams to stderr under --json (and into the JSON)
  std::string text;
  int64_t produced = 0;
  std::string stop = "length";
  for (; produced < a.max_new_tokens; ++produced) {
    const int64_t next = sampler.next(logits);
    if (m.generation.is_stop(next)) {
      stop = "eos";
      break;
    }
    const std::string piece = streamer.feed(next);
    text += piece;
    std::fputs(piece.c_str(), text_out);
    std::fflush(text_out);
    if (produced + 1 < a.max_new_tokens) logits = session.feed({next});
  }
  const std::string tail = streamer.flush();
  text += tail;
  std::fprintf(text_out, "%s\n", tail.c_str());
  const auto t2 = clock::now();
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  if (a.json) {
    print_json({{"command", "generate"},
                {"model", a.model},
                {"device", a.rt.device},
                {"policy", a.policy},
                {"prompt_tokens", prompt.size()},
                {"generated_tokens", produced},
                {"text", text},
                {"stop", stop},
                {"prefill_tokens_per_s", prompt.size() / std::max(prefill_s, 1e-9)},
                {"decode_tokens_per_s", produced / std::max(decode_s, 1e-9)},
                {"ms_per_token", produced ? 1000.0 * decode_s / produced : 0.0},
                {"evicted_tokens", session.tokens_evicted()},
                {"peak_rss_mb", peak_rss_bytes() / 1048576.0}});
  }
}

}  // namespace

void add_model_commands(CLI::App& app) {
  auto mk = std::make_shared<MakeModelArgs>();
  CLI::App* m = app.add_subcommand("make-model", "Write a random-weight checkpoint in Hugging Face layout");
  m->add_option("--family", mk->family, "llama, gpt2 or bert (tiny sizes unless --shape or size flags)")->capture_default_str();
  m->add_option("--shape", mk->shape, "named shape: " + [] {
    std::string s;
    for (auto& n : shape_preset_names()) s += (s.empty() ? "" : ", ") + n;
    return s;
  }());
  m->add_option("--out", mk->out, "output folder")->required();
  m->add_option("--seed", mk->seed, "random seed")->capture_default_str();
  m->add_option("--dtype", mk->dtype, "float32, float16 or bfloat16")->capture_default_str();
  m->add_option("--shard-mb", mk->shard_mb, "shard model.safetensors into files of at most this many MiB");
  m->add_option("--tokenizer-text", mk->tokenizer_text, "text file the tokenizer is trained on");
  m->add_option("--vocab", mk->vocab, "vocabulary size");
  m->add_option("--d-model", mk->d_model, "hidden size");
  m->add_option("--layers", mk->layers, "number of layers");
  m->add_option("--heads", mk->heads, "attention heads");
  m->add_option("--kv-heads", mk->kv_heads, "key/value heads (llama)");
  m->add_option("--d-ff", mk->d_ff, "feed-forward size");
  m->add_option("--max-pos", mk->max_pos, "max positions");
  m->callback([mk] { run_make_model(*mk); });

  auto g = std::make_shared<GenerateArgs>();
  CLI::App* gen = app.add_subcommand("generate", "Generate text from a model folder, streamed to stdout");
  gen->add_option("--model", g->model, "Hugging Face model folder")->required();
  gen->add_option("--prompt", g->prompt, "prompt text")->required();
  gen->add_option("--max-new-tokens", g->max_new_tokens, "tokens to generate")->capture_default_str();
  gen->add_option("--policy", g->policy, "dense, window, sink or recompute")->capture_default_str();
  gen->add_option("--sinks", g->sinks, "attention sinks")->capture_default_str();
  gen->add_option("--window", g->window, "recent window (0 = 1020, or what fits a model with learned positions)")->capture_default_str();
  gen->add_option("--kv-align", g->kv_align, "kv-align networks folder (default: MODEL/kv-align)");
  gen->add_option("--temperature", g->sampler.temperature, "0 = greedy")->capture_default_str();
  gen->add_option("--top-k", g->sampler.top_k, "0 = off")->capture_default_str();
  gen->add_option("--top-p", g->sampler.top_p, "1 = off")->capture_default_str();
  gen->add_option("--seed", g->sampler.seed, "sampling seed")->capture_default_str();
  gen->add_flag("--json", g->json, "print a JSON summary line at the end");
  g->rt.add_to(*gen);
  g->rt.add_kv_dtype_to(*gen);
  gen->callback([g, gen] {
    g->sampling_given = gen->count("--temperature") + gen->count("--top-k") + gen->count("--top-p") > 0;
    run_generate(*g);
  });
}

}  // namespace sinkflow::cli
