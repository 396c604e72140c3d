// `philora generate --speculate medusa[:K]` on the embedded model
// (models/philora-tiny), as a user runs it: the base model's heads from
// --medusa DIR, an adapter whose directory carries heads of its own (a copy
// of the embedded kjv adapter with heads added), requests for the base model
// and for two adapters in one batch; greedy output token for token (and text)
// what it is without speculation. Heads that do not fit the model, a
// malformed heads directory, and --speculate medusa without any heads stop
// the command with a message naming the problem.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model/cli_runner.h"

namespace philora {
namespace {

namespace fs = std::filesystem;
const fs::path kModels = fs::path(PHILORA_TEST_DATA) / ".." / ".." / "models";

class MedusaCli : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("philora_medusa_cli_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // K random heads of one block each for a model of `hidden` (MedusaV2: the
  // model's lm_head), written in LoRAX's layout into `at`.
  static void write_heads(const fs::path& at, int64_t k, int64_t hidden, uint32_t seed) {
    fs::create_directories(at);
    std::ofstream(at / "config.json")
        << "{\"medusa_num_heads\": " << k << ", \"medusa_num_layers\": 1, \"version\": 2}";
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-0.1f, 0.1f);
    std::vector<std::vector<float>> store;
    store.reserve(size_t(2 * k));
    std::vector<std::pair<std::string, Tensor>> t;
    for (int64_t i = 0; i < k; ++i) {
      store.emplace_back(size_t(hidden * hidden));
      for (float& x : store.back()) x = u(rng);
      t.push_back({std::to_string(i) + ".0.linear.weight",
                   Tensor(store.back().data(), DType::f32, {hidden, hidden})});
      store.emplace_back(size_t(hidden));
      for (float& x : store.back()) x = u(rng);
      t.push_back({std::to_string(i) + ".0.linear.bias",
                   Tensor(store.back().data(), DType::f32, {hidden})});
    }
    const Status s = io::write_safetensors((at / "medusa_lm_head.safetensors").string(), t);
    ASSERT_TRUE(s.ok()) << s.message();
  }

  fs::path requests() const {
    const fs::path p = dir_ / "requests.jsonl";
    std::ofstream f(p);
    f << R"({"id": "base", "prompt": "The king said unto them, the king said", "max_new_tokens": 32})"
         "\n"
      << R"({"id": "kjv", "prompt": "And it came to pass, and it came to pass", "adapter": "kjv", "max_new_tokens": 32})"
         "\n"
      << R"({"id": "devil", "prompt": "Love, n. A temporary insanity", "adapter": "devil", "max_new_tokens": 32})"
         "\n"
      << R"({"id": "base2", "prompt": "one two three one two three one two", "max_new_tokens": 24})"
         "\n";
    return p;
  }

