// Prefix caching gives what a cold run gives. Expected values come from HF
// (the golden fixtures: greedy tokens, the logits of every prompt position)
// or from the same engine with the prefix cache off, never from our own
// cached output. Every test also checks that the pages settle: no page held
// at the end (but the step runner's pad page), each one free or cached.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "engine/engine.h"
#include "engine/plan.h"
#include "engine/step_runner.h"
#include "io/safetensors.h"
#include "lora/store.h"
#include "model/config.h"
#include "model/engine_rig.h"
#include "model/rope.h"
#include "model/weights.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace philora {
namespace {

using test::read_jsonl;
using Tokens = std::map<std::string, std::vector<int32_t>>;

constexpr int64_t kPage = 4;

fs::path golden(const std::string& name) { return fs::path(PHILORA_TEST_DATA) / "golden" / name; }

// A golden case's model, adapters and a paged KV cache under one engine, on
// the CPU backend (fp32: greedy tokens equal HF's exactly).
struct Rig {
  std::unique_ptr<CpuBackend> backend;
  std::unique_ptr<model::Phi3ForCausalLM> model;
  std::unique_ptr<lora::AdapterSlots> slots;
  std::unique_ptr<lora::AdapterStore> store;
  std::unique_ptr<kv::KvCache> kv;
  std::unique_ptr<engine::Engine> engine;
  int64_t pages = 0;
  bool graphs = false;  // the step runner holds a pad page

  Rig(const fs::path& dir, engine::EngineConfig config, int64_t num_pages, int adapter_slots = 4,
      lora::StoreOptions store_options = {}) {
    backend = std::make_unique<CpuBackend>(2, config.step_graphs);
    model = test::load_model(dir / "model", *backend);
    const model::Phi3Config& c = model->config();
    slots = std::make_unique<lora::AdapterSlots>(*backend, c, adapter_slots);
    // As EngineRig: a schedule that does not depend on the disk, unless the test holds loads.
    if (!store_options.before_load) config.wait_for_adapter_loads = true;
    store = std::make_unique<lora::AdapterStore>(c, *slots, std::move(store_options));
    test::register_adapters(*store, dir / "adapters");
    pages = num_pages;
    graphs = config.step_graphs;
    kv = std::make_unique<kv::KvCache>(*backend, c.num_hidden_layers, num_pages, kPage,
                                       c.num_key_value_heads, c.head_dim);
    engine = std::make_unique<engine::Engine>(*model, *kv, store.get(), config);
  }

  // Adds each request before step `arrival(i)` (default: all before the
  // first) and steps until all are done: the tokens of each.
  Tokens run(const std::vector<engine::Request>& reqs,
             const std::function<int64_t(size_t)>& arrival = {}) {
    Tokens got;
    size_t next = 0;
    for (int64_t step = 0; step < 100000; ++step) {
      while (next < reqs.size() && (!arrival || arrival(next) <= step)) {
        EXPECT_TRUE(engine->add_request(reqs[next]).ok()) << reqs[next].id;
        got[reqs[next].id];  // present even when it generates nothing
        ++next;
      }
      if (next == reqs.size() && !engine->has_work()) break;
      for (const engine::StepOutput& o : engine->step()) {
        EXPECT_TRUE(o.error.empty()) << o.id << ": " << o.error;
        got[o.id].insert(got[o.id].end(), o.new_tokens.begin(), o.new_tokens.end());
      }
    }
    EXPECT_FALSE(engine->has_work());
    return got;
  }

