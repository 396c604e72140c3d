// Adapters never stall the batch (issue 17 §5): an adapter's load from disk
// runs on the store's loader threads while the other requests keep stepping
// (a test hook makes one load slow); when every adapter slot is pinned,
// requests that need no new slot are still admitted, and the one waiting for
// a slot gets it before later requests pin it again; the host tier is
// bounded by bytes; an adapter above the maximum rank is refused at load.
// Every request that completes gives HF's greedy tokens.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <stdexcept>
#include <thread>

#include "lora/adapter.h"
#include "model/engine_rig.h"

namespace philora {
namespace {

using engine::FinishReason;
using test::EngineRig;
using test::read_jsonl;

const char* kCase = "gqa_multi_lora";

std::map<std::string, engine::Request> golden_requests() {
  std::map<std::string, engine::Request> reqs;
  for (const nlohmann::json& line : read_jsonl(test::golden_dir(kCase) / "generate_requests.jsonl"))
    reqs[line["id"].get<std::string>()] = test::request_of(line);
  return reqs;
}

std::map<std::string, std::vector<int32_t>> golden_tokens() {
  std::map<std::string, std::vector<int32_t>> want;
  for (const nlohmann::json& ref : read_jsonl(test::golden_dir(kCase) / "generate_ref.jsonl"))
    want[ref["id"].get<std::string>()] = ref["tokens"].get<std::vector<int32_t>>();
  return want;
}

// A loader hook that holds NAME's load until open() (or 20 s, so that a
// failing test still ends).
struct Gate {
  std::string name;
  std::atomic<bool> opened{false};
  std::atomic<int> waiting{0};
  void hold(const std::string& n) {
    if (n != name) return;
    ++waiting;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!opened && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  void open() { opened = true; }
};

// Per request: its tokens, and the engine step of its first token and of its end.
struct Timeline {
  std::vector<int32_t> tokens;
  int64_t first_token_step = -1;
  int64_t finish_step = -1;
  FinishReason finish = FinishReason::none;
  std::string error;
};

void record(EngineRig& rig, std::map<std::string, Timeline>& t) {
  for (const engine::StepOutput& o : rig.engine->step()) {
    Timeline& r = t[o.id];
    if (r.tokens.empty() && !o.new_tokens.empty()) r.first_token_step = rig.engine->stats().steps;
    r.tokens.insert(r.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
    if (o.finished()) {
      r.finish = o.finish;
      r.error = o.error;
      r.finish_step = rig.engine->stats().steps;
    }
  }
}

void run_to_end(EngineRig& rig, std::map<std::string, Timeline>& t) {
  for (int guard = 0; rig.engine->has_work() && guard < 20000; ++guard) record(rig, t);
  EXPECT_FALSE(rig.engine->has_work());
}

// While adapter a's load is held, the base request and the request for b
// (whose load is not held) run to the end; then a loads and its request
// gives HF's tokens.
TEST(AdapterLoading, ASlowLoadDoesNotStallOtherRequests) {
  Gate gate;
  gate.name = "a";
  lora::StoreOptions options;
  options.before_load = [&](const std::string& n) { gate.hold(n); };
  EngineRig rig(kCase, {4096, 64, false}, 512, true, 4, std::move(options));
  struct Opener {
    Gate& g;
    ~Opener() { g.open(); }
  } opener{gate};
  auto reqs = golden_requests();
  const auto want = golden_tokens();
  for (const char* id : {"g00", "g01", "g02"})  // adapter a, the base model, adapter b
    ASSERT_TRUE(rig.engine->add_request(reqs.at(id)).ok());

  std::map<std::string, Timeline> t;
  for (int guard = 0; guard < 20000 && (t["g01"].finish_step < 0 || t["g02"].finish_step < 0);
       ++guard)
    record(rig, t);
  EXPECT_EQ(gate.waiting.load(), 1) << "a's load is held";
  EXPECT_TRUE(t["g00"].tokens.empty()) << "a's request waits for its adapter";
  EXPECT_EQ(rig.engine->num_waiting(), 1);
  EXPECT_EQ(rig.store->loads_in_flight(), 1);
  EXPECT_EQ(t["g01"].tokens.size(), want.at("g01").size());
  EXPECT_EQ(t["g02"].tokens.size(), want.at("g02").size());
  const int64_t steps_while_loading = rig.engine->stats().steps;
  EXPECT_GE(steps_while_loading, int64_t(want.at("g02").size()))
      << "every token of the others came from a step taken while a was loading";

  gate.open();
  run_to_end(rig, t);
  for (const char* id : {"g00", "g01", "g02"}) {
    EXPECT_EQ(t[id].finish, FinishReason::length) << id << ": " << t[id].error;
    EXPECT_EQ(t[id].tokens, want.at(id)) << id;
  }
  EXPECT_GT(t["g00"].first_token_step, steps_while_loading);
  EXPECT_EQ(rig.store->loads_in_flight(), 0);
  EXPECT_EQ(rig.store->pins(), 0);
  EXPECT_EQ(rig.kv->pages.num_held(), 0);
}

// One adapter slot, pinned by b's request: c's request waits for the slot
// while the base request behind it is admitted at once; b's second request,
// which arrived after c's, does not pin the slot again before c has had it.
TEST(AdapterLoading, BaseRequestsPassWhenEverySlotIsPinned) {
  EngineRig rig(kCase, {4096, 64, false}, 512, true, /*num_slots=*/1);
  ASSERT_TRUE(rig.store->preload("b").ok());
  ASSERT_TRUE(rig.store->preload("c").ok());  // on the host, then replaced in the slot by b
  ASSERT_TRUE(rig.store->preload("b").ok());
  auto reqs = golden_requests();
  const auto want = golden_tokens();
  // g02: b (12 tokens), g03: c, g01: the base model, g04: b again.
  for (const char* id : {"g02", "g03", "g01", "g04"})
    ASSERT_TRUE(rig.engine->add_request(reqs.at(id)).ok());
  std::map<std::string, Timeline> t;
  record(rig, t);
  EXPECT_EQ(rig.engine->num_running(), 2) << "b's first request and the base request";
  EXPECT_EQ(rig.engine->num_waiting(), 2) << "c's, waiting for the slot, and b's second behind it";
  run_to_end(rig, t);
  for (const char* id : {"g01", "g02", "g03", "g04"}) {
    EXPECT_EQ(t[id].finish, FinishReason::length) << id << ": " << t[id].error;
    EXPECT_EQ(t[id].tokens, want.at(id)) << id;
  }
  EXPECT_EQ(t["g01"].first_token_step, 1) << "the base request is admitted at once";
  EXPECT_GT(t["g03"].first_token_step, t["g02"].finish_step) << "c waits for b's slot";
  EXPECT_GT(t["g04"].first_token_step, t["g03"].finish_step)
      << "b's later request waits behind c's for the slot";
  EXPECT_EQ(rig.store->pins(), 0);
}

// An adapter whose rank is above the store's maximum ends its request with a
// message naming the adapter and both ranks (never a path); one within it runs.
TEST(AdapterLoading, ARankAboveTheMaximumIsRefused) {
  const auto dir = test::golden_dir(kCase);
  auto tensors = io::TensorSet::open_model_dir((dir / "model").string());
  ASSERT_TRUE(tensors.ok());
  auto cfg = model::load_config((dir / "model").string());
  ASSERT_TRUE(cfg.ok());
  auto b = lora::load_adapter("b", (dir / "adapters" / "b").string(), *cfg);
  auto c = lora::load_adapter("c", (dir / "adapters" / "c").string(), *cfg);
  ASSERT_TRUE(b.ok() && c.ok());
  ASSERT_GT(b->max_rank, c->max_rank);
  lora::StoreOptions options;
  options.max_rank = c->max_rank;
  EngineRig rig(kCase, {4096, 64, false}, 512, true, 4, std::move(options));
  auto reqs = golden_requests();
  engine::Request b2 = reqs.at("g04");  // b too, waiting for the same load
  b2.id = "g04/2";
  for (const engine::Request& r : {reqs.at("g02"), reqs.at("g03"), reqs.at("g04"), b2})
    ASSERT_TRUE(rig.engine->add_request(r).ok());
  std::map<std::string, Timeline> t;
  run_to_end(rig, t);
  for (const char* id : {"g02", "g04", "g04/2"}) {
    EXPECT_EQ(t[id].finish, FinishReason::adapter_invalid) << id;
    const std::string& e = t[id].error;
    EXPECT_NE(e.find("'b'"), std::string::npos) << e;
    EXPECT_NE(e.find(std::to_string(b->max_rank)), std::string::npos) << e;
    EXPECT_NE(e.find(std::to_string(c->max_rank)), std::string::npos) << e;
    EXPECT_EQ(e.find(dir.string()), std::string::npos) << e;
    EXPECT_TRUE(t[id].tokens.empty()) << id;
  }
  EXPECT_EQ(t["g03"].tokens, golden_tokens().at("g03"));
  EXPECT_EQ(rig.store->loads_from_disk(), 1) << "c only";
}

// A load that throws (a bug, memory running out) fails the requests for that
// adapter with a message that names no server path; the loader thread and
// every other request go on. With admission waiting for loads too (offline
// runs), where a failure must survive until its requests hear of it.
TEST(AdapterLoading, ALoadThatThrowsFailsOnlyItsRequests) {
  for (const bool wait : {false, true}) {
    lora::StoreOptions options;
    options.before_load = [](const std::string& n) {
      if (n == "a") throw std::runtime_error("injected failure reading /secret/dir");
    };
    engine::EngineConfig config{4096, 64, false};
    config.wait_for_adapter_loads = wait;
    EngineRig rig(kCase, config, 512, true, 4, std::move(options));
    auto reqs = golden_requests();
    const auto want = golden_tokens();
    for (const char* id : {"g00", "g01", "g02"})  // adapter a, the base model, adapter b
      ASSERT_TRUE(rig.engine->add_request(reqs.at(id)).ok());
    std::map<std::string, Timeline> t;
    run_to_end(rig, t);
    EXPECT_EQ(t["g00"].finish, FinishReason::adapter_invalid) << "wait " << wait;
    EXPECT_NE(t["g00"].error.find("'a'"), std::string::npos) << t["g00"].error;
    EXPECT_EQ(t["g00"].error.find("/secret"), std::string::npos) << t["g00"].error;
    EXPECT_TRUE(t["g00"].tokens.empty());
    for (const char* id : {"g01", "g02"}) EXPECT_EQ(t[id].tokens, want.at(id)) << id << " wait " << wait;
    EXPECT_EQ(rig.store->loads_in_flight(), 0);
    EXPECT_EQ(rig.store->pins(), 0);
  }
}

// An adapter a waiting request asks for again (prepare) is the host tier's
// most recently used: a load taken in later evicts another one, not it.
TEST(AdapterLoading, AnAdapterAskedForIsNotTheNextToBeEvicted) {
  lora::StoreOptions options;
  options.host_capacity = 2;
  EngineRig rig(kCase, {4096, 64, false}, 512, true, 4, std::move(options));
  lora::AdapterStore& store = *rig.store;
  auto load = [&](const char* name) {
    EXPECT_FALSE(store.prepare(name).ready) << name;
    store.wait_for_all_loads();
    store.poll();
    EXPECT_TRUE(store.prepare(name).ready) << name;
  };
  load("c");
  load("b");
  ASSERT_TRUE(store.prepare("c").ready);  // c's request still waits: asked again
  load("a");                              // over capacity: one of b, c goes
  EXPECT_EQ(store.host_count(), 2);
  const int64_t loads = store.loads_from_disk();
  EXPECT_TRUE(store.prepare("c").ready) << "c was evicted although asked for after b";
  EXPECT_EQ(store.loads_from_disk(), loads);
  EXPECT_FALSE(store.prepare("b").ready) << "b, the least recently asked for, went";
  store.wait_for_all_loads();
  store.poll();
}

// The host tier keeps at most max bytes of adapters (the newest even when
// larger), dropping the least recently used.
TEST(AdapterLoading, HostTierIsBoundedByBytes) {
  const auto dir = test::golden_dir(kCase);
  auto cfg = model::load_config((dir / "model").string());
  ASSERT_TRUE(cfg.ok());
  std::map<std::string, int64_t> bytes;
  for (const char* name : {"a", "b", "c"}) {
    auto a = lora::load_adapter(name, (dir / "adapters" / name).string(), *cfg);
    ASSERT_TRUE(a.ok()) << a.status().message();
    int64_t n = 0;
    for (const auto& layer : a->layers)
      for (const auto& m : layer)
        if (m) n += int64_t(m->a.nbytes() + m->b.nbytes());
    if (a->lm_head) n += int64_t(a->lm_head->a.nbytes() + a->lm_head->b.nbytes());
    bytes[name] = n;
  }
  CpuBackend backend(1);
  lora::AdapterSlots slots(backend, *cfg, 1);
  lora::StoreOptions options;
  options.host_memory_bytes = bytes["a"] + bytes["b"];
  lora::AdapterStore store(*cfg, slots, std::move(options));
  for (const char* name : {"a", "b", "c"})
    store.register_dir(name, (dir / "adapters" / name).string());
  for (const char* name : {"a", "b"}) ASSERT_TRUE(store.preload(name).ok());
  EXPECT_EQ(store.host_count(), 2);
  EXPECT_EQ(store.host_bytes(), bytes["a"] + bytes["b"]);
  EXPECT_EQ(store.host_evictions(), 0);
  ASSERT_TRUE(store.preload("c").ok());  // a, the least recently used, goes first
  int64_t want = bytes["b"] + bytes["c"];
  int64_t kept = 2;
  if (want > bytes["a"] + bytes["b"]) {  // b too
    want = bytes["c"];
    kept = 1;
  }
  EXPECT_EQ(store.host_bytes(), want);
  EXPECT_EQ(store.host_count(), kept);
  EXPECT_EQ(store.host_evictions(), 3 - kept);
  EXPECT_EQ(store.loads_from_disk(), 3);

  lora::StoreOptions tiny;
  tiny.host_memory_bytes = 1;  // smaller than any adapter: the newest stays
  lora::AdapterSlots small_slots(backend, *cfg, 1);
  lora::AdapterStore small(*cfg, small_slots, std::move(tiny));
  for (const char* name : {"a", "b"}) {
    small.register_dir(name, (dir / "adapters" / name).string());
    ASSERT_TRUE(small.preload(name).ok());
    EXPECT_EQ(small.host_count(), 1);
    EXPECT_EQ(small.host_bytes(), bytes[name]);
  }
}

// The modules of an adapter in pack()'s order: layer by layer in Target
// order, then lm_head.
std::vector<const lora::LoraModule*> modules_of(const lora::Adapter& a) {
  std::vector<const lora::LoraModule*> v;
  for (const auto& layer : a.layers)
    for (const auto& m : layer)
      if (m) v.push_back(&*m);
  if (a.lm_head) v.push_back(&*a.lm_head);
  return v;
}

// pack(): two blocks from the allocator, every module's A in the first and B
// in the second, in module order, each at a multiple of kPackAlignment bytes
// and sharing the block's storage, with the adapter's values and content
// hash; an adapter whose matrices mix dtypes is refused.
TEST(AdapterPacking, TwoAlignedBlocksWithTheAdaptersValues) {
  const auto dir = test::golden_dir(kCase);
  auto cfg = model::load_config((dir / "model").string());
  ASSERT_TRUE(cfg.ok());
  for (const char* name : {"a", "b", "c"}) {
    auto a = lora::load_adapter(name, (dir / "adapters" / name).string(), *cfg);
    ASSERT_TRUE(a.ok()) << a.status().message();
    int calls = 0;
    auto p = lora::pack(*a, [&](DType d, int64_t n) {
      ++calls;
      return host_alloc(d, {n});
    });
    ASSERT_TRUE(p.ok()) << p.status().message();
    EXPECT_EQ(calls, 2) << name;
    EXPECT_EQ(p->content_hash, a->content_hash) << name;
    const auto before = modules_of(*a), after = modules_of(*p);
    ASSERT_EQ(before.size(), after.size()) << name;
    ASSERT_FALSE(before.empty()) << name;
    for (const bool is_a : {true, false}) {
      const Tensor& block = is_a ? p->packed_a : p->packed_b;
      const char* begin = static_cast<const char*>(block.data);
      const char* end = begin + block.nbytes();
      const char* previous_end = begin;
      for (size_t i = 0; i < before.size(); ++i) {
        const Tensor& want = is_a ? before[i]->a : before[i]->b;
        const Tensor& got = is_a ? after[i]->a : after[i]->b;
        const char* at = static_cast<const char*>(got.data);
        EXPECT_GE(at, previous_end) << name << " module " << i;
        EXPECT_LE(at + got.nbytes(), end) << name << " module " << i;
        EXPECT_EQ(size_t(at - begin) % lora::kPackAlignment, 0u) << name << " module " << i;
        EXPECT_EQ(got.storage, block.storage) << name << " module " << i;
        ASSERT_EQ(got.shape, want.shape) << name << " module " << i;
        ASSERT_EQ(got.dtype, want.dtype) << name << " module " << i;
        EXPECT_EQ(std::memcmp(got.data, want.data, want.nbytes()), 0) << name << " module " << i;
        previous_end = at + got.nbytes();
      }
    }
    lora::Adapter mixed = lora::with_host_dtype(*a, DType::bf16);
    bool changed = false;
    for (size_t l = 0; l < mixed.layers.size() && !changed; ++l)
      for (size_t t = 0; t < mixed.layers[l].size() && !changed; ++t)
        if (mixed.layers[l][t] && a->layers[l][t]) {
          mixed.layers[l][t]->a = a->layers[l][t]->a;  // f32 beside bf16
          changed = true;
        }
    ASSERT_TRUE(changed) << name;
    auto refused = lora::pack(mixed, [](DType d, int64_t n) { return host_alloc(d, {n}); });
    ASSERT_FALSE(refused.ok()) << name;
    EXPECT_NE(refused.status().message().find("not all of one dtype"), std::string::npos)
        << refused.status().message();
  }
}

// A packed adapter in a slot is its modules: the tables of a slot holding the
// packed adapter point at the same values, ranks and scales as those of a
// slot holding it unpacked.
TEST(AdapterPacking, APackedAdapterInASlotIsTheSameAsUnpacked) {
  const auto dir = test::golden_dir(kCase);
  auto cfg = model::load_config((dir / "model").string());
  ASSERT_TRUE(cfg.ok());
  auto a = lora::load_adapter("a", (dir / "adapters" / "a").string(), *cfg);
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto p = lora::pack(*a, [](DType d, int64_t n) { return host_alloc(d, {n}); });
  ASSERT_TRUE(p.ok()) << p.status().message();
  CpuBackend backend(1);
  lora::AdapterSlots slots(backend, *cfg, 2);
  slots.assign(0, *a);
  slots.assign(1, *p);
  int checked = 0;
  for (int64_t layer = 0; layer < cfg->num_hidden_layers; ++layer)
    for (int t = 0; t < lora::kLayerTargets; ++t) {
      const auto& mod = a->module(layer, lora::Target(t));
      const LoraModuleTable* table = slots.table(layer, lora::Target(t));
      if (!mod) continue;
      ASSERT_NE(table, nullptr);
      const auto* a_ptrs = table->a_ptrs.ptr<int64_t>();
      const auto* b_ptrs = table->b_ptrs.ptr<int64_t>();
      const auto* b_ld = table->b_ld.ptr<int32_t>();
      EXPECT_EQ(table->ranks.ptr<int32_t>()[0], table->ranks.ptr<int32_t>()[1]);
      EXPECT_EQ(table->scales.ptr<float>()[0], table->scales.ptr<float>()[1]);
      const size_t elem = dtype_size(mod->a.dtype);
      for (int s = 0; s < 2; ++s) {
        EXPECT_EQ(std::memcmp(reinterpret_cast<const void*>(a_ptrs[s]), mod->a.data, mod->a.nbytes()), 0)
            << "layer " << layer << " target " << t << " slot " << s;
        for (int64_t row = 0; row < mod->b.rows(); ++row)  // B may sit in LoRA columns (b_ld)
          ASSERT_EQ(std::memcmp(reinterpret_cast<const char*>(b_ptrs[s]) + size_t(row * b_ld[s]) * elem,
                                static_cast<const char*>(mod->b.data) + size_t(row * mod->rank) * elem,
                                size_t(mod->rank) * elem),
                    0)
              << "layer " << layer << " target " << t << " slot " << s << " row " << row;
      }
      ++checked;
    }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace philora
