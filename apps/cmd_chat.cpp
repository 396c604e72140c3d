// philora chat: an interactive chat in the terminal on the serving engine. The
// conversation is rendered with the model's chat template each turn, answers
// stream token by token, Ctrl-C stops the answer (not the program), and
// /adapter NAME, /reset, /quit steer it.
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <memory>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "serving.h"
#include "tokenizer/incremental_detokenizer.h"

namespace philora::app {

namespace {

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");
extern "C" void on_sigint(int) { g_interrupted = true; }

// Lines of standard input, read with poll + read (not stdio) so that a
// Ctrl-C at the prompt is seen at once, whenever it comes.
class LineReader {
 public:
  enum class Result { line, end, interrupted };
  Result next(std::string& line) {
    for (;;) {
      if (const size_t nl = buf_.find('\n'); nl != std::string::npos) {
        line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return Result::line;
      }
      if (eof_) {
        if (buf_.empty()) return Result::end;
        line = std::move(buf_);
        buf_.clear();
        return Result::line;
      }
      if (g_interrupted.exchange(false)) return Result::interrupted;
      pollfd p{STDIN_FILENO, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;  // timeout or EINTR: look at the flag again
      char chunk[4096];
      const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof(chunk));
      if (n > 0) buf_.append(chunk, size_t(n));
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) eof_ = true;
    }
  }

 private:
  std::string buf_;
  bool eof_ = false;
};

struct ChatOptions {
  ServingOptions serving;
  std::string system;
  int64_t max_new_tokens = 256;
  float temperature = 0.7f;
  int64_t top_k = 0;
  float top_p = 0.9f;
  std::optional<uint64_t> seed;
};

const char* kHelp =
    "commands: /adapter NAME (or /adapter to use the base model), /adapters, /reset, /quit, /help\n";

class Chat {
 public:
  Chat(const ChatOptions& o, Serving& s) : o_(o), s_(s) {
    rng_.seed(o.seed.value_or(uint64_t(std::chrono::steady_clock::now().time_since_epoch().count())));
  }

  // One turn: the answer to `user`, streamed to stdout. False when the
  // request could not run (the message is printed); the turn is then dropped.
  bool answer(const std::string& user) {
    messages_.push_back({{"role", "user"}, {"content", user}});
    std::vector<int32_t> prompt;
    if (!fit_prompt(prompt)) {
      messages_.erase(messages_.end() - 1);
      return false;
    }
    engine::Request r;
    r.id = fmt::format("chat-{}", turn_++);
    r.prompt = prompt;
    r.adapter = adapter_;
    r.max_new_tokens = max_new_;
    r.sampling.greedy = o_.temperature == 0.0f;
    r.sampling.temperature = o_.temperature;
    r.sampling.top_k = o_.top_k;
    r.sampling.top_p = o_.top_p;
    r.sampling.seed = rng_();
    for (int32_t t : s_.tokenizer->stop_ids()) r.stop_token_ids.push_back(t);
    const std::string id = r.id;
    if (Status st = s_.engine->add_request(std::move(r)); !st.ok()) {
      std::cout << "error: " << st.message() << "\n";
      messages_.erase(messages_.end() - 1);
      return false;
    }
    tokenizer::IncrementalDetokenizer detok(*s_.tokenizer, /*skip_special_tokens=*/true);
    std::string text;
    engine::FinishReason reason = engine::FinishReason::none;
    while (s_.engine->has_work()) {
      if (g_interrupted.exchange(false)) s_.engine->abort(id);
      for (const engine::StepOutput& out : s_.engine->step()) {
        if (out.id != id) continue;
        std::string delta;
        for (int32_t t : out.new_tokens) delta += detok.push(t);
        if (out.finished()) {
          delta += detok.flush();
          reason = out.finish;
          if (engine::is_error(reason)) std::cout << "\nerror: " << out.error_detail;
        }
        text += delta;
        std::cout << delta << std::flush;
      }
    }
    if (reason == engine::FinishReason::abort) std::cout << " [stopped]";
    if (reason == engine::FinishReason::length) std::cout << " [max tokens]";
    std::cout << "\n";
    if (engine::is_error(reason)) {
      messages_.erase(messages_.end() - 1);
      return false;
    }
    messages_.push_back({{"role", "assistant"}, {"content", text}});
    return true;
  }

  void reset() {
    messages_ = nlohmann::ordered_json::array();
    if (!o_.system.empty()) messages_.push_back({{"role", "system"}, {"content", o_.system}});
  }
  void set_adapter(std::optional<std::string> a) { adapter_ = std::move(a); }
  const std::optional<std::string>& adapter() const { return adapter_; }

 private:
  // The rendered conversation's ids, dropping the oldest exchanges (never the
  // system message or the new question) until they leave room to answer in
  // the model's positions and the KV cache.
  bool fit_prompt(std::vector<int32_t>& ids) {
    const int64_t positions = s_.engine->max_sequence_tokens();
    for (;;) {
      auto text = s_.chat_template->render(messages_, /*add_generation_prompt=*/true);
      if (!text.ok()) {
        std::cout << "error: " << text.status().message() << "\n";
        return false;
      }
      ids = s_.tokenizer->encode(*text, /*add_special_tokens=*/false);
      max_new_ = std::min<int64_t>(o_.max_new_tokens, positions - int64_t(ids.size()));
      if (max_new_ >= std::min<int64_t>(o_.max_new_tokens, 16)) return true;
      const size_t first = !messages_.empty() && messages_[0]["role"] == "system" ? 1 : 0;
      if (messages_.size() <= first + 1) {
        std::cout << "error: the question alone (" << ids.size() << " tokens) leaves no room in the "
                  << positions << " tokens a conversation can hold\n";
        return false;
      }
      // One exchange: a question and its answer, so that roles keep alternating.
      messages_.erase(messages_.begin() + long(first), messages_.begin() + long(first) + 2);
      std::cout << "(the oldest exchange no longer fits the context and was dropped)\n";
    }
  }

