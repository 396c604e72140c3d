// philora generate's sampling, stopping and logprobs flags and per-line
// fields, on the golden gqa_multi_lora model (token-id prompts, its three
// adapters): logprobs against HF's logits (score_ref, log_softmax'ed in
// float64 here), stop token ids against HF's greedy tokens, seeds reported and
// reproducing, a line's fields over the flags, and bad flags refused.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "model/cli_runner.h"
#include "model/engine_rig.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace philora::test {
namespace {

const fs::path kDir = golden_dir("gqa_multi_lora");

fs::path write_lines(const std::string& name, const std::vector<json>& lines) {
  const fs::path p = fs::temp_directory_path() /
                     ("philora_cli_sampling_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream out(p);
  for (const json& l : lines) out << l.dump() << "\n";
  return p;
}

CliResult generate(const std::vector<std::string>& flags, const fs::path& requests) {
  std::vector<std::string> args = {"generate", "--model", (kDir / "model").string()};
  for (const char* a : {"a", "b", "c"}) {
    args.push_back("--adapter");
    args.push_back(std::string(a) + "=" + (kDir / "adapters" / a).string());
  }
  args.insert(args.end(), flags.begin(), flags.end());
  args.push_back("--requests");
  args.push_back(requests.string());
  return run_philora(args);
}

std::map<std::string, json> outputs(const CliResult& r) {
  std::map<std::string, json> out;
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) {
      const json j = json::parse(line);
      out[j["id"].get<std::string>()] = j;
    }
  return out;
}

bool close(double got, double want) {
  return std::fabs(got - want) <= 1e-4 * std::max(1.0, std::fabs(want));
}

// Prompt logprobs (the prompt's tokens and the top 2) and the first new
// token's (the top 5) against HF's logits of the score requests.
TEST(CliSampling, LogprobsMatchHF) {
  std::vector<json> lines;
  for (json l : read_jsonl(kDir / "requests.jsonl")) {
    l["max_new_tokens"] = 1;
    lines.push_back(l);
  }
  const CliResult r =
      generate({"--greedy", "--logprobs", "5", "--prompt-logprobs", "2", "--ignore-eos"},
               write_lines("logprobs.jsonl", lines));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = outputs(r);
  for (const json& l : lines) {
    const std::string id = l["id"];
    const json& o = out.at(id);
    const auto prompt = l["input_ids"].get<std::vector<int32_t>>();
    const auto hf = hf_logits("gqa_multi_lora", id);
    ASSERT_EQ(o["prompt_logprobs"].size(), prompt.size()) << id;
    EXPECT_TRUE(o["prompt_logprobs"][0].is_null()) << id << ": the first prompt token has none";
    for (size_t i = 1; i < prompt.size(); ++i) {
      const json& p = o["prompt_logprobs"][i];
      const std::vector<double> lp = log_softmax(hf[i - 1]);
      EXPECT_EQ(p["token"], prompt[i]) << id << " " << i;
      EXPECT_TRUE(close(p["logprob"].get<double>(), lp[size_t(prompt[i])])) << id << " " << i;
      ASSERT_EQ(p["top_logprobs"].size(), 2u);
      for (const json& t : p["top_logprobs"])
        EXPECT_TRUE(close(t["logprob"].get<double>(), lp[t["token"].get<size_t>()]))
            << id << " " << i;
    }
    const std::vector<double> lp = log_softmax(hf.back());
    ASSERT_EQ(o["logprobs"].size(), 1u) << id;
    const json& g = o["logprobs"][0];
    EXPECT_EQ(g["token"], o["tokens"][0]);
    EXPECT_TRUE(close(g["logprob"].get<double>(), lp[g["token"].get<size_t>()])) << id;
    EXPECT_TRUE(close(g["top_logprobs"][0]["logprob"].get<double>(),
                      *std::max_element(lp.begin(), lp.end())))
        << id << ": the top one is HF's most likely";
    ASSERT_EQ(g["top_logprobs"].size(), 5u);
  }
}

// A stop token id ends each golden request at HF's first such token.
TEST(CliSampling, StopTokenIdsEndAtHFsToken) {
  const auto reqs = read_jsonl(kDir / "generate_requests.jsonl");
  const auto refs = read_jsonl(kDir / "generate_ref.jsonl");
  std::vector<json> lines;
  std::map<std::string, std::vector<int32_t>> want;
  for (size_t i = 0; i < reqs.size(); ++i) {
    json l = reqs[i];
    const auto tokens = refs[i]["tokens"].get<std::vector<int32_t>>();
    const int32_t stop = tokens[tokens.size() / 2];
    l["stop_token_ids"] = {stop};
    l["ignore_eos"] = false;  // the fixtures ran with it: the model's eos ids may stop first
    size_t n = 0;
    while (tokens[n] != stop && tokens[n] != 2 && tokens[n] != 5) ++n;
    want[l["id"]] = std::vector<int32_t>(tokens.begin(), tokens.begin() + int64_t(n) + 1);
    lines.push_back(l);
  }
  const CliResult r = generate({"--greedy"}, write_lines("stop.jsonl", lines));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& [id, o] : outputs(r)) {
    EXPECT_EQ(o["tokens"].get<std::vector<int32_t>>(), want[id]) << id;
    EXPECT_EQ(o["finish_reason"], "stop") << id;
    EXPECT_EQ(o["stop_reason"], want[id].back()) << id;
    EXPECT_TRUE(o["text"].is_null()) << "the golden model has no tokenizer";
  }
}

