// AdapterStore::register_adapter (adapters made in memory, as philora bench --workload makes its
// synthetic ones): an adapter read from disk and registered under another name gives HF's greedy
// tokens through the engine (the golden fixtures of gqa_multi_lora), mixed with the base model
// in one batch and through evictions (fewer slots than adapters); a wrong shape, layer count or
// rank is refused with a message. A host tier in bf16 (StoreOptions::host_dtype) holds the
// adapters rounded to nearest even, and runs exactly what f32 adapters of those values run.
#include <cstring>
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

// The test's own bf16 rounding: round half to even on the f32 bits.
uint16_t round_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t upper = u >> 16, lower = u & 0xffffu;
  const bool up = lower > 0x8000u || (lower == 0x8000u && (upper & 1u) != 0);
  return uint16_t(upper + (up ? 1u : 0u));
}

float widen(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Calls fn(f32 module, other module) for every module the adapters share.
template <typename Fn>
int for_each_module(lora::Adapter& x, const lora::Adapter& y, Fn fn) {
  int n = 0;
  for (int64_t layer = -1; layer < int64_t(x.layers.size()); ++layer)
    for (int t = 0; t <= int(lora::Target::lm_head); ++t) {
      const auto target = lora::Target(t);
      if ((layer < 0) != (target == lora::Target::lm_head)) continue;
      auto& m = x.module(layer < 0 ? 0 : layer, target);
      const auto& o = y.module(layer < 0 ? 0 : layer, target);
      EXPECT_EQ(m.has_value(), o.has_value());
      if (!m || !o) continue;
      fn(*m, *o);
      ++n;
    }
  return n;
}

// StoreOptions::host_dtype bf16 (CUDA's default): load_adapter keeps A and B
// as the f32 values rounded to nearest even, in half the bytes; a store in
// that mode (disk loads and in-memory adapters alike) runs exactly the
// adapter whose f32 values were rounded by the test: same tokens and
// logprobs, bit for bit on the CPU backend.
TEST(AdapterHostDtype, Bf16HostTierIsTheRoundedAdapterInHalfTheBytes) {
  const auto dir = test::golden_dir(kCase);
  EngineRig probe(kCase, engine::EngineConfig{64, 64}, 64, false, 2);
  EXPECT_EQ(probe.store->host_dtype(), DType::f32);  // the CPU backend computes in f32
  std::map<std::string, lora::Adapter> rounded;  // f32 values, rounded by the test
  for (const char* name : {"a", "b", "c"}) {
    const std::string path = (dir / "adapters" / name).string();
    auto f32 = lora::load_adapter(name, path, probe.model->config());
    auto b16 = lora::load_adapter(name, path, probe.model->config(), nullptr, DType::bf16);
    ASSERT_TRUE(f32.ok() && b16.ok());
    size_t bytes_f32 = 0, bytes_b16 = 0;
    const int modules = for_each_module(*f32, *b16, [&](lora::LoraModule& m, const lora::LoraModule& h) {
      for (auto [x, y] : {std::pair{&m.a, &h.a}, std::pair{&m.b, &h.b}}) {
        ASSERT_EQ(x->dtype, DType::f32);
        ASSERT_EQ(y->dtype, DType::bf16);
        ASSERT_EQ(x->shape_str(), y->shape_str());
        bytes_f32 += x->nbytes();
        bytes_b16 += y->nbytes();
        float* v = x->ptr<float>();
        const auto* w = static_cast<const uint16_t*>(y->data);
        for (int64_t i = 0; i < x->numel(); ++i) {
          ASSERT_EQ(w[i], round_bf16(v[i])) << name << " element " << i;
          v[i] = widen(round_bf16(v[i]));  // the rounded adapter, in f32
        }
      }
    });
    EXPECT_GT(modules, 0) << name;
    EXPECT_EQ(2 * bytes_b16, bytes_f32) << name;
    EXPECT_NE(f32->content_hash, b16->content_hash);
    rounded.emplace(name, std::move(*f32));
  }

  std::vector<engine::Request> requests;
  std::ifstream in(dir / "generate_requests.jsonl");
  for (std::string line; std::getline(in, line);) {
    engine::Request r = test::request_of(nlohmann::json::parse(line));
    r.logprobs = 3;
    requests.push_back(std::move(r));
  }
  // bf16 on the host: "a" and "b" from disk, "c" registered in f32 and converted by the store.
  lora::StoreOptions bf16_host;
  bf16_host.host_dtype = DType::bf16;
  EngineRig rig(kCase, engine::EngineConfig{64, 64}, 512, false, 2, bf16_host);
  ASSERT_EQ(rig.store->host_dtype(), DType::bf16);
  auto c = lora::load_adapter("c", (dir / "adapters" / "c").string(), rig.model->config());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(rig.store->register_adapter("c", std::make_shared<const lora::Adapter>(*c)).ok());
  const auto got = test::run_engine(*rig.engine, requests);
  // f32 on the host, holding the test's rounded values.
  EngineRig ref(kCase, engine::EngineConfig{64, 64}, 512, false, 2);
  for (auto& [name, a] : rounded)
    ASSERT_TRUE(ref.store->register_adapter(name, std::make_shared<const lora::Adapter>(a)).ok());
  const auto want = test::run_engine(*ref.engine, requests);
  int with_adapter = 0;
  for (const engine::Request& r : requests) {
    with_adapter += r.adapter.has_value();
    ASSERT_TRUE(got.count(r.id) && want.count(r.id)) << r.id;
    EXPECT_EQ(got.at(r.id).tokens, want.at(r.id).tokens) << r.id;
    ASSERT_EQ(got.at(r.id).logprobs.size(), want.at(r.id).logprobs.size()) << r.id;
    for (size_t k = 0; k < got.at(r.id).logprobs.size(); ++k)
      EXPECT_EQ(got.at(r.id).logprobs[k].chosen.logprob, want.at(r.id).logprobs[k].chosen.logprob)
          << r.id << " token " << k;
  }
  EXPECT_GT(with_adapter, 0);
  EXPECT_GE(rig.store->loads_from_disk(), 1);
}

}  // namespace
}  // namespace philora
