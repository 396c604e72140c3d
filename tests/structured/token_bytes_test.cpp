// Tokenizer::token_bytes, the bytes masks are computed from: against decode() of the token
// after another one (for every token of the embedded byte-level BPE vocabulary), and on a
// SentencePiece-style tokenizer (byte fallback, "▁").
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "structured/walk.h"
#include "tokenizer/tokenizer.h"

namespace philora::structured {
namespace {

bool valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (...) {
    return false;
  }
}

TEST(StructuredTokenBytes, ByteLevelBpeEqualsDecodeInContext) {
  auto tok = tokenizer::Tokenizer::from_model_dir(PHILORA_TINY_MODEL);
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const tokenizer::Tokenizer& t = **tok;
  const auto a = t.encode("a");
  ASSERT_EQ(a.size(), 1u);
  int compared = 0, special = 0;
  for (int32_t id = 0; id < static_cast<int32_t>(t.vocab_size()); ++id) {
    const auto b = t.token_bytes(id);
    if (t.is_special(id)) {
      EXPECT_FALSE(b.has_value()) << id;
      ++special;
      continue;
    }
    ASSERT_TRUE(b.has_value()) << id;
    if (!valid_utf8(*b)) continue;  // decode() repairs a partial character; the bytes do not
    const std::vector<int32_t> pair = {a[0], id};
    EXPECT_EQ("a" + *b, t.decode(pair)) << id;
    ++compared;
  }
  EXPECT_GT(compared, 7000);
  EXPECT_EQ(special, 5);
}

TEST(StructuredTokenBytes, SentencePieceByteFallbackAndMetaspace) {
  using nlohmann::json;
  const std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81the", "<0x0A>", "<0xE6>", "a\xE2\x96\x81" "b"};
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  json j = {{"version", "1.0"},
            {"added_tokens", json::array({{{"id", 2}, {"content", "</s>"}, {"special", true}, {"single_word", false},
                                           {"lstrip", false}, {"rstrip", false}, {"normalized", false}}})},
            {"normalizer", nullptr},
            {"pre_tokenizer", nullptr},
            {"post_processor", nullptr},
            {"decoder", {{"type", "Sequence"},
                         {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                                   {{"type", "ByteFallback"}},
                                                   {{"type", "Fuse"}},
                                                   {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
            {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}, {"byte_fallback", true}, {"unk_token", "<unk>"}}}};
  auto t = tokenizer::Tokenizer::from_json(j);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ((*t)->token_bytes(3), " the");   // decode() strips it at the start of a text only
  EXPECT_EQ((*t)->token_bytes(4), "\n");
  EXPECT_EQ((*t)->token_bytes(5), "\xE6");    // one byte of a character
  EXPECT_EQ((*t)->token_bytes(6), "a b");
  EXPECT_FALSE((*t)->token_bytes(2).has_value());  // special
  EXPECT_FALSE((*t)->token_bytes(99).has_value());
  const std::vector<int32_t> two = {6, 3};
  EXPECT_EQ((*t)->decode(two), *(*t)->token_bytes(6) + *(*t)->token_bytes(3));
  // Metaspace as the decoder: "▁" is a space in the middle of a text.
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"}};
  auto m = tokenizer::Tokenizer::from_json(j);
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ((*m)->token_bytes(3), " the");
}

}  // namespace
}  // namespace philora::structured
