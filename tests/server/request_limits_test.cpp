// The per-request limits of philora serve (--max-input-tokens 30,
// --max-new-tokens-limit 5 here), on both APIs, each as that API words it:
// - a prompt over the limit: LoRAX 422 with TGI's ValidationError::InputLength
//   ("`inputs` must have less than N tokens. Given: M"); OpenAI 400
//   invalid_request_error, code context_length_exceeded, param the prompt's
//   field (prompt / messages), as vLLM answers a prompt over its context;
// - max_new_tokens over the limit: LoRAX 422 with LoRAX's
//   ValidationError::MaxNewTokens ("`max_new_tokens` must be <= N. Given: M");
//   OpenAI 400 invalid_request_error, param the field the request used
//   (max_tokens / max_completion_tokens), worded as OpenAI's "max_tokens is too
//   large" error;
// - at the limits a request is served, and a request that gives no maximum
//   generates at most the limit.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include "server/server_fixture.h"

using nlohmann::json;

namespace philora {
namespace {

constexpr int64_t kMaxInput = 30, kMaxNew = 5;

// `n` token ids of ordinary characters (4..63 in the tiny vocabulary).
json ids(int n) {
  json a = json::array();
  for (int i = 0; i < n; ++i) a.push_back(4 + (i * 7) % 60);
  return a;
}

class WithRequestLimits : public test::ServerFixture {
 protected:
  void configure(server::HttpOptions&, server::EngineHostOptions&,
                 server::ServerContext& ctx) override {
    ctx.limits.max_input_tokens = kMaxInput;
    ctx.limits.max_new_tokens = kMaxNew;
    ASSERT_GT(ctx.limits.max_total_tokens, 4 * kMaxInput) << "the limits are below the context";
  }
  // A LoRAX error: the status, the message exactly, error_type "validation".
  void expect_lorax(const std::string& path, const json& body, const std::string& message) {
    auto [status, j] = post(path, body.dump());
    EXPECT_EQ(status, 422) << path << " " << body << " -> " << j;
    EXPECT_EQ(j.value("error", ""), message) << path << " " << body;
    EXPECT_EQ(j.value("error_type", ""), "validation") << j;
  }
  // An OpenAI error: 400, invalid_request_error, its param and code, words of its message.
  void expect_openai(const std::string& path, const json& body, const std::string& param,
                     const json& code, const std::vector<std::string>& words) {
    auto [status, j] = post(path, body.dump());
    EXPECT_EQ(status, 400) << path << " " << body << " -> " << j;
    ASSERT_TRUE(j.contains("error") && j["error"].is_object()) << j;
    EXPECT_EQ(j["error"].value("type", ""), "invalid_request_error") << j;
    EXPECT_EQ(j["error"]["param"], param) << j;
    EXPECT_EQ(j["error"]["code"], code) << j;
    const std::string message = j["error"].value("message", "");
    for (const std::string& w : words)
      EXPECT_NE(message.find(w), std::string::npos) << message << "\n  wants: " << w;
  }
};

TEST_F(WithRequestLimits, APromptOverMaxInputTokens) {
  const json over = ids(kMaxInput + 1), at = ids(kMaxInput);
  expect_lorax("/generate", {{"inputs", over}}, "`inputs` must have less than 31 tokens. Given: 31");
  expect_lorax("/generate_stream", {{"inputs", over}},
               "`inputs` must have less than 31 tokens. Given: 31");
  expect_lorax("/", {{"inputs", over}, {"stream", true}},
               "`inputs` must have less than 31 tokens. Given: 31");
  // Text: "▁" then one token per character (the test tokenizer).
  expect_lorax("/generate", {{"inputs", std::string(32, 'x')}},
               "`inputs` must have less than 31 tokens. Given: 33");
  expect_openai("/v1/completions", {{"prompt", over}, {"max_tokens", 2}}, "prompt",
                "context_length_exceeded", {"at most 30 prompt tokens", "resulted in 31 tokens"});
  expect_openai("/v1/completions", {{"prompt", over}, {"stream", true}}, "prompt",
                "context_length_exceeded", {"at most 30"});
  // "user: " + 10 characters + "\nassistant: " (the fixture's template) is 29 tokens, one
  // more character 30, two more 31.
  for (const auto& [content, status] : {std::pair<std::string, int>{std::string(11, 'x'), 200},
                                        {std::string(12, 'x'), 400}}) {
    const json body = {{"messages", {{{"role", "user"}, {"content", content}}}}, {"max_tokens", 2}};
    if (status == 400) {
      expect_openai("/v1/chat/completions", body, "messages", "context_length_exceeded",
                    {"at most 30 prompt tokens", "resulted in 31 tokens"});
    } else {
      auto [s, j] = post("/v1/chat/completions", body.dump());
      EXPECT_EQ(s, 200) << j;
      EXPECT_EQ(j["usage"]["prompt_tokens"], kMaxInput) << j;
    }
  }

  // At the limit, served; LoRAX's truncate brings a longer prompt under it.
  auto [g, gj] = post("/generate", json({{"inputs", at}, {"parameters", {{"max_new_tokens", 2}}}}).dump());
  EXPECT_EQ(g, 200) << gj;
  auto [t, tj] = post("/generate", json({{"inputs", ids(3 * kMaxInput)},
                                         {"parameters", {{"max_new_tokens", 2}, {"truncate", kMaxInput}}}})
                                       .dump());
  EXPECT_EQ(t, 200) << tj;
  auto [c, cj] = post("/v1/completions", json({{"prompt", at}, {"max_tokens", 2}}).dump());
  EXPECT_EQ(c, 200) << cj;
  EXPECT_EQ(cj["usage"]["prompt_tokens"], kMaxInput) << cj;
  // TGI's /info tells clients the limit.
  auto info = client().Get("/info");
  ASSERT_TRUE(info);
  EXPECT_EQ(json::parse(info->body)["max_input_length"], kMaxInput) << info->body;
}

TEST_F(WithRequestLimits, MaxNewTokensOverTheLimit) {
  const json prompt = ids(3);
  expect_lorax("/generate", {{"inputs", prompt}, {"parameters", {{"max_new_tokens", kMaxNew + 1}}}},
               "`max_new_tokens` must be <= 5. Given: 6");
  expect_lorax("/generate_stream",
               {{"inputs", prompt}, {"parameters", {{"max_new_tokens", 1000}}}},
               "`max_new_tokens` must be <= 5. Given: 1000");
  expect_openai("/v1/completions", {{"prompt", prompt}, {"max_tokens", kMaxNew + 1}}, "max_tokens",
                nullptr, {"max_tokens is too large: 6", "at most 5 completion tokens"});
  expect_openai("/v1/chat/completions",
                {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                 {"max_completion_tokens", kMaxNew + 1}},
                "max_completion_tokens", nullptr, {"max_completion_tokens is too large: 6"});
  expect_openai("/v1/chat/completions",
                {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 50},
                 {"stream", true}},
                "max_tokens", nullptr, {"max_tokens is too large: 50", "at most 5"});

  // At the limit: served, every token generated (EOS ignored).
  auto [g, gj] = post("/generate", json({{"inputs", prompt},
                                         {"parameters",
                                          {{"max_new_tokens", kMaxNew},
                                           {"details", true},
                                           {"ignore_eos_token", true}}}})
                                       .dump());
  ASSERT_EQ(g, 200) << gj;
  EXPECT_EQ(gj["details"]["generated_tokens"], kMaxNew) << gj;
  // No maximum given: the server's default (64) is capped at the limit.
  auto [d, dj] = post("/generate", json({{"inputs", prompt},
                                         {"parameters", {{"details", true}, {"ignore_eos_token", true}}}})
                                       .dump());
  ASSERT_EQ(d, 200) << dj;
  EXPECT_EQ(dj["details"]["generated_tokens"], kMaxNew) << dj;
  auto [c, cj] = post("/v1/completions", json({{"prompt", prompt}, {"ignore_eos", true}}).dump());
  ASSERT_EQ(c, 200) << cj;
  EXPECT_EQ(cj["usage"]["completion_tokens"], kMaxNew) << cj;
  EXPECT_EQ(cj["choices"][0]["finish_reason"], "length") << cj;
}

}  // namespace
}  // namespace philora
