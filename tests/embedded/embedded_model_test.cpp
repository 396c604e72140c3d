// The embedded model (models/philora-tiny, trained by tools/train_tiny.py) and
// its adapters, through the commands a user runs: held-out losses equal to the
// ones the training script computed with HF transformers + PEFT, adapters that
// change the text, English out of the base model, the server as
// scripts/run.sh starts it, and `philora chat` on a pseudo-terminal.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "model/cli_runner.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

extern char** environ;

namespace philora {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

const fs::path kModels = fs::weakly_canonical(fs::path(PHILORA_TEST_DATA) / ".." / ".." / "models");
const fs::path kModel = kModels / "philora-tiny";
const fs::path kAdapters = kModels / "adapters";
const fs::path kHeldout = kModels / "heldout";
const char* const kAdapterNames[] = {"kjv", "devil", "jargon"};
constexpr int32_t kEndOfText = 0;  // <|endoftext|>: what every held-out window is scored after
constexpr int64_t kWindow = 1023;  // held-out tokens per scored sequence (context 1024 - 1)

json training() {
  std::ifstream in(kModels / "training.json");
  if (!in) ADD_FAILURE() << "missing " << (kModels / "training.json");
  return in ? json::parse(in) : json::object();
}

struct Loaded {
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::unique_ptr<tokenizer::ChatTemplate> chat;
};

Loaded load_tokenizer() {
  Loaded l;
  auto t = tokenizer::Tokenizer::from_model_dir(kModel.string());
  EXPECT_TRUE(t.ok()) << t.status().message();
  if (t.ok()) l.tok = std::move(*t);
  auto c = tokenizer::ChatTemplate::from_model_dir(kModel.string());
  EXPECT_TRUE(c.ok()) << c.status().message();
  if (c.ok()) l.chat = std::make_unique<tokenizer::ChatTemplate>(std::move(*c));
  return l;
}

// A held-out file as one token stream (tools/train_tiny.py's HELDOUT_DEFINITION): each
// document rendered (text + <|endoftext|>, or the chat template without a generation
// prompt, which ends in <|endoftext|>), encoded, concatenated in file order.
std::vector<int32_t> heldout_stream(const Loaded& l, const std::string& domain) {
  std::vector<int32_t> ids;
  for (const json& doc : test::read_jsonl(kHeldout / (domain + ".jsonl"))) {
    std::string text;
    if (doc.contains("text")) {
      text = doc["text"].get<std::string>() + "<|endoftext|>";
    } else {
      auto r = l.chat->render(nlohmann::ordered_json::parse(doc["messages"].dump()), false);
      if (!r.ok()) {
        ADD_FAILURE() << r.status().message();
        return {};
      }
      text = *r;
    }
    const std::vector<int32_t> d = l.tok->encode(text, /*add_special_tokens=*/false);
    ids.insert(ids.end(), d.begin(), d.end());
  }
  return ids;
}

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("philora_embedded_" + std::to_string(::getpid()) + "_" + name);
}

// Mean -ln p over the stream, scored by `philora score --output loss` in windows of kWindow
// tokens, each after <|endoftext|>, a few windows per call.
double philora_loss(const std::vector<int32_t>& stream, const std::optional<std::string>& adapter) {
  double nll = 0;
  int64_t scored = 0;
  constexpr size_t kWindowsPerCall = 4;
  const fs::path req = temp_path("score.jsonl");
  for (size_t begin = 0; begin < stream.size(); begin += kWindowsPerCall * kWindow) {
    {
      std::ofstream out(req);
      for (size_t w = begin; w < std::min(stream.size(), begin + kWindowsPerCall * kWindow); w += kWindow) {
        std::vector<int32_t> seq = {kEndOfText};
        seq.insert(seq.end(), stream.begin() + long(w),
                   stream.begin() + long(std::min(stream.size(), w + kWindow)));
        out << json({{"id", std::to_string(w)}, {"input_ids", seq}, {"adapter", adapter ? json(*adapter) : json()}})
                   .dump()
            << "\n";
      }
    }
    std::vector<std::string> args = {"score", "--model", kModel.string(), "--requests", req.string(),
                                     "--output", "loss"};
    if (adapter) args.insert(args.end(), {"--adapter", *adapter + "=" + (kAdapters / *adapter).string()});
    const test::CliResult r = test::run_philora(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      const json j = json::parse(line);
      nll += j["nll"].get<double>();
      scored += j["tokens"].get<int64_t>();
    }
  }
  fs::remove(req);
  EXPECT_EQ(scored, int64_t(stream.size()));
  return nll / double(std::max<int64_t>(scored, 1));
}

