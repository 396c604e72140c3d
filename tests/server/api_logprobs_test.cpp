// The sampling, stopping and logprobs parameters of both APIs, end to end on
// the golden gqa_multi_lora model, and the shapes of their answers.
//   Values: the logprobs an API returns against HF's logits of the golden
//     fixture (score_ref.safetensors), log_softmax'ed in float64 here — raw on
//     the OpenAI routes (logit_bias does not change them), processed on
//     LoRAX's (the drawn distribution: temperature and top-k, or the
//     repetition penalty); within 1e-4 · max(1, |value|).
//   Seeds: the same seed gives the same text and is reported; without one,
//     each request reports a different one; a greedy request reports none.
//   Streams: deltas (and their logprobs) concatenate to the non-streamed answer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <sstream>

#include "model/engine_rig.h"
#include "server/server_fixture.h"

namespace philora {
namespace {

using nlohmann::json;
using test::read_jsonl;
using test::token_ids;

constexpr double kTolerance = 1e-4;

bool close(double got, double want) {
  return std::fabs(got - want) <= kTolerance * std::max(1.0, std::fabs(want));
}

// Token ids by value desc, ties by id.
std::vector<int32_t> ranked(const std::vector<double>& v) {
  std::vector<int32_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return v[size_t(a)] > v[size_t(b)]; });
  return order;
}

// The golden score requests: prompt, adapter, and HF's logits of every position.
struct Golden {
  std::string id;
  std::vector<int32_t> prompt;
  json adapter;
  std::vector<std::vector<double>> logits;
};
std::vector<Golden> goldens() {
  std::vector<Golden> out;
  for (const json& line : read_jsonl(test::golden_dir("gqa_multi_lora") / "requests.jsonl"))
    out.push_back({line["id"], line["input_ids"].get<std::vector<int32_t>>(), line["adapter"],
                   test::hf_logits("gqa_multi_lora", line["id"])});
  return out;
}

// The data lines of a server-sent-event stream, parsed ([DONE] left out).
std::vector<json> events(const std::string& body) {
  std::vector<json> out;
  std::istringstream in(body);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("data:", 0) != 0) continue;
    const std::string data = line.substr(line.size() > 5 && line[5] == ' ' ? 6 : 5);
    if (data == "[DONE]") continue;
    out.push_back(json::parse(data));
  }
  return out;
}

class ApiLogprobs : public test::ServerFixture {
 protected:
  std::string stream_body(const std::string& path, const json& body) {
    auto r = client().Post(path.c_str(), body.dump(), "application/json");
    EXPECT_TRUE(r);
    if (!r) return "";
    EXPECT_EQ(r->status, 200) << r->body;
    return r->body;
  }
};

