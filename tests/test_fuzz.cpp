// Fuzz harness (issue 19): random mutations of the files sinkflow reads (config.json, a safetensors header,
// tokenizer.json, a YAML config, a memory directory's meta.json, a JSONL line, a chat template, a messages file),
// each parsed in a forked child with a 2 GiB address-space cap and a 10 s alarm. A case passes when the child exits
// 0 (accepted), 2 (bad input: std::invalid_argument) or 1 (another exception), and fails on a signal (a crash, the
// alarm, an allocation past the cap). The default run does 60 cases per file kind; `[.slow]` does 1,000 per kind.
// Counts are printed.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "graph/yaml_spec.h"
#include "models/io/config.h"
#include "models/io/json_read.h"
#include "models/io/safetensors.h"
#include "models/lab/make_model.h"
#include "models/memory/chunk_store.h"
#include "models/text/chat_template.h"
#include "models/text/tokenizer.h"
#include "tests/test_util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
namespace fs = std::filesystem;

namespace {

// One random mutation: flipped bytes, a cut, a duplicated slice, a deep nest or a huge number spliced in.
std::string mutate(std::string s, std::mt19937_64& rng) {
  if (s.empty()) s = "{}";
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % std::max<size_t>(n, 1)); };
  switch (rng() % 6) {
    case 0:
      for (int i = 0, n = 1 + static_cast<int>(rng() % 8); i < n; ++i) s[pick(s.size())] = static_cast<char>(rng());
      break;
    case 1: s.resize(pick(s.size())); break;
    case 2: {
      const size_t a = pick(s.size()), len = pick(std::min<size_t>(s.size() - a, 4096));
      s.insert(pick(s.size()), s.substr(a, len));
      break;
    }
    case 3: {
      const int depth = 50 + static_cast<int>(rng() % 100000);
      s.insert(pick(s.size()), std::string(depth, '[') + std::string(depth, ']'));
      break;
    }
    case 4: {
      static const char* const numbers[] = {"1e300", "-1", "0", "9223372036854775807", "18446744073709551616",
                                            "1000000000000", "2147483648", "-2147483649", "1e-300", "NaN"};
      // Replace the first run of digits after a random point.
      const size_t at = s.find_first_of("0123456789", pick(s.size()));
      if (at != std::string::npos) {
        const size_t end = s.find_first_not_of("0123456789.", at);
        s.replace(at, (end == std::string::npos ? s.size() : end) - at, numbers[rng() % 10]);
      }
      break;
    }
    default: {
      const std::string junk = "\"\\u0000\xff\xfe{}[],:\"";
      s.insert(pick(s.size()), junk.substr(pick(junk.size())));
      break;
    }
  }
  return s;
}

// Runs `body` in a forked child under the caps; returns the exit code, or -signal.
int run_capped(const std::function<void()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    rlimit as{rlim_t{2} << 30, rlim_t{2} << 30};
    ::setrlimit(RLIMIT_AS, &as);
    ::alarm(10);
    int code = 0;
    try {
      body();
    } catch (const std::invalid_argument&) {
      code = 2;
    } catch (const std::exception&) {
      code = 1;
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

void fuzz(const std::string& kind, int cases, const std::string& seed_text, const fs::path& file,
          const std::function<void()>& parse) {
  std::mt19937_64 rng(std::hash<std::string>{}(kind));
  std::map<int, int> counts;
  for (int i = 0; i < cases; ++i) {
    std::string text = seed_text;
    for (int m = 0, n = 1 + static_cast<int>(rng() % 3); m < n; ++m) text = mutate(text, rng);
    test::write_file(file, text);
    const int code = run_capped(parse);
    ++counts[code];
    if (code < 0) {
      test::write_file(file.string() + ".crash", text);
      FAIL(kind << ": case " << i << " ended by signal " << -code << " (input kept in " << file << ".crash)");
    }
  }
  std::fprintf(stderr, "fuzz %-12s %d cases: accepted %d, bad input (exit 2) %d, other error (exit 1) %d\n",
               kind.c_str(), cases, counts[0], counts[2], counts[1]);
  CHECK(counts[0] + counts[1] + counts[2] == cases);
}

void fuzz_all(int cases) {
  const fs::path dir = test::temp_dir("fuzz");
  MakeModelOptions o;
  o.config = shape_preset("tiny-llama");
  make_model((dir / "model").string(), o);
  const fs::path model = dir / "model";

  const std::string config = test::read_file(model / "config.json");
  fuzz("config.json", cases, config, dir / "config.json",
       [&] { ModelConfig::from_json_file((dir / "config.json").string()); });

  // The safetensors file: its JSON header mutated, then written back with its (new) length and the original data.
  const std::string st = test::read_file(model / "model.safetensors");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(st[static_cast<size_t>(i)]);
  const std::string data = st.substr(8 + header_len);
  fuzz("safetensors", cases, st.substr(8, header_len), dir / "header.json", [&] {
    const std::string header = test::read_file(dir / "header.json");
    std::string file(8, '\0');
    for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    test::write_file(dir / "model.safetensors", file + header + data);
    SafetensorsFile((dir / "model.safetensors").string());
  });

  fs::create_directories(dir / "tok");
  fuzz("tokenizer", cases, test::read_file(model / "tokenizer.json").substr(0, 200000), dir / "tok" / "tokenizer.json",
       [&] { load_tokenizer((dir / "tok").string()); });

  const std::string yaml = "pipeline: count\nparams:\n  src: {count: 5, start: 2}\n  triple:\n    factor: 10\n"
                           "run: {json: true}\n";
  fuzz("yaml", cases, yaml, dir / "config.yaml", [&] { parse_config(test::read_file(dir / "config.yaml"), "config.yaml"); });

  const std::string jsonl = R"({"role": "user", "content": "What is the best thing to do in San Francisco?"})";
  fuzz("jsonl", cases, jsonl, dir / "line.jsonl", [&] { parse_json(test::read_file(dir / "line.jsonl"), "line.jsonl:1"); });

  // A real chat template (Qwen3's: loops, namespace, string methods) mutated, parsed and rendered over a conversation
  // with every role it handles; and a mutated messages file.
  const std::string conversation = R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello"}, {"role": "tool", "content": "42"}])";
  const fs::path templates = fs::path(SINKFLOW_SOURCE_DIR) / "tests/data/chat_templates";
  fuzz("chat template", cases, test::read_file(templates / "qwen3.jinja"), dir / "chat_template.jinja", [&] {
    const ChatTemplate t{test::read_file(dir / "chat_template.jinja"), "chat_template.jinja", std::nullopt, "<|im_end|>"};
    ChatFormatter(t).render(nlohmann::json::parse(conversation), true);
  });
  fuzz("messages", cases, conversation, dir / "messages.json", [&] {
    render_chat(builtin_chat_template("chatml"), read_chat_messages((dir / "messages.json").string()));
  });
}

}  // namespace

TEST_CASE("fuzz: mutated config.json, safetensors, tokenizer.json, YAML, JSONL, chat templates and messages never crash (60 each)", "[fuzz]") {
  fuzz_all(60);
}

TEST_CASE("fuzz: 1,000 mutations of each file kind never crash", "[fuzz][.slow]") { fuzz_all(1000); }
