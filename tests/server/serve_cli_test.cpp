// `philora serve` as a user starts it: a model directory with the Phi-3
// tokenizer and chat template, a real port, real HTTP, then SIGTERM.
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "io/safetensors.h"
#include "server/spawn_server.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

extern char** environ;
namespace fs = std::filesystem;
using nlohmann::json;

namespace philora {
namespace {

const fs::path kTok = fs::path(PHILORA_TEST_DATA) / ".." / "tokenizer" / "out" / "phi3";
const fs::path kTemplate =
    fs::path(PHILORA_TEST_DATA) / "tokenizer" / "chat" / "templates" / "phi3_mini.jinja";

// A Phi-3-vocabulary model small enough to write in a test: random bf16 weights.
fs::path make_model_dir() {
  const fs::path dir = fs::temp_directory_path() / ("philora_serve_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const json config = {{"architectures", {"Phi3ForCausalLM"}},
                       {"model_type", "phi3"},
                       {"vocab_size", 32064},
                       {"hidden_size", 32},
                       {"intermediate_size", 64},
                       {"num_hidden_layers", 1},
                       {"num_attention_heads", 2},
                       {"num_key_value_heads", 2},
                       {"rms_norm_eps", 1e-5},
                       {"rope_theta", 10000.0},
                       {"max_position_embeddings", 4096},
                       {"tie_word_embeddings", true},
                       {"torch_dtype", "bfloat16"},
                       {"bos_token_id", 1},
                       {"eos_token_id", 32000}};
  std::ofstream(dir / "config.json") << config.dump(2);
  CpuBackend cpu(1);
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t seed = 1;
  auto add = [&](const std::string& name, std::initializer_list<int64_t> shape, float mean,
                 float width) {
    Tensor f = cpu.random_uniform(shape, seed++, mean, width);
    Tensor b = host_alloc(DType::bf16, {f.numel()});
    for (int64_t i = 0; i < f.numel(); ++i) b.ptr<uint16_t>()[i] = f32_to_bf16(f.ptr<float>()[i]);
    b.ndim = f.ndim;
    b.shape = f.shape;
    tensors.emplace_back(name, b);
  };
  add("model.embed_tokens.weight", {32064, 32}, 0, 0.5f);
  add("model.layers.0.input_layernorm.weight", {32}, 1, 0.1f);
  add("model.layers.0.self_attn.qkv_proj.weight", {96, 32}, 0, 0.3f);
  add("model.layers.0.self_attn.o_proj.weight", {32, 32}, 0, 0.3f);
  add("model.layers.0.post_attention_layernorm.weight", {32}, 1, 0.1f);
  add("model.layers.0.mlp.gate_up_proj.weight", {128, 32}, 0, 0.3f);
  add("model.layers.0.mlp.down_proj.weight", {32, 64}, 0, 0.3f);
  add("model.norm.weight", {32}, 1, 0.1f);
  EXPECT_TRUE(io::write_safetensors((dir / "model.safetensors").string(), tensors).ok());
  fs::copy_file(kTok / "tokenizer.json", dir / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  fs::copy_file(kTok / "tokenizer_config.json", dir / "tokenizer_config.json",
                fs::copy_options::overwrite_existing);
  fs::copy_file(kTemplate, dir / "chat_template.jinja", fs::copy_options::overwrite_existing);
  return dir;
}

using test::free_port;
using test::start_server;

TEST(ServeCli, ChatCompletionWithThePhi3TemplateThenSigterm) {
  if (!fs::exists(kTok / "tokenizer.json")) GTEST_SKIP() << "run tests/tokenizer/setup.sh first";
  const fs::path dir = make_model_dir();
  const int port = free_port();
  const pid_t pid = start_server({"serve", "--model", dir.string(), "--port", std::to_string(port),
                                  "--kv-tokens", "2048", "--served-model-name", "phi-3-mini-test"},
                                 port);
  ASSERT_GT(pid, 0) << "server did not come up";
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(30, 0);

  const json messages = json::array({{{"role", "system"}, {"content", "Be brief."}},
                                     {{"role", "user"}, {"content", "Hello, who are you?"}}});
  auto r = c.Post("/v1/chat/completions",
                  json({{"messages", messages}, {"max_tokens", 6}, {"temperature", 0}}).dump(),
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json out = json::parse(r->body);
  // The prompt is the template's rendering, tokenized without extra special tokens.
  auto tmpl = tokenizer::ChatTemplate::from_model_dir(dir.string());
  auto tok = tokenizer::Tokenizer::from_model_dir(dir.string());
  ASSERT_TRUE(tmpl.ok() && tok.ok());
  auto text = tmpl->render(nlohmann::ordered_json::parse(messages.dump()), true);
  ASSERT_TRUE(text.ok()) << text.status().message();
  EXPECT_EQ(text->rfind("<|assistant|>\n"), text->size() - 14) << *text;
  EXPECT_EQ(out["usage"]["prompt_tokens"], (*tok)->encode(*text, false).size());
  EXPECT_EQ(out["choices"][0]["message"]["role"], "assistant");
  EXPECT_LE(out["usage"]["completion_tokens"].get<int>(), 6);

  // --served-model-name: the base model's name in /v1/models and in `model`; the directory's
  // name is then no model (404 model_not_found, as any unknown name).
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  ASSERT_EQ(models->status, 200) << models->body;
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "phi-3-mini-test") << models->body;
  for (const auto& [name, status] :
       {std::pair<std::string, int>{"phi-3-mini-test", 200}, {dir.filename().string(), 404}}) {
    auto m = c.Post("/v1/completions",
                    json({{"model", name}, {"prompt", "Hello"}, {"max_tokens", 2}}).dump(),
                    "application/json");
    ASSERT_TRUE(m);
    EXPECT_EQ(m->status, status) << name << ": " << m->body;
    if (status == 404) {
      EXPECT_EQ(json::parse(m->body)["error"]["code"], "model_not_found") << m->body;
    } else {
      EXPECT_EQ(json::parse(m->body)["model"], "phi-3-mini-test") << m->body;
    }
  }

  // Text in, text out on the LoRAX route too.
  auto g = c.Post("/generate",
                  R"({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 4}})",
                  "application/json");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 200) << g->body;

  ::kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "clean exit on SIGTERM";
  fs::remove_all(dir);
}

// --speculate ngram:3 and medusa:2 (heads found in the model directory:
// medusa_lm_head.safetensors, config.json with the medusa fields): /info says
// so, a greedy request gives what the server without speculation gives, and
// /metrics counts the drafted and accepted tokens.
TEST(ServeCli, SpeculateNgramKeepsGreedyOutput) {
  if (!fs::exists(kTok / "tokenizer.json")) GTEST_SKIP() << "run tests/tokenizer/setup.sh first";
  const fs::path dir = make_model_dir();
  const std::string body =
      R"({"inputs": "one two three one two three one two three one two", )"
      R"("parameters": {"max_new_tokens": 48, "do_sample": false, "details": true}})";
  {  // Medusa heads of 2 zero blocks over the model's lm_head (each proposes the next token)
    json config = json::parse(std::ifstream(dir / "config.json"));
    config["medusa_num_heads"] = 2;
    config["medusa_num_layers"] = 1;
    std::ofstream(dir / "config.json") << config.dump();
    const int64_t h = config["hidden_size"].get<int64_t>();
    std::vector<float> w(size_t(h * h), 0.0f), b(size_t(h), 0.0f);
    std::vector<std::pair<std::string, Tensor>> t;
    for (const char* i : {"0", "1"}) {
      t.push_back({std::string(i) + ".0.linear.weight", Tensor(w.data(), DType::f32, {h, h})});
      t.push_back({std::string(i) + ".0.linear.bias", Tensor(b.data(), DType::f32, {h})});
    }
    ASSERT_TRUE(io::write_safetensors((dir / "medusa_lm_head.safetensors").string(), t).ok());
  }
  std::map<std::string, json> outputs;
  // "/tree": tree speculation, up to 4 chains a step, whatever their rows cost.
  for (const std::string run :
       {"", "ngram:3", "medusa:2", "ngram:3/tree", "medusa:2/tree", "ngram+medusa:2/tree"}) {
    const std::string speculate = run.substr(0, run.find('/'));
    const bool tree = run.find("/tree") != std::string::npos;
    const int port = free_port();
    std::vector<std::string> args = {
        "serve", "--model", dir.string(), "--port", std::to_string(port), "--kv-tokens", "2048"};
    if (!speculate.empty()) args.insert(args.end(), {"--speculate", speculate});
    if (tree) args.insert(args.end(), {"--speculate-paths", "4", "--speculate-row-cost", "0"});
    const pid_t pid = start_server(args, port);
    ASSERT_GT(pid, 0) << "server did not come up";
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30, 0);
    auto info = c.Get("/info");
    ASSERT_TRUE(info);
    const json i = json::parse(info->body);
    EXPECT_EQ(i["speculate"],
              speculate.empty() ? 0 : std::stoi(speculate.substr(speculate.find(':') + 1)))
        << speculate;
    EXPECT_EQ(i["speculate_method"],
              speculate.empty() ? json(nullptr) : json(speculate.substr(0, speculate.find(':'))));
    EXPECT_EQ(i["speculate_paths"], speculate.empty() ? 0 : tree ? 4 : 1) << run;
    auto g = c.Post("/generate", body, "application/json");
    ASSERT_TRUE(g);
    ASSERT_EQ(g->status, 200) << g->body;
    outputs[run] = json::parse(g->body);
    auto m = c.Get("/metrics");
    ASSERT_TRUE(m);
    auto counter = [&](const std::string& name) {
      const size_t at = m->body.find("\n" + name + "{");
      EXPECT_NE(at, std::string::npos) << name;
      if (at == std::string::npos) return -1.0;
      return std::stod(m->body.substr(m->body.find("} ", at) + 2));
    };
    const double drafted = counter("vllm:spec_decode_num_draft_tokens_total");
    const double accepted = counter("vllm:spec_decode_num_accepted_tokens_total");
    // (This random model's greedy text repeats one continuation: n-gram
    // lookup finds no alternative to it; the heads' top lists always do.)
    if (tree && speculate.find("medusa") != std::string::npos) {
      EXPECT_GT(counter("philora_spec_decode_alternative_chains_total"), 0) << run;
    } else if (!tree) {
      EXPECT_EQ(counter("philora_spec_decode_alternative_chains_total"), 0) << run;
    }
    EXPECT_LE(counter("philora_spec_decode_alternative_tokens_total"), accepted) << run;
    if (!speculate.empty()) {
      EXPECT_GT(drafted, 0) << speculate;
    } else {
      EXPECT_EQ(drafted, 0);
    }
    EXPECT_LE(accepted, drafted);
    // LoRAX's skipped tokens are the verified drafts: flagged per token, counted
    // in details and the x-skipped-tokens header, as many as /metrics accepted
    // (fewer only when the end came inside an accepted run).
    const json& d = outputs[run]["details"];
    int64_t flagged = 0;
    for (const json& t : d["tokens"]) flagged += t["skipped"].get<bool>();
    EXPECT_EQ(d["skipped_tokens"].get<int64_t>(), flagged) << speculate;
    EXPECT_EQ(g->get_header_value("x-skipped-tokens"), std::to_string(flagged)) << speculate;
    EXPECT_EQ(g->get_header_value("x-generated-tokens"), std::to_string(d["tokens"].size()));
    EXPECT_EQ(g->get_header_value("x-total-tokens"),
              std::to_string(d["tokens"].size() + d["prompt_tokens"].get<size_t>()));
    if (d["finish_reason"] == "length") {
      EXPECT_EQ(double(flagged), accepted) << speculate;
    } else {
      EXPECT_LE(double(flagged), accepted) << speculate;
    }
    ::kill(pid, SIGTERM);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  }
  EXPECT_GT(outputs["ngram:3"]["details"]["skipped_tokens"].get<int64_t>(), 0)
      << "no draft was accepted: the skipped path is not run";
  EXPECT_EQ(outputs["ngram:3"]["generated_text"], outputs[""]["generated_text"]);
  EXPECT_EQ(outputs["medusa:2"]["generated_text"], outputs[""]["generated_text"]);
  EXPECT_EQ(outputs["ngram:3/tree"]["generated_text"], outputs[""]["generated_text"]);
  EXPECT_EQ(outputs["medusa:2/tree"]["generated_text"], outputs[""]["generated_text"]);
  EXPECT_EQ(outputs["ngram+medusa:2/tree"]["generated_text"], outputs[""]["generated_text"]);
  fs::remove_all(dir);
}

// SIGTERM while a stream runs: the server stops taking work (/health 503,
// new requests 503), lets the stream finish, then exits 0.
TEST(ServeCli, SigtermDrainsARunningStream) {
  if (!fs::exists(kTok / "tokenizer.json")) GTEST_SKIP() << "run tests/tokenizer/setup.sh first";
  const fs::path dir = make_model_dir();
  const int port = free_port();
  const pid_t pid =
      start_server({"serve", "--model", dir.string(), "--port", std::to_string(port), "--kv-tokens",
                    "2048", "--no-access-log", "--drain-seconds", "60"},
                   port);
  ASSERT_GT(pid, 0) << "server did not come up";
  httplib::Client c("127.0.0.1", port);

  std::string streamed;
  std::atomic<int> chunks{0};
  std::thread s([&] {
    httplib::Client sc("127.0.0.1", port);
    sc.set_read_timeout(60, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = "/generate_stream";
    req.body =
        R"({"inputs": [1, 450, 7483], "parameters": {"max_new_tokens": 120, "ignore_eos_token": true, "details": true}})";
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      streamed.append(d, n);
      ++chunks;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    EXPECT_TRUE(sc.send(req, res, err));
  });
  while (chunks < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ::kill(pid, SIGTERM);
  bool saw_draining = false;
  for (int i = 0; i < 100 && !saw_draining; ++i) {
    auto h = c.Get("/health");
    saw_draining = h && h->status == 503;
    if (!saw_draining) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(saw_draining) << "/health says 503 while draining";
  s.join();
  EXPECT_NE(streamed.find("\"generated_tokens\":120"), std::string::npos)
      << "the running stream finished: "
      << streamed.substr(streamed.size() > 400 ? streamed.size() - 400 : 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "exit 0 after the drain";
  fs::remove_all(dir);
}

// SIGTERM with a grace period too short for what runs (--drain-seconds 0.2,
// streams of up to 4000 tokens): once it runs out, the streams are aborted —
// each ends with its final event, finish_reason "abort" (outcome.cpp's name
// on both APIs; the OpenAI stream then "data: [DONE]") — and the server exits 0.
TEST(ServeCli, SigtermGraceRunningOutAbortsTheStreams) {
  if (!fs::exists(kTok / "tokenizer.json")) GTEST_SKIP() << "run tests/tokenizer/setup.sh first";
  const fs::path dir = make_model_dir();
  const int port = free_port();
  const pid_t pid =
      start_server({"serve", "--model", dir.string(), "--port", std::to_string(port), "--kv-tokens",
                    "8192", "--no-access-log", "--drain-seconds", "0.2"},
                   port);
  ASSERT_GT(pid, 0) << "server did not come up";
  httplib::Client c("127.0.0.1", port);

  const std::pair<std::string, std::string> streams[] = {
      {"/generate_stream",
       R"({"inputs": [1, 450, 7483], "parameters": {"max_new_tokens": 4000, "ignore_eos_token": true, "details": true}})"},
      {"/v1/completions",
       R"({"prompt": [1, 450, 7483], "max_tokens": 4000, "ignore_eos": true, "stream": true})"}};
  std::string streamed[2];
  std::atomic<int> chunks{0};
  std::vector<std::thread> clients;
  for (int k = 0; k < 2; ++k)
    clients.emplace_back([&, k] {
      httplib::Client sc("127.0.0.1", port);
      sc.set_read_timeout(60, 0);
      httplib::Request req;
      req.method = "POST";
      req.path = streams[k].first;
      req.body = streams[k].second;
      req.set_header("Content-Type", "application/json");
      req.content_receiver = [&, k](const char* d, size_t n, uint64_t, uint64_t) {
        streamed[k].append(d, n);
        ++chunks;
        return true;
      };
      httplib::Response res;
      httplib::Error err = httplib::Error::Success;
      EXPECT_TRUE(sc.send(req, res, err)) << streams[k].first << ": " << httplib::to_string(err);
      EXPECT_EQ(res.status, 200) << streams[k].first;
    });
  while (chunks < 4) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ::kill(pid, SIGTERM);
  for (auto& t : clients) t.join();

  // The last data line of each stream.
  auto last_event = [](const std::string& body) {
    std::string last;
    std::istringstream in(body);
    for (std::string line; std::getline(in, line);)
      if (line.rfind("data:", 0) == 0 && line.find("[DONE]") == std::string::npos)
        last = line.substr(5);
    return json::parse(last, nullptr, false);
  };
  const json lorax = last_event(streamed[0]);
  ASSERT_TRUE(lorax.is_object()) << streamed[0].substr(
      streamed[0].size() > 400 ? streamed[0].size() - 400 : 0);
  EXPECT_EQ(lorax["details"]["finish_reason"], "abort") << lorax.dump();
  EXPECT_LT(lorax["details"]["generated_tokens"].get<int>(), 4000) << lorax.dump();
  EXPECT_TRUE(lorax["generated_text"].is_string()) << "the final event carries the text: " << lorax;
  EXPECT_NE(streamed[1].find("data: [DONE]"), std::string::npos) << "the OpenAI stream is closed";
  const json openai = last_event(streamed[1]);
  ASSERT_TRUE(openai.is_object()) << streamed[1].substr(
      streamed[1].size() > 400 ? streamed[1].size() - 400 : 0);
  EXPECT_EQ(openai["choices"][0]["finish_reason"], "abort") << openai.dump();

  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "exit 0 after the drain";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace philora
