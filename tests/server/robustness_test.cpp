// The server against bad input and hostile clients, on both APIs: a table of
// bad requests (each with its status and the words its message must hold),
// the body and connection limits, the API key, the waiting-queue limit,
// loading and draining, clients that leave mid-stream or read or send
// slowly; after each, the server still answers /health and a normal request.
// Also what it reports: X-Request-Id, the access log, /metrics.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "server/server_fixture.h"

using nlohmann::json;

namespace philora {
namespace {

using test::metric_value;
using test::read_jsonl;
using test::token_ids;

// A server stopped right after it started (a refused `serve`, a test's
// teardown) returns: httplib closes its socket only once its listen loop runs,
// and a stop that came before the loop once left the listener thread in
// accept() for good (seen about once in 50 starts). Many start/stop pairs, each
// as fast as it can go: with the race open this hangs (ctest's timeout fails it).
TEST(HttpServerLifecycle, StopRightAfterStartReturns) {
  for (int i = 0; i < 300; ++i) {
    server::HttpServer s;
    const auto port = s.start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status().message();
    s.stop();
  }
}

// The server is still well: /health, then a normal request on each API.
void expect_still_serves(test::ServerFixture& f, httplib::Client c) {
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200) << h->body;
  auto g = c.Post("/generate", R"({"inputs": "hi", "parameters": {"max_new_tokens": 2}})",
                  "application/json");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 200) << g->body;
  auto o = c.Post("/v1/completions", R"({"prompt": "hi", "max_tokens": 2})", "application/json");
  ASSERT_TRUE(o);
  EXPECT_EQ(o->status, 200) << o->body;
}

std::string ids(int n) {
  json a = json::array();
  for (int i = 0; i < n; ++i) a.push_back(4 + i % 60);
  return a.dump();
}

class Robustness : public test::ServerFixture {
 protected:
  void configure(server::HttpOptions& http, server::EngineHostOptions&,
                 server::ServerContext& ctx) override {
    http.access_log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(log_mu_);
      log_.push_back(line);
    };
    http.max_body_bytes = 64 << 10;
    // Structured output, as philora serve sets it up (its bad-input rows below).
    ctx.constraints = std::make_shared<structured::ConstraintCache>(
        structured::TokenVocabulary::from_tokenizer(*ctx.tokenizer));
  }
  std::vector<json> log() {
    std::lock_guard<std::mutex> lock(log_mu_);
    std::vector<json> out;
    for (const auto& l : log_) out.push_back(json::parse(l));
    return out;
  }
  std::mutex log_mu_;
  std::vector<std::string> log_;
};

