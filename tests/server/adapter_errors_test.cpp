// An adapter that does not exist is a 404 on both APIs (OpenAI: code
// model_not_found), one that exists but is malformed a 400; neither tells the
// client a server path, and the server's log gets the full message with it.
#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <fstream>
#include <mutex>

#include <nlohmann/json.hpp>

#include "server/server_fixture.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace philora {
namespace {

// The shared server over a copy of the golden adapters plus two bad ones,
// with the server's log kept.
class AdapterErrors : public test::ServerFixture {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("philora_adapter_errors_" + std::to_string(::getpid()));
    const fs::path adapters = root_ / "adapters";
    fs::create_directories(adapters / "broken");
    fs::create_directories(adapters / "config_only");
    fs::copy(test::kGoldenCase / "adapters" / "a", adapters / "a", fs::copy_options::recursive);
    std::ofstream(adapters / "broken" / "adapter_config.json") << "{not json";
    fs::copy_file(test::kGoldenCase / "adapters" / "a" / "adapter_config.json",
                  adapters / "config_only" / "adapter_config.json");
    test::ServerFixture::SetUp();
  }
  void TearDown() override {
    test::ServerFixture::TearDown();
    fs::remove_all(root_);
  }
  fs::path adapter_dir() const override { return root_ / "adapters"; }
  int64_t kv_pages() const override { return 64; }
  engine::EngineConfig engine_config() const override { return {64, 8}; }
  void configure(server::HttpOptions&, server::EngineHostOptions&,
                 server::ServerContext& ctx) override {
    ctx.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(log_mu_);
      log_ += line + "\n";
    };
  }

  std::pair<int, std::string> post(const std::string& path, const json& body) {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    auto r = c.Post(path.c_str(), body.dump(), "application/json");
    if (!r) return {-1, ""};
    return {r->status, r->body};
  }
  static json lorax(const std::string& adapter) {
    return {{"inputs", {1, 2, 3}},
            {"parameters", {{"max_new_tokens", 2}, {"adapter_id", adapter}}}};
  }
  static json openai(const std::string& model, bool stream = false) {
    return {{"model", model}, {"prompt", {1, 2, 3}}, {"max_tokens", 2}, {"stream", stream}};
  }
  std::string log() {
    std::lock_guard<std::mutex> lock(log_mu_);
    return log_;
  }
  // The body is a JSON error that names no server path.
  void expect_no_path(const std::string& body) {
    EXPECT_TRUE(json::parse(body, nullptr, false).contains("error")) << body;
    EXPECT_EQ(body.find(root_.string()), std::string::npos) << "a server path leaked: " << body;
    EXPECT_EQ(body.find("/adapters/"), std::string::npos) << "a server path leaked: " << body;
  }

  fs::path root_;
  std::mutex log_mu_;
  std::string log_;
};

TEST_F(AdapterErrors, UnknownAdapterIsA404WithoutAPath) {
  for (const char* route : {"/generate", "/generate_stream"}) {
    auto [status, body] = post(route, lorax("nope"));
    EXPECT_EQ(status, 404) << route << ": " << body;
    expect_no_path(body);
    const json j = json::parse(body, nullptr, false);
    EXPECT_NE(j.value("error", "").find("nope"), std::string::npos) << body;
    EXPECT_EQ(j.value("error_type", ""), "adapter_error") << body;
  }
  EXPECT_NE(log().find((root_ / "adapters" / "nope").string()), std::string::npos)
      << "the log gets the path: " << log();
}

TEST_F(AdapterErrors, UnknownModelIsOpenAIsModelNotFound) {
  for (const bool stream : {false, true}) {
    auto [status, body] = post("/v1/completions", openai("nope", stream));
    EXPECT_EQ(status, 404) << body;
    expect_no_path(body);
    const json e = json::parse(body, nullptr, false)["error"];
    EXPECT_EQ(e["code"], "model_not_found") << body;
    EXPECT_EQ(e["type"], "invalid_request_error") << body;
    EXPECT_EQ(e["message"], "The model `nope` does not exist") << body;
  }
}

TEST_F(AdapterErrors, MalformedAdapterIsA400WithoutAPath) {
  for (const char* name : {"broken", "config_only"}) {
    auto [status, body] = post("/generate", lorax(name));
    EXPECT_EQ(status, 400) << name << ": " << body;
    expect_no_path(body);
    EXPECT_NE(body.find(name), std::string::npos) << body;
    auto [ostatus, obody] = post("/v1/completions", openai(name));
    EXPECT_EQ(ostatus, 400) << name << ": " << obody;
    expect_no_path(obody);
    EXPECT_EQ(json::parse(obody, nullptr, false)["error"]["code"], "adapter_invalid") << obody;
    EXPECT_NE(log().find((root_ / "adapters" / name).string()), std::string::npos)
        << "the log gets the path: " << log();
  }
  // What is wrong stays in the message, relative to the adapter's directory.
  auto [status, body] = post("/generate", lorax("config_only"));
  EXPECT_NE(body.find("adapter_model.safetensors"), std::string::npos) << body;
}

TEST_F(AdapterErrors, GoodAdapterStillServes) {
  (void)post("/generate", lorax("nope"));
  (void)post("/generate", lorax("broken"));
  auto [status, body] = post("/generate", lorax("a"));
  EXPECT_EQ(status, 200) << body;
  auto [ostatus, obody] = post("/v1/completions", openai("a", true));
  EXPECT_EQ(ostatus, 200) << obody;
  EXPECT_NE(obody.find("data: [DONE]"), std::string::npos) << obody;
}

}  // namespace
}  // namespace philora
