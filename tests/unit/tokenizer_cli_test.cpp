// `philora tokenize` end to end (DESIGN.md's contract): {"id","text"} lines in, {"id","ids",
// "decoded"} lines out, no special tokens unless --add-special-tokens, `decoded` keeping them.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tokenizer/test_support.h"
#include "tokenizer/tokenizer.h"

namespace philora::tokenizer {
namespace {

namespace tt = testing;

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

TEST(TokenizeCli, FollowsTheJsonLinesContract) {
  const std::string bin = PHILORA_BINARY;
  const std::string tok_path = tt::tokenizer_dir("phi3") + "/tokenizer.json";
  if (!tt::exists(bin)) GTEST_SKIP() << bin << " is not built";
  if (!tt::exists(tok_path)) GTEST_SKIP() << tok_path << " is missing: " << tt::kSetupHint;
  auto tok = Tokenizer::from_file(tok_path);
  ASSERT_TRUE(tok.ok()) << tok.status().message();

  const auto requests = std::filesystem::temp_directory_path() /
                        ("philora_tokenize_" + std::to_string(::getpid()) + ".jsonl");
  const std::vector<std::string> texts = {
      "Hello world", "<|user|>\nHi there<|end|>\n<|assistant|>\n", "日本語 😀", ""};
  {
    std::ofstream f(requests);
    for (size_t i = 0; i < texts.size(); ++i)
      f << nlohmann::json{{"id", "r" + std::to_string(i)}, {"text", texts[i]}}.dump() << "\n";
  }
  for (bool special : {false, true}) {
    const std::string out =
        run(bin + " tokenize --tokenizer " + tok_path + " --requests " + requests.string() +
            (special ? " --add-special-tokens" : "") + " 2>&1");
    std::istringstream lines(out);
    std::string line;
    size_t i = 0;
    while (std::getline(lines, line)) {
      ASSERT_LT(i, texts.size()) << out;
      const auto j = nlohmann::json::parse(line, nullptr, false);
      ASSERT_FALSE(j.is_discarded()) << line;
      const auto want = (*tok)->encode(texts[i], special);
      EXPECT_EQ(j["id"], "r" + std::to_string(i));
      EXPECT_EQ(j["ids"].get<std::vector<int32_t>>(), want);
      EXPECT_EQ(j["decoded"], (*tok)->decode(want, false));
      ++i;
    }
    EXPECT_EQ(i, texts.size()) << out;
  }
  std::filesystem::remove(requests);
}

}  // namespace
}  // namespace philora::tokenizer
