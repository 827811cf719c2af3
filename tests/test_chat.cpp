// Chat: the turn texts of a template (ChatTurns), the sampler's new processors, saving and resuming a stream
// exactly (snapshots), and `sinkflow chat`'s pipeline: one reply per user line, resume == never stopped, placement
// prompt never indexing the text it places.
#include <ATen/ATen.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "models/memory/chunk_store.h"
#include "models/memory/embedder.h"
#include "models/nn/decoder.h"
#include "models/nn/sampler.h"
#include "models/stream/snapshot.h"
#include "models/text/chat_turns.h"
#include "nodes/chat_out.h"
#include "nodes/model_step.h"
#include "tests/pipeline_fixture.h"
#include "tests/test_util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace sinkflow;
namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

namespace {

Json msg(const std::string& role, const std::string& content) { return Json{{"role", role}, {"content", content}}; }

}  // namespace

TEST_CASE("chat turns: the turn texts and replies of an append-only template add up to the whole render", "[chat]") {
  for (const std::string format : {"chatml", "llama3", "gemma", "mistral"}) {
    INFO(format);
    ChatTurns chat(builtin_chat_template(format));
    if (format != "gemma" && format != "mistral") chat.add("system", "Be brief.");
    std::string stream;
    Json all = Json::array();
    if (format != "gemma" && format != "mistral") all.push_back(msg("system", "Be brief."));
    const std::vector<std::pair<std::string, std::string>> turns = {
        {"Hi there", "Hello!"}, {"What is 2+2?", "4."}, {"Thanks", "You are welcome."}};
    for (size_t i = 0; i < turns.size(); ++i) {
      stream += chat.user(turns[i].first).text;
      all.push_back(msg("user", turns[i].first));
      REQUIRE(stream == ChatFormatter(builtin_chat_template(format)).render(all, true));
      stream += turns[i].second;
      chat.reply(turns[i].second);
      all.push_back(msg("assistant", chat.state()["last"].back()["content"].get<std::string>()));
    }
    CHECK(chat.append_only());
  }
}

TEST_CASE("chat turns: the plain format leaves out the stop string the stream already holds", "[chat]") {
  ChatTurns chat(builtin_chat_template("plain"));
  CHECK(chat.user("Hi").text == "User: Hi\nAssistant:");
  chat.reply(" Hello.", "\nUser:");
  // "User: ...\nAssistant: Hello.\nUser: More\nAssistant:" minus what was fed: " Hello." and "\nUser:".
  CHECK(chat.user("More").text == " More\nAssistant:");
  chat.reply(" Sure.");  // cut by the token limit: the template's "\n" closes it
  CHECK(chat.user("Bye").text == "\nUser: Bye\nAssistant:");
}

TEST_CASE("chat turns: the preamble is placed before the message and reported", "[chat]") {
  ChatTurns chat(builtin_chat_template("chatml"));
  const ChatTurn t = chat.user("Who won?", "The Reds won the cup in 1901.\n\n");
  CHECK(t.text.substr(t.preamble_begin, t.preamble_end - t.preamble_begin) == "The Reds won the cup in 1901.\n\n");
  CHECK(t.text.substr(t.preamble_end) == "Who won?<|im_end|>\n<|im_start|>assistant\n");
}

TEST_CASE("chat turns: a restored state writes the same next turn, a bad state is refused", "[chat]") {
  ChatTurns a(builtin_chat_template("chatml"));
  a.add("system", "S");
  a.user("one");
  a.reply("uno", "");
  ChatTurns b(builtin_chat_template("chatml"));
  b.restore(a.state(), "state.json");
  CHECK(b.user("two").text == a.user("two").text);
  CHECK_THROWS_WITH(b.restore(Json{{"system", nullptr}}, "x.json"), Catch::Contains("x.json: expected the chat state"));
}

