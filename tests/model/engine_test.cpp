// The continuous-batching engine must produce HF's greedy tokens whatever the
// scheduling: chunked prefill under a tiny token budget, preemption and
// recomputation when the KV cache is short, adapters evicted and reloaded
// when there are fewer slots than adapters.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "engine/engine.h"
#include "io/safetensors.h"
#include "lora/store.h"
#include "model/config.h"
#include "model/weights.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace philora {
namespace {

using test::read_jsonl;

struct Scenario {
  const char* name;
  int64_t budget;       // tokens per step
  int64_t pages;        // KV pages of 4 tokens
  int slots;            // adapter slots
  bool graphs = false;  // decode steps through step graphs (the CPU backend replays the body)
  int64_t lora_columns = 0;  // LoRA columns of the target weights (0: the shrink / expand kernels only)
};

// PHILORA_TEST_DEVICE=cuda runs the schedules on the GPU (tests/gpu/run.sh);
// the default is the CPU backend, which "records" graphs by replaying them.
std::string test_device() {
  const char* d = std::getenv("PHILORA_TEST_DEVICE");
  return d ? d : "cpu";
}

std::unique_ptr<Backend> test_backend(bool graphs) {
  if (test_device() == "cpu") return std::make_unique<CpuBackend>(2, graphs);
  auto b = make_backend(test_device());
  EXPECT_TRUE(b.ok()) << b.status().message();
  return b.ok() ? std::move(b).value() : nullptr;
}

// HF's greedy tokens: exactly on the CPU (fp32); in bf16 a token may differ
// only where the reference itself is a near tie, and the continuations are not
// comparable after it.
void expect_hf_tokens(const std::vector<int32_t>& got, const nlohmann::json& ref,
                      const std::string& what) {
  const auto want = ref["tokens"].get<std::vector<int32_t>>();
  if (test_device() == "cpu") {
    EXPECT_EQ(got, want) << what;
    return;
  }
  ASSERT_EQ(got.size(), want.size()) << what;
  const auto margins = ref["margins"].get<std::vector<double>>();
  for (size_t k = 0; k < want.size(); ++k) {
    if (got[k] == want[k]) continue;
    EXPECT_LT(margins[k], 0.1) << what << " step " << k << ": got " << got[k] << ", HF " << want[k]
                               << " (margin " << margins[k] << ")";
    break;
  }
}

// The golden case's model on `backend` (fails the calling test when it cannot load).
std::unique_ptr<model::Phi3ForCausalLM> load_model(const fs::path& dir, Backend& backend) {
  auto config = model::load_config((dir / "model").string());
  EXPECT_TRUE(config.ok()) << config.status().message();
  if (!config.ok()) return nullptr;
  auto tensors = io::TensorSet::open_model_dir((dir / "model").string());
  EXPECT_TRUE(tensors.ok()) << tensors.status().message();
  if (!tensors.ok()) return nullptr;
  auto weights = model::load_weights(*tensors, *config, backend);
  EXPECT_TRUE(weights.ok()) << weights.status().message();
  if (!weights.ok()) return nullptr;
  return std::make_unique<model::Phi3ForCausalLM>(*config, std::move(*weights), backend);
}

class EngineGolden : public ::testing::TestWithParam<std::tuple<std::string, Scenario>> {};

TEST_P(EngineGolden, GreedyTokensMatchHF) {
  const auto& [case_name, sc] = GetParam();
  const fs::path dir = fs::path(PHILORA_TEST_DATA) / "golden" / case_name;
  const auto backend_ptr = test_backend(sc.graphs);
  ASSERT_NE(backend_ptr, nullptr);
  Backend& backend = *backend_ptr;
  auto loaded = load_model(dir, backend);
  ASSERT_NE(loaded, nullptr);
  model::Phi3ForCausalLM& m = *loaded;
  const model::Phi3Config* config = &m.config();

  lora::AdapterSlots slots(backend, *config, sc.slots);
  if (sc.lora_columns > 0) slots.attach_columns(m.widen_for_lora(sc.lora_columns), sc.lora_columns);
  lora::AdapterStore store(*config, slots, {});
  for (const auto& e : fs::directory_iterator(dir / "adapters"))
    store.register_dir(e.path().filename().string(), e.path().string());
  const int64_t page = 4;
  kv::KvCache kv(backend, config->num_hidden_layers, sc.pages, page, config->num_key_value_heads,
                 config->head_dim);
  engine::EngineConfig engine_config{sc.budget, 64, sc.graphs};
  // The schedule (and so whether "tight" preempts) must not depend on how fast the
  // loader thread reads the disk: every load a step starts finishes before its poll.
  engine_config.wait_for_adapter_loads = true;
  engine::Engine eng(m, kv, &store, engine_config);

  const auto requests = read_jsonl(dir / "generate_requests.jsonl");
  const auto refs = read_jsonl(dir / "generate_ref.jsonl");
  std::map<std::string, std::vector<int32_t>> got;
  std::map<std::string, engine::FinishReason> reason;
  for (const auto& r : requests) {
    engine::Request g;
    g.id = r["id"].get<std::string>();
    g.prompt = r["input_ids"].get<std::vector<int32_t>>();
    if (!r["adapter"].is_null()) g.adapter = r["adapter"].get<std::string>();
    g.max_new_tokens = r["max_new_tokens"].get<int64_t>();
    g.ignore_eos = r.value("ignore_eos", false);
    ASSERT_TRUE(eng.add_request(g).ok());
  }
  for (int guard = 0; eng.has_work() && guard < 10000; ++guard)
    for (const auto& o : eng.step()) {
      EXPECT_TRUE(o.error.empty()) << o.error;
      for (int32_t t : o.new_tokens) got[o.id].push_back(t);
      if (o.finished()) reason[o.id] = o.finish;
    }
  EXPECT_FALSE(eng.has_work());
  std::printf(
      "[%s/%s] steps %ld, preemptions %ld, device uploads %ld, prefix-cache hits %ld of %ld\n",
      case_name.c_str(), sc.name, long(eng.stats().steps), long(eng.stats().preemptions),
      long(store.uploads_to_device()), long(eng.stats().prefix_cache_hits),
      long(eng.stats().prefix_cache_queries));
  for (const auto& ref : refs) {
    const std::string id = ref["id"].get<std::string>();
    expect_hf_tokens(got[id], ref, case_name + "/" + id + " [" + sc.name + "]");
    EXPECT_EQ(reason[id], engine::FinishReason::length);
  }
  const engine::StepRunnerStats& runs = eng.runner_stats();
  std::printf("[%s/%s] eager steps %ld, graph steps %ld, graphs recorded %ld\n", case_name.c_str(),
              sc.name, long(runs.eager_steps), long(runs.graph_steps), long(runs.captures));
  EXPECT_EQ(kv.pages.num_held(), sc.graphs ? 1 : 0)
      << "every page returned (but the pad page while graphs may replay)";
  if (sc.graphs) {
    EXPECT_GT(runs.graph_steps, 0) << "decode steps must have replayed graphs";
    // Every prompt here is ≤ 65 tokens: its steps gather logit rows in a graph.
    EXPECT_GT(runs.graph_gather_steps, 0) << "prompt steps must have replayed gathering graphs";
  } else {
    EXPECT_EQ(runs.graph_steps, 0);
  }
  if (std::string(sc.name) == "tight") {
    EXPECT_GT(eng.stats().preemptions, 0) << "the scenario must preempt";
  }
  if (sc.slots == 1 && case_name == "gqa_multi_lora") {  // the case with several adapters
    EXPECT_GE(store.uploads_to_device(), 2) << "adapters must have been swapped";
  }
}

const Scenario kScenarios[] = {
    {"roomy", 4096, 512, 8},   // everything in the first step
    {"chunked", 5, 512, 8},    // prompts split into 5-token chunks
    {"tight", 16, 12, 8},      // 12 pages of 4 tokens: running sequences preempt each other
    {"one_slot", 64, 512, 1},  // adapters evicted and reloaded through one slot
    // The same through step graphs: padded batch buckets, the pad page, graphs
    // re-recorded as adapters change the LoRA layout, preemption around them.
    {"roomy_graphs", 4096, 512, 8, true},
    {"tight_graphs", 16, 13, 8, true},
    {"one_slot_graphs", 64, 512, 1, true},
    // Decode through the weights' LoRA columns: room for every adapter, room
    // for some (the others' steps keep the kernels), one slot whose columns
    // are freed and placed again as adapters swap.
    {"roomy_columns", 4096, 512, 8, false, 256},
    {"chunked_columns_graphs", 5, 512, 8, true, 256},
    {"tight_few_columns_graphs", 16, 13, 8, true, 24},
    {"one_slot_columns_graphs", 64, 512, 1, true, 16},
};

INSTANTIATE_TEST_SUITE_P(
    Schedules, EngineGolden,
    ::testing::Combine(::testing::Values("gqa_multi_lora", "mqa_longrope", "sliding_window"),
                       ::testing::ValuesIn(kScenarios)),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param).name; });