// LoRAX decoder_input_details: the prompt's tokens with HF's logprobs, the
// first with none; OpenAI echo + logprobs: the same, and the top k.
TEST_F(ApiLogprobs, PromptLogprobsMatchHF) {
  for (const Golden& g : goldens()) {
    if (g.prompt.size() < 2) continue;
    json params = {{"max_new_tokens", 1}, {"decoder_input_details", true}};
    if (!g.adapter.is_null()) params["adapter_id"] = g.adapter;
    auto [s1, lx] = post("/generate", json({{"inputs", g.prompt}, {"parameters", params}}).dump());
    ASSERT_EQ(s1, 200) << lx.dump();
    const json& prefill = lx["details"]["prefill"];
    ASSERT_EQ(prefill.size(), g.prompt.size()) << g.id;
    EXPECT_TRUE(prefill[0]["logprob"].is_null()) << g.id << ": the first prompt token has none";
    json body = {{"prompt", g.prompt}, {"max_tokens", 1}, {"echo", true}, {"logprobs", 3},
                 {"temperature", 0}};
    if (!g.adapter.is_null()) body["model"] = g.adapter;
    auto [s2, oa] = post("/v1/completions", body.dump());
    ASSERT_EQ(s2, 200) << oa.dump();
    const json& lp = oa["choices"][0]["logprobs"];
    ASSERT_EQ(lp["token_logprobs"].size(), g.prompt.size() + 1) << g.id << ": prompt and 1 token";
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    EXPECT_TRUE(lp["top_logprobs"][0].is_null());
    for (size_t i = 1; i < g.prompt.size(); ++i) {
      const std::vector<double> want = test::log_softmax(g.logits[i - 1]);
      const double w = want[size_t(g.prompt[i])];
      EXPECT_EQ(prefill[i]["id"], g.prompt[i]);
      EXPECT_TRUE(close(prefill[i]["logprob"].get<double>(), w))
          << g.id << " prefill " << i << ": " << prefill[i]["logprob"] << " vs HF " << w;
      EXPECT_TRUE(close(lp["token_logprobs"][i].get<double>(), w))
          << g.id << " echo " << i << ": " << lp["token_logprobs"][i] << " vs HF " << w;
      // top_logprobs: the chosen token and the 3 most likely, by text.
      const json& top = lp["top_logprobs"][i];
      ASSERT_TRUE(top.is_object());
      EXPECT_LE(top.size(), 4u);
      const std::vector<int32_t> order = ranked(want);
      for (int k = 0; k < 3; ++k) {
        const double v = want[size_t(order[size_t(k)])];
        EXPECT_TRUE(std::any_of(top.begin(), top.end(),
                                [&](const json& x) { return close(x.get<double>(), v); }))
            << g.id << " echo " << i << ": HF's top " << k << " " << v << " in " << top.dump();
      }
    }
  }
}

// The first generated token of each golden prompt: greedy, its logprob and
// alternatives are HF's (processed = raw for a greedy request without
// processors); OpenAI's raw logprob stays HF's when logit_bias forces a token.
TEST_F(ApiLogprobs, GeneratedLogprobsMatchHF) {
  int checked = 0;
  for (const Golden& g : goldens()) {
    const std::vector<double>& x = g.logits.back();
    const std::vector<double> want = test::log_softmax(x);
    const std::vector<int32_t> order = ranked(x);
    if (x[size_t(order[0])] - x[size_t(order[1])] < 1e-3) continue;  // HF's own near tie
    json params = {{"max_new_tokens", 1}, {"details", true}, {"return_k_alternatives", 3},
                   {"top_n_tokens", 2}, {"ignore_eos_token", true}};
    if (!g.adapter.is_null()) params["adapter_id"] = g.adapter;
    auto [s1, lx] = post("/generate", json({{"inputs", g.prompt}, {"parameters", params}}).dump());
    ASSERT_EQ(s1, 200) << lx.dump();
    const json& t = lx["details"]["tokens"][0];
    EXPECT_EQ(t["id"], order[0]) << g.id;
    EXPECT_TRUE(close(t["logprob"].get<double>(), want[size_t(order[0])])) << g.id << " " << t;
    ASSERT_EQ(t["alternative_tokens"].size(), 3u) << t;
    ASSERT_EQ(lx["details"]["top_tokens"][0].size(), 2u) << lx["details"];
    for (size_t k = 0; k < 3; ++k)
      EXPECT_TRUE(close(t["alternative_tokens"][k]["logprob"].get<double>(), want[size_t(order[k])]))
          << g.id << " alternative " << k << ": " << t["alternative_tokens"][k];
    for (size_t k = 0; k < 2; ++k)
      EXPECT_TRUE(close(lx["details"]["top_tokens"][0][k]["logprob"].get<double>(),
                        want[size_t(order[k])]));
    EXPECT_TRUE(lx["details"]["seed"].is_null()) << "greedy: no seed";

    // OpenAI, raw: a bias of 100 makes token 7 the choice; its logprob is the model's own.
    json body = {{"prompt", g.prompt}, {"max_tokens", 1}, {"logprobs", 0}, {"temperature", 0},
                 {"logit_bias", {{"7", 100}}}, {"ignore_eos", true}};
    if (!g.adapter.is_null()) body["model"] = g.adapter;
    auto [s2, oa] = post("/v1/completions", body.dump());
    ASSERT_EQ(s2, 200) << oa.dump();
    const json& lp = oa["choices"][0]["logprobs"];
    ASSERT_EQ(lp["token_logprobs"].size(), 1u);
    EXPECT_TRUE(close(lp["token_logprobs"][0].get<double>(), want[7]))
        << g.id << ": " << lp["token_logprobs"][0] << " vs HF's raw " << want[7];
    EXPECT_EQ(oa["choices"][0]["text"], "d") << "token 7 of the tiny tokenizer";
    ++checked;
  }
  EXPECT_GE(checked, 5);
}

