// A device failure in the middle of a step: every request in flight ends with "internal error
// (request id X)" — streams (LoRAX and OpenAI) with an error event after the tokens they had
// sent, held requests with a 500 —, the failure's text (which may name server files) reaches
// only the server's log, every KV page and adapter pin comes back, and the server serves the
// next request as before. The failure is thrown on the engine thread, inside Engine::step,
// while four requests are decoding: by the adapter store's before_upload hook when a fifth
// request's adapter goes up into a device slot (as a failing host -> device copy would), or
// by the forward itself (a backend op that throws, as a failing kernel launch would).
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "server/server_fixture.h"

namespace philora {
namespace {

using nlohmann::json;

constexpr const char* kSecret = "/srv/philora-secret/backend/cuda_copy.cu:42";

class DeviceFailure : public test::ServerFixture {
 protected:
  void configure_store(lora::StoreOptions& store) override {
    store.before_upload = [this](const std::string& name) {
      if (name == "b" && fail_.exchange(false))
        throw std::runtime_error(std::string("injected device failure at ") + kSecret);
    };
  }
  void configure(server::HttpOptions&, server::EngineHostOptions& host,
                 server::ServerContext& ctx) override {
    ctx.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mu_);
      log_ += line + "\n";
    };
    // Holds the engine after the first step in which the four requests all run, until the
    // test has armed the failure and queued the fifth.
    host.after_step = [this] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!holding_ || host_->stats().running < 4) return;
      held_ = true;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !holding_; });
    };
  }
  void let_go() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      holding_ = false;
    }
    cv_.notify_all();
  }
  void TearDown() override {
    let_go();
    test::ServerFixture::TearDown();
  }

  struct Reply {
    int status = -1;
    std::string body;
  };
  Reply post_with_id(const std::string& path, const std::string& id, const std::string& body) {
    auto r = client().Post(path.c_str(), httplib::Headers{{"X-Request-Id", id}}, body,
                           "application/json");
    return r ? Reply{r->status, r->body} : Reply{};
  }
  // The JSON of every "data:" line of an SSE body ([DONE] as the string "[DONE]").
  static std::vector<json> events(const std::string& body) {
    std::vector<json> out;
    std::istringstream in(body);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("data:", 0) != 0) continue;
      std::string data = line.substr(5);
      if (!data.empty() && data[0] == ' ') data.erase(0, 1);
      out.push_back(data == "[DONE]" ? json("[DONE]") : json::parse(data, nullptr, false));
    }
    return out;
  }

  // The host's stats once nothing runs, waits or holds a pin (at most 10 s).
  server::EngineHost::Stats settled() {
    server::EngineHost::Stats s = host_->stats();
    for (int i = 0; i < 1000 && (s.running || s.waiting || s.adapter_pins); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      s = host_->stats();
    }
    return s;
  }

  void run_failure(bool in_forward);

  std::atomic<bool> fail_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool holding_ = true, held_ = false;
  std::string log_;
};