// Prompt logits (score) through the engine, mixed with generate requests in
// the same steps: every position's logits match HF's (chunked prefill and
// preemption included: a recomputed row is not kept twice), and the
// generate requests still get HF's greedy tokens.
struct PromptScenario {
  const char* name;
  int64_t budget;
  int64_t pages;  // of 4 tokens
};

class EnginePromptLogits
    : public ::testing::TestWithParam<std::tuple<std::string, PromptScenario>> {};

TEST_P(EnginePromptLogits, MatchHF) {
  if (test_device() != "cpu") GTEST_SKIP() << "the CLI's golden tests cover the GPU";
  const auto& [case_name, sc] = GetParam();
  const fs::path dir = fs::path(PHILORA_TEST_DATA) / "golden" / case_name;
  CpuBackend backend(2);
  auto m = load_model(dir, backend);
  ASSERT_NE(m, nullptr);
  lora::AdapterSlots slots(backend, m->config(), 4);
  lora::AdapterStore store(m->config(), slots, {});
  if (fs::exists(dir / "adapters"))
    for (const auto& e : fs::directory_iterator(dir / "adapters"))
      store.register_dir(e.path().filename().string(), e.path().string());
  kv::KvCache kv(backend, m->config().num_hidden_layers, sc.pages, 4,
                 m->config().num_key_value_heads, m->config().head_dim);
  engine::EngineConfig config{sc.budget, 64, false};
  config.wait_for_adapter_loads = true;  // a schedule that does not depend on the disk
  engine::Engine eng(*m, kv, &store, config);
  auto add = [&](const nlohmann::json& r, bool score) {
    engine::Request q;
    q.id = r["id"].get<std::string>();
    q.prompt = r["input_ids"].get<std::vector<int32_t>>();
    if (!r["adapter"].is_null()) q.adapter = r["adapter"].get<std::string>();
    q.max_new_tokens = score ? 0 : r["max_new_tokens"].get<int64_t>();
    q.ignore_eos = r.value("ignore_eos", false);
    q.prompt_logits = score;
    ASSERT_TRUE(eng.add_request(q).ok());
  };
  const auto scores = read_jsonl(dir / "requests.jsonl");
  const auto gens = read_jsonl(dir / "generate_requests.jsonl");
  for (size_t i = 0; i < std::max(scores.size(), gens.size()); ++i) {  // interleaved
    if (i < scores.size()) add(scores[i], true);
    if (i < gens.size()) add(gens[i], false);
  }
  std::map<std::string, std::vector<int32_t>> tokens;
  std::map<std::string, Tensor> logits;
  while (eng.has_work())
    for (auto& o : eng.step()) {
      EXPECT_TRUE(o.error.empty()) << o.error;
      for (int32_t t : o.new_tokens) tokens[o.id].push_back(t);
      if (o.finished() && !o.prompt_logits.empty()) logits[o.id] = o.prompt_logits;
    }
  std::printf("[%s/%s] preemptions %ld, prefix-cache hits %ld of %ld\n", case_name.c_str(), sc.name,
              long(eng.stats().preemptions), long(eng.stats().prefix_cache_hits),
              long(eng.stats().prefix_cache_queries));
  if (std::string(sc.name) == "tight") {
    EXPECT_GT(eng.stats().preemptions, 0) << "the scenario must preempt";
  }
  auto ref = io::TensorSet::open_file((dir / "score_ref.safetensors").string());
  ASSERT_TRUE(ref.ok()) << ref.status().message();
  for (const auto& r : scores) {
    const std::string id = r["id"].get<std::string>();
    ASSERT_TRUE(logits.count(id)) << id << ": no prompt logits";
    EXPECT_TRUE(tokens[id].empty()) << id << ": a prompt-only request generates nothing";
    const Tensor& want = ref->find(id)->view;
    const Tensor& got = logits[id];
    ASSERT_EQ(got.rows(), want.dim(0)) << id;
    ASSERT_EQ(got.cols(), want.dim(1)) << id;
    double num = 0, den = 0;
    for (int64_t k = 0; k < got.numel(); ++k) {
      const double g = got.ptr<float>()[k], w = want.ptr<float>()[k];
      num += (g - w) * (g - w);
      den += w * w;
    }
    EXPECT_LE(std::sqrt(num / den), 1e-4) << case_name << "/" << id << " [" << sc.name << "]";
  }
  for (const auto& ref_tokens : read_jsonl(dir / "generate_ref.jsonl")) {
    const std::string id = ref_tokens["id"].get<std::string>();
    expect_hf_tokens(tokens[id], ref_tokens, case_name + "/" + id + " [" + sc.name + "]");
  }
  EXPECT_EQ(kv.pages.num_held(), 0) << "every page returned";
}

