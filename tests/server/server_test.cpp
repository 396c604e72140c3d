// The HTTP server end to end, in process, on a free loopback port: LoRAX and
// OpenAI routes over the engine, several adapters in flight at once, streaming,
// and a JSON error with the right status for every kind of bad input.
#include "server/server_fixture.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace philora {
namespace {

using test::read_jsonl;
using test::token_ids;
const fs::path kCase = test::kGoldenCase;
using ServerTest = test::ServerFixture;

TEST_F(ServerTest, HealthInfoAndUnknownRoute) {
  auto r = client().Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = client().Get("/info");
  ASSERT_TRUE(r);
  EXPECT_EQ(json::parse(r->body)["model_id"], "tiny");
  r = client().Get("/nope");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_TRUE(json::parse(r->body, nullptr, false).contains("error"));
}

// Every golden generate request at once, each with its own adapter (or none),
// through LoRAX /generate: the server must return HF's greedy tokens.
TEST_F(ServerTest, ConcurrentMixedAdaptersMatchHF) {
  const auto reqs = read_jsonl(kCase / "generate_requests.jsonl");
  const auto refs = read_jsonl(kCase / "generate_ref.jsonl");
  std::vector<std::future<std::pair<int, json>>> futures;
  for (const auto& q : reqs) {
    json params = {
        {"max_new_tokens", q["max_new_tokens"]}, {"details", true}, {"ignore_eos_token", true}};
    if (!q["adapter"].is_null()) params["adapter_id"] = q["adapter"];
    const json body = {{"inputs", q["input_ids"]}, {"parameters", params}};
    futures.push_back(
        std::async(std::launch::async, [this, body] { return post("/generate", body.dump()); }));
  }
  for (size_t i = 0; i < futures.size(); ++i) {
    auto [status, j] = futures[i].get();
    ASSERT_EQ(status, 200) << j.dump();
    EXPECT_EQ(token_ids(j["details"]["tokens"]), refs[i]["tokens"]) << refs[i]["id"];
    EXPECT_EQ(j["details"]["finish_reason"], "length");
  }
  EXPECT_GE(store_->uploads_to_device(), 3) << "three adapters through two slots";
  // Every request took more than one step, so the first (prompt, op by op)
  // step's counts are in /metrics by now.
  auto m = client().Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  for (const char* name : {"philora_steps_total", "philora_graph_steps_total",
                           "philora_graphs_recorded_total", "vllm:generation_tokens_total"})
    EXPECT_GE(test::metric_value(m->body, name), 0) << name << "\n" << m->body;
  EXPECT_GE(test::metric_value(m->body, "philora_eager_steps_total"), 1) << m->body;
}

// The same request twice, one after the other: the second reuses the first's
// prompt pages, still gives HF's tokens, and /metrics counts the hit.
TEST_F(ServerTest, PrefixCacheHitsShowInMetrics) {
  const auto q = read_jsonl(kCase / "generate_requests.jsonl")[3];  // 20 tokens, adapter c
  const auto ref = read_jsonl(kCase / "generate_ref.jsonl")[3];
  json params = {
      {"max_new_tokens", q["max_new_tokens"]}, {"details", true}, {"ignore_eos_token", true}};
  if (!q["adapter"].is_null()) params["adapter_id"] = q["adapter"];
  const std::string body = json({{"inputs", q["input_ids"]}, {"parameters", params}}).dump();
  for (int i = 0; i < 2; ++i) {
    auto [status, j] = post("/generate", body);
    ASSERT_EQ(status, 200) << j.dump();
    EXPECT_EQ(token_ids(j["details"]["tokens"]), ref["tokens"]) << "request " << i;
  }
  auto m = client().Get("/metrics");
  ASSERT_TRUE(m);
  auto sample = [&](const std::string& name) {
    return int64_t(test::metric_value(m->body, name));
  };
  const int64_t len = int64_t(q["input_ids"].size());
  EXPECT_EQ(sample("vllm:prefix_cache_queries_total"), 2 * len) << m->body;
  EXPECT_EQ(sample("vllm:prefix_cache_hits_total"), (len - 1) / 4 * 4)
      << "the second request finds every whole page but the one with its last token\n"
      << m->body;
}

TEST_F(ServerTest, StreamCarriesTheSameTokens) {
  const auto q = read_jsonl(kCase / "generate_requests.jsonl")[0];
  const auto ref = read_jsonl(kCase / "generate_ref.jsonl")[0];
  json params = {{"max_new_tokens", q["max_new_tokens"]}, {"ignore_eos_token", true}};
  if (!q["adapter"].is_null()) params["adapter_id"] = q["adapter"];
  auto r = client().Post("/generate_stream",
                         json({{"inputs", q["input_ids"]}, {"parameters", params}}).dump(),
                         "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  std::vector<int> tokens;
  std::string text, final_text;
  std::istringstream in(r->body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("data:", 0) != 0) continue;
    const json ev = json::parse(line.substr(5));
    tokens.push_back(ev["token"]["id"].get<int>());
    text += ev["token"]["text"].get<std::string>();
    if (!ev["generated_text"].is_null()) final_text = ev["generated_text"];
  }
  EXPECT_EQ(json(tokens), ref["tokens"]);
  EXPECT_EQ(text, final_text) << "deltas add up to the whole text";
}

TEST_F(ServerTest, TextPromptsAndOpenAIRoutes) {
  auto [s1, j1] =
      post("/generate",
           R"({"inputs": "hello world", "parameters": {"max_new_tokens": 5, "details": true}})");
  ASSERT_EQ(s1, 200) << j1.dump();
  EXPECT_EQ(j1["details"]["prompt_tokens"], tokenizer_->encode("hello world", true).size());
  EXPECT_EQ(j1["details"]["generated_tokens"], 5);
  EXPECT_EQ(j1["generated_text"],
            tokenizer_->decode(token_ids(j1["details"]["tokens"]).get<std::vector<int32_t>>(), true));

  auto [s2, j2] = post("/v1/completions",
                       R"({"model": "b", "prompt": "abc", "max_tokens": 4, "temperature": 0})");
  ASSERT_EQ(s2, 200) << j2.dump();
  EXPECT_EQ(j2["object"], "text_completion");
  EXPECT_EQ(j2["usage"]["completion_tokens"], 4);
  EXPECT_EQ(j2["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(j2["choices"][0]["text"].get<std::string>().empty());

  auto [s3, j3] = post(
      "/v1/chat/completions",
      R"({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})");
  ASSERT_EQ(s3, 200) << j3.dump();
  EXPECT_EQ(j3["object"], "chat.completion");
  EXPECT_EQ(j3["choices"][0]["message"]["role"], "assistant");

  auto r =
      client().Post("/v1/completions", R"({"prompt": [5, 6, 7], "max_tokens": 3, "stream": true})",
                    "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->body.find("data: [DONE]"), std::string::npos);
}

TEST_F(ServerTest, BadInputGetsJsonErrors) {
  struct Case {
    const char* path;
    const char* body;
    int status;
    const char* needle;
  };
  const Case cases[] = {
      {"/generate", "{not json", 400, "not valid JSON"},
      {"/generate", R"({"parameters": {}})", 422, "inputs"},
      {"/generate", R"({"inputs": "hi", "parameters": {"temperature": -1}})", 422, "temperature"},
      {"/generate", R"({"inputs": "hi", "parameters": {"top_p": 1.5}})", 422, "top_p"},
      {"/generate", R"({"inputs": "hi", "parameters": {"max_new_tokens": "many"}})", 422,
       "integer"},
      {"/generate", R"({"inputs": "hi", "parameters": {"max_new_tokens": 100000}})", 422,
       "max_new_tokens"},
      {"/generate", R"({"inputs": "", "parameters": {}})", 422, "empty"},
      {"/generate", R"({"inputs": [1, 99999], "parameters": {}})", 422, "vocabulary"},
      {"/generate", R"({"inputs": "hi", "parameters": {"adapter_id": "no_such_adapter"}})", 404,
       "no_such_adapter"},
      {"/generate", R"({"inputs": "hi", "parameters": {"adapter_id": "../a"}})", 404, "not valid"},
      {"/v1/completions", R"({"prompt": "hi", "n": 0})", 400, "'n'"},
      {"/v1/completions", R"({"max_tokens": 3})", 400, "prompt"},
      {"/v1/chat/completions", R"({"messages": []})", 400, "messages"},
  };
  for (const Case& c : cases) {
    auto [status, j] = post(c.path, c.body);
    EXPECT_EQ(status, c.status) << c.path << " " << c.body << " -> " << j.dump();
    EXPECT_NE(j.dump().find(c.needle), std::string::npos) << c.body << " -> " << j.dump();
  }
  auto [status, j] = post("/generate", R"({"inputs": "hi", "parameters": {"max_new_tokens": 2}})");
  EXPECT_EQ(status, 200) << "the server still serves after bad requests: " << j.dump();
}

}  // namespace
}  // namespace philora

namespace philora {
namespace {

TEST_F(ServerTest, StopSequenceCutsTheText) {
  auto [s1, j1] = post(
      "/generate", R"({"inputs": "abc", "parameters": {"max_new_tokens": 12, "details": true}})");
  ASSERT_EQ(s1, 200) << j1.dump();
  const std::string full = j1["generated_text"];
  ASSERT_GE(full.size(), 6u) << "need some text to cut: " << full;
  const std::string stop = full.substr(3, 2);
  const size_t at = full.find(stop);
  json body = {{"inputs", "abc"},
               {"parameters", {{"max_new_tokens", 12}, {"details", true}, {"stop", {stop}}}}};
  auto [s2, j2] = post("/generate", body.dump());
  ASSERT_EQ(s2, 200) << j2.dump();
  EXPECT_EQ(j2["generated_text"], full.substr(0, at))
      << "stop '" << stop << "' in '" << full << "'";
  EXPECT_EQ(j2["details"]["finish_reason"], "stop_sequence");
}

}  // namespace
}  // namespace philora

namespace philora {
namespace {

// A client that goes away mid-stream must not leave its request running.
TEST_F(ServerTest, DisconnectAbortsTheRequest) {
  httplib::Client c = client();
  int chunks = 0;
  httplib::Request req;
  req.method = "POST";
  req.path = "/generate_stream";
  req.body =
      R"({"inputs": [1, 2, 3], "parameters": {"max_new_tokens": 1000, "ignore_eos_token": true}})";
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  EXPECT_FALSE(c.send(req, res, err)) << "the client hung up after two chunks";
  int64_t running = -1;
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    running = host_->stats().running + host_->stats().waiting;
    if (running == 0) break;
  }
  EXPECT_EQ(running, 0) << "the engine dropped the request";
  EXPECT_LT(host_->stats().engine.generated_tokens, 1000) << "it stopped before its 1000 tokens";
}

}  // namespace
}  // namespace philora