TEST_F(Robustness, BadRequestsGetTheirStatusAndAMessageThatNamesTheProblem) {
  const int64_t context = engine_->max_sequence_tokens();
  struct Case {
    std::string path, body;
    int status;
    std::vector<std::string> needles;  // in the error message (or its param / code)
  };
  const std::string g = "/generate", gs = "/generate_stream", c = "/v1/completions",
                    ch = "/v1/chat/completions";
  const std::vector<Case> cases = {
      // malformed JSON, not an object, invalid UTF-8
      {g, "{not json", 400, {"not valid JSON"}},
      {c, R"({"prompt": "hi",)", 400, {"not valid JSON"}},
      {ch, "", 400, {"not valid JSON"}},
      {g, "[1, 2]", 400, {"JSON object"}},
      {c, "\"hi\"", 400, {"JSON object"}},
      {g, "{\"inputs\": \"\xff\xfe\"}", 400, {"UTF-8"}},
      {ch, "{\"messages\": [{\"role\": \"user\", \"content\": \"\xc3\x28\"}]}", 400, {"UTF-8"}},
      // missing fields
      {g, R"({"parameters": {}})", 422, {"inputs"}},
      {gs, R"({})", 422, {"inputs"}},
      {c, R"({"max_tokens": 3})", 400, {"prompt"}},
      {ch, R"({"model": "tiny"})", 400, {"messages"}},
      // wrong types
      {g, R"({"inputs": 5})", 422, {"inputs"}},
      {g, R"({"inputs": "hi", "parameters": "x"})", 422, {"parameters"}},
      {g, R"({"inputs": "hi", "parameters": {"max_new_tokens": "many"}})", 422,
       {"max_new_tokens", "integer"}},
      {g, R"({"inputs": "hi", "parameters": {"max_new_tokens": 2.5}})", 422, {"integer"}},
      {g, R"({"inputs": "hi", "parameters": {"temperature": "hot"}})", 422, {"temperature"}},
      {g, R"({"inputs": "hi", "parameters": {"stop": 5}})", 422, {"stop"}},
      {g, R"({"inputs": "hi", "parameters": {"stop": ["a", 1]}})", 422, {"stop"}},
      {g, R"({"inputs": "hi", "parameters": {"details": "yes"}})", 422, {"details", "boolean"}},
      {g, R"({"inputs": "hi", "parameters": {"adapter_id": 7}})", 422, {"adapter_id"}},
      {g, R"({"inputs": [1, "a"]})", 422, {"integers"}},
      {c, R"({"prompt": "hi", "model": 5})", 400, {"model", "string"}},
      {c, R"({"prompt": "hi", "max_tokens": 1.5})", 400, {"max_tokens", "integer"}},
      {c, R"({"prompt": "hi", "stream": "yes"})", 400, {"stream"}},
      {c, R"({"prompt": {"a": 1}})", 400, {"prompt"}},
      {ch, R"({"messages": "hi"})", 400, {"messages"}},
      {ch, R"({"messages": [{"role": 1, "content": "x"}]})", 400, {"role"}},
      {ch, R"({"messages": [{"role": "user", "content": 5}]})", 400, {"content"}},
      {ch, R"({"messages": [{"role": "wizard", "content": "x"}]})", 400, {"wizard"}},
      {ch, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 400,
       {"text parts"}},
      // out of range
      {g, R"({"inputs": "hi", "parameters": {"temperature": -1}})", 422, {"temperature"}},
      {g, R"({"inputs": "hi", "parameters": {"top_p": 1.5}})", 422, {"top_p"}},
      {g, R"({"inputs": "hi", "parameters": {"top_k": 0}})", 422, {"top_k"}},
      {g, R"({"inputs": "hi", "parameters": {"max_new_tokens": 0}})", 422, {"max_new_tokens"}},
      {g, R"({"inputs": "hi", "parameters": {"max_new_tokens": -3}})", 422, {"max_new_tokens"}},
      {g, R"({"inputs": "hi", "parameters": {"max_new_tokens": 18446744073709551615}})", 422,
       {"max_new_tokens"}},
      {g, R"({"inputs": "hi", "parameters": {"truncate": 0}})", 422, {"truncate"}},
      {g, R"({"inputs": [1, 99999]})", 422, {"vocabulary"}},
      {g, R"({"inputs": [1, -5]})", 422, {"vocabulary"}},
      {g, R"({"inputs": [1, 4294967297]})", 422, {"vocabulary"}},
      {g, R"({"inputs": ""})", 422, {"empty"}},
      {c, R"({"prompt": "hi", "temperature": 3})", 400, {"temperature"}},
      {c, R"({"prompt": "hi", "top_p": 0})", 400, {"top_p"}},
      {c, R"({"prompt": "hi", "max_tokens": 0})", 400, {"max_tokens"}},
      {c, R"({"prompt": "hi", "n": 0})", 400, {"'n'", "between"}},
      {c, R"({"prompt": "hi", "n": 100000})", 400, {"'n'", "between"}},
      {c, R"({"prompt": "hi", "n": 2, "best_of": 1})", 400, {"best_of", "'n'"}},
      {c, R"({"prompt": "hi", "n": 1, "best_of": 17})", 400, {"best_of"}},
      {c, R"({"prompt": "hi", "best_of": 2, "temperature": 0})", 400, {"best_of", "sampling"}},
      {c, R"({"prompt": "hi", "best_of": 2, "stream": true})", 400, {"best_of", "streaming"}},
      {c, R"({"prompt": ["a", "b"]})", 400, {"several prompts"}},
      // unknown adapter or model; adapter ids that try to leave the adapter directory
      {g, R"({"inputs": "hi", "parameters": {"adapter_id": "no_such_adapter"}})", 404,
       {"no_such_adapter"}},
      {c, R"({"prompt": "hi", "model": "gpt-4"})", 404, {"gpt-4", "model_not_found"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "model": "nope"})", 404,
       {"model_not_found"}},
      {g, R"({"inputs": "hi", "parameters": {"adapter_id": "../a"}})", 404, {"not valid"}},
      {g, R"({"inputs": "hi", "parameters": {"adapter_id": ".."}})", 404, {"not valid"}},
      {g, R"({"inputs": "hi", "parameters": {"adapter_id": "a/../../b"}})", 404, {"not valid"}},
      {g, R"({"inputs": "hi", "parameters": {"adapter_id": "/etc/passwd"}})", 404, {"not valid"}},
      {g, R"({"inputs": "hi", "parameters": {"adapter_id": "..\\a"}})", 404, {"not valid"}},
      {c, R"({"prompt": "hi", "model": "../../a"})", 404, {"model_not_found"}},
      // parameters we do not act on: refused by name, never ignored
      // LoRAX parameters out of range, or not supported
      {g, R"({"inputs": "hi", "parameters": {"typical_p": 0}})", 422, {"typical_p"}},
      {g, R"({"inputs": "hi", "parameters": {"typical_p": 1.5}})", 422, {"typical_p"}},
      {g, R"({"inputs": "hi", "parameters": {"repetition_penalty": 0}})", 422,
       {"repetition_penalty"}},
      {g, R"({"inputs": "hi", "parameters": {"frequency_penalty": 3}})", 422,
       {"frequency_penalty", "[-2, 2]"}},
      {g, R"({"inputs": "hi", "parameters": {"presence_penalty": -2.5}})", 422,
       {"presence_penalty"}},
      {g, R"({"inputs": "hi", "parameters": {"best_of": 2}})", 422, {"best_of", "sampling"}},
      {g, R"({"inputs": "hi", "parameters": {"best_of": 17, "do_sample": true}})", 422,
       {"best_of", "[1, 16]"}},
      {gs, R"({"inputs": "hi", "parameters": {"best_of": 2, "do_sample": true}})", 422,
       {"best_of", "streaming"}},
      {g, R"({"inputs": "hi", "parameters": {"best_of": 0}})", 422, {"best_of"}},
      {g, R"({"inputs": "hi", "parameters": {"watermark": true}})", 422, {"watermark"}},
      {g, R"({"inputs": "hi", "parameters": {"return_full_text": "yes"}})", 422,
       {"return_full_text", "boolean"}},
      {g, R"({"inputs": "hi", "parameters": {"decoder_input_details": 1}})", 422,
       {"decoder_input_details"}},
      {gs, R"({"inputs": "hi", "parameters": {"decoder_input_details": true}})", 422,
       {"decoder_input_details", "streaming"}},
      {g, R"({"inputs": "hi", "parameters": {"return_k_alternatives": 0}})", 422,
       {"return_k_alternatives"}},
      {g, R"({"inputs": "hi", "parameters": {"return_k_alternatives": 21}})", 422,
       {"return_k_alternatives", "20"}},
      {g, R"({"inputs": "hi", "parameters": {"top_n_tokens": -1}})", 422, {"top_n_tokens"}},
      {g, R"({"inputs": "hi", "parameters": {"top_n_tokens": 50}})", 422, {"top_n_tokens"}},
      {g, R"({"inputs": "hi", "parameters": {"seed": -1}})", 422, {"seed"}},
      {g, R"({"inputs": "hi", "parameters": {"seed": 1.5}})", 422, {"seed"}},
      {g, R"({"inputs": "hi", "parameters": {"seed": "x"}})", 422, {"seed"}},
      {g, R"({"inputs": "hi", "parameters": {"truncate": 100000000}})", 422, {"truncate"}},
      {g, R"({"inputs": "hi", "parameters": {"adapter_source": "hub"}})", 422,
       {"adapter_source", "hub"}},
      {g, R"({"inputs": "hi", "parameters": {"adapter_source": "s3", "adapter_id": "a"}})", 422,
       {"adapter_source"}},
      {g, R"({"inputs": "hi", "parameters": {"merged_adapters": {"ids": ["a", "b"], "weights": [0.5, 0.5]}}})",
       422, {"merged_adapters", "merge"}},
      {g, R"({"inputs": "hi", "parameters": {"merged_adapters": {"ids": []}}})", 422,
       {"merged_adapters"}},
      {g, R"({"inputs": "hi", "parameters": {"merged_adapters": {"ids": ["a"], "weights": [0.5]}}})",
       422, {"merged_adapters", "weight"}},
      {g, R"({"inputs": "hi", "parameters": {"merged_adapters": {"ids": ["a"]}, "adapter_id": "b"}})",
       422, {"adapter_id", "merged_adapters"}},
      {g, R"({"inputs": "hi", "parameters": {"adapter_parameters": {"ids": ["a", "b"]}}})", 422,
       {"adapter_parameters"}},
      // structured output: shapes, and constraints that do not compile (never a 500)
      {g, R"({"inputs": "hi", "parameters": {"response_format": {"type": "xml"}}})", 422,
       {"response_format.type", "xml"}},
      {g, R"({"inputs": "hi", "parameters": {"response_format": "json"}})", 422,
       {"response_format", "object"}},
      {g, R"({"inputs": "hi", "parameters": {"response_format": {"schema": {}}}})", 422,
       {"response_format", "type"}},
      {g, R"({"inputs": "hi", "parameters": {"response_format": {"type": "json_object", "schema": {"type": "integer", "multipleOf": 3}}}})",
       422, {"response_format.schema", "multipleOf"}},
      {g, R"({"inputs": "hi", "parameters": {"response_format": {"type": "json_schema", "schema": {"$ref": "http://x/y.json"}}}})",
       422, {"response_format.schema", "JSON schema"}},
      {g, R"({"inputs": "hi", "parameters": {"response_format": {"type": "json_object", "schema": 5}}})",
       422, {"response_format.schema"}},
      {g, R"({"inputs": "hi", "parameters": {"response_format": {"type": "json_object", "bogus": 1}}})",
       422, {"response_format.bogus"}},
      {g, R"({"inputs": "hi", "parameters": {"bogus": 1}})", 422, {"unknown parameter 'bogus'"}},
      {g, R"({"inputs": "hi", "extra": 1})", 422, {"extra"}},
      {g, R"({"inputs": "hi", "stream": true})", 422, {"stream"}},
      // OpenAI parameters out of range, or not supported
      {c, R"({"prompt": "hi", "logprobs": 21})", 400, {"logprobs", "[0, 20]"}},
      {c, R"({"prompt": "hi", "logprobs": -1})", 400, {"logprobs"}},
      {c, R"({"prompt": "hi", "logprobs": true})", 400, {"logprobs", "integer"}},
      {c, R"({"prompt": "hi", "echo": "yes"})", 400, {"echo", "boolean"}},
      {c, R"({"prompt": "hi", "suffix": "x"})", 400, {"suffix"}},
      {c, R"({"prompt": "hi", "presence_penalty": 3})", 400, {"presence_penalty"}},
      {c, R"({"prompt": "hi", "frequency_penalty": -2.5})", 400, {"frequency_penalty"}},
      {c, R"({"prompt": "hi", "repetition_penalty": 0})", 400, {"repetition_penalty"}},
      {c, R"({"prompt": "hi", "repetition_penalty": 2.5})", 400, {"repetition_penalty"}},
      {c, R"({"prompt": "hi", "min_p": 1.5})", 400, {"min_p"}},
      {c, R"({"prompt": "hi", "top_k": -2})", 400, {"top_k"}},
      {c, R"({"prompt": "hi", "logit_bias": {"5": 101}})", 400, {"logit_bias", "[-100, 100]"}},
      {c, R"({"prompt": "hi", "logit_bias": {"5": "x"}})", 400, {"logit_bias"}},
      {c, R"({"prompt": "hi", "logit_bias": {"abc": 1}})", 400, {"logit_bias", "abc"}},
      {c, R"({"prompt": "hi", "logit_bias": {"99999": 1}})", 400, {"logit_bias", "vocabulary"}},
      {c, R"({"prompt": "hi", "logit_bias": {"-1": 1}})", 400, {"logit_bias", "vocabulary"}},
      {c, R"({"prompt": "hi", "logit_bias": [1]})", 400, {"logit_bias"}},
      {c, R"({"prompt": "hi", "max_tokens": 2, "min_tokens": 5})", 400, {"min_tokens"}},
      {c, R"({"prompt": "hi", "min_tokens": -1})", 400, {"min_tokens"}},
      {c, R"({"prompt": "hi", "stop_token_ids": [99999]})", 400, {"stop_token_ids", "vocabulary"}},
      {c, R"({"prompt": "hi", "stop_token_ids": "x"})", 400, {"stop_token_ids"}},
      {c, R"({"prompt": "hi", "bad_words": "x"})", 400, {"bad_words"}},
      {c, R"({"prompt": "hi", "bad_words": [1]})", 400, {"bad_words"}},
      {c, R"({"prompt": "hi", "skip_special_tokens": "no"})", 400, {"skip_special_tokens"}},
      {c, R"({"prompt": "hi", "seed": "x"})", 400, {"seed"}},
      {c, R"({"prompt": "hi", "seed": 1.5})", 400, {"seed"}},
      {c, R"({"prompt": "hi", "user": 5})", 400, {"user", "string"}},
      {c, R"({"prompt": "hi", "use_beam_search": true})", 400, {"use_beam_search"}},
      {c, R"({"prompt": "hi", "prompt_logprobs": 1})", 400, {"prompt_logprobs"}},
      {c, R"({"prompt": "hi", "best_of": "3"})", 400, {"best_of", "integer"}},
      {c, R"({"prompt": "hi", "foo": 1})", 400, {"Unrecognized request argument supplied: foo"}},
      {c, R"({"prompt": "hi", "messages": []})", 400, {"messages"}},
      {c, R"({"prompt": "hi", "stream_options": {"include_usage": true}})", 400,
       {"stream_options"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 3})", 400,
       {"logprobs", "boolean"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", 400,
       {"top_logprobs", "logprobs"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})",
       400, {"top_logprobs", "[0, 20]"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "echo": true})", 400,
       {"Unrecognized", "echo"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "n": 17})", 400, {"'n'"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "best_of": 2})", 400,
       {"Unrecognized", "best_of"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]})", 400,
       {"functions", "tool calling"}},
      {ch,
       R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]})",
       400, {"tools", "tool calling"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"})", 400,
       {"tool_choice"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}})",
       400, {"response_format.type", "yaml"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}})",
       400, {"response_format.json_schema", "required"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}})",
       400, {"response_format.json_schema.name"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "string", "pattern": "(a)\\1"}}}})",
       400, {"response_format", "backreference"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": "yes", "schema": {}}}})",
       400, {"strict"}},
      {c, R"({"prompt": "x", "guided_regex": "(ab"})", 400, {"guided_regex", "regular expression"}},
      {c, R"({"prompt": "x", "guided_regex": 5})", 400, {"guided_regex", "string"}},
      {c, R"({"prompt": "x", "guided_grammar": "root ::= missing"})", 400,
       {"guided_grammar", "missing"}},
      {c, R"({"prompt": "x", "guided_choice": []})", 400, {"guided_choice"}},
      {c, R"({"prompt": "x", "guided_choice": ["a", 1]})", 400, {"guided_choice"}},
      {c, R"({"prompt": "x", "guided_json": "{not json"})", 400, {"guided_json", "JSON schema"}},
      {c, R"({"prompt": "x", "guided_json": {"type": "object"}, "guided_regex": "a"})", 400,
       {"one structured-output constraint", "guided_json", "guided_regex"}},
      {c, R"({"prompt": "x", "response_format": {"type": "json_object"}, "guided_choice": ["a"]})",
       400, {"one structured-output constraint"}},
      {c, R"({"prompt": "x", "guided_whitespace_pattern": "[ ]?"})", 400,
       {"guided_whitespace_pattern"}},
      {c, R"({"prompt": "x", "structured_outputs": {"regex": "a"}})", 400, {"structured_outputs"}},
      {ch, R"({"messages": [{"role": "user", "content": "x", "tool_calls": []}]})", 400,
       {"tool_calls"}},
      {ch, R"({"messages": [{"role": "user", "content": "x"}], "prompt": "y"})", 400,
       {"Unrecognized", "prompt"}},
      // stop strings beyond the limits
      {g, R"({"inputs": "hi", "parameters": {"stop": ["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]}})",
       422, {"17 stop sequences", "at most 16"}},
      {c, R"({"prompt": "hi", "stop": ["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]})",
       400, {"at most 16"}},
      {g, json({{"inputs", "hi"}, {"parameters", {{"stop", {std::string(300, 'x')}}}}}).dump(), 422,
       {"longer than 256 bytes"}},
      {c, R"({"prompt": "hi", "stop": [""]})", 400, {"empty"}},
      // prompts over the context, as each API words it
      {g, "{\"inputs\": " + ids(int(context) + 5) + "}", 422,
       {"`inputs` must have less than", std::to_string(context)}},
      {gs, "{\"inputs\": " + ids(int(context)) + "}", 422, {"`inputs` must have less than"}},
      {c, "{\"prompt\": " + ids(int(context) + 5) + "}", 400,
       {"maximum context length is " + std::to_string(context), "context_length_exceeded"}},
      {g,
       "{\"inputs\": " + ids(int(context) - 10) + ", \"parameters\": {\"max_new_tokens\": 20}}",
       422, {"`inputs` tokens + `max_new_tokens` must be <= " + std::to_string(context)}},
      {c, "{\"prompt\": " + ids(int(context) - 10) + ", \"max_tokens\": 20}", 400,
       {"context_length_exceeded", "max_tokens"}},
  };
  for (const Case& k : cases) {
    auto r = client().Post(k.path.c_str(), k.body, "application/json");
    ASSERT_TRUE(r) << k.path << " " << k.body.substr(0, 200);
    EXPECT_EQ(r->status, k.status) << k.path << " " << k.body.substr(0, 200) << " -> " << r->body;
    const json j = json::parse(r->body, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "a JSON error: " << r->body;
    ASSERT_TRUE(j.contains("error")) << r->body;
    if (k.path.rfind("/v1/", 0) == 0)
      EXPECT_TRUE(j["error"].is_object() && j["error"].contains("message")) << r->body;
    else
      EXPECT_TRUE(j["error"].is_string() && j.contains("error_type")) << r->body;
    for (const std::string& n : k.needles)
      EXPECT_NE(r->body.find(n), std::string::npos)
          << k.path << " " << k.body.substr(0, 200) << " -> " << r->body << "\n  wants: " << n;
    EXPECT_EQ(r->body.find(test::kGoldenCase.string()), std::string::npos)
        << "no server path in an error: " << r->body;
  }
  expect_still_serves(*this, client());
  // The host snapshots the engine after it delivers a step's outputs, so a
  // client may hear its answer a moment before the snapshot is taken.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (host_->stats().kv_pages_held != kv_->pages.num_held() &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(host_->stats().kv_pages_held, kv_->pages.num_held()) << "snapshot";
}