// Without --seed every request draws a seed and reports it; given back (per
// line), it reproduces the tokens, in any batch. A line's fields override
// the flags.
TEST(CliSampling, SeedsReportedReproduceInAnyBatch) {
  const auto reqs = read_jsonl(kDir / "generate_requests.jsonl");
  std::vector<json> lines;
  for (json l : reqs) {
    l["max_new_tokens"] = 10;
    lines.push_back(l);
  }
  const std::vector<std::string> flags = {"--temperature",
                                          "0.9",
                                          "--top-k",
                                          "30",
                                          "--min-p",
                                          "0.02",
                                          "--repetition-penalty",
                                          "1.2",
                                          "--presence-penalty",
                                          "0.4",
                                          "--logprobs",
                                          "3",
                                          "--logprob-kind",
                                          "processed"};
  const CliResult first = generate(flags, write_lines("seed1.jsonl", lines));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const auto out = outputs(first);
  std::set<uint64_t> seeds;
  for (const auto& [id, o] : out) seeds.insert(o["seed"].get<uint64_t>());
  EXPECT_EQ(seeds.size(), lines.size()) << "each request its own seed";
  // Each line alone with its seed; then all of them with the seeds, reversed.
  std::vector<json> seeded;
  for (json l : lines) {
    l["seed"] = out.at(l["id"])["seed"];
    const CliResult alone = generate(flags, write_lines("seed_alone.jsonl", {l}));
    ASSERT_EQ(alone.exit_code, 0) << alone.err;
    EXPECT_EQ(outputs(alone).at(l["id"]), out.at(l["id"])) << "alone";
    seeded.insert(seeded.begin(), l);
  }
  const CliResult again = generate(flags, write_lines("seed_all.jsonl", seeded));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(outputs(again), out);
  // A line's temperature 0 and greedy flag make it greedy: HF's tokens.
  const auto refs = read_jsonl(kDir / "generate_ref.jsonl");
  json l = reqs[0];
  l["temperature"] = 0;
  l["repetition_penalty"] = 1.0;
  l["presence_penalty"] = 0.0;
  const CliResult greedy = generate(flags, write_lines("greedy_line.jsonl", {l}));
  ASSERT_EQ(greedy.exit_code, 0) << greedy.err;
  EXPECT_EQ(outputs(greedy).at(l["id"])["tokens"], refs[0]["tokens"]);
}

TEST(CliSampling, BadFlagsAndFieldsAreRefused) {
  const fs::path ok = write_lines("ok.jsonl", {json{{"id", "x"}, {"input_ids", {1, 2, 3}}}});
  auto refused = [&](const std::vector<std::string>& flags, const fs::path& reqs,
                     const std::string& needle) {
    const CliResult r = generate(flags, reqs);
    EXPECT_NE(r.exit_code, 0) << needle;
    EXPECT_TRUE(r.out.empty());
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  };
  refused({"--logit-bias", "7:2"}, ok, "--logit-bias '7:2'");
  refused({"--bad-words", "1,x"}, ok, "--bad-words '1,x'");
  refused({"--logprobs", "21"}, ok, "--logprobs");
  refused({"--stop", "ab"}, ok, "stop strings need");
  refused({"--min-new-tokens", "20", "--max-new-tokens", "4"}, ok, "min_new_tokens");
  refused({},
          write_lines("bias.jsonl",
                      {json{{"id", "x"}, {"input_ids", {1}}, {"logit_bias", {{"a", 1}}}}}),
          "logit_bias");
  refused({},
          write_lines("kind.jsonl",
                      {json{{"id", "x"}, {"input_ids", {1}}, {"logprob_kind", "cooked"}}}),
          "logprob_kind");
  refused(
      {},
      write_lines("bad.jsonl", {json{{"id", "x"}, {"input_ids", {1}}, {"bad_words_ids", {1, 2}}}}),
      "bad_words_ids");
}

}  // namespace
}  // namespace philora::test
