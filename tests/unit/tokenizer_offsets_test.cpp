// Token offsets (Tokenizer::encode_with_offsets) against HF tokenizers' own: golden files made by
// HF's Rust library through its Node.js binding (tests/tokenizer/make_offsets_golden.mjs, npm
// `tokenizers` 0.23.2), in code points as Python's `encoding.offsets`. Vocabularies: Phi-3
// (Prepend + Replace normalizer, byte fallback), a Metaspace pre-tokenizer, GPT-2-style byte
// level with add_prefix_space, Phi-4 (byte level, a post-processor that trims offsets) and the
// embedded model's byte-level BPE.
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "tokenizer/test_support.h"
#include "tokenizer/tokenizer.h"

namespace philora::tokenizer {
namespace {

namespace tt = testing;

std::string tokenizer_path(const std::string& name) {
  if (name == "philora_tiny")
    return std::string(PHILORA_TEST_DATA) + "/../../models/philora-tiny/tokenizer.json";
  return tt::tokenizer_dir(name) + "/tokenizer.json";
}

std::vector<std::pair<size_t, size_t>> pairs(const std::vector<Tokenizer::Offsets>& o) {
  std::vector<std::pair<size_t, size_t>> out;
  for (const auto& x : o) out.emplace_back(x.begin, x.end);
  return out;
}

class TokenizerOffsets : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerOffsets, MatchHuggingFaceTokenizers) {
  const std::string golden_path =
      tt::fixtures_dir() + "/golden/golden_offsets_" + GetParam() + ".json";
  const std::string tok_path = tokenizer_path(GetParam());
  ASSERT_TRUE(tt::exists(golden_path)) << golden_path;
  if (!tt::exists(tok_path)) GTEST_SKIP() << tok_path << " is missing: " << tt::kSetupHint;
  auto t = Tokenizer::from_file(tok_path);
  ASSERT_TRUE(t.ok()) << t.status().message();
  const auto golden = nlohmann::json::parse(tt::read_file(golden_path));
  size_t failures = 0, cases = 0;
  for (const auto& c : golden["cases"]) {
    const std::string text = c["text"].get<std::string>();
    for (bool special : {false, true}) {
      ++cases;
      const auto enc = (*t)->encode_with_offsets(text, special);
      const auto want_ids = c[special ? "ids_with_special" : "ids"].get<std::vector<int32_t>>();
      const auto want =
          c[special ? "offsets_with_special" : "offsets"].get<std::vector<std::pair<size_t, size_t>>>();
      EXPECT_EQ(enc.ids, (*t)->encode(text, special)) << "encode_with_offsets changed the ids";
      if ((enc.ids != want_ids || pairs(enc.offsets) != want) && ++failures <= 8) {
        ADD_FAILURE() << GetParam() << " " << nlohmann::json(text).dump() << " special="
                      << special << ": ids " << ::testing::PrintToString(enc.ids) << " want "
                      << ::testing::PrintToString(want_ids) << "; offsets "
                      << ::testing::PrintToString(pairs(enc.offsets)) << " want "
                      << ::testing::PrintToString(want);
      }
    }
  }
  EXPECT_EQ(failures, 0u) << "of " << cases << " encodings";
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, TokenizerOffsets,
                         ::testing::Values("phi3", "llama_metaspace", "cl100k_gpt2", "phi4",
                                           "philora_tiny"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace philora::tokenizer
