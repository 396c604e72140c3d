// `philora serve --tensor-parallel 4` (simulated ranks on the CPU) on the
// golden gqa_multi_lora model (2 kv heads: each replicated over 2 ranks) with
// its three adapters: concurrent LoRAX requests of mixed adapters give HF's
// greedy tokens; on cuda the flag is refused (NCCL not built).
#include <gtest/gtest.h>
#include <httplib.h>

#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/spawn_server.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace philora::test {
namespace {

const fs::path kCase = fs::path(PHILORA_TEST_DATA) / "golden" / "gqa_multi_lora";

TEST(ServeTensorParallel, MixedAdaptersGiveHfTokensOverFourRanks) {
  const int port = free_port();
  std::vector<std::string> args = {
      "serve",       "--model", (kCase / "model").string(), "--port", std::to_string(port),
      "--kv-tokens", "2048",    "--tensor-parallel",        "4",      "--device",
      "cpu"};
  for (const char* a : {"a", "b", "c"})
    args.insert(args.end(),
                {"--adapter", std::string(a) + "=" + (kCase / "adapters" / a).string()});
  const pid_t pid = start_server(args, port);
  ASSERT_GT(pid, 0) << "server did not come up";
  const auto reqs = read_jsonl(kCase / "generate_requests.jsonl");
  const auto refs = read_jsonl(kCase / "generate_ref.jsonl");
  ASSERT_EQ(reqs.size(), refs.size());
  std::vector<std::future<json>> answers;  // all at once: one batch of mixed adapters
  for (const json& r : reqs)
    answers.push_back(std::async(std::launch::async, [&, r] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(60, 0);
      json params = {{"max_new_tokens", r["max_new_tokens"]},
                     {"details", true},
                     {"ignore_eos_token", true},
                     {"do_sample", false}};
      if (!r["adapter"].is_null()) params["adapter_id"] = r["adapter"];
      auto res =
          c.Post("/generate", json({{"inputs", r["input_ids"]}, {"parameters", params}}).dump(),
                 "application/json");
      return res && res->status == 200 ? json::parse(res->body)
                                       : json{{"error", res ? res->body : "no answer"}};
    }));
  for (size_t i = 0; i < reqs.size(); ++i) {
    const json j = answers[i].get();
    ASSERT_TRUE(j.contains("details")) << j.dump();
    json ids = json::array();
    for (const json& t : j["details"]["tokens"]) ids.push_back(t["id"]);
    EXPECT_EQ(ids, refs[i]["tokens"]) << refs[i]["id"] << " (adapter " << reqs[i]["adapter"] << ")";
  }
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(ServeTensorParallel, RefusesHeadsThatDoNotSplit) {
  // sliding_window: 2 attention heads, so 4 ranks cannot split them: serve exits 1 at once,
  // saying why (on the CPU, so that a GPU host's "needs NCCL" does not answer first).
  const fs::path model = fs::path(PHILORA_TEST_DATA) / "golden" / "sliding_window" / "model";
  const fs::path log = fs::temp_directory_path() / ("philora_tp_refusal_" + std::to_string(::getpid()) + ".log");
  std::string port = std::to_string(free_port()), binary = PHILORA_BINARY, path = model.string();
  std::string serve = "serve", m = "--model", p = "--port", tp = "--tensor-parallel", four = "4";
  std::string device = "--device", cpu = "cpu";
  char* argv[] = {binary.data(), serve.data(), m.data(),    path.data(),   p.data(), port.data(),
                  tp.data(),     four.data(),  device.data(), cpu.data(), nullptr};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, PHILORA_BINARY, &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  ASSERT_EQ(spawned, 0);
  int status = 0;
  bool exited = false;
  for (int i = 0; i < 200 && !exited; ++i) {
    exited = ::waitpid(pid, &status, WNOHANG) == pid;
    if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    FAIL() << "serve --tensor-parallel 4 did not refuse a model of 2 heads";
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  std::ifstream f(log);
  const std::string err((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  fs::remove(log);
  EXPECT_NE(err.find("tensor parallelism over 4 ranks"), std::string::npos) << err;
  EXPECT_NE(err.find("num_attention_heads is 2"), std::string::npos) << err;
}

}  // namespace
}  // namespace philora::test