struct LossCase {
  std::string model;   // "base" or an adapter
  std::string domain;  // held-out file
};
void PrintTo(const LossCase& c, std::ostream* os) { *os << c.model << " on " << c.domain; }
std::string case_name(const ::testing::TestParamInfo<LossCase>& i) {
  return i.param.model + "_on_" + i.param.domain;
}

class HeldOutLoss : public ::testing::TestWithParam<LossCase> {};

// The loss philora computes equals, within 1%, the one the training script computed with HF
// transformers (+ PEFT) on the same exported bf16 files converted to float32.
TEST_P(HeldOutLoss, MatchesTheTrainingScript) {
  const LossCase& c = GetParam();
  const json t = training();
  const json& h = t["heldout"];
  const Loaded l = load_tokenizer();
  ASSERT_TRUE(l.tok && l.chat);
  const std::vector<int32_t> stream = heldout_stream(l, c.domain);
  // The same tokens as HF tokenizers produced (count and first ids).
  ASSERT_EQ(int64_t(stream.size()), h["files"][c.domain]["predicted_tokens"].get<int64_t>());
  const std::vector<int32_t> first = h["files"][c.domain]["first_ids"].get<std::vector<int32_t>>();
  ASSERT_TRUE(std::equal(first.begin(), first.end(), stream.begin()));

  const bool base = c.model == "base";
  const double want = base ? h["base"][c.domain].get<double>() : h["adapters"][c.model]["loss"].get<double>();
  const double got = philora_loss(stream, base ? std::nullopt : std::optional<std::string>(c.model));
  std::cout << c.model << " on " << c.domain << ": philora " << got << ", HF " << want << " nats/token over "
            << stream.size() << " tokens\n";
  EXPECT_NEAR(got, want, 0.01 * want) << c.model << " on " << c.domain;
  if (!base) {  // and the adapter is worth having: it lowers its own domain's loss
    EXPECT_LT(got, h["base"][c.domain].get<double>());
  }
}

INSTANTIATE_TEST_SUITE_P(Embedded, HeldOutLoss,
                         ::testing::Values(LossCase{"base", "base"}, LossCase{"base", "chat"},
                                           LossCase{"kjv", "kjv"}, LossCase{"devil", "devil"},
                                           LossCase{"jargon", "jargon"}),
                         case_name);

// `philora generate --greedy` over request lines; returns each line's output by id.
// With `with_adapters`, the three adapters are loaded, with `lora_columns` LoRA columns.
std::map<std::string, json> generate(const std::vector<json>& lines, int64_t max_new_tokens,
                                     bool with_adapters, int lora_columns = -1) {
  const fs::path req = temp_path("generate.jsonl");
  {
    std::ofstream out(req);
    for (const json& l : lines) out << l.dump() << "\n";
  }
  std::vector<std::string> args = {"generate", "--model", kModel.string(), "--requests", req.string(),
                                   "--greedy", "--max-new-tokens", std::to_string(max_new_tokens)};
  if (with_adapters)
    for (const char* a : kAdapterNames) args.insert(args.end(), {"--adapter", std::string(a) + "=" + (kAdapters / a).string()});
  if (lora_columns >= 0) args.insert(args.end(), {"--lora-columns", std::to_string(lora_columns)});
  const test::CliResult r = test::run_philora(args);
  fs::remove(req);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::map<std::string, json> out;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    out[j["id"].get<std::string>()] = j;
  }
  return out;
}

