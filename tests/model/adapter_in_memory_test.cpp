// AdapterStore::register_adapter (adapters made in memory, as philora bench --workload makes its
// synthetic ones): an adapter read from disk and registered under another name gives HF's greedy
// tokens through the engine (the golden fixtures of gqa_multi_lora), mixed with the base model
// in one batch and through evictions (fewer slots than adapters); a wrong shape, layer count or
// rank is refused with a message.
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "model/engine_rig.h"

namespace philora {
namespace {

using test::EngineRig;

const char* kCase = "gqa_multi_lora";

TEST(AdapterInMemory, GivesHfTokensLikeTheSameAdapterFromDisk) {
  EngineRig rig(kCase, engine::EngineConfig{64, 64}, 512, false, /*num_slots=*/2);
  const auto dir = test::golden_dir(kCase);
  for (const char* name : {"a", "b", "c"}) {
    auto a = lora::load_adapter(name, (dir / "adapters" / name).string(), rig.model->config());
    ASSERT_TRUE(a.ok()) << a.status().message();
    const Status s = rig.store->register_adapter(
        std::string("mem-") + name, std::make_shared<const lora::Adapter>(std::move(*a)));
    ASSERT_TRUE(s.ok()) << s.message();
  }
  std::vector<engine::Request> requests;
  std::ifstream in(dir / "generate_requests.jsonl");
  for (std::string line; std::getline(in, line);) {
    engine::Request r = test::request_of(nlohmann::json::parse(line));
    if (r.adapter) r.adapter = "mem-" + *r.adapter;
    requests.push_back(std::move(r));
  }
  ASSERT_FALSE(requests.empty());
  std::map<std::string, std::vector<int32_t>> want;
  std::ifstream ref(dir / "generate_ref.jsonl");
  for (std::string line; std::getline(ref, line);) {
    const auto j = nlohmann::json::parse(line);
    want[j["id"].get<std::string>()] = j["tokens"].get<std::vector<int32_t>>();
  }
  const auto runs = test::run_engine(*rig.engine, requests);
  int with_adapter = 0;
  for (const engine::Request& r : requests) {
    with_adapter += r.adapter.has_value();
    ASSERT_TRUE(runs.count(r.id)) << r.id;
    EXPECT_EQ(runs.at(r.id).tokens, want.at(r.id)) << r.id << " adapter "
                                                   << r.adapter.value_or("(base)");
  }
  EXPECT_GT(with_adapter, 0);
  EXPECT_EQ(rig.store->loads_from_disk(), 0);  // nothing read through the store
  EXPECT_GE(rig.store->uploads_to_device(), 2);
  EXPECT_EQ(rig.store->pins(), 0);
}

TEST(AdapterInMemory, WrongShapesAndRanksAreRefused) {
  EngineRig rig(kCase, engine::EngineConfig{64, 64}, 64, false, 2);
  const auto dir = test::golden_dir(kCase);
  auto a = lora::load_adapter("a", (dir / "adapters" / "a").string(), rig.model->config());
  ASSERT_TRUE(a.ok()) << a.status().message();
  {
    lora::Adapter fewer = *a;
    fewer.layers.pop_back();
    const Status s = rig.store->register_adapter("x", std::make_shared<const lora::Adapter>(fewer));
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("layers"), std::string::npos) << s.message();
  }
  {
    lora::Adapter wrong = *a;
    bool changed = false;
    for (auto& layer : wrong.layers)
      for (auto& m : layer)
        if (m && !changed) {
          m->a = m->a.reshape({m->a.dim(0) * 2, m->a.dim(1) / 2});  // same bytes, wrong shape
          changed = true;
        }
    ASSERT_TRUE(changed);
    const Status s = rig.store->register_adapter("y", std::make_shared<const lora::Adapter>(wrong));
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("adapter 'y'"), std::string::npos) << s.message();
  }
  {
    lora::StoreOptions small;
    small.max_rank = 1;
    lora::AdapterStore store(rig.model->config(), *rig.slots, small);
    ASSERT_GT(a->max_rank, 1);
    const Status s = store.register_adapter("z", std::make_shared<const lora::Adapter>(*a));
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("rank"), std::string::npos) << s.message();
  }
  EXPECT_FALSE(rig.store->register_adapter("", std::make_shared<const lora::Adapter>(*a)).ok());
  EXPECT_FALSE(rig.store->register_adapter("n", nullptr).ok());
}

}  // namespace
}  // namespace philora
