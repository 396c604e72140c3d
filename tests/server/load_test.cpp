// A bounded load test: 64 concurrent streaming clients for 30 s
// (PHILORA_LOAD_SECONDS to change it) against the golden gqa_multi_lora model,
// its 5 generate requests over 3 adapters and the base model through 2
// adapter slots and a KV cache too small for all of them at once (so
// sequences are preempted and prefixes cached). Every LoRAX stream must carry
// HF's greedy tokens; every OpenAI stream the text that request gives
// unloaded; no request fails; at the end no sequence runs, the KV pages and
// adapter pins are all back, and resident memory stayed flat.
#include <fstream>
#include <thread>

#include "server/server_fixture.h"

using nlohmann::json;

namespace philora {
namespace {

#if defined(__SANITIZE_ADDRESS__)  // GCC
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)  // clang
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

int64_t rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

class Load : public test::ServerFixture {
 protected:
  int64_t kv_pages() const override { return 40; }  // 160 tokens for 64 sequences of ~20
};

struct Outcome {
  int64_t requests = 0;
  std::vector<std::string> failures;
};

TEST_F(Load, SixtyFourStreamingClients) {
  const auto reqs = test::read_jsonl(test::kGoldenCase / "generate_requests.jsonl");
  const auto refs = test::read_jsonl(test::kGoldenCase / "generate_ref.jsonl");
  const char* env = std::getenv("PHILORA_LOAD_SECONDS");
  const double seconds = env ? std::atof(env) : 30.0;
  const int64_t held_before = host_->stats().kv_pages_held;

  // The bodies, and each OpenAI request's text without load.
  std::vector<std::string> lorax, openai;
  std::vector<std::string> openai_text;
  for (const auto& q : reqs) {
    json params = {{"max_new_tokens", q["max_new_tokens"]}, {"ignore_eos_token", true}};
    if (!q["adapter"].is_null()) params["adapter_id"] = q["adapter"];
    lorax.push_back(json({{"inputs", q["input_ids"]}, {"parameters", params}}).dump());
    json o = {{"prompt", q["input_ids"]},
              {"max_tokens", q["max_new_tokens"]},
              {"ignore_eos", true},
              {"temperature", 0},
              {"model", q["adapter"].is_null() ? json("tiny") : q["adapter"]}};
    auto [status, j] = post("/v1/completions", o.dump());
    ASSERT_EQ(status, 200) << j.dump();
    openai_text.push_back(j["choices"][0]["text"]);
    o["stream"] = true;
    openai.push_back(o.dump());
  }

  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(int64_t(seconds * 1000));
  int64_t rss_early = -1;
  std::vector<Outcome> outcomes(64);
  std::vector<std::thread> clients;
  for (int c = 0; c < 64; ++c)
    clients.emplace_back([&, c] {
      Outcome& out = outcomes[size_t(c)];
      httplib::Client cl("127.0.0.1", port_);
      cl.set_read_timeout(60, 0);
      cl.set_keep_alive(c % 2 == 0);  // half reuse one connection, half open one a request
      for (int64_t i = 0; std::chrono::steady_clock::now() < deadline; ++i) {
        const size_t k = size_t(c + i) % reqs.size();
        const bool use_openai = (c + i) % 3 == 0;
        const auto t0 = std::chrono::steady_clock::now();
        auto r = cl.Post(use_openai ? "/v1/completions" : "/generate_stream",
                         use_openai ? openai[k] : lorax[k], "application/json");
        ++out.requests;
        auto fail = [&](const std::string& why) {
          out.failures.push_back(fmt::format("client {} request {} ({}): {}", c, i, k, why));
        };
        if (!r) {
          fail(fmt::format("no response after {} ms: {}",
                           std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::steady_clock::now() - t0)
                               .count(),
                           httplib::to_string(r.error())));
          continue;
        }
        if (r->status != 200) {
          fail(fmt::format("status {}: {}", r->status, r->body));
          continue;
        }
        std::vector<int> tokens;
        std::string text;
        bool done = false, finished = false;
        std::istringstream in(r->body);
        for (std::string line; std::getline(in, line);) {
          if (line.rfind("data:", 0) != 0) continue;
          std::string data = line.substr(line[5] == ' ' ? 6 : 5);
          if (data == "[DONE]") {
            done = true;
            continue;
          }
          const json ev = json::parse(data, nullptr, false);
          if (ev.is_discarded() || ev.contains("error")) {
            fail("bad event: " + data);
            break;
          }
          if (use_openai) {
            text += ev["choices"][0]["text"].get<std::string>();
            finished = finished || ev["choices"][0]["finish_reason"] == "length";
          } else {
            tokens.push_back(ev["token"]["id"].get<int>());
            finished = finished || !ev["generated_text"].is_null();
          }
        }
        if (use_openai) {
          if (!done || !finished) fail("incomplete stream: " + r->body);
          if (text != openai_text[k]) fail("text '" + text + "' vs '" + openai_text[k] + "'");
        } else {
          if (!finished) fail("incomplete stream: " + r->body);
          if (json(tokens) != refs[k]["tokens"])
            fail("tokens " + json(tokens).dump() + " vs HF's " + refs[k]["tokens"].dump());
        }
        if (c == 0 && rss_early < 0 &&
            std::chrono::steady_clock::now() > deadline - std::chrono::milliseconds(int64_t(
                                                              seconds * 750)))
          rss_early = rss_kib();
      }
    });
  for (auto& t : clients) t.join();

  int64_t total = 0;
  std::vector<std::string> failures;
  for (const Outcome& o : outcomes) {
    total += o.requests;
    failures.insert(failures.end(), o.failures.begin(), o.failures.end());
  }
  for (size_t i = 0; i < failures.size() && i < 10; ++i) std::printf("%s\n", failures[i].c_str());
  EXPECT_TRUE(failures.empty()) << failures.size() << " of " << total << " failed; first: "
                                << (failures.empty() ? "" : failures[0]);
  EXPECT_GT(total, 64) << "every client made requests";
  for (int i = 0; i < 100 && host_->stats().running + host_->stats().waiting > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const server::EngineHost::Stats s = host_->stats();
  EXPECT_EQ(s.running + s.waiting, 0);
  EXPECT_EQ(s.kv_pages_held, held_before) << "every KV page is back";
  EXPECT_EQ(s.adapter_pins, 0) << "every adapter pin is back";
  EXPECT_EQ(store_->pins(), 0);
  const int64_t rss_end = rss_kib();
  // Under AddressSanitizer the quarantine and the shadow memory grow on their
  // own (and LeakSanitizer checks for leaks instead): resident memory says
  // something only in the plain build.
  if (!kAddressSanitizer) {
    EXPECT_LT(rss_end - rss_early, 64 * 1024)
        << "resident memory stayed flat: " << rss_early << " KiB at a quarter, " << rss_end
        << " KiB at the end";
  }
  std::printf("load: %lld requests in %.0f s by 64 clients (%lld preemptions, %lld device loads), "
              "RSS %lld -> %lld KiB\n",
              (long long)total, seconds, (long long)s.engine.preemptions,
              (long long)s.adapter_device_loads, (long long)rss_early, (long long)rss_end);
  auto h = client().Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}

}  // namespace
}  // namespace philora
