// The in-process server the HTTP tests share: the golden gqa_multi_lora model
// (3 adapters, 2 slots) on the CPU, a character tokenizer that fits its
// 200-token vocabulary, an engine host and the HTTP server on a free loopback
// port. A test suite can change the options before SetUp through configure().
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "engine/engine.h"
#include "io/safetensors.h"
#include "lora/store.h"
#include "model/config.h"
#include "model/weights.h"
#include "server/http_server.h"
#include "test_util.h"

namespace philora::test {

using nlohmann::json;

// The CPU backend, but the silu_mul after fail_next_silu_mul is set throws: a
// device failure inside the forward (every layer's MLP runs one; the layer's
// attention has already written the step's K and V into the cache).
class FaultInjectingBackend : public CpuBackend {
 public:
  using CpuBackend::CpuBackend;
  Tensor silu_mul(const Tensor& gate_up) override {
    if (fail_next_silu_mul.exchange(false))
      throw std::runtime_error("injected device failure in the forward at "
                               "/srv/philora-secret/backend/cuda_mlp.cu:7");
    return CpuBackend::silu_mul(gate_up);
  }
  std::atomic<bool> fail_next_silu_mul{false};
};

inline const std::filesystem::path kGoldenCase =
    std::filesystem::path(PHILORA_TEST_DATA) / "golden" / "gqa_multi_lora";

// A SentencePiece-style tokenizer over single characters that fits the tiny
// model's 200-token vocabulary: enough to exercise text in and text out.
inline std::string tiny_tokenizer_json() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"\xe2\x96\x81", 3}};
  int id = 4;
  for (char c = 'a'; c <= 'z'; ++c) vocab[std::string(1, c)] = id++;
  for (char c = 'A'; c <= 'Z'; ++c) vocab[std::string(1, c)] = id++;
  for (char c = '0'; c <= '9'; ++c) vocab[std::string(1, c)] = id++;
  for (const char* p : {".", ",", "!", "?", "'", "-"}) vocab[p] = id++;
  while (id < 200) vocab["<extra_" + std::to_string(id) + ">"] = id, ++id;
  json t = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", json::array({{{"id", 0},
                                     {"content", "<unk>"},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", false},
                                     {"special", true}},
                                    {{"id", 1},
                                     {"content", "<s>"},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", false},
                                     {"special", true}},
                                    {{"id", 2},
                                     {"content", "</s>"},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", false},
                                     {"special", true}}})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", "\xe2\x96\x81"}},
                                     {{"type", "Replace"},
                                      {"pattern", {{"String", " "}}},
                                      {"content", "\xe2\x96\x81"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         json::array(
             {{{"type", "Replace"}, {"pattern", {{"String", "\xe2\x96\x81"}}}, {"content", " "}},
              {{"type", "Fuse"}},
              {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", false},
        {"vocab", vocab},
        {"merges", json::array()}}}};
  return t.dump();
}

// The sum of a metric's samples in a /metrics text whose labels include
// every `label="value"` of `labels` (-1 when there is none).
inline double metric_value(const std::string& text, const std::string& name,
                           const std::vector<std::string>& labels = {}) {
  double sum = 0;
  bool found = false;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line.compare(0, name.size(), name) != 0) continue;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != ' ' && next != '{') continue;
    bool match = true;
    for (const std::string& l : labels) match = match && line.find(l) != std::string::npos;
    if (!match) continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
    found = true;
  }
  return found ? sum : -1;
}

// The ids of LoRAX's details.tokens ({id, text, logprob, special, ...} each).
inline json token_ids(const json& tokens) {
  json out = json::array();
  for (const json& t : tokens) out.push_back(t.at("id"));
  return out;
}

class ServerFixture : public ::testing::Test {
 protected:
  // Options a suite may change before the server starts.
  virtual void configure(server::HttpOptions& http, server::EngineHostOptions& host,
                         server::ServerContext& ctx) {}
  // Adapter store options a suite may change (test hooks).
  virtual void configure_store(lora::StoreOptions& store) {}
  // KV pages of the cache (page size 4).
  virtual int64_t kv_pages() const { return 256; }
  virtual engine::EngineConfig engine_config() const { return {64, 64}; }
  // The directory the adapter store serves.
  virtual std::filesystem::path adapter_dir() const { return kGoldenCase / "adapters"; }