  std::vector<std::string> args(const std::vector<std::string>& extra) const {
    std::vector<std::string> a = {"generate",
                                  "--model",
                                  (kModels / "philora-tiny").string(),
                                  "--adapter",
                                  "kjv=" + (dir_ / "kjv").string(),
                                  "--adapter",
                                  "devil=" + (kModels / "adapters" / "devil").string(),
                                  "--requests",
                                  requests().string(),
                                  "--greedy"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  static std::map<std::string, nlohmann::json> outputs(const test::CliResult& r) {
    std::map<std::string, nlohmann::json> by_id;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      by_id[j["id"].get<std::string>()] = j;
    }
    return by_id;
  }

  fs::path dir_;
};

TEST_F(MedusaCli, GreedyEqualsPlainWithBaseAndAdapterHeads) {
  const int64_t hidden = 384;  // philora-tiny's
  fs::create_directories(dir_ / "kjv");
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
    fs::copy_file(kModels / "adapters" / "kjv" / f, dir_ / "kjv" / f);
  write_heads(dir_ / "kjv", 2, hidden, 5);  // the kjv adapter's own heads
  write_heads(dir_ / "base_heads", 3, hidden, 6);

  // --stats: one JSON line on stderr after the outputs, whose counts are the outputs'.
  auto stats_of = [](const test::CliResult& r) {
    std::string last, line;
    for (std::istringstream in(r.err); std::getline(in, line);)
      if (!line.empty()) last = line;
    return nlohmann::json::parse(last);
  };
  auto tokens_in = [](const std::map<std::string, nlohmann::json>& outs) {
    size_t n = 0;
    for (const auto& [id, o] : outs) n += o["tokens"].size();
    return n;
  };
  const test::CliResult plain = test::run_philora(args({"--stats"}));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  const nlohmann::json plain_stats = stats_of(plain);
  EXPECT_EQ(plain_stats["requests"], 4);
  EXPECT_EQ(plain_stats["generated_tokens"], tokens_in(outputs(plain)));
  EXPECT_EQ(plain_stats["spec_draft_tokens"], 0);
  EXPECT_GT(plain_stats["seconds"].get<double>(), 0.0);
  // --warmup 1: the same outputs, and the counts of one run (the timed one).
  const test::CliResult warm =
      test::run_philora(args({"--stats", "--warmup", "1", "--no-prefix-cache"}));
  ASSERT_EQ(warm.exit_code, 0) << warm.err;
  const nlohmann::json warm_stats = stats_of(warm);
  EXPECT_EQ(warm_stats["generated_tokens"], plain_stats["generated_tokens"]);
  EXPECT_EQ(warm_stats["steps"], plain_stats["steps"]);
  EXPECT_EQ(warm_stats["prompt_tokens_computed"], plain_stats["prompt_tokens_computed"]);
  for (const auto& [id, w] : outputs(plain)) EXPECT_EQ(outputs(warm).at(id)["tokens"], w["tokens"]) << id;
  for (const char* spec : {"medusa", "medusa:2"}) {
    const test::CliResult spec_run = test::run_philora(
        args({"--speculate", spec, "--medusa", (dir_ / "base_heads").string(), "--stats"}));
    ASSERT_EQ(spec_run.exit_code, 0) << spec_run.err;
    const auto want = outputs(plain), got = outputs(spec_run);
    ASSERT_EQ(got.size(), 4u);
    const nlohmann::json st = stats_of(spec_run);
    EXPECT_EQ(st["generated_tokens"], tokens_in(got)) << spec;
    EXPECT_GT(st["spec_draft_tokens"].get<int64_t>(), 0) << spec;
    EXPECT_LE(st["spec_accepted_tokens"].get<int64_t>(), st["spec_draft_tokens"].get<int64_t>());
    for (const auto& [id, w] : want) {
      ASSERT_TRUE(got.count(id)) << id;
      EXPECT_EQ(got.at(id)["tokens"], w["tokens"]) << spec << " " << id;
      EXPECT_EQ(got.at(id)["text"], w["text"]) << spec << " " << id;
    }
  }
  // Only the adapter's heads (none for the base model): the base requests do not draft.
  const test::CliResult adapter_only = test::run_philora(args({"--speculate", "medusa"}));
  ASSERT_EQ(adapter_only.exit_code, 0) << adapter_only.err;
  EXPECT_EQ(outputs(adapter_only).at("kjv")["tokens"], outputs(plain).at("kjv")["tokens"]);
}

// With tensor parallelism the heads read the whole lm_head, which rank 0 puts
// together from the ranks' vocabulary rows: greedy output as plain, and the
// shipped (trained) heads' drafts are accepted.
TEST_F(MedusaCli, TensorParallelHeadsUseTheWholeLmHead) {
  fs::create_directories(dir_ / "kjv");
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
    fs::copy_file(kModels / "adapters" / "kjv" / f, dir_ / "kjv" / f);
  const test::CliResult plain = test::run_philora(args({}));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  nlohmann::json one_rank;  // the drafts at two ranks are one rank's (f32: no near-tie here)
  for (const char* ranks : {"1", "2"}) {
    const test::CliResult r = test::run_philora(args({"--speculate", "medusa", "--medusa",
                                                      (kModels / "medusa").string(), "--stats",
                                                      "--tensor-parallel", ranks}));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::string last, line;
    for (std::istringstream in(r.err); std::getline(in, line);)
      if (!line.empty()) last = line;
    const nlohmann::json st = nlohmann::json::parse(last);
    EXPECT_GT(st["spec_accepted_tokens"].get<int64_t>(), 0) << ranks << " ranks";
    if (one_rank.is_null()) {
      one_rank = st;
    } else {
      EXPECT_EQ(st["spec_draft_tokens"], one_rank["spec_draft_tokens"]);
      EXPECT_EQ(st["spec_accepted_tokens"], one_rank["spec_accepted_tokens"]);
    }
    const auto want = outputs(plain), got = outputs(r);
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [id, w] : want) EXPECT_EQ(got.at(id)["tokens"], w["tokens"]) << ranks << " ranks " << id;
  }
}

TEST_F(MedusaCli, BadHeadsStopTheCommandWithTheReason) {
  fs::create_directories(dir_ / "kjv");
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
    fs::copy_file(kModels / "adapters" / "kjv" / f, dir_ / "kjv" / f);
  // No heads anywhere.
  test::CliResult r = test::run_philora(args({"--speculate", "medusa"}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("no Medusa heads"), std::string::npos) << r.err;
  // Heads of another model size (hidden 128 against the model's 384).
  write_heads(dir_ / "small", 2, 128, 1);
  r = test::run_philora(args({"--speculate", "medusa", "--medusa", (dir_ / "small").string()}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("expected (384, 384)"), std::string::npos) << r.err;
  // A heads directory without its config fields.
  write_heads(dir_ / "noconfig", 2, 384, 1);
  std::ofstream(dir_ / "noconfig" / "config.json") << "{\"medusa_num_layers\": 1}";
  r = test::run_philora(args({"--speculate", "medusa", "--medusa", (dir_ / "noconfig").string()}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("medusa_num_heads"), std::string::npos) << r.err;
  // An adapter's bad heads name the adapter.
  write_heads(dir_ / "kjv", 2, 128, 2);
  r = test::run_philora(args({"--speculate", "medusa"}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("adapter 'kjv'"), std::string::npos) << r.err;
  // --medusa without --speculate medusa, and a bad --speculate.
  r = test::run_philora(args({"--medusa", (dir_ / "small").string()}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--speculate medusa"), std::string::npos) << r.err;
  r = test::run_philora(args({"--speculate", "medusa:0"}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("medusa:K"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace philora
