// Golden ids from HF tokenizers (tools/tokenizer_golden.py, run on the GPU machine with
// tokenizers 0.23 / transformers 5.17 and committed under tests/data/tokenizer/golden): for a
// corpus of edge cases, ids without and with special tokens and the decoded text with and without
// special tokens must be identical. Needs the tokenizer.json files of tests/tokenizer/setup.sh.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tokenizer/test_support.h"
#include "tokenizer/tokenizer.h"

namespace philora::tokenizer {
namespace {

namespace tt = testing;

std::string show(const std::string& s) {
  return nlohmann::json(s.substr(0, 160))
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

class TokenizerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerGolden, MatchesHuggingFaceTokenizers) {
  const std::string golden_path = tt::fixtures_dir() + "/golden/golden_" + GetParam() + ".json";
  const std::string tok_path = tt::tokenizer_dir(GetParam()) + "/tokenizer.json";
  ASSERT_TRUE(tt::exists(golden_path)) << golden_path;
  if (!tt::exists(tok_path)) GTEST_SKIP() << tok_path << " is missing: " << tt::kSetupHint;
  auto t = Tokenizer::from_file(tok_path);
  ASSERT_TRUE(t.ok()) << t.status().message();
  const auto golden = nlohmann::json::parse(tt::read_file(golden_path));
  size_t failures = 0;
  for (const auto& c : golden["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto ids = (*t)->encode(text, false);
    const auto ids_special = (*t)->encode(text, true);
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const bool ok = ids == want &&
                    ids_special == c["ids_with_special"].get<std::vector<int32_t>>() &&
                    (*t)->decode(want, false) == c["decoded"].get<std::string>() &&
                    (*t)->decode(want, true) == c["decoded_skip_special"].get<std::string>();
    if (!ok && ++failures <= 8) {
      ADD_FAILURE() << GetParam() << " " << show(text) << ": ids " << ::testing::PrintToString(ids)
                    << " want " << ::testing::PrintToString(want) << "; decoded "
                    << show((*t)->decode(want, false)) << " want "
                    << show(c["decoded"].get<std::string>()) << "; skip-special "
                    << show((*t)->decode(want, true)) << " want "
                    << show(c["decoded_skip_special"].get<std::string>());
    }
  }
  EXPECT_EQ(failures, 0u) << "of " << golden["cases"].size() << " cases";
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, TokenizerGolden,
                         ::testing::Values("phi3", "cl100k", "o200k", "phi4", "phi4mini",
                                           "llama_metaspace", "cl100k_gpt2"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace philora::tokenizer