// One scenario, two places of the failure: `in_forward` false: the adapter store's
// before_upload hook throws when a fifth request's adapter goes up into a slot inside the
// step; true: the step's forward itself throws in its first MLP (the backend's silu_mul),
// after that layer's attention wrote the step's K and V into the cache.
void DeviceFailure::run_failure(bool in_forward) {
  const std::string reference_body =
      R"({"inputs": "the cat", "parameters": {"adapter_id": "a", "max_new_tokens": 8}})";
  // Adapters b then c go through the two slots, then a takes b's: b stays parsed on the host,
  // so the fifth request's upload of b comes in the first step that admits it, with no wait
  // for the disk (the failure cannot come after the streams have ended).
  for (const char* name : {"b", "c"}) {
    auto [status, j] = post("/generate", std::string(R"({"inputs": "q", "parameters": {"adapter_id": ")") +
                                             name + R"(", "max_new_tokens": 2}})");
    ASSERT_EQ(status, 200) << j.dump();
  }
  // What a normal request gives before anything fails (the engine is not held: not 4 running).
  const auto [reference_status, reference] = post("/generate", reference_body);
  ASSERT_EQ(reference_status, 200) << reference.dump();
  const server::EngineHost::Stats idle = settled();
  ASSERT_EQ(idle.adapter_pins, 0);

  // Four requests that decode for long (4 x 200 tokens fit the 1,024 of the KV cache).
  const std::string long_params = R"("max_new_tokens": 200, "ignore_eos_token": true)";
  Reply lorax_stream, lorax_held, openai_stream, openai_held, trigger;
  std::vector<std::thread> clients;
  clients.emplace_back([&] {
    lorax_stream = post_with_id("/generate_stream", "lorax-stream",
                                R"({"inputs": "abc", "parameters": {"adapter_id": "a", )" +
                                    long_params + "}}");
  });
  clients.emplace_back([&] {
    lorax_held = post_with_id("/generate", "lorax-held",
                              R"({"inputs": "xyz", "parameters": {)" + long_params + "}}");
  });
  clients.emplace_back([&] {
    openai_stream = post_with_id(
        "/v1/chat/completions", "openai-stream",
        R"({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": true,
            "max_tokens": 200, "ignore_eos": true})");
  });
  clients.emplace_back([&] {
    openai_held = post_with_id(
        "/v1/completions", "openai-held",
        R"({"model": "a", "prompt": "hello", "max_tokens": 200, "ignore_eos": true})");
  });
  {
    std::unique_lock<std::mutex> lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(60), [&] { return held_; }))
        << "the four requests never ran together";
  }
  if (in_forward) {  // armed: the next step's forward throws in its first MLP
    backend_.fail_next_silu_mul = true;
  } else {  // armed; the fifth request (adapter b, not resident) is queued while the engine is held
    fail_ = true;
    const int64_t submitted = host_->stats().requests;
    clients.emplace_back([&] {
      trigger = post_with_id("/generate", "trigger",
                             R"({"inputs": "q", "parameters": {"adapter_id": "b"}})");
    });
    for (int i = 0; i < 600 && host_->stats().requests == submitted; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(host_->stats().requests, submitted + 1);
  }
  let_go();
  for (std::thread& t : clients) t.join();
  EXPECT_FALSE(fail_.load()) << "the failure was never injected";
  EXPECT_FALSE(backend_.fail_next_silu_mul.load()) << "the failure was never injected";

  const auto internal = [](const std::string& id) {
    return "internal error (request id " + id + ")";
  };
  // Held requests: a 500 with the API's error shape.
  for (const auto& [reply, id] : {std::pair{&lorax_held, "lorax-held"}, {&trigger, "trigger"}}) {
    if (in_forward && reply == &trigger) continue;  // no fifth request
    EXPECT_EQ(reply->status, 500) << id << ": " << reply->body;
    const json j = json::parse(reply->body, nullptr, false);
    EXPECT_EQ(j.value("error", ""), internal(id)) << reply->body;
    EXPECT_EQ(j.value("error_type", ""), "generation") << reply->body;
  }
  {
    EXPECT_EQ(openai_held.status, 500) << openai_held.body;
    const json j = json::parse(openai_held.body, nullptr, false);
    ASSERT_TRUE(j.contains("error")) << openai_held.body;
    EXPECT_EQ(j["error"].value("message", ""), internal("openai-held"));
    EXPECT_EQ(j["error"].value("type", ""), "server_error");
  }
  // Streams: tokens first, then one error event (OpenAI: then [DONE]), nothing after.
  {
    EXPECT_EQ(lorax_stream.status, 200);
    const std::vector<json> ev = events(lorax_stream.body);
    ASSERT_GE(ev.size(), 2u) << lorax_stream.body;
    EXPECT_TRUE(ev.front().contains("token")) << ev.front().dump();
    EXPECT_EQ(ev.back().value("error", ""), internal("lorax-stream")) << lorax_stream.body;
    EXPECT_EQ(ev.back().value("error_type", ""), "generation");
    for (size_t i = 0; i + 1 < ev.size(); ++i)
      EXPECT_FALSE(ev[i].contains("error")) << ev[i].dump();
    EXPECT_LT(ev.size(), 201u) << "the stream ran to its end: no failure reached it";
  }
  {
    EXPECT_EQ(openai_stream.status, 200);
    const std::vector<json> ev = events(openai_stream.body);
    ASSERT_GE(ev.size(), 3u) << openai_stream.body;
    EXPECT_TRUE(ev.front().contains("choices")) << ev.front().dump();
    EXPECT_EQ(ev.back(), json("[DONE]"));
    const json& err = ev[ev.size() - 2];
    ASSERT_TRUE(err.contains("error")) << err.dump();
    EXPECT_EQ(err["error"].value("message", ""), internal("openai-stream"));
    EXPECT_EQ(err["error"].value("type", ""), "server_error");
  }
  // The failure's text only in the server's log.
  for (const Reply* r : {&lorax_stream, &lorax_held, &openai_stream, &openai_held, &trigger}) {
    EXPECT_EQ(r->body.find("injected"), std::string::npos) << r->body;
    EXPECT_EQ(r->body.find("philora-secret"), std::string::npos) << r->body;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string failure = in_forward ? std::string("injected device failure in the forward")
                                           : std::string("injected device failure at ") + kSecret;
    EXPECT_NE(log_.find(failure), std::string::npos) << log_;
  }

  // Everything given back: pages held as when idle, no pins, nothing running or waiting (the
  // host's stats are a snapshot taken after the step whose outputs answered the clients).
  const server::EngineHost::Stats after = settled();
  EXPECT_EQ(after.running, 0);
  EXPECT_EQ(after.waiting, 0);
  EXPECT_EQ(after.adapter_pins, 0);
  EXPECT_EQ(after.kv_pages_held, idle.kv_pages_held)
      << "free " << after.kv_pages_free << " cached " << after.kv_pages_cached;

  // And it serves as before: the same text for the same request, adapter b now uploads.
  {
    auto [status, j] = post("/generate", reference_body);
    EXPECT_EQ(status, 200) << j.dump();
    EXPECT_EQ(j, reference);
  }
  {
    auto [status, j] = post(
        "/generate", R"({"inputs": "q", "parameters": {"adapter_id": "b", "max_new_tokens": 4}})");
    EXPECT_EQ(status, 200) << j.dump();
    EXPECT_TRUE(j["generated_text"].is_string()) << j.dump();
  }
  {
    auto health = client().Get("/health");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 200);
  }
  EXPECT_EQ(settled().adapter_pins, 0);
}

TEST_F(DeviceFailure, EveryRequestInFlightGetsAnInternalErrorAndTheServerRecovers) {
  run_failure(false);
}

TEST_F(DeviceFailure, AFailureInsideTheForwardEndsTheRequestsInFlightAndTheServerRecovers) {
  run_failure(true);
}

}  // namespace
}  // namespace philora
