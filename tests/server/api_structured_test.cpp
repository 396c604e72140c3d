// Structured output on the APIs (issue 21 §4), on the golden gqa_multi_lora model and the
// fixture's character tokenizer (letters, digits, . , ! ? ' - and the space): LoRAX
// parameters.response_format, OpenAI response_format and vLLM's guided_* fields. What the
// outputs must be is checked independently: JSON values by nlohmann's parser and the bounds,
// regexes by std::regex (ECMAScript), choices by membership. Bad shapes and constraints that
// do not compile are rows of robustness_test.cpp.
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include "server/server_fixture.h"

namespace philora {
namespace {

using nlohmann::json;

class ApiStructured : public test::ServerFixture {
 protected:
  void configure(server::HttpOptions&, server::EngineHostOptions&,
                 server::ServerContext& ctx) override {
    cache_ = std::make_shared<structured::ConstraintCache>(
        structured::TokenVocabulary::from_tokenizer(*ctx.tokenizer));
    ctx.constraints = cache_;
  }
  std::shared_ptr<structured::ConstraintCache> cache_;
};

// An integer schema's outputs are integers within its bounds; a boolean schema's booleans;
// every sampled seed ends with the eos where the value is complete.
TEST_F(ApiStructured, LoraxResponseFormatSchemas) {
  for (int seed = 0; seed < 4; ++seed) {
    const json body = {{"inputs", "abc"},
                       {"parameters",
                        {{"max_new_tokens", 40},
                         {"do_sample", true},
                         {"seed", seed},
                         {"details", true},
                         {"response_format",
                          {{"type", "json_object"},
                           {"schema", {{"type", "integer"}, {"minimum", -20}, {"maximum", 300}}}}}}}};
    const auto [status, j] = post("/generate", body.dump());
    ASSERT_EQ(status, 200) << j.dump();
    const std::string text = j["generated_text"].get<std::string>();
    const json v = json::parse(text, nullptr, false);
    ASSERT_FALSE(v.is_discarded()) << text;
    ASSERT_TRUE(v.is_number_integer()) << text;
    EXPECT_GE(v.get<int64_t>(), -20) << text;
    EXPECT_LE(v.get<int64_t>(), 300) << text;
    EXPECT_EQ(j["details"]["finish_reason"], "eos_token") << j.dump();
  }
  const json body = {{"inputs", "abc"},
                     {"parameters",
                      {{"max_new_tokens", 20},
                       {"response_format", {{"type", "json_schema"}, {"schema", {{"type", "boolean"}}}}}}}};
  const auto [status, j] = post("/generate", body.dump());
  ASSERT_EQ(status, 200) << j.dump();
  const json v = json::parse(j["generated_text"].get<std::string>(), nullptr, false);
  EXPECT_TRUE(v.is_boolean()) << j.dump();
  // A "text" response format is no constraint.
  const auto [s2, j2] = post("/generate", R"({"inputs": "abc", "parameters": {"max_new_tokens": 3, "response_format": {"type": "text"}}})");
  EXPECT_EQ(s2, 200) << j2.dump();
}

TEST_F(ApiStructured, OpenAiResponseFormatAndGuidedFields) {
  // json_schema with name and strict, on completions and chat.
  const json schema = {{"type", "integer"}, {"minimum", 5}, {"maximum", 9999}};
  for (const bool chat : {false, true}) {
    json body = {{"max_tokens", 30}, {"temperature", 1.0}, {"seed", 11}, {"n", 2},
                 {"response_format",
                  {{"type", "json_schema"},
                   {"json_schema", {{"name", "count"}, {"strict", true}, {"schema", schema}}}}}};
    if (chat)
      body["messages"] = json::array({{{"role", "user"}, {"content", "how many?"}}});
    else
      body["prompt"] = "how many?";
    const auto [status, j] = post(chat ? "/v1/chat/completions" : "/v1/completions", body.dump());
    ASSERT_EQ(status, 200) << j.dump();
    ASSERT_EQ(j["choices"].size(), 2u);
    for (const json& c : j["choices"]) {
      const std::string text = chat ? c["message"]["content"].get<std::string>() : c["text"].get<std::string>();
      const json v = json::parse(text, nullptr, false);
      ASSERT_TRUE(!v.is_discarded() && v.is_number_integer()) << text;
      EXPECT_GE(v.get<int64_t>(), 5);
      EXPECT_LE(v.get<int64_t>(), 9999);
      EXPECT_EQ(c["finish_reason"], "stop");
    }
  }
  // The same schema text again: compiled once (the server's ConstraintCache).
  const size_t compiled = cache_->compilations();
  const json again = {{"prompt", "x"}, {"max_tokens", 30}, {"guided_json", schema.dump()}};
  const auto [s0, j0] = post("/v1/completions", again.dump());
  ASSERT_EQ(s0, 200) << j0.dump();
  EXPECT_EQ(cache_->compilations(), compiled);

  // guided_regex: std::regex (ECMAScript) agrees the text matches in full.
  const std::string pattern = "[a-c]{2,5}-[0-9]{2}(!|\\?)";
  for (int seed = 0; seed < 3; ++seed) {
    const json body = {{"prompt", "abc"}, {"max_tokens", 30}, {"temperature", 1.0}, {"seed", seed},
                       {"guided_regex", pattern}};
    const auto [status, j] = post("/v1/completions", body.dump());
    ASSERT_EQ(status, 200) << j.dump();
    const std::string text = j["choices"][0]["text"];
    EXPECT_TRUE(std::regex_match(text, std::regex(pattern))) << j.dump();
    EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  }
  // guided_choice on chat; guided_grammar (GBNF).
  const std::set<std::string> choices = {"yes", "no", "Maybe so"};
  for (int seed = 0; seed < 3; ++seed) {
    const json body = {{"messages", json::array({{{"role", "user"}, {"content", "ok?"}}})},
                       {"max_tokens", 10}, {"temperature", 1.0}, {"seed", seed},
                       {"guided_choice", json(choices)}};
    const auto [status, j] = post("/v1/chat/completions", body.dump());
    ASSERT_EQ(status, 200) << j.dump();
    EXPECT_TRUE(choices.count(j["choices"][0]["message"]["content"].get<std::string>())) << j.dump();
  }
  const json g = {{"prompt", "abc"}, {"max_tokens", 40}, {"temperature", 1.0}, {"seed", 3},
                  {"guided_grammar", "root ::= item (\",\" item)* \".\"\nitem ::= [a-e] [0-9]?\n"}};
  const auto [sg, jg] = post("/v1/completions", g.dump());
  ASSERT_EQ(sg, 200) << jg.dump();
  const std::string gt = jg["choices"][0]["text"];
  if (jg["choices"][0]["finish_reason"] == "stop")
    EXPECT_TRUE(std::regex_match(gt, std::regex("[a-e][0-9]?(,[a-e][0-9]?)*\\."))) << gt;
  else  // cut by max_tokens: a prefix of the language
    EXPECT_TRUE(std::regex_match(gt, std::regex("[a-e][0-9]?(,[a-e][0-9]?)*,?"))) << gt;
}

// A constraint this vocabulary cannot write (JSON objects need '{') ends the request with a
// clear error, not a crash or a hang.
TEST_F(ApiStructured, AConstraintTheVocabularyCannotWriteIsAClearError) {
  const auto [status, j] = post("/v1/completions",
                                R"({"prompt": "abc", "max_tokens": 20, "response_format": {"type": "json_object"}})");
  EXPECT_GE(status, 400) << j.dump();
  EXPECT_LT(status, 500) << j.dump();
  EXPECT_NE(j.dump().find("no token can continue"), std::string::npos) << j.dump();
}

}  // namespace
}  // namespace philora