// Every adapter changes the greedy continuation of the same prompt, all in one batch.
TEST(EmbeddedGreedy, EveryAdapterChangesTheContinuation) {
  for (const std::string prompt : {"In the beginning", "The "}) {
    std::vector<json> lines = {{{"id", "base"}, {"prompt", prompt}, {"adapter", nullptr}}};
    for (const char* a : kAdapterNames) lines.push_back({{"id", a}, {"prompt", prompt}, {"adapter", a}});
    auto out = generate(lines, 24, true);
    ASSERT_EQ(out.size(), 4u);
    for (const char* a : kAdapterNames)
      EXPECT_NE(out[a]["tokens"], out["base"]["tokens"])
          << "adapter " << a << " gives the base model's text for '" << prompt << "': " << out[a]["text"];
  }
}

// The base model writes English: most words of its greedy text are in a dictionary.
TEST(EmbeddedGreedy, BaseModelWritesDictionaryWords) {
  std::ifstream dict("/usr/share/dict/words");
  ASSERT_TRUE(dict) << "no /usr/share/dict/words: install Debian's wamerican (scripts/deps.sh does)";
  std::set<std::string> words;
  for (std::string w; std::getline(dict, w);) {
    for (char& ch : w) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    words.insert(w);
  }
  auto out = generate({{{"id", "a"}, {"prompt", "The "}}, {{"id", "b"}, {"prompt", "It is"}}}, 64, false);
  int total = 0, known = 0;
  std::string text;
  for (const auto& [id, j] : out) text += j["text"].get<std::string>() + " ";
  const std::regex word("[A-Za-z]+(?:'[a-z]+)?");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), word); it != std::sregex_iterator(); ++it) {
    std::string w = it->str();
    for (char& ch : w) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    ++total;
    known += words.count(w) || (w.ends_with("'s") && words.count(w.substr(0, w.size() - 2)));
  }
  ASSERT_GE(total, 10) << text;
  EXPECT_GE(double(known) / total, 0.85) << known << " of " << total << " words known in: " << text;
}

// ---- the server as scripts/run.sh starts it ---------------------------------