  // Every page is free or cached and nobody holds one (but the pad page).
  void expect_settled() const {
    const kv::PageManager& m = kv->pages;
    const int32_t pad = graphs ? 1 : 0;
    EXPECT_EQ(m.num_held(), pad) << "refcounts return to zero";
    int32_t cached = 0;
    for (int32_t p = 0; p < m.num_pages(); ++p) {
      if (m.refcount(p) > 0) continue;
      if (m.is_cached(p)) ++cached;
    }
    EXPECT_EQ(m.num_free() + cached + pad, m.num_pages()) << "every page is free or cached";
    EXPECT_EQ(m.num_available(), m.num_pages() - pad);
  }
};

engine::Request request(const std::string& id, std::vector<int32_t> prompt,
                        std::optional<std::string> adapter, int64_t max_new_tokens) {
  engine::Request r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.adapter = std::move(adapter);
  r.max_new_tokens = max_new_tokens;
  r.ignore_eos = true;
  return r;
}

engine::Request from_json(const json& j) {
  return request(j["id"].get<std::string>(), j["input_ids"].get<std::vector<int32_t>>(),
                 j["adapter"].is_null()
                     ? std::nullopt
                     : std::optional<std::string>(j["adapter"].get<std::string>()),
                 j.value("max_new_tokens", int64_t(0)));
}

// The tokens a cold engine (prefix cache off, same schedule) gives.
Tokens cold_run(const fs::path& dir, engine::EngineConfig config, int64_t pages,
                const std::vector<std::vector<engine::Request>>& waves) {
  config.prefix_cache = false;
  Rig rig(dir, config, pages);
  Tokens all;
  for (const auto& wave : waves)
    for (auto& [id, t] : rig.run(wave)) all[id] = t;
  EXPECT_EQ(rig.engine->stats().prefix_cache_queries, 0);
  EXPECT_EQ(rig.kv->pages.num_cached(), 0) << "nothing is cached with the cache off";
  rig.expect_settled();
  return all;
}

// Whole pages of a prompt of `len` tokens a lookup can reuse (its last token is computed).
int64_t reusable(int64_t len) { return (len - 1) / kPage * kPage; }

// ---------------------------------------------------------------------------
// Wave 1 runs HF's generate requests; wave 2 continues each one from half of
// HF's tokens (prompt + the first k generated tokens: its pages were filled
// by decode steps) and repeats each prompt. Every request must give HF's
// greedy tokens; in a roomy cache wave 2 hits every whole page it may reuse.
struct Scenario {
  const char* name;
  int64_t budget;
  int64_t pages;
  bool graphs = false;
};

class PrefixCacheGolden : public ::testing::TestWithParam<std::tuple<std::string, Scenario>> {};

TEST_P(PrefixCacheGolden, ContinuationsAndRepeatsHitAndMatchHF) {
  const auto& [case_name, sc] = GetParam();
  const fs::path dir = golden(case_name);
  Rig rig(dir, {sc.budget, 64, sc.graphs}, sc.pages);
  std::vector<engine::Request> wave1, wave2;
  std::map<std::string, std::vector<int32_t>> want;
  int64_t wave1_tokens = 0, wave2_tokens = 0, wave2_reusable = 0;
  for (const json& ref : read_jsonl(dir / "generate_ref.jsonl"))
    want[ref["id"].get<std::string>()] = ref["tokens"].get<std::vector<int32_t>>();
  for (const json& j : read_jsonl(dir / "generate_requests.jsonl")) {
    engine::Request r = from_json(j);
    const std::vector<int32_t>& hf = want.at(r.id);
    const int64_t k = r.max_new_tokens / 2;
    engine::Request cont = r, again = r;
    cont.id += "+" + std::to_string(k);
    cont.prompt.insert(cont.prompt.end(), hf.begin(), hf.begin() + k);
    cont.max_new_tokens -= k;
    want[cont.id] = std::vector<int32_t>(hf.begin() + k, hf.end());
    again.id += "#again";
    want[again.id] = hf;
    wave1_tokens += int64_t(r.prompt.size());
    for (const engine::Request* q : {&cont, &again}) {
      wave2_tokens += int64_t(q->prompt.size());
      wave2_reusable += reusable(int64_t(q->prompt.size()));
    }
    wave1.push_back(std::move(r));
    wave2.push_back(std::move(cont));
    wave2.push_back(std::move(again));
  }
  Tokens got = rig.run(wave1);
  const engine::EngineStats s1 = rig.engine->stats();
  for (auto& [id, t] : rig.run(wave2)) got[id] = t;
  const engine::EngineStats& s2 = rig.engine->stats();
  for (const auto& [id, tokens] : want)
    EXPECT_EQ(got[id], tokens) << case_name << "/" << id << " [" << sc.name << "]";

  const int64_t hits = s2.prefix_cache_hits - s1.prefix_cache_hits;
  std::printf(
      "[%s/%s] wave 2: %ld of %ld tokens hit (%ld reusable), preemptions %ld, "
      "evictions %ld\n",
      case_name.c_str(), sc.name, long(hits), long(wave2_tokens), long(wave2_reusable),
      long(s2.preemptions), long(rig.kv->pages.num_evictions()));
  if (s2.preemptions == 0) {
    EXPECT_EQ(s1.prefix_cache_queries, wave1_tokens);
    EXPECT_EQ(s2.prefix_cache_queries - s1.prefix_cache_queries, wave2_tokens);
  }
  if (rig.kv->pages.num_evictions() == 0 && s2.preemptions == 0) {
    EXPECT_EQ(hits, wave2_reusable) << "every whole page wave 1 computed is found";
    EXPECT_EQ(s2.prompt_tokens - s1.prompt_tokens, wave2_tokens - hits) << "hits are not computed";
  } else {
    EXPECT_GT(hits, 0);
  }
  if (std::string(sc.name).starts_with("tight")) {
    EXPECT_GT(rig.kv->pages.num_evictions(), 0) << "the scenario must evict cached pages";
  }
  rig.expect_settled();
}

const Scenario kScenarios[] = {
    {"roomy", 4096, 512},
    {"chunked", 5, 512},  // prompts (and wave 2's remainders) in 5-token chunks
    {"tight", 16, 12},    // 12 pages of 4: preemption, and eviction of cached pages
    {"roomy_graphs", 4096, 512, true},
    {"tight_graphs", 16, 13, true},
};

INSTANTIATE_TEST_SUITE_P(
    Schedules, PrefixCacheGolden,
    ::testing::Combine(::testing::Values("gqa_multi_lora", "mqa_longrope", "sliding_window"),
                       ::testing::ValuesIn(kScenarios)),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param).name; });