const PromptScenario kPromptScenarios[] = {
    {"one_step", 4096, 512},
    {"chunked", 5, 512},
    {"tight", 16, 12},  // 48 tokens, the longest sequence: they preempt each other
};

INSTANTIATE_TEST_SUITE_P(
    Schedules, EnginePromptLogits,
    ::testing::Combine(::testing::Values("gqa_multi_lora", "mqa_longrope", "sliding_window"),
                       ::testing::ValuesIn(kPromptScenarios)),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param).name; });

// Sampled (not greedy) requests give the same tokens whether their decode
// steps run op by op or replay graphs: the graph path must hand every row its
// own temperature, top-k, top-p and draw, and drop the padding rows.
TEST(EngineGraphs, SampledTokensEqualEager) {
  if (test_device() != "cpu")
    GTEST_SKIP() << "in bf16 the padded batch of a graph may round differently from the eager one";
  const fs::path dir = fs::path(PHILORA_TEST_DATA) / "golden" / "gqa_multi_lora";
  std::map<std::string, std::vector<int32_t>> runs[2];
  for (int graphs = 0; graphs < 2; ++graphs) {
    CpuBackend backend(2, graphs == 1);
    auto m = load_model(dir, backend);
    ASSERT_NE(m, nullptr);
    lora::AdapterSlots slots(backend, m->config(), 4);
    lora::AdapterStore store(m->config(), slots, {});
    for (const auto& e : fs::directory_iterator(dir / "adapters"))
      store.register_dir(e.path().filename().string(), e.path().string());
    kv::KvCache kv(backend, m->config().num_hidden_layers, 256, 4, m->config().num_key_value_heads,
                   m->config().head_dim);
    engine::EngineConfig config{4096, 64, graphs == 1};
    config.wait_for_adapter_loads = true;  // the same schedule in both runs
    engine::Engine eng(*m, kv, &store, config);
    const auto requests = read_jsonl(dir / "generate_requests.jsonl");
    for (size_t i = 0; i < requests.size(); ++i) {
      engine::Request g;
      g.id = requests[i]["id"].get<std::string>();
      g.prompt = requests[i]["input_ids"].get<std::vector<int32_t>>();
      if (!requests[i]["adapter"].is_null()) g.adapter = requests[i]["adapter"].get<std::string>();
      g.max_new_tokens = 12;
      g.ignore_eos = true;
      g.sampling.greedy = i % 4 == 0;  // a greedy row among sampled ones
      g.sampling.temperature = 0.5f + 0.25f * float(i % 3);
      g.sampling.top_k = int64_t(i % 2 == 0 ? 0 : 7);
      g.sampling.top_p = i % 3 == 0 ? 1.0f : 0.9f;
      g.sampling.seed = 100 + i;
      ASSERT_TRUE(eng.add_request(g).ok());
    }
    while (eng.has_work())
      for (const auto& o : eng.step())
        for (int32_t t : o.new_tokens) runs[graphs][o.id].push_back(t);
    if (graphs) {
      EXPECT_GT(eng.runner_stats().graph_steps, 0);
    }
  }
  EXPECT_EQ(runs[0], runs[1]);
  std::set<int32_t> distinct;
  for (const auto& [id, toks] : runs[0]) distinct.insert(toks.begin(), toks.end());
  EXPECT_GT(distinct.size(), 8u) << "sampling must actually vary the tokens";
}

}  // namespace
}  // namespace philora

