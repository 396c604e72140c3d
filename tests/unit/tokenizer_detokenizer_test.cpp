// Incremental detokenization: deltas never end inside a UTF-8 character and concatenate to
// exactly decode(all ids); the SentencePiece leading space is dropped only at the start.
// Also the JSON-lines format of `philora tokenize`.
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/test_support.h"
#include "tokenizer/tokenize_jsonl.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer {
namespace {

namespace tt = testing;
using nlohmann::json;

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

// A SentencePiece-style tokenizer: "▁", a few words, all 256 <0xNN> byte tokens, one special.
std::unique_ptr<Tokenizer> sentencepiece_like() {
  json vocab = json::object();
  int32_t id = 0;
  for (const char* t : {"<unk>", "\xE2\x96\x81", "\xE2\x96\x81Hello", "\xE2\x96\x81world", "!", "a",
                        "\xE2\x96\x81\xE2\x96\x81"})
    vocab[t] = id++;
  for (int b = 0; b < 256; ++b) vocab[fmt::format("<0x{:02X}>", b)] = id++;
  json j = {
      {"added_tokens",
       json::array(
           {{{"id", id}, {"content", "<|end|>"}, {"special", true}, {"normalized", false}}})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                                     {{"type", "Replace"},
                                      {"pattern", {{"String", " "}}},
                                      {"content", "\xE2\x96\x81"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         json::array(
             {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
              {{"type", "ByteFallback"}},
              {{"type", "Fuse"}},
              {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", json::array({"\xE2\x96\x81 \xE2\x96\x81"})},
        {"byte_fallback", true},
        {"unk_token", "<unk>"},
        {"fuse_unk", true}}}};
  auto t = Tokenizer::from_json(j);
  EXPECT_TRUE(t.ok()) << t.status().message();
  return std::move(t).value();
}

// Streams `ids` and checks the guarantees; returns the deltas.
std::vector<std::string> stream(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                bool skip_special = true) {
  IncrementalDetokenizer d(tok, skip_special);
  std::vector<std::string> deltas;
  std::string all;
  for (int32_t id : ids) {
    std::string delta = d.push(id);
    EXPECT_TRUE(unicode::is_valid(delta));
    EXPECT_FALSE(delta.ends_with(kReplacement)) << "a delta ended in an incomplete character";
    all += delta;
    deltas.push_back(std::move(delta));
  }
  const std::string rest = d.flush();
  all += rest;
  EXPECT_EQ(all, tok.decode(ids, skip_special));
  deltas.push_back(rest);
  return deltas;
}

TEST(IncrementalDetokenizer, LeadingSpaceIsDroppedOnlyAtTheStart) {
  auto tok = sentencepiece_like();
  const std::vector<int32_t> ids = {2, 3, 4};  // ▁Hello ▁world !
  EXPECT_EQ(stream(*tok, ids), (std::vector<std::string>{"Hello", " world", "!", ""}));
  // With the end of the prompt as context, the first token keeps its space.
  IncrementalDetokenizer with_context(*tok, true, std::vector<int32_t>{5});
  EXPECT_EQ(with_context.push(ids[0]), " Hello");
  EXPECT_EQ(with_context.push(ids[1]), " world");
}

TEST(IncrementalDetokenizer, ByteFallbackEmojiIsHeldUntilComplete) {
  auto tok = sentencepiece_like();
  const auto ids = tok->encode("a\xF0\x9F\x98\x80!");  // a😀!
  ASSERT_EQ(ids.size(), 7u);                           // ▁, a?  (▁ then a, 4 byte tokens, !)
  IncrementalDetokenizer d(*tok);
  std::string out;
  std::vector<std::string> deltas;
  for (int32_t id : ids) deltas.push_back(d.push(id));
  EXPECT_EQ(deltas[2], "");
  EXPECT_EQ(deltas[3], "");
  EXPECT_EQ(deltas[4], "");
  EXPECT_EQ(deltas[5], "\xF0\x9F\x98\x80");
  EXPECT_EQ(deltas[6], "!");
  EXPECT_EQ(d.flush(), "");
}

TEST(IncrementalDetokenizer, IncompleteTailComesOutOnFlush) {
  auto tok = sentencepiece_like();
  const auto ids = tok->encode("a\xF0\x9F\x98\x80");
  IncrementalDetokenizer d(*tok);
  std::string out;
  for (size_t i = 0; i + 1 < ids.size(); ++i) out += d.push(ids[i]);  // leave the last byte out
  EXPECT_EQ(out, "a");
  EXPECT_EQ(d.flush(), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // three stray bytes
}

// Random text over 1- to 4-byte characters, as ids (characters outside the vocabulary become
// well-formed runs of byte tokens), plus special tokens.
std::vector<int32_t> random_ids(const Tokenizer& tok, std::mt19937& rng) {
  static const char* pieces[] = {"a",
                                 " ",
                                 "Hello",
                                 " world",
                                 "!",
                                 "\xC3\xA9",
                                 "\xE5\x8F\xAB",
                                 "\xF0\x9F\x98\x80",
                                 "<|end|>",
                                 "\xE2\x96\x81",
                                 "  "};
  std::string text;
  for (int k = 1 + rng() % 12; k > 0; --k) text += pieces[rng() % std::size(pieces)];
  return tok.encode(text);
}

TEST(IncrementalDetokenizer, RandomIdSequencesConcatenateToDecode) {
  auto tok = sentencepiece_like();
  std::mt19937 rng(7);
  for (int round = 0; round < 500; ++round) stream(*tok, random_ids(*tok, rng), round % 2 == 0);
}

TEST(IncrementalDetokenizer, IllFormedByteRunsStayValidUtf8) {
  auto tok = sentencepiece_like();
  std::mt19937 rng(9);
  for (int round = 0; round < 300; ++round) {
    IncrementalDetokenizer d(*tok, round % 2 == 0);
    for (int k = 1 + rng() % 20; k > 0; --k) {
      const int32_t id = rng() % 3 ? static_cast<int32_t>(7 + 0x80 + rng() % 0x80)
                                   : static_cast<int32_t>(rng() % 7);
      EXPECT_TRUE(unicode::is_valid(d.push(id)));
    }
    EXPECT_TRUE(unicode::is_valid(d.flush()));
  }
}

class IncrementalDetokenizerReal : public ::testing::TestWithParam<std::string> {};

TEST_P(IncrementalDetokenizerReal, StreamsEqualDecodeOnCorpusAndRandomIds) {
  const std::string dir = tt::tokenizer_dir(GetParam());
  const std::string corpus = tt::generated_dir() + "/corpus.jsonl";
  if (!tt::exists(dir + "/tokenizer.json") || !tt::exists(corpus))
    GTEST_SKIP() << dir << ": " << tt::kSetupHint;
  auto t = Tokenizer::from_file(dir + "/tokenizer.json");
  ASSERT_TRUE(t.ok()) << t.status().message();
  const auto records = tt::read_jsonl(corpus);
  for (size_t i = 0; i < records.size(); i += 7) {
    const std::string text = records[i]["text"].get<std::string>();
    if (text.size() > 2000) continue;
    stream(**t, (*t)->encode(text), false);
  }
  // Random ids: byte-level vocabularies split characters anywhere; for byte-fallback ones keep
  // to ids that are not <0xNN> (their ill-formed runs cannot stream exactly, see the header).
  std::mt19937 rng(11);
  const auto n = static_cast<uint32_t>((*t)->vocab_size());
  for (int round = 0; round < 200; ++round) {
    std::vector<int32_t> ids;
    while (ids.size() < static_cast<size_t>(1 + round % 40)) {
      const auto id = static_cast<int32_t>(rng() % n);
      const auto piece = (*t)->id_to_token(id);
      if (piece && piece->size() == 6 && piece->starts_with("<0x")) continue;
      ids.push_back(id);
    }
    stream(**t, ids, round % 2 == 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, IncrementalDetokenizerReal,
                         ::testing::Values("phi3", "phi4", "phi4mini"),
                         [](const auto& info) { return info.param; });

TEST(TokenizeJsonLine, MatchesTheCliContract) {
  auto tok = sentencepiece_like();
  auto out = tokenize_json_line(*tok, R"({"id": "r1", "text": "Hello world<|end|>"})", false);
  ASSERT_TRUE(out.ok()) << out.status().message();
  const json j = json::parse(*out);
  EXPECT_EQ(j["id"], "r1");
  EXPECT_EQ(j["ids"], json(tok->encode("Hello world<|end|>")));
  EXPECT_EQ(j["ids"].back(), tok->token_to_id("<|end|>").value());
  EXPECT_EQ(j["decoded"], "Hello world<|end|>");
  auto numeric_id = tokenize_json_line(*tok, R"({"id": 7, "text": ""})", true);
  ASSERT_TRUE(numeric_id.ok());
  EXPECT_EQ(json::parse(*numeric_id), json::parse(R"({"id": 7, "ids": [], "decoded": ""})"));
  EXPECT_FALSE(tokenize_json_line(*tok, R"({"id": 1})", false).ok());
  EXPECT_FALSE(tokenize_json_line(*tok, "not json", false).ok());
  EXPECT_FALSE(tokenize_json_line(*tok, "[1, 2]", false).ok());
}

}  // namespace
}  // namespace philora::tokenizer