// LoRAX's logprobs are those of the distribution drawn from: temperature 0.8
// over the top 5 (-inf elsewhere), or after a repetition penalty of 1.4.
TEST_F(ApiLogprobs, LoraxReportsProcessedLogprobs) {
  int checked = 0;
  for (const Golden& g : goldens()) {
    const std::vector<double>& x = g.logits.back();
    const std::vector<int32_t> order = ranked(x);
    if (x[size_t(order[4])] - x[size_t(order[5])] < 1e-3) continue;
    std::vector<double> p(x.size(), -INFINITY);
    for (size_t i = 0; i < 5; ++i) p[size_t(order[i])] = x[size_t(order[i])] / 0.8;
    const std::vector<double> want = test::log_softmax(p);
    json params = {{"max_new_tokens", 1}, {"details", true}, {"temperature", 0.8},
                   {"top_k", 5},          {"seed", 7},       {"top_n_tokens", 5},
                   {"ignore_eos_token", true}};
    if (!g.adapter.is_null()) params["adapter_id"] = g.adapter;
    auto [s, j] = post("/generate", json({{"inputs", g.prompt}, {"parameters", params}}).dump());
    ASSERT_EQ(s, 200) << j.dump();
    const json& t = j["details"]["tokens"][0];
    const int32_t id = t["id"];
    ASSERT_TRUE(std::isfinite(want[size_t(id)])) << g.id << ": drawn outside the top 5";
    EXPECT_TRUE(close(t["logprob"].get<double>(), want[size_t(id)])) << g.id << " " << t;
    for (size_t k = 0; k < 5; ++k)
      EXPECT_TRUE(close(j["details"]["top_tokens"][0][k]["logprob"].get<double>(),
                        want[size_t(order[k])]))
          << g.id << " top " << k;
    EXPECT_EQ(j["details"]["seed"], 7);

    // Greedy with a repetition penalty over the prompt (HF's rule).
    std::vector<double> r = x;
    for (int32_t tok : std::set<int32_t>(g.prompt.begin(), g.prompt.end()))
      r[size_t(tok)] = r[size_t(tok)] > 0 ? r[size_t(tok)] / 1.4 : r[size_t(tok)] * 1.4;
    const std::vector<int32_t> ro = ranked(r);
    if (r[size_t(ro[0])] - r[size_t(ro[1])] >= 1e-3) {
      const std::vector<double> rw = test::log_softmax(r);
      json rp = {{"max_new_tokens", 1}, {"details", true}, {"repetition_penalty", 1.4},
                 {"ignore_eos_token", true}};
      if (!g.adapter.is_null()) rp["adapter_id"] = g.adapter;
      auto [s2, k] = post("/generate", json({{"inputs", g.prompt}, {"parameters", rp}}).dump());
      ASSERT_EQ(s2, 200) << k.dump();
      EXPECT_EQ(k["details"]["tokens"][0]["id"], ro[0]) << g.id;
      EXPECT_TRUE(close(k["details"]["tokens"][0]["logprob"].get<double>(), rw[size_t(ro[0])]))
          << g.id << " penalised: " << k["details"]["tokens"][0];
    }
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

TEST_F(ApiLogprobs, SeedsRepeatAndAreReported) {
  const json base = {{"inputs", "abc"},
                     {"parameters", {{"max_new_tokens", 12}, {"do_sample", true}, {"details", true}}}};
  json seeded = base;
  seeded["parameters"]["seed"] = 1234;
  auto [s1, a] = post("/generate", seeded.dump());
  auto [s2, b] = post("/generate", seeded.dump());
  ASSERT_EQ(s1, 200) << a.dump();
  ASSERT_EQ(s2, 200) << b.dump();
  EXPECT_EQ(a["generated_text"], b["generated_text"]);
  EXPECT_EQ(token_ids(a["details"]["tokens"]), token_ids(b["details"]["tokens"]));
  EXPECT_EQ(a["details"]["seed"], 1234);
  EXPECT_EQ(b["details"]["seed"], 1234);
  // A seed past int64 is LoRAX's too (u64).
  seeded["parameters"]["seed"] = 18446744073709551615ull;
  auto [s3, c] = post("/generate", seeded.dump());
  ASSERT_EQ(s3, 200) << c.dump();
  EXPECT_EQ(c["details"]["seed"].get<uint64_t>(), 18446744073709551615ull);
  // No seed: the engine draws one per request and reports it.
  auto [s4, d] = post("/generate", base.dump());
  auto [s5, e] = post("/generate", base.dump());
  ASSERT_EQ(s4, 200);
  ASSERT_EQ(s5, 200);
  ASSERT_TRUE(d["details"]["seed"].is_number_unsigned()) << d["details"];
  ASSERT_TRUE(e["details"]["seed"].is_number_unsigned()) << e["details"];
  EXPECT_NE(d["details"]["seed"], e["details"]["seed"]);
  // Replaying a drawn seed gives the same text.
  json replay = base;
  replay["parameters"]["seed"] = d["details"]["seed"];
  auto [s6, f] = post("/generate", replay.dump());
  ASSERT_EQ(s6, 200);
  EXPECT_EQ(f["generated_text"], d["generated_text"]);
  // OpenAI: the same seed, the same text.
  const std::string oa =
      R"({"prompt": "abc", "max_tokens": 12, "temperature": 1.0, "seed": -5, "ignore_eos": true})";
  auto [s7, g] = post("/v1/completions", oa);
  auto [s8, h] = post("/v1/completions", oa);
  ASSERT_EQ(s7, 200) << g.dump();
  ASSERT_EQ(s8, 200);
  EXPECT_EQ(g["choices"][0]["text"], h["choices"][0]["text"]);
}

// LoRAX's shapes: token objects, alternatives, prefill, top_tokens, stream
// details only when asked for; return_full_text.
TEST_F(ApiLogprobs, LoraxShapes) {
  const json params = {{"max_new_tokens", 6},           {"details", true},
                       {"decoder_input_details", true}, {"return_k_alternatives", 2},
                       {"ignore_eos_token", true}};
  auto [s, j] = post("/generate", json({{"inputs", "abc"}, {"parameters", params}}).dump());
  ASSERT_EQ(s, 200) << j.dump();
  const json& d = j["details"];
  for (const char* key : {"finish_reason", "prompt_tokens", "generated_tokens", "skipped_tokens",
                          "seed", "prefill", "tokens"})
    EXPECT_TRUE(d.contains(key)) << key << " in " << d.dump();
  EXPECT_FALSE(d.contains("best_of_sequences"));
  EXPECT_FALSE(d.contains("top_tokens")) << "only with top_n_tokens";
  EXPECT_EQ(d["finish_reason"], "length");
  EXPECT_EQ(d["prefill"].size(), d["prompt_tokens"].get<size_t>());
  std::string text;
  for (const json& t : d["tokens"]) {
    for (const char* key : {"id", "text", "logprob", "special", "alternative_tokens", "skipped"})
      EXPECT_TRUE(t.contains(key)) << key << " in " << t.dump();
    EXPECT_EQ(t["alternative_tokens"].size(), 2u);
    for (const json& a : t["alternative_tokens"])
      EXPECT_TRUE(a.contains("id") && a.contains("text") && a.contains("logprob")) << a;
    EXPECT_EQ(t["skipped"], false);
    text += t["text"].get<std::string>();
  }
  EXPECT_EQ(text, j["generated_text"]);
  for (const json& p : d["prefill"]) EXPECT_EQ(p.size(), 3u) << "{id, text, logprob}: " << p;

  // return_full_text: the inputs, then the text.
  json full = {{"inputs", "abc"}, {"parameters", {{"max_new_tokens", 6}, {"ignore_eos_token", true},
                                                  {"return_full_text", true}}}};
  auto [s2, f] = post("/generate", full.dump());
  ASSERT_EQ(s2, 200);
  EXPECT_EQ(f["generated_text"], "abc" + j["generated_text"].get<std::string>());
  EXPECT_FALSE(f.contains("details"));

  // A stream without details: null details on the last event, and no top_tokens key.
  const std::string body = stream_body(
      "/generate_stream",
      {{"inputs", "abc"}, {"parameters", {{"max_new_tokens", 3}, {"ignore_eos_token", true}}}});
  const auto evs = events(body);
  ASSERT_EQ(evs.size(), 3u) << body;
  for (const json& e : evs) {
    EXPECT_TRUE(e["details"].is_null()) << e;
    EXPECT_FALSE(e.contains("top_tokens"));
    EXPECT_TRUE(e["token"]["logprob"].is_number()) << e;
  }
}

// Streamed tokens, their logprobs and alternatives equal the non-streamed
// answer's, on both APIs (a seeded sampled request).
TEST_F(ApiLogprobs, StreamsAddUpToTheAnswer) {
  const json params = {{"max_new_tokens", 10}, {"details", true},          {"do_sample", true},
                       {"seed", 99},           {"return_k_alternatives", 2}, {"top_n_tokens", 2},
                       {"ignore_eos_token", true}};
  const json req = {{"inputs", "hello"}, {"parameters", params}};
  auto [s, whole] = post("/generate", req.dump());
  ASSERT_EQ(s, 200) << whole.dump();
  const auto evs = events(stream_body("/generate_stream", req));
  ASSERT_EQ(evs.size(), whole["details"]["tokens"].size());
  std::string text;
  for (size_t i = 0; i < evs.size(); ++i) {
    EXPECT_EQ(evs[i]["token"], whole["details"]["tokens"][i]) << i;
    EXPECT_EQ(evs[i]["top_tokens"], whole["details"]["top_tokens"][i]) << i;
    text += evs[i]["token"]["text"].get<std::string>();
  }
  EXPECT_EQ(text, whole["generated_text"]);
  EXPECT_EQ(evs.back()["generated_text"], whole["generated_text"]);
  EXPECT_EQ(evs.back()["details"]["seed"], 99);

  // Completions with echo and logprobs.
  const json c = {{"prompt", "hello"}, {"max_tokens", 8},  {"temperature", 0.9}, {"seed", 3},
                  {"logprobs", 2},     {"echo", true},     {"ignore_eos", true}};
  auto [s2, cw] = post("/v1/completions", c.dump());
  ASSERT_EQ(s2, 200) << cw.dump();
  json cs = c;
  cs["stream"] = true;
  std::string ctext;
  json tokens = json::array(), token_logprobs = json::array(), offsets = json::array();
  for (const json& e : events(stream_body("/v1/completions", cs))) {
    ctext += e["choices"][0]["text"].get<std::string>();
    for (const char* key : {"tokens", "token_logprobs", "text_offset"})
      ASSERT_TRUE(e["choices"][0]["logprobs"].contains(key)) << e;
    for (const json& t : e["choices"][0]["logprobs"]["tokens"]) tokens.push_back(t);
    for (const json& t : e["choices"][0]["logprobs"]["token_logprobs"]) token_logprobs.push_back(t);
    for (const json& t : e["choices"][0]["logprobs"]["text_offset"]) offsets.push_back(t);
  }
  const json& lp = cw["choices"][0]["logprobs"];
  EXPECT_EQ(ctext, cw["choices"][0]["text"]);
  EXPECT_EQ(ctext.rfind("hello", 0), 0u) << "echo: the prompt comes first";
  EXPECT_EQ(tokens, lp["tokens"]);
  EXPECT_EQ(token_logprobs, lp["token_logprobs"]);
  EXPECT_EQ(offsets, lp["text_offset"]);

  // Chat with logprobs and top_logprobs.
  const json ch = {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                   {"max_tokens", 8},
                   {"logprobs", true},
                   {"top_logprobs", 3},
                   {"temperature", 0},
                   {"ignore_eos", true}};
  auto [s3, hw] = post("/v1/chat/completions", ch.dump());
  ASSERT_EQ(s3, 200) << hw.dump();
  const json& content = hw["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 8u) << hw.dump();
  for (const json& e : content) {
    for (const char* key : {"token", "logprob", "bytes", "top_logprobs"})
      EXPECT_TRUE(e.contains(key)) << key << " in " << e;
    EXPECT_EQ(e["top_logprobs"].size(), 3u);
    std::string bytes;
    for (const json& b : e["bytes"]) bytes += char(b.get<int>());
    EXPECT_EQ(bytes, e["token"]);
    EXPECT_EQ(e["logprob"], e["top_logprobs"][0]["logprob"]) << "greedy: the top token";
  }
  json hs = ch;
  hs["stream"] = true;
  std::string htext;
  json hcontent = json::array();
  for (const json& e : events(stream_body("/v1/chat/completions", hs))) {
    htext += e["choices"][0]["delta"].value("content", "");
    for (const json& x : e["choices"][0]["logprobs"]["content"]) hcontent.push_back(x);
  }
  EXPECT_EQ(htext, hw["choices"][0]["message"]["content"]);
  EXPECT_EQ(hcontent, content);
}

// vLLM's stopping extras and OpenAI's logit_bias, each by what it must do.
TEST_F(ApiLogprobs, StopTokenIdsMinTokensAndIncludeStopString) {
  // Token 7 ("d") forced by logit_bias: a stop token id ends the completion at once.
  auto [s1, a] = post("/v1/completions",
                      R"({"prompt": "abc", "max_tokens": 5, "temperature": 0, "logit_bias": {"7": 100}, "stop_token_ids": [7]})");
  ASSERT_EQ(s1, 200) << a.dump();
  EXPECT_EQ(a["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(a["usage"]["completion_tokens"], 1);
  EXPECT_EQ(a["choices"][0]["text"], "") << "a stop token's text is left out";
  // min_tokens bans it for the first 3 tokens: the 4th stops.
  auto [s2, b] = post("/v1/completions",
                      R"({"prompt": "abc", "max_tokens": 8, "temperature": 0, "logit_bias": {"7": 100}, "stop_token_ids": [7], "min_tokens": 3})");
  ASSERT_EQ(s2, 200) << b.dump();
  EXPECT_EQ(b["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(b["usage"]["completion_tokens"], 4);
  EXPECT_EQ(b["choices"][0]["text"].get<std::string>().find('d'), std::string::npos);
  // include_stop_str_in_output keeps the stop string.
  auto [s3, full] = post("/v1/completions",
                         R"({"prompt": "abc", "max_tokens": 12, "temperature": 0, "ignore_eos": true})");
  ASSERT_EQ(s3, 200);
  const std::string text = full["choices"][0]["text"];
  ASSERT_GE(text.size(), 6u) << text;
  const std::string stop = text.substr(3, 2);
  const size_t at = text.find(stop);
  json body = {{"prompt", "abc"}, {"max_tokens", 12}, {"temperature", 0}, {"ignore_eos", true},
               {"stop", stop},    {"include_stop_str_in_output", true}};
  auto [s4, c] = post("/v1/completions", body.dump());
  ASSERT_EQ(s4, 200) << c.dump();
  EXPECT_EQ(c["choices"][0]["text"], text.substr(0, at + stop.size()));
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
}

}  // namespace
}  // namespace philora
