// POST /tokenize (LoRAX / TGI and vLLM shapes) and vLLM's POST /detokenize on the test server's
// character tokenizer (server_fixture.h: Prepend "▁" + Replace " " -> "▁", one token per
// character, no merges). Expected ids come from that vocabulary (<unk> 0, <s> 1, </s> 2, "▁" 3,
// 'a'.. 4.., 'A'.. 30.., '0'.. 56..); expected offsets from HF's alignment rules: a character the
// normalizer put in front belongs to the first input character, "▁" standing for a space to
// that space. (HF's own offsets on real vocabularies: tests/unit/tokenizer_offsets_test.cpp.)
#include "server/server_fixture.h"

namespace philora {
namespace {

using nlohmann::json;

class Tokenize : public test::ServerFixture {};

TEST_F(Tokenize, LoraxShapeHasIdsTokensAndCharacterOffsets) {
  auto [status, j] = post("/tokenize", R"({"inputs": "ab cd"})");
  ASSERT_EQ(status, 200) << j.dump();
  const json want = json::parse(R"([
      {"id": 3, "text": "▁", "start": 0, "stop": 1},
      {"id": 4, "text": "a", "start": 0, "stop": 1},
      {"id": 5, "text": "b", "start": 1, "stop": 2},
      {"id": 3, "text": "▁", "start": 2, "stop": 3},
      {"id": 6, "text": "c", "start": 3, "stop": 4},
      {"id": 7, "text": "d", "start": 4, "stop": 5}])");
  EXPECT_EQ(j, want);
}

TEST_F(Tokenize, LoraxOffsetsCountCodePointsNotBytes) {
  // "é" (2 bytes) is outside the vocabulary: <unk>; the "a" after it starts at character 2.
  auto [status, j] = post("/tokenize", R"({"inputs": "\u00e9 a", "add_special_tokens": false})");
  ASSERT_EQ(status, 200) << j.dump();
  ASSERT_TRUE(j.is_array() && j.size() >= 2) << j.dump();
  EXPECT_EQ(j.back(), json::parse(R"({"id": 4, "text": "a", "start": 2, "stop": 3})"));
}

TEST_F(Tokenize, TgiParametersAreAcceptedAndTruncateKeepsTheLastTokens) {
  auto [status, j] = post(
      "/tokenize", R"({"inputs": "ab cd", "parameters": {"truncate": 2, "max_new_tokens": 5}})");
  ASSERT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j, json::parse(R"([{"id": 6, "text": "c", "start": 3, "stop": 4},
                               {"id": 7, "text": "d", "start": 4, "stop": 5}])"));
}

TEST_F(Tokenize, VllmShapeForPromptsAndMessages) {
  {
    auto [status, j] = post("/tokenize", R"({"model": "tiny", "prompt": "ab"})");
    ASSERT_EQ(status, 200) << j.dump();
    EXPECT_EQ(j["tokens"], json::parse("[3, 4, 5]"));
    EXPECT_EQ(j["count"], 3);
    EXPECT_EQ(j["max_model_len"], engine_->max_sequence_tokens());
    EXPECT_TRUE(j["token_strs"].is_null());
  }
  {
    auto [status, j] = post("/tokenize", R"({"prompt": "Ab", "return_token_strs": true})");
    ASSERT_EQ(status, 200) << j.dump();
    EXPECT_EQ(j["tokens"], json::parse("[3, 30, 5]"));
    EXPECT_EQ(j["token_strs"], json::parse(R"(["▁", "A", "b"])"));
  }
  {
    // The fixture's chat template renders "user: hi\nassistant: " (ids checked by count and by
    // /tokenize of that text: the same tokenizer without special tokens).
    auto [status, j] = post("/tokenize", R"({"model": "a", "messages": [{"role": "user", "content": "hi"}]})");
    ASSERT_EQ(status, 200) << j.dump();
    auto [s2, plain] = post("/tokenize", R"({"prompt": "user: hi\nassistant: ", "add_special_tokens": false})");
    ASSERT_EQ(s2, 200);
    EXPECT_EQ(j["tokens"], plain["tokens"]);
    EXPECT_EQ(j["count"], plain["tokens"].size());
  }
}

TEST_F(Tokenize, VllmDetokenize) {
  auto [status, j] = post("/detokenize", R"({"model": "tiny", "tokens": [3, 4, 5, 3, 6]})");
  ASSERT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j, json::parse(R"({"prompt": "ab c"})"));
}

TEST_F(Tokenize, BadInputGetsTheApisError) {
  struct Case {
    const char* path;
    const char* body;
    int status;
    const char* says;  // in the message
  };
  const Case cases[] = {
      {"/tokenize", R"({"inputs": 5})", 422, "inputs"},
      {"/tokenize", R"({"inputs": "x", "bogus": 1})", 422, "bogus"},
      {"/tokenize", R"({"inputs": "x", "parameters": {"truncate": 0}})", 422, "truncate"},
      {"/tokenize", R"({"inputs": "x", "parameters": 3})", 422, "parameters"},
      {"/tokenize", R"({})", 400, "prompt"},
      {"/tokenize", R"({"prompt": "x", "messages": []})", 400, "either"},
      {"/tokenize", R"({"prompt": 7})", 400, "prompt"},
      {"/tokenize", R"({"prompt": "x", "model": "no-such-model"})", 404, "no-such-model"},
      {"/tokenize", R"({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": false})",
       400, "add_generation_prompt"},
      {"/tokenize", "not json", 400, ""},
      {"/detokenize", R"({"tokens": "ab"})", 400, "tokens"},
      {"/detokenize", R"({"tokens": [1, 100000]})", 400, "tokens"},
      {"/detokenize", R"({})", 400, "tokens"},
  };
  for (const Case& c : cases) {
    auto r = client().Post(c.path, c.body, "application/json");
    ASSERT_TRUE(r) << c.path << " " << c.body;
    EXPECT_EQ(r->status, c.status) << c.path << " " << c.body << " -> " << r->body;
    EXPECT_NE(r->body.find(c.says), std::string::npos) << c.body << " -> " << r->body;
    EXPECT_EQ(r->body.find(PHILORA_TEST_DATA), std::string::npos) << r->body;
  }
  auto health = client().Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

}  // namespace
}  // namespace philora