namespace philora {
namespace {

TEST(AdapterStore, PinnedSlotsAreNeverEvictedAndLruGoesFirst) {
  const fs::path dir = fs::path(PHILORA_TEST_DATA) / "golden" / "gqa_multi_lora";
  CpuBackend backend(1);
  auto config = model::load_config((dir / "model").string());
  ASSERT_TRUE(config.ok());
  lora::AdapterSlots slots(backend, *config, 2);
  lora::AdapterStore store(*config, slots, {(dir / "adapters").string(), 1});

  auto a = store.acquire("a");
  auto b = store.acquire("b");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_FALSE(store.slot_available("c")) << "both slots pinned";
  auto c = store.acquire("c");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().kind, lora::AdapterError::Kind::no_slot);
  store.release(*a);
  EXPECT_TRUE(store.slot_available("c"));
  auto c2 = store.acquire("c");
  ASSERT_TRUE(c2.ok()) << c2.error().detail;
  EXPECT_EQ(*c2, *a) << "the unpinned slot is the one reused";
  auto b2 = store.acquire("b");  // still resident: no upload
  ASSERT_TRUE(b2.ok());
  EXPECT_EQ(*b2, *b);
  EXPECT_EQ(store.uploads_to_device(), 3);
  EXPECT_EQ(store.loads_from_disk(), 3) << "host cache of 1 adapter: b and c came from disk";

  for (const char* bad : {"../a", "a/b", "..", ""}) {
    auto r = store.acquire(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().kind, lora::AdapterError::Kind::not_found) << bad;
  }
  auto missing = store.acquire("nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind, lora::AdapterError::Kind::not_found);
  EXPECT_NE(missing.error().message.find("nope"), std::string::npos) << missing.error().message;
  EXPECT_EQ(missing.error().message.find(dir.string()), std::string::npos)
      << "a client never sees a server path: " << missing.error().message;
  EXPECT_NE(missing.error().detail.find(dir.string()), std::string::npos)
      << "the log gets the path: " << missing.error().detail;
}

}  // namespace
}  // namespace philora