// What we do not act on passes at its neutral value, and truncate keeps the last tokens.
TEST_F(Robustness, NeutralValuesOfUnsupportedParametersPass) {
  const std::vector<std::pair<std::string, std::string>> ok = {
      {"/generate",
       R"({"inputs": "hi", "parameters": {"max_new_tokens": 2, "repetition_penalty": 1.0, "frequency_penalty": 0, "typical_p": null, "best_of": 1, "watermark": false, "return_full_text": false, "decoder_input_details": false, "adapter_source": "local", "adapter_id": "a", "response_format": null, "api_token": null}})"},
      {"/generate",
       R"({"inputs": "hi", "parameters": {"max_new_tokens": 2, "merged_adapters": {"ids": ["b"], "weights": [1.0], "merge_strategy": "linear"}}})"},
      {"/", R"({"inputs": "hi", "parameters": {"max_new_tokens": 2}, "stream": false})"},
      {"/v1/completions",
       R"({"prompt": "hi", "max_tokens": 2, "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "echo": false, "user": "u1", "n": 1, "best_of": 1, "logprobs": null, "spaces_between_special_tokens": true, "use_beam_search": false, "suffix": ""})"},
      {"/v1/chat/completions",
       R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 2, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "logprobs": false, "parallel_tool_calls": true, "store": false})"},
  };
  for (const auto& [path, body] : ok) {
    auto [status, j] = post(path, body);
    EXPECT_EQ(status, 200) << path << " " << body << " -> " << j.dump();
  }
  // truncate: the prompt's last 3 tokens, as a prompt of those 3 tokens gives.
  auto [s1, a] = post("/generate",
                      R"({"inputs": [5, 6, 7, 8, 9], "parameters": {"max_new_tokens": 4, "truncate": 3, "details": true}})");
  auto [s2, b] = post("/generate",
                      R"({"inputs": [7, 8, 9], "parameters": {"max_new_tokens": 4, "details": true}})");
  ASSERT_EQ(s1, 200) << a.dump();
  ASSERT_EQ(s2, 200) << b.dump();
  EXPECT_EQ(token_ids(a["details"]["tokens"]), token_ids(b["details"]["tokens"]));
  EXPECT_EQ(a["details"]["prompt_tokens"], 3);
  // With no max given, a long prompt gets what the context leaves.
  const int64_t context = engine_->max_sequence_tokens();
  auto [s3, l] = post("/generate", "{\"inputs\": " + ids(int(context) - 2) +
                                       ", \"parameters\": {\"details\": true}}");
  ASSERT_EQ(s3, 200) << l.dump();
  EXPECT_EQ(l["details"]["generated_tokens"], 2);
}

