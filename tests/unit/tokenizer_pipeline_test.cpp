// Unit tests of the tokenizer.json pipeline on small hand-made tokenizers (no generated data
// needed): BPE merge order, byte fallback, unknown tokens, added-token options, split behaviors,
// Metaspace, decoders, post-processors, and refusal of unsupported components.
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tokenizer/bpe.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer {
namespace {

using nlohmann::json;

// A BPE tokenizer.json over `tokens` (ids in order) with `merges`.
json tiny_tokenizer(const std::vector<std::string>& tokens,
                    const std::vector<std::string>& merges) {
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  return json{{"version", "1.0"},
              {"added_tokens", json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
}

std::unique_ptr<Tokenizer> load(const json& j) {
  auto t = Tokenizer::from_json(j);
  EXPECT_TRUE(t.ok()) << t.status().message();
  return t.ok() ? std::move(t).value() : nullptr;
}

std::vector<int32_t> ids(std::initializer_list<int32_t> v) { return v; }

TEST(TokenizerUnicode, LossyDecodingReplacesMaximalSubparts) {
  EXPECT_EQ(unicode::to_valid_lossy("a\xE2\x82"
                                    "b"),
            "a\xEF\xBF\xBD"
            "b");  // truncated 3-byte sequence
  EXPECT_EQ(unicode::to_valid_lossy("\xF0\x80\x80"),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong lead
  EXPECT_EQ(unicode::to_valid_lossy("\xED\xA0\x80"),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");                   // surrogate
  EXPECT_EQ(unicode::to_valid_lossy("\xF0\x9F\x98"), "\xEF\xBF\xBD");  // truncated emoji
  EXPECT_EQ(unicode::to_valid_lossy("\xFF"
                                    "x"),
            "\xEF\xBF\xBD"
            "x");
  EXPECT_EQ(unicode::to_valid_lossy("ok \xE2\x96\x81"), "ok \xE2\x96\x81");
  EXPECT_TRUE(unicode::is_valid("h\xC3\xA9llo \xF0\x9F\x98\x80"));
  EXPECT_FALSE(unicode::is_valid("\xC0\xAF"));
}

TEST(TokenizerUnicode, ByteLevelAlphabetIsAByteBijection) {
  const auto& a = unicode::byte_level_alphabet();
  EXPECT_EQ(a[' '], "\xC4\xA0");   // 'Ġ'
  EXPECT_EQ(a['\n'], "\xC4\x8A");  // 'Ċ'
  EXPECT_EQ(a['A'], "A");
  for (int b = 0; b < 256; ++b) {
    size_t i = 0;
    EXPECT_EQ(unicode::byte_level_byte(unicode::decode(a[b], i)), b);
  }
}

TEST(TokenizerRegex, BackslashSMeansUnicodeWhiteSpaceAsInOniguruma) {
  auto re = Regex::compile("\\s+");
  ASSERT_TRUE(re.ok());
  std::vector<std::pair<size_t, size_t>> m;
  (*re)->find_all(
      "a\xC2\x85"
      "b\xEF\xBB\xBF"
      "c\xE3\x80\x80",
      m);  // NEL, BOM, ideographic space
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0], std::make_pair(size_t{1}, size_t{3}));   // U+0085 is White_Space
  EXPECT_EQ(m[1], std::make_pair(size_t{8}, size_t{11}));  // U+3000; U+FEFF is not
  EXPECT_FALSE(translate_regex("[^\\S]").ok());            // a negated class escape inside [...]
  auto contractions = Regex::compile("(?i:'s|'t)");
  ASSERT_TRUE(contractions.ok());
  m.clear();
  (*contractions)->find_all("it'S don'T", m);
  EXPECT_EQ(m.size(), 2u);
}

TEST(TokenizerBpe, AppliesLowestRankFirstAndLeftmostAmongEqualRanks) {
  // "abc": (b c) has rank 0, so a + bc, then (a bc) -> abc; never "ab".
  auto t = load(tiny_tokenizer({"a", "b", "c", "ab", "bc", "abc"}, {"b c", "a b", "a bc"}));
  EXPECT_EQ(t->encode("abc"), ids({5}));
  EXPECT_EQ(t->encode("ab"), ids({3}));
  // "aaa" with (a a): the leftmost pair merges first.
  auto t2 = load(tiny_tokenizer({"a", "aa"}, {"a a"}));
  EXPECT_EQ(t2->encode("aaa"), ids({1, 0}));
  EXPECT_EQ(t2->encode("aaaa"), ids({1, 1}));
}

TEST(TokenizerBpe, MergesGiveTheSameResultLinearOrWithAHeap) {
  // Random vocabularies over a 4-letter alphabet; every merge of two tokens is a token.
  std::mt19937 rng(1234);
  for (int round = 0; round < 20; ++round) {
    std::vector<std::string> tokens = {"a", "b", "c", "d"};
    std::vector<std::string> merges;
    for (int k = 0; k < 60; ++k) {
      const std::string x = tokens[rng() % tokens.size()];
      const std::string y = tokens[rng() % tokens.size()];
      if (x.size() + y.size() > 6) continue;
      if (std::find(tokens.begin(), tokens.end(), x + y) == tokens.end()) tokens.push_back(x + y);
      merges.push_back(x + " " + y);
    }
    auto model = BpeModel::from_json(tiny_tokenizer(tokens, merges)["model"]);
    ASSERT_TRUE(model.ok()) << model.status().message();
    for (int s = 0; s < 200; ++s) {
      std::vector<int32_t> a(1 + rng() % 80);
      for (auto& id : a) id = static_cast<int32_t>(rng() % 4);
      std::vector<int32_t> b = a;
      (*model)->merge_linear(a);
      (*model)->merge_heap(b);
      ASSERT_EQ(a, b);
    }
  }
}

TEST(TokenizerBpe, ByteFallbackAndUnknownTokens) {
  json j = tiny_tokenizer({"<unk>", "a", "<0xC3>", "<0xA9>"}, {});
  j["model"]["byte_fallback"] = true;
  j["model"]["unk_token"] = "<unk>";
  auto t = load(j);
  EXPECT_EQ(t->encode("a\xC3\xA9"
                      "a"),
            ids({1, 2, 3, 1}));         // é -> its two bytes
  EXPECT_EQ(t->encode("x"), ids({0}));  // no <0x78>: unknown
  j["model"]["byte_fallback"] = false;
  j["model"]["fuse_unk"] = true;
  auto fused = load(j);
  EXPECT_EQ(fused->encode("axyza"), ids({1, 0, 1}));
  j["model"]["fuse_unk"] = false;
  auto unfused = load(j);
  EXPECT_EQ(unfused->encode("axya"), ids({1, 0, 0, 1}));
  j["model"]["unk_token"] = nullptr;
  auto dropped = load(j);
  EXPECT_EQ(dropped->encode("axa"), ids({1, 1}));  // no unknown token: the character is dropped
}

TEST(TokenizerBpe, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  json j = tiny_tokenizer({"a", "b", "c", "bc", "abc"}, {"b c"});
  EXPECT_EQ(load(j)->encode("abc"), ids({0, 3}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(j)->encode("abc"), ids({4}));
}

TEST(TokenizerAddedTokens, LeftmostLongestWithStripOptions) {
  json j = tiny_tokenizer({" ", "a", "b", "<", ">", "x"}, {});
  j["added_tokens"] = json::array({
      {{"id", 6}, {"content", "<x>"}, {"special", true}, {"normalized", false}, {"rstrip", true}},
      {{"id", 7}, {"content", "<x>>"}, {"special", true}, {"normalized", false}, {"lstrip", true}},
      {{"id", 8},
       {"content", "ab"},
       {"special", false},
       {"normalized", false},
       {"single_word", true}},
  });
  auto t = load(j);
  EXPECT_EQ(t->encode("a<x>  b"), ids({1, 6, 2}));   // rstrip eats the spaces after it
  EXPECT_EQ(t->encode("a  <x>>b"), ids({1, 7, 2}));  // longest match, lstrip eats spaces before
  EXPECT_EQ(t->encode("ab b"), ids({8, 0, 2}));      // a single word
  EXPECT_EQ(t->encode("aab"), ids({1, 1, 2}));       // not a single word: no match
  EXPECT_EQ(t->decode(ids({1, 6, 2}), false), "a <x> b");  // no decoder: tokens joined by spaces
  EXPECT_EQ(t->decode(ids({1, 6, 2}), true), "a b");
  EXPECT_TRUE(t->is_special(6));
  EXPECT_FALSE(t->is_special(8));
  EXPECT_EQ(t->token_to_id("<x>>"), 7);
  EXPECT_EQ(t->id_to_token(8), "ab");
  EXPECT_EQ(t->vocab_size(), 9u);
  EXPECT_TRUE(t->load_warnings().empty());
}

TEST(TokenizerAddedTokens, IdsAreAssignedAsHuggingFaceDoesNotAsDeclared) {
  // HF tokenizers 0.23 ignores the "id" field: a token already in the model vocabulary keeps that
  // id, the others count up from the model's vocabulary size (seen in golden_phi4.json, made
  // from a file that disagreed).
  json j = tiny_tokenizer({"a", "b", "<s>"}, {});
  j["added_tokens"] =
      json::array({{{"id", 50}, {"content", "<x>"}, {"special", true}},
                   {{"id", 2}, {"content", "<s>"}, {"special", true}},
                   {{"id", 7}, {"content", "<y>"}, {"special", true}},
                   {{"id", 99}, {"content", "<x>"}, {"special", false}, {"rstrip", true}}});
  auto t = load(j);
  EXPECT_EQ(t->token_to_id("<x>"), 3);
  EXPECT_EQ(t->token_to_id("<s>"), 2);
  EXPECT_EQ(t->token_to_id("<y>"), 4);
  EXPECT_EQ(t->encode("a<x>  b<y>"), ids({0, 3, 1, 4}));  // the repeated <x> brought rstrip
  EXPECT_FALSE(t->is_special(3));
  EXPECT_EQ(t->load_warnings().size(), 3u);
}

TEST(TokenizerAddedTokens, NormalizedTokensMatchInNormalizedText) {
  json j = tiny_tokenizer({"_", "a", "b"}, {});
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "_"}};
  j["added_tokens"] =
      json::array({{{"id", 3}, {"content", "a b"}, {"special", false}, {"normalized", true}}});
  auto t = load(j);
  EXPECT_EQ(t->encode("b a b"), ids({2, 0, 3}));  // matched as "a_b" after normalization
}

std::vector<std::string> split_texts(const std::string& text, const std::string& sep,
                                     SplitBehavior b, bool invert) {
  std::vector<std::pair<size_t, size_t>> m;
  for (size_t p = text.find(sep); p != std::string::npos; p = text.find(sep, p + sep.size()))
    m.emplace_back(p, p + sep.size());
  std::vector<std::string> out;
  for (const Piece& p : split_piece(Piece{text, true, 0, false}, m, b, invert))
    out.emplace_back(p.text);
  return out;
}

TEST(TokenizerPreTokenizers, SplitBehaviorsMatchHuggingFace) {
  using V = std::vector<std::string>;
  const std::string s = "the-final--countdown";
  EXPECT_EQ(split_texts(s, "-", SplitBehavior::kRemoved, false), (V{"the", "final", "countdown"}));
  EXPECT_EQ(split_texts(s, "-", SplitBehavior::kIsolated, false),
            (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split_texts(s, "-", SplitBehavior::kMergedWithPrevious, false),
            (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split_texts(s, "-", SplitBehavior::kMergedWithNext, false),
            (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split_texts(s, "-", SplitBehavior::kContiguous, false),
            (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split_texts(s, "-", SplitBehavior::kRemoved, true), (V{"-", "-", "-"}));
}

std::vector<std::string> pre_tokenize(const json& config, const std::string& text,
                                      bool at_start = true) {
  auto p = make_pre_tokenizer(config);
  EXPECT_TRUE(p.ok()) << p.status().message();
  std::vector<std::string> out;
  auto collect = [&](const Piece& piece) {
    std::string s(piece.text);
    if (piece.raw_bytes) {
      std::string mapped;
      for (char c : s) mapped += unicode::byte_level_alphabet()[static_cast<unsigned char>(c)];
      s = mapped;
    }
    out.push_back(s);
  };
  (*p)->pre_tokenize(Piece{text, at_start, 0, false}, PieceSink(collect));
  return out;
}

TEST(TokenizerPreTokenizers, MetaspaceReplacesSpacesAndPrepends) {
  using V = std::vector<std::string>;
  const json always = {
      {"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"}};
  EXPECT_EQ(pre_tokenize(always, "Hey   friend!"),
            (V{"\xE2\x96\x81Hey", "\xE2\x96\x81", "\xE2\x96\x81",
               "\xE2\x96\x81"
               "friend!"}));
  const json first = {{"type", "Metaspace"},
                      {"replacement", "\xE2\x96\x81"},
                      {"prepend_scheme", "first"},
                      {"split", false}};
  EXPECT_EQ(pre_tokenize(first, "Hey my", true), (V{"\xE2\x96\x81Hey\xE2\x96\x81my"}));
  EXPECT_EQ(pre_tokenize(first, "how are", false), (V{"how\xE2\x96\x81"
                                                      "are"}));
}

TEST(TokenizerPreTokenizers, ByteLevelWithGpt2RegexAndPrefixSpace) {
  using V = std::vector<std::string>;
  const json bl = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  EXPECT_EQ(pre_tokenize(bl, "Hello my friend, how's  it?"),
            (V{"\xC4\xA0Hello", "\xC4\xA0my",
               "\xC4\xA0"
               "friend",
               ",", "\xC4\xA0how", "'s", "\xC4\xA0", "\xC4\xA0it", "?"}));
  const json digits = {{"type", "Digits"}, {"individual_digits", true}};
  EXPECT_EQ(pre_tokenize(digits, "a123"), (V{"a", "1", "2", "3"}));
}

std::string decode_with(const json& decoder, const std::vector<std::string>& tokens) {
  json j = tiny_tokenizer(tokens, {});
  j["decoder"] = decoder;
  auto t = load(j);
  std::vector<int32_t> all(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) all[i] = static_cast<int32_t>(i);
  return t->decode(all);
}

TEST(TokenizerDecoders, SentencePieceChain) {
  const json chain = {
      {"type", "Sequence"},
      {"decoders",
       json::array(
           {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
            {{"type", "ByteFallback"}},
            {{"type", "Fuse"}},
            {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  EXPECT_EQ(decode_with(chain, {"\xE2\x96\x81Hey",
                                "\xE2\x96\x81"
                                "friend",
                                "<0xE5>", "<0x8F>", "<0xAB>", "!"}),
            "Hey friend\xE5\x8F\xAB!");
  // An ill-formed byte run gives one U+FFFD per byte.
  EXPECT_EQ(decode_with(chain, {"<0xE5>", "<0x8F>", "a"}),
            "\xEF\xBF\xBD\xEF\xBF\xBD"
            "a");
  const json metaspace = {
      {"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"}};
  EXPECT_EQ(decode_with(metaspace, {"\xE2\x96\x81Hey",
                                    "\xE2\x96\x81"
                                    "friend!"}),
            "Hey friend!");
}

TEST(TokenizerDecoders, ByteLevelReadsBytesAsUtf8Lossily) {
  const json bl = {{"type", "ByteLevel"}};
  EXPECT_EQ(decode_with(bl, {"\xC4\xA0Hello", "\xC4\xA0\xC3\xA2\xC4\xA4\xC2\xAC"}),
            " Hello \xE2\x82\xAC");                                  // " €"
  EXPECT_EQ(decode_with(bl, {"\xC3\xA2\xC4\xA4"}), "\xEF\xBF\xBD");  // truncated sequence
  EXPECT_EQ(decode_with(bl, {"<|x y|>"}), "<|x y|>");  // not all in the alphabet: kept as is
}

TEST(TokenizerPostProcessor, TemplateAddsSpecialTokensOnlyWhenAsked) {
  json j = tiny_tokenizer({"<s>", "a"}, {});
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {0}}, {"tokens", {"<s>"}}}}}}};
  auto t = load(j);
  EXPECT_EQ(t->encode("a", true), ids({0, 1}));
  EXPECT_EQ(t->encode("a", false), ids({1}));
}

TEST(TokenizerLoad, RefusesUnsupportedComponentsByName) {
  const auto refused = [](json j, const std::string& name) {
    auto t = Tokenizer::from_json(j);
    ASSERT_FALSE(t.ok()) << name;
    EXPECT_NE(t.status().message().find(name), std::string::npos) << t.status().message();
  };
  const json base = tiny_tokenizer({"a"}, {});
  json j = base;
  j["normalizer"] = {{"type", "NFKC"}};
  refused(j, "NFKC");
  j = base;
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  refused(j, "Whitespace");
  j = base;
  j["decoder"] = {{"type", "WordPiece"}};
  refused(j, "WordPiece");
  j = base;
  j["post_processor"] = {{"type", "Frobnicate"}};
  refused(j, "Frobnicate");
  j = base;
  j["model"]["type"] = "Unigram";
  refused(j, "Unigram");
  j = base;
  j["model"]["dropout"] = 0.1;
  refused(j, "dropout");
  j = base;
  j["model"]["merges"] = json::array({"a b"});
  refused(j, "not in the vocabulary");
  j = base;  // found by tests/fuzz/fuzz_tokenizer_json: one entry made us allocate 7 GB
  j["model"]["vocab"]["far"] = 888888888;
  refused(j, "nearly dense");
  j = base;  // found by tests/fuzz/fuzz_tokenizer_json: a float id was converted to int (UB)
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A"}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [2.7e29], "tokens": ["<s>"]}}})");
  refused(j, "not a token id");
  j = base;
  j["post_processor"] = json::parse(R"({"type": "BertProcessing", "sep": ["</s>", 1e30],
      "cls": ["<s>", 1]})");
  refused(j, "must be [token, id]");
  j = base;  // found by fuzz_tokenizer_json: nlohmann::json threw out of the loader
  j["model"]["type"] = nullptr;
  refused(j, "unexpected value");
  EXPECT_FALSE(Tokenizer::from_json_string("{not json").ok());
  EXPECT_FALSE(Tokenizer::from_file("/nonexistent/tokenizer.json").ok());
}

TEST(TokenizerEncode, IllFormedUtf8IsReplacedBeforeEncoding) {
  json j = tiny_tokenizer({"a", "\xEF\xBF\xBD"}, {});
  auto t = load(j);
  EXPECT_EQ(t->encode("a\xFF"
                      "a"),
            ids({0, 1, 0}));
}

}  // namespace
}  // namespace philora::tokenizer