  void SetUp() override {
    auto config = model::load_config((kGoldenCase / "model").string());
    ASSERT_TRUE(config.ok()) << config.status().message();
    config_ = *config;
    auto tensors = io::TensorSet::open_model_dir((kGoldenCase / "model").string());
    ASSERT_TRUE(tensors.ok());
    tensors_ = std::make_unique<io::TensorSet>(std::move(*tensors));
    auto weights = model::load_weights(*tensors_, config_, backend_);
    ASSERT_TRUE(weights.ok());
    model_ = std::make_unique<model::Phi3ForCausalLM>(config_, std::move(*weights), backend_);
    slots_ =
        std::make_unique<lora::AdapterSlots>(backend_, config_, 2);  // fewer slots than adapters
    lora::StoreOptions store_options;
    store_options.adapter_dir = adapter_dir().string();
    store_options.host_capacity = 8;
    configure_store(store_options);
    store_ = std::make_unique<lora::AdapterStore>(config_, *slots_, store_options);
    kv_ = std::make_unique<kv::KvCache>(backend_, config_.num_hidden_layers, kv_pages(), 4,
                                        config_.num_key_value_heads, config_.head_dim);
    auto tok = tokenizer::Tokenizer::from_json_string(tiny_tokenizer_json());
    ASSERT_TRUE(tok.ok()) << tok.status().message();
    tokenizer_ = std::move(*tok);
    // As philora serve: the engine detokenizes and matches stop strings with the server's tokenizer.
    engine_ = std::make_unique<engine::Engine>(*model_, *kv_, store_.get(), engine_config(),
                                               tokenizer_.get());
    server::HttpOptions http;
    server::EngineHostOptions host{0, &kv_->pages, store_.get(), "tiny"};
    server::ServerContext ctx;
    ctx.tokenizer = tokenizer_.get();
    ctx.model_name = "tiny";
    ctx.vocab_size = config_.vocab_size;
    ctx.adapter_dir = adapter_dir().string();  // as philora serve: listed as they are now
    ctx.limits.max_total_tokens = engine_->max_sequence_tokens();
    ctx.chat_template = [](const std::string& messages) -> Expected<std::string> {
      std::string out;  // a plain stand-in template: "role: content\n" per message
      for (const auto& m : json::parse(messages))
        out += m.value("role", "") + ": " + m.value("content", "") + "\n";
      return out + "assistant: ";
    };
    configure(http, host, ctx);
    host_ = std::make_unique<server::EngineHost>(*engine_, host);
    ctx.host = host_.get();
    http_ = std::make_unique<server::HttpServer>(ctx, http);
    auto port = http_->start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status().message();
    port_ = *port;
  }
  void TearDown() override {
    if (http_) http_->stop();
    http_.reset();
    host_.reset();
  }

  httplib::Client client() {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    return c;
  }
  std::pair<int, json> post(const std::string& path, const std::string& body) {
    auto r = client().Post(path.c_str(), body, "application/json");
    if (!r) return {-1, json()};
    return {r->status, json::parse(r->body, nullptr, false)};
  }
  std::string metrics() {
    auto r = client().Get("/metrics");
    return r ? r->body : "";
  }

  FaultInjectingBackend backend_{2};
  model::Phi3Config config_;
  std::unique_ptr<io::TensorSet> tensors_;
  std::unique_ptr<model::Phi3ForCausalLM> model_;
  std::unique_ptr<lora::AdapterSlots> slots_;
  std::unique_ptr<lora::AdapterStore> store_;
  std::unique_ptr<kv::KvCache> kv_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;  // the engine's: declared before it
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<server::EngineHost> host_;
  std::unique_ptr<server::HttpServer> http_;
  int port_ = 0;
};

}  // namespace philora::test