TEST_F(Robustness, BodiesOverTheLimitAre413AndTheConnectionRecovers) {
  const std::string big = "{\"inputs\": \"" + std::string(100 << 10, 'a') + "\"}";
  for (const char* path : {"/generate", "/v1/completions"}) {
    auto r = client().Post(path, big, "application/json");
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 413) << r->body;
    EXPECT_NE(r->body.find("65536 bytes"), std::string::npos) << r->body;
  }
  // Chunked (no Content-Length): counted as it arrives.
  httplib::Client c = client();
  size_t sent = 0;
  auto r = c.Post(
      "/generate",
      [&](size_t, httplib::DataSink& sink) {
        if (sent >= big.size()) {
          sink.done();
          return true;
        }
        const size_t n = std::min<size_t>(8192, big.size() - sent);
        sink.write(big.data() + sent, n);
        sent += n;
        return true;
      },
      "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413) << r->body;
  expect_still_serves(*this, client());
}

// A client that goes away mid-stream, one that reads its stream slowly, and
// one that sends its body slowly: each request ends as it should, and other
// clients are served meanwhile.
TEST_F(Robustness, DisconnectingAndSlowClients) {
  const int64_t held_before = host_->stats().kv_pages_held;
  {  // leaves after two events
    httplib::Client c = client();
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = R"({"prompt": [1, 2, 3], "max_tokens": 900, "ignore_eos": true, "stream": true})";
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    EXPECT_FALSE(c.send(req, res, err));
  }
  // The reference stream, read at once.
  const std::string body =
      R"({"inputs": [4, 5, 6], "parameters": {"max_new_tokens": 40, "ignore_eos_token": true, "adapter_id": "b"}})";
  auto fast = client().Post("/generate_stream", body, "application/json");
  ASSERT_TRUE(fast);
  ASSERT_EQ(fast->status, 200);
  // A slow reader: 30 ms per event; meanwhile normal requests are served.
  std::string slow_body;
  std::thread slow([&] {
    httplib::Client c = client();
    httplib::Request req;
    req.method = "POST";
    req.path = "/generate_stream";
    req.body = body;
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      slow_body.append(d, n);
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    EXPECT_TRUE(c.send(req, res, err)) << httplib::to_string(err);
  });
  // A slow sender: headers, then its body a few bytes at a time.
  std::string trickled;
  std::thread sender([&] {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    const std::string json_body = R"({"inputs": [4, 5, 6], "parameters": {"max_new_tokens": 3}})";
    const std::string head = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Connection: close\r\nContent-Length: " +
                             std::to_string(json_body.size()) + "\r\n\r\n";
    ASSERT_EQ(::send(fd, head.data(), head.size(), 0), ssize_t(head.size()));
    for (size_t i = 0; i < json_body.size(); i += 4) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ::send(fd, json_body.data() + i, std::min<size_t>(4, json_body.size() - i), 0);
    }
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) trickled.append(buf, size_t(n));
    ::close(fd);
  });
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto [status, j] = post("/generate", R"({"inputs": "hi", "parameters": {"max_new_tokens": 2}})");
    EXPECT_EQ(status, 200) << j.dump();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2))
        << "served while slow clients hold connections";
  }
  slow.join();
  sender.join();
  EXPECT_EQ(slow_body, fast->body) << "the slow reader gets the same stream";
  EXPECT_NE(trickled.find("HTTP/1.1 200"), std::string::npos) << trickled;
  EXPECT_NE(trickled.find("generated_text"), std::string::npos) << trickled;
  // Everything ended: no sequence left, the KV pages back.
  for (int i = 0; i < 100 && (host_->stats().running + host_->stats().waiting) > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(host_->stats().running + host_->stats().waiting, 0);
  EXPECT_EQ(host_->stats().kv_pages_held, held_before);
  EXPECT_EQ(store_->pins(), 0);
  expect_still_serves(*this, client());
}