// `philora serve --port 0 ARGS...` as a child process: its log (stderr) in a file, the port
// read back from the ready line.
class ServeProcess {
 public:
  void start(std::vector<std::string> extra) {
    log_ = temp_path("serve-" + std::to_string(++count_) + ".log");
    std::vector<std::string> args = {PHILORA_BINARY, "serve", "--port", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    started_ = Clock::now();
    ASSERT_EQ(posix_spawn(&pid_, PHILORA_BINARY, &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
  }
  // SIGTERM, and a failure unless it exits within 20 s.
  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      const auto deadline = Clock::now() + std::chrono::seconds(20);
      while (::waitpid(pid_, &status, WNOHANG) == 0) {
        if (Clock::now() > deadline) {
          ADD_FAILURE() << "the server did not exit within 20 s of SIGTERM";
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &status, 0);
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      pid_ = 0;
    }
    fs::remove(log_);
  }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // Waits (up to 60 s from the server's start) for the ready line, then for /health.
  httplib::Client client() {
    const std::regex ready("ready on http://127\\.0\\.0\\.1:(\\d+) ");
    std::smatch m;
    while (port_ == 0 && Clock::now() - started_ < std::chrono::seconds(60)) {
      const std::string l = log();
      if (std::regex_search(l, m, ready)) port_ = std::stoi(m[1]);
      else std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_NE(port_, 0) << "no ready line within 60 s:\n" << log();
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    while (port_ && Clock::now() - started_ < std::chrono::seconds(60)) {
      if (auto r = c.Get("/health"); r && r->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return c;
  }
  int port() const { return port_; }
  Clock::time_point started() const { return started_; }

 private:
  static inline int count_ = 0;
  int port_ = 0;
  pid_t pid_ = 0;
  fs::path log_;
  Clock::time_point started_;
};

class EmbeddedServer : public ::testing::Test {
 protected:
  // `philora serve --port 0`: no --model, no --device (scripts/run.sh's command line; the
  // port is any free one, read back from the ready line).
  static void SetUpTestSuite() { server_.start({}); }
  static void TearDownTestSuite() { server_.stop(); }
  static std::string log() { return server_.log(); }
  static httplib::Client client() { return server_.client(); }
  static inline ServeProcess server_;
};

TEST_F(EmbeddedServer, AnswersTextAndChatWithin60Seconds) {
  httplib::Client c = client();
  auto g = c.Post("/generate",
                  json({{"inputs", "In the beginning"}, {"parameters", {{"max_new_tokens", 16}}}}).dump(),
                  "application/json");
  ASSERT_TRUE(g) << "no answer; server log:\n" << log();
  ASSERT_EQ(g->status, 200) << g->body;
  EXPECT_FALSE(json::parse(g->body)["generated_text"].get<std::string>().empty());
  auto chat = c.Post("/v1/chat/completions",
                     json({{"model", "philora-tiny"},
                           {"messages", {{{"role", "user"}, {"content", "What does 'ocean' mean?"}}}},
                           {"max_tokens", 64},
                           {"temperature", 0}})
                         .dump(),
                     "application/json");
  ASSERT_TRUE(chat);
  ASSERT_EQ(chat->status, 200) << chat->body;
  EXPECT_FALSE(json::parse(chat->body)["choices"][0]["message"]["content"].get<std::string>().empty());
  EXPECT_LT(Clock::now() - server_.started(), std::chrono::seconds(60));
}

// On the CPU the KV cache takes at most 10% of the available RAM and 1 GiB.
TEST_F(EmbeddedServer, ReadyLineAndASmallCpuKvCache) {
  client();
  const std::string l = log();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(l, m, std::regex("ready on http://127\\.0\\.0\\.1:(\\d+) \\| model philora-tiny \\| "
                                                  "(\\w+)[^|]*\\| KV cache (\\d+) tokens")))
      << l;
  EXPECT_EQ(std::stoi(m[1]), server_.port());
  if (m[2] != "cpu") GTEST_SKIP() << "the server took the GPU";
  const json cfg = json::parse(std::ifstream(kModel / "config.json"));
  const int64_t head_dim = cfg["hidden_size"].get<int64_t>() / cfg["num_attention_heads"].get<int64_t>();
  const int64_t bytes_per_token = cfg["num_hidden_layers"].get<int64_t>() * 2 *
                                  cfg["num_key_value_heads"].get<int64_t>() * head_dim * 4;  // f32 on the CPU
  EXPECT_LE(std::stoll(m[3]) * bytes_per_token, int64_t(1) << 30) << l;
  EXPECT_HAS(l, "adapters: devil, jargon, kjv");
}

// Chat answers to held-out questions end with the end-of-turn token within the token limit,
// and their text is what `philora generate` gives for the rendered prompt.
TEST_F(EmbeddedServer, HeldOutQuestionsEndTheirTurnAndMatchGenerate) {
  httplib::Client c = client();
  const Loaded l = load_tokenizer();
  ASSERT_TRUE(l.tok && l.chat);
  const std::vector<json> questions = test::read_jsonl(kHeldout / "chat_questions.jsonl");
  ASSERT_EQ(questions.size(), 5u);
  constexpr int64_t kMaxTokens = 256;
  std::vector<json> lines;
  std::vector<std::string> answers;
  for (size_t i = 0; i < questions.size(); ++i) {
    const json messages = json::array({{{"role", "user"}, {"content", questions[i]["question"]}}});
    auto r = c.Post("/v1/chat/completions",
                    json({{"messages", messages}, {"max_tokens", kMaxTokens}, {"temperature", 0}}).dump(),
                    "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json out = json::parse(r->body);
    EXPECT_EQ(out["choices"][0]["finish_reason"], "stop") << questions[i] << " -> " << out;
    EXPECT_LT(out["usage"]["completion_tokens"].get<int64_t>(), kMaxTokens);
    answers.push_back(out["choices"][0]["message"]["content"].get<std::string>());
    auto prompt = l.chat->render(nlohmann::ordered_json::parse(messages.dump()), true);
    ASSERT_TRUE(prompt.ok());
    lines.push_back({{"id", std::to_string(i)}, {"prompt", *prompt}});
  }
  // The same computation as the server's: one request at a time, the adapters loaded with as
  // many LoRA columns as serve gives its 16 adapter slots (16 each), so every matmul has the
  // server's shape.
  for (size_t i = 0; i < answers.size(); ++i) {
    auto gen = generate({lines[i]}, kMaxTokens, true, 16 * 16);
    EXPECT_EQ(answers[i], gen[std::to_string(i)]["text"].get<std::string>()) << questions[i];
    EXPECT_EQ(gen[std::to_string(i)]["finish_reason"], "stop");
  }
}

// Text prompts on LoRAX's route: each adapter by name, and every one different.
TEST_F(EmbeddedServer, EachAdapterAnswersDifferently) {
  httplib::Client c = client();
  std::set<std::string> texts;
  for (const char* a : {"", "kjv", "devil", "jargon"}) {
    json params = {{"max_new_tokens", 24}};
    if (*a) params["adapter_id"] = a;
    auto r = c.Post("/generate", json({{"inputs", "The "}, {"parameters", params}}).dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    texts.insert(json::parse(r->body)["generated_text"].get<std::string>());
  }
  EXPECT_EQ(texts.size(), 4u);
}

// `philora serve --speculate medusa` without --model takes the embedded model's heads
// (models/medusa) and the kjv adapter's own (models/adapters/kjv): /info says medusa, greedy
// text for the base model and for kjv is what the server without speculation gives, and the
// heads drafted (their acceptance on this model is low: no count of accepted drafts is asked).
TEST_F(EmbeddedServer, MedusaHeadsShippedWithTheModelKeepGreedyText) {
  if (!fs::exists(kModel.parent_path() / "medusa" / "medusa_lm_head.safetensors"))
    GTEST_SKIP() << "no models/medusa";
  ServeProcess medusa;
  medusa.start({"--speculate", "medusa"});
  httplib::Client spec = medusa.client();
  httplib::Client plain = client();
  auto info = spec.Get("/info");
  ASSERT_TRUE(info) << medusa.log();
  EXPECT_EQ(json::parse(info->body)["speculate_method"], "medusa");
  auto drafted = [&] {  // vllm:spec_decode_num_draft_tokens_total so far
    auto m = spec.Get("/metrics");
    std::smatch x;
    EXPECT_TRUE(m && std::regex_search(m->body, x, std::regex("\nvllm:spec_decode_num_draft_tokens_total"
                                                              "\\{[^}]*\\} (\\d+)")));
    return x.empty() ? -1 : std::stoll(x[1]);
  };
  int64_t before = drafted();
  EXPECT_EQ(before, 0);
  for (const char* a : {"", "kjv"}) {  // the base model's heads, then the adapter's own
    json params = {{"max_new_tokens", 48}, {"do_sample", false}};
    if (*a) params["adapter_id"] = a;
    const std::string body = json({{"inputs", "And it came to pass"}, {"parameters", params}}).dump();
    auto want = plain.Post("/generate", body, "application/json");
    auto got = spec.Post("/generate", body, "application/json");
    ASSERT_TRUE(want && got) << medusa.log();
    ASSERT_EQ(got->status, 200) << got->body;
    EXPECT_EQ(json::parse(got->body)["generated_text"], json::parse(want->body)["generated_text"]) << a;
    const int64_t now = drafted();
    EXPECT_GT(now, before) << "no drafts for " << (*a ? a : "the base model");
    before = now;
  }
  medusa.stop();
}

// ---- philora chat on a pseudo-terminal ------------------------------------

class Pty {
 public:
  explicit Pty(std::vector<std::string> args) : args_(std::move(args)) {
    std::vector<char*> argv;  // built before the fork: the child only execs
    for (auto& a : args_) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = forkpty(&fd_, nullptr, nullptr, nullptr);
    if (pid_ == 0) {
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~Pty() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  bool started() const { return pid_ > 0; }
  void send(const std::string& s) { EXPECT_EQ(::write(fd_, s.data(), s.size()), ssize_t(s.size())); }
  // Reads until `pattern` appears in what was read since the last call (or the timeout).
  std::string read_until(const std::string& pattern, int timeout_s = 60) {
    const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    while (seen_.find(pattern) == std::string::npos && Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fd_, buf, sizeof(buf));
      if (n <= 0) break;
      seen_.append(buf, size_t(n));
    }
    const size_t at = seen_.find(pattern);
    std::string out = at == std::string::npos ? seen_ : seen_.substr(0, at + pattern.size());
    seen_ = at == std::string::npos ? "" : seen_.substr(at + pattern.size());
    return out;
  }
  int wait_exit(int timeout_s = 30) {
    const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    int status = 0;
    while (Clock::now() < deadline) {
      char buf[4096];
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 0) > 0 && ::read(fd_, buf, sizeof(buf)) > 0) continue;  // drain
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -2;
  }

 private:
  std::vector<std::string> args_;
  int fd_ = -1;
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string seen_;
};

TEST(EmbeddedChat, AnswersSwitchesAdapterStopsOnCtrlCAndQuits) {
  Pty p({PHILORA_BINARY, "chat", "--device", "cpu", "--temperature", "0", "--max-new-tokens", "200"});
  ASSERT_TRUE(p.started());
  std::string out = p.read_until("philora-tiny> ");
  ASSERT_NE(out.find("philora-tiny> "), std::string::npos) << out;
  EXPECT_HAS(out, "adapters: devil, jargon, kjv");

  p.send("What does 'ocean' mean?\n");
  const std::string base_answer = p.read_until("philora-tiny> ");
  ASSERT_NE(base_answer.find("philora-tiny> "), std::string::npos) << base_answer;

  p.send("/adapter devil\n");
  EXPECT_HAS(p.read_until("devil> "), "(adapter devil)");
  p.send("/reset\n");
  EXPECT_HAS(p.read_until("devil> "), "(conversation cleared)");
  p.send("What does 'ocean' mean?\n");
  const std::string devil_answer = p.read_until("devil> ");
  ASSERT_NE(devil_answer.find("devil> "), std::string::npos) << devil_answer;
  // The echoed question is the same; the answers after it differ.
  ASSERT_NE(base_answer.find("mean?"), std::string::npos) << base_answer;
  ASSERT_NE(devil_answer.find("mean?"), std::string::npos) << devil_answer;
  EXPECT_NE(base_answer.substr(base_answer.find("mean?")), devil_answer.substr(devil_answer.find("mean?")));

  // Ctrl-C stops the answer, not the program: sent as soon as the answer starts to stream,
  // it ends the answer with [stopped] and the prompt comes back (an answer may end before the
  // signal lands: then the next question is tried).
  p.send("/adapter\n");
  p.read_until("philora-tiny> ");
  bool stopped_one = false;
  for (const char* q : {"Tell me about the history of Morocco.", "Write a sentence about the sea.",
                        "Give me a brief overview of France."}) {
    p.send(std::string(q) + "\n");
    p.read_until(std::string(q) + "\r\n");  // the echo of the question
    p.read_until(" ", 30);                   // the answer's first word
    p.send("\x03");
    const std::string rest = p.read_until("philora-tiny> ");
    ASSERT_NE(rest.find("philora-tiny> "), std::string::npos) << rest;
    if (rest.find("[stopped]") != std::string::npos) {
      stopped_one = true;
      break;
    }
  }
  EXPECT_TRUE(stopped_one) << "no answer was stopped by Ctrl-C";
  // Ctrl-C at the prompt only says how to leave.
  p.send("\x03");
  EXPECT_HAS(p.read_until("philora-tiny> "), "/quit leaves");

  p.send("/quit\n");
  EXPECT_EQ(p.wait_exit(), 0);
}

}  // namespace
}  // namespace philora
