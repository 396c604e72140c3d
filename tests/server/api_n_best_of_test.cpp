// OpenAI's n and best_of, LoRAX's best_of, on the golden gqa_multi_lora model.
// What each must give follows from the engine's contract (engine/request.h):
// candidate i of a request seeded s draws from s + i, so choice i equals the
// single request seeded s + i; best_of returns the candidates of highest
// cumulative logprob, which the test sums itself from the single requests'
// reported logprobs (raw on OpenAI, processed on LoRAX).
#include <gtest/gtest.h>

#include <sstream>

#include "server/server_fixture.h"

namespace philora {
namespace {

using nlohmann::json;
using test::token_ids;
using ApiN = test::ServerFixture;

std::vector<json> events(const std::string& body) {
  std::vector<json> out;
  std::istringstream in(body);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("data:", 0) != 0) continue;
    const std::string data = line.substr(line.size() > 5 && line[5] == ' ' ? 6 : 5);
    if (data != "[DONE]") out.push_back(json::parse(data));
  }
  return out;
}

double sum(const json& values) {
  double s = 0;
  for (const json& v : values) s += v.get<double>();
  return s;
}

TEST_F(ApiN, OpenAiChoiceIEqualsTheRequestSeededSPlusI) {
  const json base = {{"prompt", "abc"}, {"max_tokens", 10}, {"temperature", 1.0},
                     {"ignore_eos", true}, {"logprobs", 1}};
  json many = base;
  many["n"] = 3;
  many["seed"] = 40;
  auto [s, j] = post("/v1/completions", many.dump());
  ASSERT_EQ(s, 200) << j.dump();
  ASSERT_EQ(j["choices"].size(), 3u);
  EXPECT_EQ(j["usage"]["completion_tokens"], 30);
  for (int i = 0; i < 3; ++i) {
    json one = base;
    one["seed"] = 40 + i;
    auto [s1, k] = post("/v1/completions", one.dump());
    ASSERT_EQ(s1, 200);
    const json& c = j["choices"][size_t(i)];
    EXPECT_EQ(c["index"], i);
    EXPECT_EQ(c["text"], k["choices"][0]["text"]) << "choice " << i;
    EXPECT_EQ(c["logprobs"]["tokens"], k["choices"][0]["logprobs"]["tokens"]);
  }
  // Streamed: each choice's deltas add up to its text.
  many["stream"] = true;
  auto r = client().Post("/v1/completions", many.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  std::vector<std::string> texts(3);
  std::vector<int> finished(3, 0);
  for (const json& e : events(r->body)) {
    ASSERT_EQ(e["choices"].size(), 1u) << e;
    const json& c = e["choices"][0];
    texts[c["index"].get<size_t>()] += c["text"].get<std::string>();
    if (!c["finish_reason"].is_null()) finished[c["index"].get<size_t>()]++;
  }
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(texts[i], j["choices"][i]["text"]) << "choice " << i;
    EXPECT_EQ(finished[i], 1) << "one finish_reason per choice";
  }
  // Chat too.
  auto [s2, c] = post("/v1/chat/completions",
                      R"({"messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 4, "seed": 1})");
  ASSERT_EQ(s2, 200) << c.dump();
  ASSERT_EQ(c["choices"].size(), 2u);
  EXPECT_EQ(c["choices"][1]["index"], 1);
  EXPECT_EQ(c["choices"][1]["message"]["role"], "assistant");
}

TEST_F(ApiN, OpenAiBestOfReturnsTheCandidateOfHighestLogprob) {
  const json base = {{"prompt", "hello"}, {"max_tokens", 8}, {"temperature", 1.0},
                     {"ignore_eos", true}, {"logprobs", 0}};
  double best = -1e300;
  std::string want;
  for (int i = 0; i < 3; ++i) {
    json one = base;
    one["seed"] = 7 + i;
    auto [s, k] = post("/v1/completions", one.dump());
    ASSERT_EQ(s, 200) << k.dump();
    const double lp = sum(k["choices"][0]["logprobs"]["token_logprobs"]);
    if (lp > best) best = lp, want = k["choices"][0]["text"];
  }
  json b = base;
  b["best_of"] = 3;
  b["seed"] = 7;
  auto [s, j] = post("/v1/completions", b.dump());
  ASSERT_EQ(s, 200) << j.dump();
  ASSERT_EQ(j["choices"].size(), 1u) << "n = 1: the best only";
  EXPECT_EQ(j["choices"][0]["text"], want);
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
}

TEST_F(ApiN, LoraxBestOfSequences) {
  const json params = {{"max_new_tokens", 6}, {"do_sample", true}, {"details", true},
                       {"ignore_eos_token", true}};
  json seqs[2];
  for (int i = 0; i < 2; ++i) {
    json p = params;
    p["seed"] = 11 + i;
    auto [s, k] = post("/generate", json({{"inputs", "abc"}, {"parameters", p}}).dump());
    ASSERT_EQ(s, 200) << k.dump();
    seqs[i] = k;
  }
  auto lp = [](const json& r) {
    double s = 0;
    for (const json& t : r["details"]["tokens"]) s += t["logprob"].get<double>();
    return s;
  };
  const int best = lp(seqs[0]) >= lp(seqs[1]) ? 0 : 1;
  json p = params;
  p["seed"] = 11;
  p["best_of"] = 2;
  auto [s, j] = post("/generate", json({{"inputs", "abc"}, {"parameters", p}}).dump());
  ASSERT_EQ(s, 200) << j.dump();
  EXPECT_EQ(j["generated_text"], seqs[best]["generated_text"]);
  EXPECT_EQ(j["details"]["seed"], 11 + best);
  ASSERT_TRUE(j["details"].contains("best_of_sequences")) << j.dump();
  const json& other = j["details"]["best_of_sequences"];
  ASSERT_EQ(other.size(), 1u);
  for (const char* key : {"generated_text", "finish_reason", "generated_tokens", "seed", "prefill",
                          "tokens"})
    EXPECT_TRUE(other[0].contains(key)) << key << " in " << other[0];
  EXPECT_EQ(other[0]["generated_text"], seqs[1 - best]["generated_text"]);
  EXPECT_EQ(other[0]["seed"], 11 + (1 - best));
  EXPECT_EQ(token_ids(other[0]["tokens"]), token_ids(seqs[1 - best]["details"]["tokens"]));
}

}  // namespace
}  // namespace philora