TEST_F(Robustness, RequestIdIsEchoedAndEveryRequestIsLoggedAndCounted) {
  httplib::Client c = client();
  auto r = c.Post("/generate", httplib::Headers{{"X-Request-Id", "trace-42"}},
                  R"({"inputs": [4, 5, 6], "parameters": {"max_new_tokens": 3, "adapter_id": "a"}})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("X-Request-Id"), "trace-42");
  auto s = c.Post("/v1/completions", httplib::Headers{{"X-Request-Id", "bad id\twith spaces"}},
                  R"({"prompt": [4, 5], "max_tokens": 4, "temperature": 0, "stream": true})",
                  "application/json");
  ASSERT_TRUE(s);
  ASSERT_EQ(s->status, 200);
  const std::string generated = s->get_header_value("X-Request-Id");
  EXPECT_EQ(generated.rfind("req-", 0), 0u) << generated;
  auto n = c.Post("/generate", R"({"inputs": "hi", "parameters": {"adapter_id": "made-up"}})",
                  "application/json");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->status, 404);
  auto u = c.Get("/no/such/route");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->status, 404);
  EXPECT_FALSE(u->get_header_value("X-Request-Id").empty());

  const std::vector<json> lines = log();
  auto find = [&](const std::string& id) {
    for (const json& l : lines)
      if (l["request_id"] == id) return l;
    return json();
  };
  const json a = find("trace-42");
  ASSERT_FALSE(a.is_null()) << json(lines).dump();
  EXPECT_EQ(a["route"], "/generate");
  EXPECT_EQ(a["adapter"], "a");
  EXPECT_EQ(a["prompt_tokens"], 3);
  EXPECT_EQ(a["output_tokens"], 3);
  EXPECT_EQ(a["status"], 200);
  EXPECT_EQ(a["finish_reason"], "length");
  EXPECT_GT(a["latency_ms"].get<double>(), 0);
  const json b = find(generated);
  ASSERT_FALSE(b.is_null()) << "a stream is logged once it ends";
  EXPECT_EQ(b["route"], "/v1/completions");
  EXPECT_EQ(b["output_tokens"], 4);
  EXPECT_EQ(b["adapter"], nullptr);
  bool unmatched = false, made_up = false;
  for (const json& l : lines) {
    unmatched = unmatched || (l["route"] == "unmatched" && l["status"] == 404);
    made_up = made_up || (l["adapter"] == "made-up" && l["status"] == 404);
  }
  EXPECT_TRUE(unmatched && made_up) << json(lines).dump();

  const std::string m = metrics();
  EXPECT_EQ(metric_value(m, "philora_http_requests_total",
                         {"route=\"/generate\"", "status=\"200\"", "adapter=\"a\""}),
            1)
      << m;
  EXPECT_EQ(metric_value(m, "philora_http_requests_total",
                         {"route=\"/generate\"", "status=\"404\"", "adapter=\"unknown\""}),
            1)
      << "a made-up adapter name is not a label value\n"
      << m;
  EXPECT_EQ(m.find("made-up"), std::string::npos);
  EXPECT_EQ(metric_value(m, "vllm:request_success_total", {"finished_reason=\"length\""}), 2)
      << m;
  for (const char* h : {"vllm:time_to_first_token_seconds_count",
                        "vllm:e2e_request_latency_seconds_count",
                        "vllm:request_queue_time_seconds_count"})
    EXPECT_EQ(metric_value(m, h), 2) << h << "\n" << m;
  EXPECT_EQ(metric_value(m, "vllm:inter_token_latency_seconds_count"), 2 + 3) << m;
  EXPECT_EQ(metric_value(m, "vllm:time_to_first_token_seconds_bucket", {"le=\"+Inf\""}), 2);
  EXPECT_EQ(metric_value(m, "vllm:num_requests_running"), 0) << m;
  EXPECT_EQ(metric_value(m, "philora_kv_pages_total"), double(kv_->pages.num_pages()));
  EXPECT_EQ(metric_value(m, "philora_kv_pages_used"), double(kv_->pages.num_held()));
  EXPECT_GE(metric_value(m, "philora_kv_pages_free"), 0);
  EXPECT_EQ(metric_value(m, "philora_adapter_loads_total", {"tier=\"host\""}), 1) << m;
  EXPECT_EQ(metric_value(m, "philora_adapter_loads_total", {"tier=\"device\""}), 1) << m;
  EXPECT_EQ(metric_value(m, "philora_adapter_pins"), 0) << m;
  EXPECT_GE(metric_value(m, "vllm:prefix_cache_queries_total"), 5) << m;
}