  const ChatOptions& o_;
  Serving& s_;
  nlohmann::ordered_json messages_ = nlohmann::ordered_json::array();
  std::optional<std::string> adapter_;
  std::mt19937_64 rng_;
  int64_t max_new_ = 0;
  int64_t turn_ = 0;
};

std::string adapter_list(const Serving& s) {
  std::string out;
  for (const std::string& a : s.adapters) out += (out.empty() ? "" : ", ") + a;
  return out.empty() ? "none" : out;
}

int run_chat(ChatOptions o) {
  // --adapter NAME selects an adapter; --adapter NAME=DIR registers one (and selects it).
  std::optional<std::string> selected;
  std::vector<std::string> registered;
  for (const std::string& a : o.serving.model.adapters) {
    const size_t eq = a.find('=');
    if (eq == std::string::npos) {
      selected = a;
    } else {
      registered.push_back(a);
      selected = a.substr(0, eq);
    }
  }
  o.serving.model.adapters = registered;

  auto s = open_serving(o.serving, terminal_progress());
  if (!s) return fail(s.status());
  Serving& sv = **s;
  if (!sv.tokenizer || !sv.chat_template)
    return fail(Status::errorf("{} has no {}: chat needs a tokenizer and a chat template",
                               sv.model_dir, sv.tokenizer ? "chat template" : "tokenizer.json"));
  if (selected && std::find(sv.adapters.begin(), sv.adapters.end(), *selected) == sv.adapters.end())
    return fail(Status::errorf("--adapter {}: no such adapter (known: {})", *selected, adapter_list(sv)));

  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a Ctrl-C at the prompt interrupts the read
  sigaction(SIGINT, &sa, nullptr);

  const bool tty = isatty(STDIN_FILENO);
  LineReader input;
  std::cout << fmt::format("philora chat | model {} | {} | adapters: {}\n{}", sv.model_name,
                           sv.device_name, adapter_list(sv), kHelp);
  Chat chat(o, sv);
  chat.reset();
  chat.set_adapter(selected);
  for (;;) {
    g_interrupted = false;  // a Ctrl-C from now on stops the next answer or this prompt
    std::cout << (chat.adapter() ? *chat.adapter() : sv.model_name) << "> " << std::flush;
    std::string line;
    const LineReader::Result got = input.next(line);
    if (got == LineReader::Result::interrupted) {
      std::cout << "\n(Ctrl-C stops an answer; /quit leaves)\n";
      continue;
    }
    if (got == LineReader::Result::end) {
      if (tty) std::cout << "\n";
      return 0;
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line == "/quit" || line == "/exit") return 0;
    if (line == "/help") {
      std::cout << kHelp;
    } else if (line == "/reset") {
      chat.reset();
      std::cout << "(conversation cleared)\n";
    } else if (line == "/adapters") {
      std::cout << adapter_list(sv) << "\n";
    } else if (line == "/adapter" || line.starts_with("/adapter ")) {
      std::string name = line.size() > 9 ? line.substr(9) : "";
      while (!name.empty() && name.back() == ' ') name.pop_back();
      if (name.empty() || name == sv.model_name || name == "none") {
        chat.set_adapter(std::nullopt);
        std::cout << "(base model)\n";
      } else if (std::find(sv.adapters.begin(), sv.adapters.end(), name) == sv.adapters.end()) {
        std::cout << "no adapter '" << name << "' (known: " << adapter_list(sv) << ")\n";
      } else {
        chat.set_adapter(name);
        std::cout << "(adapter " << name << ")\n";
      }
    } else if (line[0] == '/') {
      std::cout << "unknown command " << line << "; " << kHelp;
    } else {
      chat.answer(line);
    }
  }
}

}  // namespace

void add_chat_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<ChatOptions>();
  CLI::App* cmd = app.add_subcommand(
      "chat", "interactive chat in the terminal (default: the embedded model); /adapter NAME, "
              "/reset, /quit; Ctrl-C stops an answer");
  o->serving.max_running = 4;  // one person typing; the KV cache cap follows from it
  add_serving_options(*cmd, o->serving);
  // add_model_options named --adapter NAME=DIR; chat also takes a bare NAME to start with.
  cmd->get_option("--adapter")
      ->description("adapter to chat with: NAME (from the adapter dir) or NAME=DIR");
  cmd->add_option("--system", o->system, "system message at the start of the conversation");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "longest answer in tokens")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature", o->temperature, "sampling temperature (0 = greedy)")
      ->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", o->top_k, "sample among the k most likely tokens (0 = all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", o->top_p, "nucleus sampling mass")->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", o->seed, "sampling seed (default: from the clock)");
  cmd->callback([o, &rc] { rc = run_chat(*o); });
}

}  // namespace philora::app
