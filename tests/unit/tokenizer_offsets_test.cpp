// Token offsets (Tokenizer::encode_with_offsets) against HF tokenizers' own: golden files made by
// HF's Rust library through its Node.js binding (tests/tokenizer/make_offsets_golden.mjs, npm
// `tokenizers` 0.23.2), in code points as Python's `encoding.offsets`. Vocabularies: Phi-3
// (Prepend + Replace normalizer, byte fallback), a Metaspace pre-tokenizer, GPT-2-style byte
// level with add_prefix_space, Phi-4 (byte level, a post-processor that trims offsets) and the
// embedded model's byte-level BPE.
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "tokenizer/test_support.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

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

// Random texts (fresh each run; the seed is printed on a failure) through lossless vocabularies:
// the same ids as encode(), every span inside the text, spans that start in order, and every
// character of the text inside some token's span.
TEST(TokenizerOffsetsRandom, SpansCoverTheTextInOrder) {
  const std::vector<std::string> pieces = {
      "a", "b", "Z", "7", " ", "  ", "\n", "\t", "\xc3\xa9", "\xe2\x96\x81", "\xe6\x97\xa5",
      "\xf0\x9f\x98\x80", "'s", "...", "<|end|>", "<s>", "the", " the", "\xef\xbf\xbd", "{"};
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  for (const std::string name : {"phi3", "philora_tiny"}) {
    const std::string path = tokenizer_path(name);
    if (!tt::exists(path)) continue;
    auto t = Tokenizer::from_file(path);
    ASSERT_TRUE(t.ok()) << t.status().message();
    size_t failures = 0;
    for (int n = 0; n < 1500; ++n) {
      std::string text;
      const int len = std::uniform_int_distribution<int>(0, 24)(rng);
      for (int i = 0; i < len; ++i)
        text += pieces[std::uniform_int_distribution<size_t>(0, pieces.size() - 1)(rng)];
      const auto enc = (*t)->encode_with_offsets(text, false);
      const size_t chars = unicode::count_chars(text);
      bool ok = enc.ids == (*t)->encode(text, false) && enc.offsets.size() == enc.ids.size();
      std::vector<bool> covered(chars, false);
      size_t last_begin = 0;
      for (const auto& o : enc.offsets) {
        ok = ok && o.begin <= o.end && o.end <= chars && o.begin >= last_begin;
        last_begin = o.begin;
        for (size_t c = o.begin; c < o.end && c < chars; ++c) covered[c] = true;
      }
      for (bool c : covered) ok = ok && c;
      if (!ok && ++failures <= 5)
        ADD_FAILURE() << name << " seed " << seed << ": " << nlohmann::json(text).dump()
                      << " ids " << ::testing::PrintToString(enc.ids) << " offsets "
                      << ::testing::PrintToString(pairs(enc.offsets));
    }
    EXPECT_EQ(failures, 0u) << name << " seed " << seed;
  }
}

}  // namespace
}  // namespace philora::tokenizer
