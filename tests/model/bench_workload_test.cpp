// philora bench --workload poisson on the embedded model (CPU), a second of arrivals: the report's
// rows and its summary line, every request finished with no error, the same plan for the same
// seed, and bad flags refused. No timing is asserted.
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "model/cli_runner.h"

namespace philora {
namespace {

const std::string kTiny = std::string(PHILORA_TEST_DATA) + "/../../models/philora-tiny";

std::vector<std::string> workload_args(const std::string& seed) {
  return {"bench",          "--workload",      "poisson",  "--device",     "cpu",
          "--model",        kTiny,             "--rate",   "12",           "--duration",
          "1",              "--adapters",      "6",        "--max-loras",  "2",
          "--prompt-len",   "24",              "--prompt-spread", "8",     "--output-len",
          "6",              "--output-spread", "3",        "--seed",       seed,
          "--kv-tokens",    "4096",            "--max-running", "16"};
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// key=value pairs of the summary line.
std::map<std::string, std::string> summary(const std::string& line) {
  std::map<std::string, std::string> kv;
  std::istringstream in(line);
  for (std::string w; in >> w;)
    if (auto eq = w.find('='); eq != std::string::npos) kv[w.substr(0, eq)] = w.substr(eq + 1);
  return kv;
}

TEST(BenchWorkload, ReportsEveryFigureAndEveryRequestFinishes) {
  if (!std::filesystem::exists(kTiny + "/config.json")) GTEST_SKIP() << kTiny << " is missing";
  const test::CliResult r = test::run_philora(workload_args("7"));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::vector<std::string> out = lines(r.out);
  ASSERT_FALSE(out.empty());
  ASSERT_EQ(out.back().rfind("summary: cpu workload=poisson", 0), 0u) << r.out;
  for (const char* row :
       {"workload: poisson, 12 requests/s for 1 s, seed 7:", "requests finished", "errors",
        "throughput, output tokens", "throughput, prompt + output tokens", "mean running sequences",
        "time to first token p50 / p99", "inter-token latency p50 / p99",
        "adapter uploads to device / evictions", "adapter swap (host -> device upload)"})
    EXPECT_NE(r.out.find(row), std::string::npos) << row << "\n" << r.out;
  auto s = summary(out.back());
  for (const char* key : {"requests", "finished", "errors", "output_tok_s", "total_tok_s",
                          "mean_running", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
                          "adapter_uploads", "adapter_evictions", "swap_ms"})
    EXPECT_TRUE(s.count(key)) << key << " missing from " << out.back();
  const int requests = std::stoi(s["requests"]);
  EXPECT_GT(requests, 0);
  EXPECT_EQ(s["finished"], s["requests"]);
  EXPECT_EQ(s["errors"], "0");
  EXPECT_GE(std::stoi(s["adapter_uploads"]), 1);  // a request on an adapter needs one upload
  EXPECT_NE(r.out.find("requests finished"), std::string::npos);
  EXPECT_NE(r.out.find(std::to_string(requests) + " / " + std::to_string(requests)),
            std::string::npos);

  // Replayable: the same seed plans the same requests; another seed, other arrivals.
  const test::CliResult again = test::run_philora(workload_args("7"));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  const auto workload_line = [](const std::string& text) {
    for (const std::string& l : lines(text))
      if (l.rfind("workload:", 0) == 0) return l;
    return std::string();
  };
  EXPECT_EQ(workload_line(again.out), workload_line(r.out));
  EXPECT_FALSE(workload_line(r.out).empty());
  // The plan does not depend on the adapters: the base model alone gets the same requests.
  std::vector<std::string> base_args = workload_args("7");
  base_args[12] = "0";  // --adapters
  ASSERT_EQ(base_args[11], "--adapters");
  const test::CliResult base = test::run_philora(base_args);
  ASSERT_EQ(base.exit_code, 0) << base.err;
  auto b = summary(lines(base.out).back());
  EXPECT_EQ(b["requests"], s["requests"]);
  EXPECT_EQ(b["finished"], s["requests"]);
  EXPECT_EQ(b["adapter_uploads"], "0");
}

TEST(BenchWorkload, RunningCalibratesTheRateAndPrintsIt) {
  if (!std::filesystem::exists(kTiny + "/config.json")) GTEST_SKIP() << kTiny << " is missing";
  std::vector<std::string> args = workload_args("3");
  ASSERT_EQ(args[7], "--rate");
  args[7] = "--running";
  args[8] = "4";
  const test::CliResult r = test::run_philora(args);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("rate: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("for about 4 running"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("replays this run"), std::string::npos) << r.out;
  auto s = summary(lines(r.out).back());
  EXPECT_EQ(s["finished"], s["requests"]);
  EXPECT_EQ(s["errors"], "0");
  EXPECT_GT(std::stod(s["rate"]), 0.0);
}

TEST(BenchWorkload, BadFlagsAreRefused) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"bench", "--workload", "closed-loop"},
        std::vector<std::string>{"bench", "--workload", "poisson", "--rate", "0"},
        std::vector<std::string>{"bench", "--workload", "poisson", "--adapters", "-1"},
        std::vector<std::string>{"bench", "--workload", "poisson", "--zipf-alpha", "x"},
        std::vector<std::string>{"bench", "--workload", "poisson", "--rate", "2", "--running", "4"}}) {
    const test::CliResult r = test::run_philora(args);
    EXPECT_NE(r.exit_code, 0) << args[2] << " " << (args.size() > 3 ? args[3] : "");
    EXPECT_TRUE(r.out.empty() || r.out.find("summary:") == std::string::npos);
  }
  const test::CliResult help = test::run_philora({"bench", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag : {"--workload", "--rate", "--running", "--duration", "--adapters", "--seed",
                           "--zipf-alpha", "--prompt-len", "--output-spread", "--max-loras"})
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
}

}  // namespace
}  // namespace philora