TEST_CASE("sampler: min-p, repetition penalty, and a restored generator", "[chat]") {
  const at::Tensor logits = at::tensor({2.0f, 1.9f, -1.0f, 0.5f});
  SamplerConfig c;
  c.repetition_penalty = 1.5;
  Sampler greedy(c);
  CHECK(greedy.next(logits) == 0);
  CHECK(greedy.next(logits, {7, 0}) == 1);  // 2.0 / 1.5 < 1.9
  c.repetition_penalty = 1.0;
  c.temperature = 1.0;
  c.min_p = 0.99;  // only the top token is within 0.99 x its probability
  Sampler minp(c);
  for (int i = 0; i < 50; ++i) CHECK(minp.next(logits) == 0);
  c.min_p = 0;
  c.seed = 11;
  Sampler s1(c);
  for (int i = 0; i < 5; ++i) s1.next(logits);
  Sampler s2(c);
  s2.set_state(s1.state());
  for (int i = 0; i < 20; ++i) CHECK(s1.next(logits) == s2.next(logits));
  CHECK_THROWS_WITH(s2.set_state("garbage"), Catch::Contains("sampler state"));
  SamplerConfig bad;
  bad.min_p = 1.5;
  CHECK_THROWS_WITH(bad.validate("sampler"), Catch::Contains("min_p must be in [0, 1], found 1.5"));
}

TEST_CASE("snapshot: a restored stream continues exactly, another cache or damage is refused", "[chat]") {
  const std::shared_ptr<Decoder> d = make_decoder(test::tiny_llama_config(), at::kCPU, at::kFloat);
  {
    at::NoGradGuard no_grad;
    at::manual_seed(3);
    for (auto& [name, p] : d->named_parameters()) p.normal_(0, 0.2);
  }
  StreamConfig sc;
  sc.cache = test::stream_tiny_cache();
  std::vector<int64_t> tokens;
  for (int i = 0; i < 90; ++i) tokens.push_back((i * 37 + 5) % 50);
  const fs::path dir = test::temp_dir("snapshot");
  const std::string path = (dir / "state.safetensors").string();
  StreamSession a(d, sc);
  a.feed(std::vector<int64_t>(tokens.begin(), tokens.begin() + 70));
  a.inject(MemoryChunk{3, {11, 12, 13, 14}, {}}, InjectMode::text);
  write_snapshot(path, take_snapshot(a, Json{{"note", "x"}}));
  StreamSession b(d, sc);
  CHECK(load_snapshot(path, b) == Json{{"note", "x"}});
  CHECK(b.position() == a.position());
  CHECK(b.tokens_evicted() == a.tokens_evicted());
  const std::vector<int64_t> rest(tokens.begin() + 70, tokens.end());
  for (int64_t t : rest) CHECK(at::equal(a.feed({t}), b.feed({t})));
  CHECK(b.cache().cached_tokens() == a.cache().cached_tokens());

  StreamConfig other = sc;
  other.cache.n_recent = 20;
  StreamSession c(d, other);
  CHECK_THROWS_WITH(load_snapshot(path, c), Catch::Contains("written by another model or cache: n_recent is 28 there, 20 here"));
  // A flipped byte in the tensors' data.
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-5, std::ios::end);
    char ch = 0;
    f.read(&ch, 1);
    ch = static_cast<char>(ch ^ 0x40);
    f.seekp(-5, std::ios::end);
    f.write(&ch, 1);
  }
  StreamSession e(d, sc);
  CHECK_THROWS_WITH(load_snapshot(path, e), Catch::Contains("damaged"));
  CHECK(e.position() == 0);
  // Random byte flips and truncations of a good file: refused with a message, or (a flip that changes nothing the
  // state holds, e.g. header whitespace) loaded into exactly the saved state.
  write_snapshot(path, take_snapshot(a, Json{{"note", "x"}}));
  const std::string good = test::read_file(path);
  std::mt19937_64 rng(5);
  int refused = 0;
  for (int i = 0; i < 300; ++i) {
    std::string bad = good;
    if (i % 3 == 0) {
      bad.resize(rng() % good.size());
    } else {
      bad[rng() % bad.size()] ^= static_cast<char>(1 + rng() % 255);
    }
    test::write_file(path, bad);
    StreamSession g(d, sc);
    try {
      load_snapshot(path, g);
      CHECK(g.cache().cached_tokens() == a.cache().cached_tokens());
      CHECK(at::equal(g.cache().keys(), a.cache().keys()));
    } catch (const std::invalid_argument&) {
      ++refused;
      CHECK(g.position() == 0);
    }
  }
  CHECK(refused >= 290);
  StreamConfig cluster = sc;
  cluster.policy = Policy::cluster;
  StreamSession f(d, cluster);
  CHECK_THROWS_WITH(take_snapshot(f, Json()), Catch::Contains("policy 'cluster' cannot be saved"));
}