// ---------------------------------------------------------------------------
// The logits of the positions computed after a hit equal HF's (and a cold
// computation's) for every scored prompt: a cold sequence computes the prompt
// and caches its pages, a second one takes them and computes the rest in
// 3-token chunks. The engine never skips the rows of a prompt-logits request,
// so this drives the same pieces (page manager, planner, step runner) by hand.
class PrefixCacheLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(PrefixCacheLogits, RowsAfterAHitMatchHFAndACold) {
  const fs::path dir = golden(GetParam());
  Rig rig(dir, {4096, 64, false}, 64);
  kv::KvCache& kv = *rig.kv;
  engine::StepRunner runner(*rig.model, kv, &rig.store->slots(), false);
  auto ref = io::TensorSet::open_file((dir / "score_ref.safetensors").string());
  ASSERT_TRUE(ref.ok()) << ref.status().message();
  const int64_t vocab = rig.model->config().vocab_size;
  // Computes [num_computed, end) of `s` in chunks, appending each row's logits.
  auto compute = [&](engine::Sequence& s, int64_t chunk, std::vector<float>& rows) {
    while (s.num_computed < int64_t(s.tokens.size())) {
      const int64_t n = std::min<int64_t>(chunk, int64_t(s.tokens.size()) - s.num_computed);
      ASSERT_TRUE(kv.pages.reserve(s.pages, s.num_computed + n));
      const engine::StepResult r = runner.run(engine::plan_step({{&s, n, false, true}}, kPage), {});
      rows.insert(rows.end(), r.logits.ptr<float>(), r.logits.ptr<float>() + n * vocab);
      s.num_computed += n;
    }
  };
  int64_t checked = 0;
  for (const json& j : read_jsonl(dir / "requests.jsonl")) {
    const engine::Request r = from_json(j);
    const int64_t len = int64_t(r.prompt.size());
    if (reusable(len) == 0) continue;
    const bool rope_long = model::uses_long_rope(rig.model->config(), len);  // as HF scores it
    kv::PrefixSalt salt{0, rope_long};
    int32_t slot = -1;
    if (r.adapter) {
      const lora::Acquired a = rig.store->acquire(*r.adapter);
      ASSERT_TRUE(a.ok()) << a.error().detail;
      slot = *a;
      salt.adapter = rig.store->identity(slot);
    }
    engine::Sequence cold, warm;
    for (engine::Sequence* s : {&cold, &warm}) {
      s->id = r.id;
      s->tokens = r.prompt;
      s->prompt_len = len;
      s->lora_slot = slot;
      s->rope_long = rope_long;
    }
    std::vector<float> cold_rows, warm_rows;
    compute(cold, len, cold_rows);
    kv.pages.cache_full_pages(cold.pages, cold.tokens, len, salt);
    kv.pages.release(cold.pages);
    warm.num_computed = kv.pages.match_prefix(warm.pages, warm.tokens, salt, len - 1);
    ASSERT_EQ(warm.num_computed, reusable(len)) << r.id;
    const int64_t hit = warm.num_computed;
    compute(warm, 3, warm_rows);
    kv.pages.cache_full_pages(warm.pages, warm.tokens, len, salt);
    kv.pages.release(warm.pages);
    if (slot >= 0) rig.store->release(slot);

    const Tensor& want = ref->find(r.id)->view;  // (len, vocab)
    double num = 0, den = 0, num_cold = 0, den_cold = 0;
    for (int64_t p = hit; p < len; ++p)
      for (int64_t v = 0; v < vocab; ++v) {
        const double w = warm_rows[size_t((p - hit) * vocab + v)];
        const double h = want.ptr<float>()[p * vocab + v];
        const double c = cold_rows[size_t(p * vocab + v)];
        num += (w - h) * (w - h);
        den += h * h;
        num_cold += (w - c) * (w - c);
        den_cold += c * c;
      }
    EXPECT_LE(std::sqrt(num / den), 1e-4) << GetParam() << "/" << r.id << " vs HF";
    EXPECT_LE(std::sqrt(num_cold / den_cold), 1e-5) << GetParam() << "/" << r.id << " vs cold";
    ++checked;
  }
  EXPECT_GT(checked, 3);
  rig.expect_settled();
}