class WithApiKey : public test::ServerFixture {
 protected:
  void configure(server::HttpOptions& http, server::EngineHostOptions&,
                 server::ServerContext&) override {
    http.api_key = "s3cret";
  }
};

TEST_F(WithApiKey, EveryRouteButHealthNeedsTheKey) {
  httplib::Client c = client();
  const std::string body = R"({"inputs": "hi", "parameters": {"max_new_tokens": 2}})";
  auto none = c.Post("/generate", body, "application/json");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(none->get_header_value("WWW-Authenticate"), "Bearer");
  auto wrong = c.Post("/v1/completions", httplib::Headers{{"Authorization", "Bearer s3cres"}},
                      R"({"prompt": "hi", "max_tokens": 2})", "application/json");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  EXPECT_EQ(json::parse(wrong->body)["error"]["code"], "invalid_api_key") << wrong->body;
  for (const char* path : {"/metrics", "/info", "/v1/models"}) {
    auto r = c.Get(path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << path;
  }
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  const httplib::Headers key = {{"Authorization", "Bearer s3cret"}};
  auto ok = c.Post("/generate", key, body, "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  auto models = c.Get("/v1/models", key);
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
}

// One sequence runs at a time and one may wait: the next gets a 429. The
// engine is held still (after_step) from the step in which the first request
// runs until the test lets it go, so the places are full however fast steps are.
class WithSmallQueue : public test::ServerFixture {
 protected:
  void configure(server::HttpOptions&, server::EngineHostOptions& host,
                 server::ServerContext&) override {
    host.max_waiting = 1;
    host.after_step = [this] {
      std::unique_lock<std::mutex> lock(hold_mu_);
      // (Once let go, host_ is not read: it is null while the host is destroyed.)
      if (holding_ && host_->stats().running >= 1) hold_cv_.wait(lock, [&] { return !holding_; });
    };
  }
  engine::EngineConfig engine_config() const override { return {64, 1}; }
  void let_go() {
    {
      std::lock_guard<std::mutex> lock(hold_mu_);
      holding_ = false;
    }
    hold_cv_.notify_all();
  }
  void TearDown() override {
    let_go();
    test::ServerFixture::TearDown();
  }

  std::mutex hold_mu_;
  std::condition_variable hold_cv_;
  bool holding_ = true;
};

TEST_F(WithSmallQueue, AFullWaitingQueueIs429WithRetryAfter) {
  std::thread runner([&] {
    auto [status, j] = post(
        "/generate", R"({"inputs": [1, 2], "parameters": {"max_new_tokens": 4, "ignore_eos_token": true}})");
    EXPECT_EQ(status, 200) << j.dump();
    EXPECT_EQ(j["generated_text"].is_string(), true) << j.dump();
  });
  while (host_->stats().running < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  std::thread waiter([&] {
    auto [status, j] = post("/generate", R"({"inputs": [3], "parameters": {"max_new_tokens": 2}})");
    EXPECT_EQ(status, 200) << "the waiting request runs once the place is free: " << j.dump();
  });
  while (host_->stats().waiting < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto r = client().Post("/generate", R"({"inputs": [3], "parameters": {"max_new_tokens": 2}})",
                         "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429) << r->body;
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_EQ(json::parse(r->body)["error_type"], "overloaded");
  auto o = client().Post("/v1/completions", R"({"prompt": [3], "max_tokens": 2})",
                         "application/json");
  ASSERT_TRUE(o);
  EXPECT_EQ(o->status, 429) << o->body;
  EXPECT_EQ(json::parse(o->body)["error"]["code"], "queue_full");
  let_go();
  runner.join();
  waiter.join();
  EXPECT_EQ(metric_value(metrics(), "philora_http_requests_total", {"status=\"429\""}), 2);
  expect_still_serves(*this, client());
}

class WithTwoConnections : public test::ServerFixture {
 protected:
  void configure(server::HttpOptions& http, server::EngineHostOptions&,
                 server::ServerContext&) override {
    http.max_connections = 2;
  }
};

TEST_F(WithTwoConnections, AConnectionOverTheLimitGets503) {
  // Two keep-alive connections hold both connection threads (each waits for
  // its next request).
  std::vector<std::unique_ptr<httplib::Client>> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(std::make_unique<httplib::Client>("127.0.0.1", port_));
    held.back()->set_keep_alive(true);
    auto r = held.back()->Get("/health");
    ASSERT_TRUE(r);
  }
  auto r = client().Post("/generate", R"({"inputs": "hi", "parameters": {"max_new_tokens": 2}})",
                         "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_NE(r->body.find("too many connections"), std::string::npos) << r->body;
  EXPECT_EQ(r->get_header_value("Connection"), "close");
  // The held connections still work, and once they close others are served.
  auto again = held[0]->Post("/generate", R"({"inputs": "hi", "parameters": {"max_new_tokens": 2}})",
                             "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200) << again->body;
  held.clear();
  bool served = false;
  for (int i = 0; i < 200 && !served; ++i) {  // their threads let go within the keep-alive wait
    auto s = client().Post("/generate", R"({"inputs": "hi", "parameters": {"max_new_tokens": 2}})",
                           "application/json");
    served = s && s->status == 200;
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(served);
}

// /health says 503 until the model is there; draining finishes what runs.
TEST_F(Robustness, LoadingThenReadyThenDraining) {
  server::HttpServer loading;
  auto port = loading.start("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  httplib::Client c("127.0.0.1", *port);
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 503);
  EXPECT_EQ(json::parse(h->body)["status"], "loading");
  auto g = c.Post("/generate", R"({"inputs": [1]})", "application/json");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 503);
  EXPECT_EQ(g->get_header_value("Retry-After"), "5");
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  server::ServerContext ctx;
  ctx.host = host_.get();
  ctx.tokenizer = tokenizer_.get();
  ctx.limits.max_total_tokens = engine_->max_sequence_tokens();
  loading.serve(ctx);
  h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);

  // A stream in flight when the drain starts runs to its end.
  std::string streamed;
  std::atomic<bool> started{false};
  std::thread s([&] {
    httplib::Client sc("127.0.0.1", *port);
    httplib::Request req;
    req.method = "POST";
    req.path = "/generate_stream";
    req.body = R"({"inputs": [1, 2], "parameters": {"max_new_tokens": 50, "ignore_eos_token": true, "details": true}})";
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      streamed.append(d, n);
      started = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    EXPECT_TRUE(sc.send(req, res, err));
  });
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(loading.in_flight(), 1);
  std::atomic<bool> drained{false};
  std::thread d([&] { drained = loading.drain(std::chrono::seconds(20)); });
  while (loading.state() != server::HttpServer::State::draining)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  while (loading.in_flight() > 0) {  // meanwhile: draining, and no new work
    auto dh = httplib::Client("127.0.0.1", *port).Get("/health");
    ASSERT_TRUE(dh);
    if (loading.in_flight() == 0) break;
    EXPECT_EQ(dh->status, 503);
    EXPECT_EQ(json::parse(dh->body)["status"], "draining");
    auto dg = httplib::Client("127.0.0.1", *port)
                  .Post("/generate", R"({"inputs": [1]})", "application/json");
    ASSERT_TRUE(dg);
    EXPECT_EQ(dg->status, 503);
    EXPECT_NE(dg->body.find("shutting down"), std::string::npos);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  d.join();
  s.join();
  EXPECT_TRUE(drained) << "drained within the grace period";
  EXPECT_NE(streamed.find("\"finish_reason\":\"length\""), std::string::npos) << streamed;
  EXPECT_NE(streamed.find("\"generated_tokens\":50"), std::string::npos) << streamed;
  loading.stop();
}

}  // namespace
}  // namespace philora