namespace {

// pipelines/chat.yaml over the tiny model, a tiny cache (4 + 32 + 28) and 8-token chunks, output kept quiet in a
// file; `extra` --set overrides after.
RunSpec chat_spec(const fs::path& dir, const std::string& input, const std::vector<std::string>& extra) {
  std::vector<std::string> sets = {"resources.models.lm.path=" + test::tiny_model(),
                                   "resources.memories.mem.dir=" + (dir / "memory").string(),
                                   "resources.memories.mem.embedder.dim=64",
                                   "src.path=" + input,
                                   "model.cache={n_sink: 4, n_memory: 32, n_recent: 28}",
                                   "model.prefill_block=16",
                                   "model.max_new_tokens=6",
                                   "eviction.chunk_size=8",
                                   "eviction.overlap=0",
                                   "model.retrieval.placement=region",
                                   "out.format=jsonl",
                                   "out.path=" + (dir / "out.jsonl").string()};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return load_run_spec(std::string(SINKFLOW_SOURCE_DIR) + "/pipelines/chat.yaml", sets);
}

std::string write_lines(const fs::path& path, const std::vector<std::string>& lines) {
  std::ofstream f(path);
  for (const std::string& l : lines) f << l << "\n";
  return path.string();
}

struct ChatRun {
  std::vector<Json> turns;
  ModelStepStats stats;
};

ChatRun run_chat(const RunSpec& spec) {
  Pipeline p(spec.pipeline, test::builtin_registry());
  p.run();
  ChatRun r;
  for (const std::string& line : chat_out_turns(p.node("out"))) r.turns.push_back(Json::parse(line));
  r.stats = model_step_stats(p.node("model"));
  return r;
}

const std::vector<std::string> kTurns = {
    R"({"role": "user", "content": "The lighthouse keeper wrote that the blue boat came back on Tuesday with forty crates of lemons and a torn sail."})",
    R"({"role": "user", "content": "Meanwhile the market sold bread, cheese, candles and rope to the sailors who waited for the storm to pass."})",
    R"({"role": "user", "content": "What did the blue boat bring back, and on which day did it come?"})"};

}  // namespace

TEST_CASE("chat pipeline: one reply per user line, commands answered in order, context lines not answered", "[chat]") {
  const fs::path dir = test::temp_dir("chat_lines");
  const std::string input = write_lines(dir / "in.jsonl", {R"({"role": "system", "content": "Be brief."})", kTurns[0], "/stats",
                                                           R"({"role": "assistant", "content": "an imported reply"})", kTurns[1],
                                                           "/memory", "plain text from the user", "/nope"});
  const ChatRun r = run_chat(chat_spec(dir, input, {}));
  REQUIRE(r.turns.size() == 6);
  const std::vector<std::string> kinds = {"reply", "stats", "reply", "memory", "reply", "nope"};
  for (size_t i = 0; i < kinds.size(); ++i) {
    INFO(i);
    if (kinds[i] == "reply") {
      CHECK(r.turns[i]["role"] == "assistant");
      CHECK(r.turns[i]["tokens"].get<int64_t>() <= 6);
      const std::string stop = r.turns[i]["stop"];
      CHECK((stop == "eos" || stop == "length" || stop == "stop"));
      CHECK(r.turns[i]["timings"]["prompt_tokens"].get<int64_t>() > 0);
    } else {
      CHECK(r.turns[i]["command"] == kinds[i]);
    }
  }
  CHECK(r.turns[1]["info"].get<std::string>().find("cache: ") != std::string::npos);
  CHECK(r.turns[5]["info"].get<std::string>().find("unknown command '/nope'") != std::string::npos);
  CHECK(r.stats.turns == 3);
  // The file the node wrote holds the same lines.
  std::ifstream f(dir / "out.jsonl");
  size_t lines = 0;
  for (std::string l; std::getline(f, l);) ++lines;
  CHECK(lines == 6);
}