INSTANTIATE_TEST_SUITE_P(Cases, PrefixCacheLogits,
                         ::testing::Values("gqa_multi_lora", "mqa_longrope", "sliding_window"));

// ---------------------------------------------------------------------------
// One prompt under three adapters and the base model (HF scored it under c,
// none and b: s03, s05, s06): an adapter changes every layer's K and V, so no
// two of them share a page; the same adapter again finds its own.
TEST(PrefixCache, AdaptersNeverSharePages) {
  const fs::path dir = golden("gqa_multi_lora");
  std::map<std::string, json> scored;
  for (const json& j : read_jsonl(dir / "requests.jsonl")) scored[j["id"]] = j;
  const auto prompt = scored.at("s03")["input_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(prompt, scored.at("s05")["input_ids"].get<std::vector<int32_t>>());
  ASSERT_EQ(prompt, scored.at("s06")["input_ids"].get<std::vector<int32_t>>());
  const std::vector<std::pair<std::string, std::optional<std::string>>> order = {
      {"s03", "c"}, {"s05", std::nullopt}, {"s06", "b"}, {"a", "a"}, {"s03-again", "c"}};
  std::vector<std::vector<engine::Request>> waves;
  for (const auto& [id, adapter] : order) waves.push_back({request(id, prompt, adapter, 6)});

  const engine::EngineConfig config{4096, 64, false};
  const Tokens cold = cold_run(dir, config, 256, waves);
  Rig rig(dir, config, 256);
  auto ref = io::TensorSet::open_file((dir / "score_ref.safetensors").string());
  ASSERT_TRUE(ref.ok());
  const int64_t vocab = rig.model->config().vocab_size, len = int64_t(prompt.size());
  for (size_t w = 0; w < waves.size(); ++w) {
    const int64_t before = rig.engine->stats().prefix_cache_hits;
    const Tokens got = rig.run(waves[w]);
    const std::string& id = order[w].first;
    const int64_t hits = rig.engine->stats().prefix_cache_hits - before;
    EXPECT_EQ(got.at(id), cold.at(id)) << id;
    if (w + 1 < waves.size())
      EXPECT_EQ(hits, 0) << id << ": another adapter's pages must not be found";
    else
      EXPECT_EQ(hits, reusable(len)) << "the same adapter finds its pages";
    if (const io::TensorEntry* e = ref->find(id)) {  // HF's first token: the argmax of the last row
      const float* last = e->view.ptr<float>() + (len - 1) * vocab;
      EXPECT_EQ(got.at(id)[0], int32_t(std::max_element(last, last + vocab) - last)) << id;
    }
  }
  rig.expect_settled();
}

// An adapter reloaded under the same name with other weights (its directory
// changed; evicted from both tiers in between) must not find the old
// adapter's pages.
TEST(PrefixCache, AReloadedAdapterOfTheSameNameFindsNoStalePages) {
  const fs::path dir = golden("gqa_multi_lora");
  const auto prompt =
      read_jsonl(dir / "requests.jsonl")[4]["input_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(prompt.size(), 40u);
  auto run = [&](bool cache) {
    // One device slot and one host adapter: "c" evicts "x" from both.
    Rig rig(dir, {4096, 64, false, cache}, 256, 1, {"", 1});
    rig.store->register_dir("x", (dir / "adapters" / "a").string());
    Tokens got = rig.run({request("x-as-a", prompt, "x", 6)});
    got.merge(rig.run({request("c", {1, 2, 3}, "c", 2)}));
    rig.store->register_dir("x", (dir / "adapters" / "b").string());
    const int64_t before = rig.engine->stats().prefix_cache_hits;
    got.merge(rig.run({request("x-as-b", prompt, "x", 6)}));
    EXPECT_EQ(rig.engine->stats().prefix_cache_hits, before) << "no stale page is found";
    EXPECT_EQ(rig.store->loads_from_disk(), 3) << "x was loaded again from its new directory";
    rig.expect_settled();
    return got;
  };
  const Tokens cold = run(false), warm = run(true);
  EXPECT_EQ(warm.at("x-as-b"), cold.at("x-as-b"));
  EXPECT_EQ(warm.at("x-as-a"), cold.at("x-as-a"));
  EXPECT_NE(cold.at("x-as-a"), cold.at("x-as-b")) << "the two adapters must differ for this test";
}

// LongRoPE: a sequence whose prompt + max_new_tokens exceeds the original
// context uses the long factors for all its positions, so the same prompt has
// other K and V then; the factor choice is part of the key.
TEST(PrefixCache, LongRopeChoiceIsPartOfTheKey) {
  const fs::path dir = golden("mqa_longrope");
  auto prompt = read_jsonl(dir / "requests.jsonl")[4]["input_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(prompt.size(), 31u) << "original_max_position_embeddings is 32";
  const std::vector<std::vector<engine::Request>> waves = {
      {request("short", prompt, std::nullopt, 1)},  // 32 tokens: short factors
      {request("long", prompt, std::nullopt, 10)},  // 41: long factors
      {request("short-again", prompt, std::nullopt, 1)},
      {request("long-again", prompt, std::nullopt, 10)},
  };
  const engine::EngineConfig config{4096, 64, false};
  const Tokens cold = cold_run(dir, config, 256, waves);
  Rig rig(dir, config, 256);
  const int64_t expect_hits[] = {0, 0, reusable(31), reusable(31)};
  for (size_t w = 0; w < waves.size(); ++w) {
    const std::string& id = waves[w][0].id;
    const int64_t before = rig.engine->stats().prefix_cache_hits;
    const Tokens got = rig.run(waves[w]);
    EXPECT_EQ(got.at(id), cold.at(id)) << id;
    EXPECT_EQ(rig.engine->stats().prefix_cache_hits - before, expect_hits[w]) << id;
  }
  EXPECT_NE(cold.at("short")[0], cold.at("long")[0])
      << "the factors must change this prompt's next token for the test to see a stale page";
  rig.expect_settled();
}

// Requests sharing a long stem (half of them with an adapter) arrive one per
// step under a small budget: later ones find the pages earlier ones of their
// adapter have filled so far, and all give what a cold engine gives (sliding
// window: the stem is longer than the window, and pages out of the window are
// reused too).
class PrefixCacheStaggered : public ::testing::TestWithParam<std::string> {};

TEST_P(PrefixCacheStaggered, SharedStemMidPrefillMatchesCold) {
  const fs::path dir = golden(GetParam());
  std::vector<int32_t> stem;  // the longest scored prompt (40 or 48 tokens)
  for (const json& j : read_jsonl(dir / "requests.jsonl"))
    if (j["input_ids"].size() > stem.size()) stem = j["input_ids"].get<std::vector<int32_t>>();
  ASSERT_GE(stem.size(), 40u);
  std::optional<std::string> adapter;
  if (fs::exists(dir / "adapters"))
    adapter = fs::directory_iterator(dir / "adapters")->path().filename().string();
  std::vector<engine::Request> wave;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p(stem.begin(), stem.begin() + 30);
    for (int k = 0; k <= i; ++k) p.push_back(stem[size_t(30 + k)] ^ (i + 1));
    wave.push_back(request("r" + std::to_string(i), p, i % 2 ? adapter : std::nullopt, 5));
  }
  auto arrival = [](size_t i) { return int64_t(i); };
  const engine::EngineConfig config{16, 64, false};
  Tokens cold;
  {
    engine::EngineConfig off = config;
    off.prefix_cache = false;
    Rig rig(dir, off, 256);
    cold = rig.run(wave, arrival);
  }
  Rig rig(dir, config, 256);
  const Tokens got = rig.run(wave, arrival);
  for (const auto& r : wave) EXPECT_EQ(got.at(r.id), cold.at(r.id)) << GetParam() << "/" << r.id;
  std::printf("[%s] %ld of %ld tokens hit\n", GetParam().c_str(),
              long(rig.engine->stats().prefix_cache_hits),
              long(rig.engine->stats().prefix_cache_queries));
  EXPECT_GT(rig.engine->stats().prefix_cache_hits, 0)
      << "later requests must share the stem, within adapter";
  rig.expect_settled();
}

// A prompt-logits request (philora score) computes every prompt position even
// when its whole prompt is cached: its logits match HF's at every position.
// After a preemption it may reuse the pages of the rows it has kept (the
// "tight" schedule of EnginePromptLogits covers that).
TEST(PrefixCache, PromptLogitsRequestsComputeEveryPosition) {
  const fs::path dir = golden("sliding_window");
  Rig rig(dir, {4096, 64, false}, 256);
  auto ref = io::TensorSet::open_file((dir / "score_ref.safetensors").string());
  ASSERT_TRUE(ref.ok());
  for (const json& j : read_jsonl(dir / "requests.jsonl")) {
    engine::Request gen = from_json(j), score = from_json(j);
    gen.id += "#generate";
    gen.max_new_tokens = 2;
    rig.run({gen});  // caches the prompt's pages
    score.prompt_logits = true;
    ASSERT_TRUE(rig.engine->add_request(score).ok());
    const engine::EngineStats before = rig.engine->stats();
    Tensor logits;
    while (rig.engine->has_work())
      for (engine::StepOutput& o : rig.engine->step())
        if (o.finished()) logits = std::move(o.prompt_logits);
    const engine::EngineStats& after = rig.engine->stats();
    EXPECT_EQ(after.prefix_cache_hits, before.prefix_cache_hits) << score.id;
    EXPECT_EQ(after.prompt_tokens - before.prompt_tokens, int64_t(score.prompt.size())) << score.id;
    const Tensor& want = ref->find(score.id)->view;
    ASSERT_EQ(logits.rows(), want.dim(0)) << score.id << ": every position's logits";
    double num = 0, den = 0;
    for (int64_t k = 0; k < want.numel(); ++k) {
      const double g = logits.ptr<float>()[k], w = want.ptr<float>()[k];
      num += (g - w) * (g - w);
      den += w * w;
    }
    EXPECT_LE(std::sqrt(num / den), 1e-4) << score.id;
  }
  rig.expect_settled();
}

// A request admitted while another with the same stem is in the middle of its
// prefill reuses the pages computed so far: r0 computes 16 of its 31 tokens in
// step 0 (the whole budget); in step 1 it takes 15, and r1, admitted with the
// budget left, finds r0's first 4 pages.
TEST(PrefixCache, MidPrefillHitsThePagesComputedSoFar) {
  const fs::path dir = golden("gqa_multi_lora");
  auto stem = read_jsonl(dir / "requests.jsonl")[4]["input_ids"].get<std::vector<int32_t>>();
  stem.resize(31);
  std::vector<int32_t> other = stem;
  other.back() ^= 1;
  const std::vector<engine::Request> wave = {request("r0", stem, "a", 4),
                                             request("r1", other, "a", 4)};
  auto arrival = [](size_t i) { return int64_t(i); };
  const engine::EngineConfig config{16, 64, false};
  Tokens cold;
  {
    engine::EngineConfig off = config;
    off.prefix_cache = false;
    Rig rig(dir, off, 256);
    cold = rig.run(wave, arrival);
  }
  Rig rig(dir, config, 256);
  const Tokens got = rig.run(wave, arrival);
  EXPECT_EQ(got.at("r0"), cold.at("r0"));
  EXPECT_EQ(got.at("r1"), cold.at("r1"));
  EXPECT_EQ(rig.engine->stats().prefix_cache_hits, 16);
  EXPECT_EQ(rig.engine->stats().prefix_cache_queries, 62);
  rig.expect_settled();
}

INSTANTIATE_TEST_SUITE_P(Cases, PrefixCacheStaggered,
                         ::testing::Values("gqa_multi_lora", "mqa_longrope", "sliding_window"));

TEST(PrefixCache, OffLooksNothingUpAndCachesNothing) {
  const fs::path dir = golden("gqa_multi_lora");
  Rig rig(dir, {4096, 64, false, false}, 256);
  std::vector<engine::Request> wave;
  for (const json& j : read_jsonl(dir / "generate_requests.jsonl")) wave.push_back(from_json(j));
  rig.run(wave);
  for (engine::Request& r : wave) r.id += "#again";
  rig.run(wave);
  EXPECT_EQ(rig.engine->stats().prefix_cache_queries, 0);
  EXPECT_EQ(rig.engine->stats().prefix_cache_hits, 0);
  EXPECT_EQ(rig.kv->pages.num_cached(), 0);
  EXPECT_EQ(rig.kv->pages.num_free(), rig.pages);
}

}  // namespace
}  // namespace philora
