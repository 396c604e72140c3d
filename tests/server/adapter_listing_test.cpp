// /v1/models lists the base model and every adapter a client may name: those
// given by name (--adapter NAME=DIR) and the directories of the adapter
// directory as they are when the listing is asked for, so that an adapter
// copied in while the server runs is listed, and served, without a restart.
#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "server/server_fixture.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace philora {
namespace {

// The shared server over a copy of golden adapter "a" alone, plus golden "c"
// given by name (as --adapter named=DIR registers it).
class AdapterListing : public test::ServerFixture {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("philora_adapter_listing_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_ / "adapters");
    fs::copy(test::kGoldenCase / "adapters" / "a", root_ / "adapters" / "a",
             fs::copy_options::recursive);
    test::ServerFixture::SetUp();
  }
  void TearDown() override {
    test::ServerFixture::TearDown();
    fs::remove_all(root_);
  }
  fs::path adapter_dir() const override { return root_ / "adapters"; }
  void configure(server::HttpOptions&, server::EngineHostOptions&,
                 server::ServerContext& ctx) override {
    store_->register_dir("named", (test::kGoldenCase / "adapters" / "c").string());
    ctx.adapters = {"named"};
  }

  // /v1/models' ids, in order; each entry checked against OpenAI's model object.
  std::vector<std::string> listed() {
    auto r = client().Get("/v1/models");
    EXPECT_TRUE(r);
    if (!r) return {};
    EXPECT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body, nullptr, false);
    EXPECT_EQ(j.value("object", ""), "list") << r->body;
    std::vector<std::string> ids;
    for (const json& m : j.value("data", json::array())) {
      EXPECT_EQ(m.value("object", ""), "model") << m;
      EXPECT_TRUE(m.contains("created") && m["created"].is_number_integer()) << m;
      EXPECT_TRUE(m.contains("owned_by") && m["owned_by"].is_string()) << m;
      if (!ids.empty()) {
        EXPECT_EQ(m.value("parent", ""), "tiny") << "an adapter of the base: " << m;
      }
      ids.push_back(m.value("id", ""));
    }
    return ids;
  }
  fs::path root_;
};

TEST_F(AdapterListing, AnAdapterCopiedInAfterStartIsListedAndServed) {
  using Ids = std::vector<std::string>;
  EXPECT_EQ(listed(), (Ids{"tiny", "named", "a"}));
  auto [absent, error] = post("/v1/completions", R"({"model": "d", "prompt": "hi", "max_tokens": 2})");
  EXPECT_EQ(absent, 404) << "not there yet: " << error.dump();
  EXPECT_EQ(error["error"]["code"], "model_not_found") << error.dump();

  // While the server runs: golden "b" copied in as "d", and a directory that
  // holds no adapter_config.json (not an adapter, not listed).
  fs::copy(test::kGoldenCase / "adapters" / "b", root_ / "adapters" / "d",
           fs::copy_options::recursive);
  fs::create_directories(root_ / "adapters" / "notes");
  std::ofstream(root_ / "adapters" / "notes" / "README") << "not an adapter\n";
  EXPECT_EQ(listed(), (Ids{"tiny", "named", "a", "d"}));

  // "d" is served, by name on both APIs: HF's greedy tokens for golden "b"'s requests
  // (LoRAX), and the same text by OpenAI's model.
  const auto reqs = test::read_jsonl(test::kGoldenCase / "generate_requests.jsonl");
  const auto refs = test::read_jsonl(test::kGoldenCase / "generate_ref.jsonl");
  int checked = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (reqs[i]["adapter"] != "b") continue;
    const json params = {{"max_new_tokens", reqs[i]["max_new_tokens"]},
                         {"details", true},
                         {"ignore_eos_token", true},
                         {"adapter_id", "d"}};
    auto [status, j] = post("/generate", json({{"inputs", reqs[i]["input_ids"]}, {"parameters", params}}).dump());
    ASSERT_EQ(status, 200) << j.dump();
    EXPECT_EQ(test::token_ids(j["details"]["tokens"]), refs[i]["tokens"]) << refs[i]["id"];
    auto [ostatus, o] = post("/v1/completions", json({{"model", "d"},
                                                      {"prompt", reqs[i]["input_ids"]},
                                                      {"max_tokens", reqs[i]["max_new_tokens"]},
                                                      {"temperature", 0},
                                                      {"ignore_eos", true}})
                                                    .dump());
    ASSERT_EQ(ostatus, 200) << o.dump();
    EXPECT_EQ(o["model"], "d");
    EXPECT_EQ(o["choices"][0]["text"], j["generated_text"]) << refs[i]["id"];
    ++checked;
  }
  EXPECT_GE(checked, 1) << "the golden case has requests for adapter b";

  // vLLM's /tokenize takes the new name as a model too.
  auto [tstatus, t] = post("/tokenize", R"({"model": "d", "prompt": "hi"})");
  EXPECT_EQ(tstatus, 200) << t;

  // Taken away again: no longer listed (the named one stays).
  fs::remove_all(root_ / "adapters" / "d");
  EXPECT_EQ(listed(), (Ids{"tiny", "named", "a"}));
}

}  // namespace
}  // namespace philora