TEST_CASE("chat pipeline: a reply comes before the next line is read (never a line behind)", "[chat]") {
  const fs::path dir = test::temp_dir("chat_pipe");
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  Pipeline p(chat_spec(dir, "/dev/fd/" + std::to_string(fds[0]), {}).pipeline, test::builtin_registry());
  // The run on this thread (as the launcher runs it); a writer sends one line, waits for its reply, then the next.
  std::vector<size_t> seen;
  std::thread writer([&] {
    for (size_t i = 0; i < 2; ++i) {
      const std::string line = kTurns[i] + "\n";
      if (::write(fds[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) break;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      while (chat_out_turns(p.node("out")).size() < i + 1 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      seen.push_back(chat_out_turns(p.node("out")).size());  // answered while the pipe stays open and silent
    }
    ::close(fds[1]);
  });
  p.run();
  writer.join();
  ::close(fds[0]);
  CHECK(seen == std::vector<size_t>{1, 2});
  CHECK(chat_out_turns(p.node("out")).size() == 2);
}

TEST_CASE("chat pipeline: a resumed conversation replies as one that never stopped", "[chat]") {
  for (const std::string placement : {"region", "prompt"}) {
    INFO(placement);
    const fs::path dir = test::temp_dir("chat_resume_" + placement);
    const std::vector<std::string> sets = {"model.retrieval.placement=" + placement,
                                           "model.cache.n_memory=" + std::string(placement == "prompt" ? "0" : "32")};
    auto with_checkpoint = [&](const fs::path& conv) {
      std::vector<std::string> s = sets;
      s.push_back("model.checkpoint=" + (conv / "state.safetensors").string());
      return s;
    };
    fs::create_directories(dir / "a");
    fs::create_directories(dir / "b");
    const std::string all = write_lines(dir / "all.jsonl", kTurns);
    const ChatRun a = run_chat(chat_spec(dir / "a", all, with_checkpoint(dir / "a")));
    REQUIRE(a.turns.size() == 3);
    CHECK(a.stats.snapshots == 3);
    CHECK(a.stats.tokens_evicted > 0);

    const std::string first = write_lines(dir / "first.jsonl", {kTurns[0], kTurns[1]});
    const std::string last = write_lines(dir / "last.jsonl", {kTurns[2]});
    const ChatRun b1 = run_chat(chat_spec(dir / "b", first, with_checkpoint(dir / "b")));
    CHECK_FALSE(b1.stats.resumed);
    const ChatRun b2 = run_chat(chat_spec(dir / "b", last, with_checkpoint(dir / "b")));
    CHECK(b2.stats.resumed);
    REQUIRE(b2.turns.size() == 1);
    CHECK(b2.turns[0]["content"] == a.turns[2]["content"]);
    CHECK(b2.turns[0]["retrieved"] == a.turns[2]["retrieved"]);
    CHECK(!a.turns[2]["retrieved"].empty());  // the memory took part
    REQUIRE(!a.stats.first_logits.empty());
    CHECK(b2.stats.first_logits == a.stats.first_logits);  // bit for bit

    // The same conversation with another cache shape is refused, naming the difference.
    std::vector<std::string> other = with_checkpoint(dir / "b");
    other.push_back("model.cache.n_recent=20");
    CHECK_THROWS_WITH(Pipeline(chat_spec(dir / "b", last, other).pipeline, test::builtin_registry()),
                      Catch::Contains("written by another model or cache: n_recent is 28 there, 20 here"));
  }
}

TEST_CASE("chat pipeline: placement prompt never indexes the text it places", "[chat]") {
  const fs::path dir = test::temp_dir("chat_prompt");
  std::vector<std::string> lines;
  for (int round = 0; round < 3; ++round)
    for (const std::string& t : kTurns) lines.push_back(t);
  const std::string input = write_lines(dir / "in.jsonl", lines);
  const ChatRun r = run_chat(chat_spec(dir, input, {"model.retrieval.placement=prompt", "model.cache.n_memory=0"}));
  REQUIRE(r.turns.size() == lines.size());
  REQUIRE(r.stats.unindexed_tokens > 0);
  REQUIRE(!r.stats.unindexed_ranges.empty());
  // Placed text was evicted later (the stream ran far past it), yet no stored chunk holds a position of it.
  CHECK(r.stats.unindexed_ranges.front().second + 28 < r.stats.prefill_tokens + r.stats.decode_tokens);
  StoreOptions so;
  HashEmbedder embedder(64);
  so.embedder_name = embedder.name();
  so.dim = embedder.dim();
  const auto store = ChunkStore::open((dir / "memory").string(), so);
  REQUIRE(store->size() > 0);
  int64_t stored_tokens = 0;
  for (int64_t id = 0; id < store->size(); ++id) {
    const Chunk c = store->get(id, false);
    stored_tokens += static_cast<int64_t>(c.tokens.size());
    for (int64_t p : c.positions)
      for (const auto& [b, e] : r.stats.unindexed_ranges) CHECK_FALSE((p >= b && p < e));
  }
  // Everything evicted reached the store except the placed text.
  int64_t placed_evicted = 0;
  for (const auto& [b, e] : r.stats.unindexed_ranges)
    for (int64_t p = b; p < e; ++p) placed_evicted += p < r.stats.tokens_evicted + 4 ? 1 : 0;
  CHECK(stored_tokens + placed_evicted == r.stats.tokens_evicted);
}

TEST_CASE("chat: a conversation killed (SIGKILL) after a reply resumes as one that never stopped", "[chat]") {
  const fs::path dir = test::temp_dir("chat_kill");
  fs::create_directories(dir / "a");
  fs::create_directories(dir / "b");
  // Never stopped: both turns in one run.
  const ChatRun a = run_chat(chat_spec(dir / "a", write_lines(dir / "a.jsonl", {kTurns[0], kTurns[1]}),
                                       {"model.checkpoint=" + (dir / "a" / "state.safetensors").string()}));
  REQUIRE(a.turns.size() == 2);
  // The launcher, fed one line through a pipe that stays open, killed once its first reply is saved.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const std::string state = (dir / "b" / "state.safetensors").string();
  // Everything the child needs is made before fork (it only calls async-signal-safe functions until exec).
  const std::string model = test::tiny_model(), conv = (dir / "b").string(), out_path = (dir / "b" / "out.jsonl").string();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[0], 0);
    ::close(fds[1]);
    const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::execl(SINKFLOW_CLI, SINKFLOW_CLI, "chat", "--model", model.c_str(), "--conversation", conv.c_str(), "--format",
            "jsonl", "--n-sink", "4", "--n-memory", "32", "--n-recent", "28", "--chunk", "8", "--overlap", "0", "--placement",
            "region", "--max-new-tokens", "6",
            "--temperature", "0", "--set", "model.prefill_block=16", "--set", "resources.memories.mem.embedder.dim=64",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[0]);
  const std::string line = kTurns[0] + "\n";
  REQUIRE(::write(fds[1], line.data(), line.size()) == static_cast<ssize_t>(line.size()));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(state) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE(fs::exists(state));
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(fds[1]);
  CHECK(WIFSIGNALED(status));
  // Resumed in this process with the second turn.
  const ChatRun b = run_chat(chat_spec(dir / "b", write_lines(dir / "b.jsonl", {kTurns[1]}), {"model.checkpoint=" + state}));
  CHECK(b.stats.resumed);
  REQUIRE(b.turns.size() == 1);
  CHECK(b.turns[0]["content"] == a.turns[1]["content"]);
  CHECK(b.turns[0]["retrieved"] == a.turns[1]["retrieved"]);
  CHECK(b.stats.first_logits == a.stats.first_logits);
}
