// Speculative decoding with Medusa drafts (--speculate medusa[:K]) in the
// engine: head i on the final hidden state of a sequence's last computed token
// proposes the token two + i ahead; the chain of the heads' greedy tokens is
// verified in the next step as n-gram drafts are. Whatever the heads, the
// output is the output without speculation: HF's golden tokens, and token for
// token (logprobs bit for bit, seeded sampling draw for draw) the plain run,
// under mixed adapters (the base model's heads and an adapter's own), chunked
// prefill, preemption and the prefix cache; every page comes back.
//
// Two kinds of heads, written by the test in LoRAX's layout:
//   random  random blocks and output matrices: drafts that are mostly
//           rejected (the lossless part);
//   echo    zero blocks (x = h + SiLU(0 · h + 0) = h) over the model's lm_head
//           (MedusaV2): every head proposes the model's own next token from
//           h_t, which is the token two ahead wherever the output repeats a
//           token — the random golden models' greedy runs settle into such
//           repeats, so drafts are accepted and the accepted path runs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/engine_rig.h"
#include "model/medusa.h"
#include "model/speculation_rig.h"

namespace philora {
namespace {

namespace fs = std::filesystem;
using test::EngineRig;
using test::expect_same;
using test::golden_requests;
using test::kGoldenCases;
using test::long_requests;
using test::read_jsonl;
using test::Result;
using test::Schedule;

enum class Kind { random, echo };

// Writes K heads of L blocks (with their own output matrices when `own_out`)
// into a fresh directory under the test's temporary one.
fs::path write_heads(const std::string& name, const model::Phi3Config& c, int64_t k, int64_t l,
                     bool own_out, Kind kind, uint32_t seed) {
  const fs::path dir =
      fs::temp_directory_path() / ("philora_engine_medusa_" + std::to_string(::getpid())) / name;
  fs::create_directories(dir);
  std::ofstream(dir / "config.json")
      << "{\"medusa_num_heads\": " << k << ", \"medusa_num_layers\": " << l << ", \"version\": 2}";
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  const int64_t h = c.hidden_size;
  std::vector<std::vector<float>> store;
  std::vector<std::pair<std::string, Tensor>> tensors;
  auto add = [&](const std::string& n, std::vector<int64_t> shape) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    store.emplace_back(size_t(count), 0.0f);
    if (kind == Kind::random)
      for (float& x : store.back()) x = u(rng);
    Tensor t = shape.size() == 1 ? Tensor(store.back().data(), DType::f32, {shape[0]})
                                 : Tensor(store.back().data(), DType::f32, {shape[0], shape[1]});
    tensors.push_back({n, t});
  };
  store.reserve(size_t(k * (2 * l + 1)));
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < l; ++j) {
      const std::string p = std::to_string(i) + "." + std::to_string(j) + ".linear.";
      add(p + "weight", {h, h});
      add(p + "bias", {h});
    }
    if (own_out) add(std::to_string(i) + "." + std::to_string(l) + ".weight", {c.vocab_size, h});
  }
  const Status s = io::write_safetensors((dir / "medusa_lm_head.safetensors").string(), tensors);
  EXPECT_TRUE(s.ok()) << s.message();
  return dir;
}

class EngineMedusa : public testing::Test {
 protected:
  void TearDown() override {
    fs::remove_all(fs::temp_directory_path() /
                   ("philora_engine_medusa_" + std::to_string(::getpid())));
  }
};

// The heads of a case: the base model's of `base` kind (3 heads, MedusaV2)
// and, for the case's first adapter, its own of `adapter` kind (4 heads of 2
// blocks with their own output matrices, MedusaV1).
std::shared_ptr<engine::MedusaSet> heads_for(const std::string& case_name, CpuBackend& backend,
                                             Kind base, Kind adapter) {
  auto c = model::load_config((test::golden_dir(case_name) / "model").string());
  EXPECT_TRUE(c.ok());
  auto set = std::make_shared<engine::MedusaSet>();
  auto b = model::MedusaHeads::load(
      write_heads(case_name + "_base", *c, 3, 1, false, base, 11).string(), *c, backend);
  EXPECT_TRUE(b.ok()) << b.status().message();
  set->base = std::make_shared<const model::MedusaHeads>(std::move(*b));
  const fs::path adapters = test::golden_dir(case_name) / "adapters";
  std::vector<std::string> names;
  if (fs::exists(adapters))
    for (const auto& e : fs::directory_iterator(adapters)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  if (!names.empty()) {
    auto a = model::MedusaHeads::load(
        write_heads(case_name + "_" + names[0], *c, 4, 2, true, adapter, 12).string(), *c, backend);
    EXPECT_TRUE(a.ok()) << a.status().message();
    set->adapters[names[0]] = std::make_shared<const model::MedusaHeads>(std::move(*a));
  }
  return set;
}

engine::EngineConfig config(int64_t k, int64_t budget = 4096, bool prefix_cache = true) {
  engine::EngineConfig c;
  c.max_batched_tokens = budget;
  c.max_running = 64;
  c.step_graphs = false;
  c.prefix_cache = prefix_cache;
  c.speculate_medusa = k;
  c.wait_for_adapter_loads = true;  // as EngineRig's: a schedule that does not depend on the disk
  return c;
}

// Runs the requests on an engine over the case's model with `kinds` of heads
// (none when k is 0).
Result run(const std::string& case_name, const std::vector<engine::Request>& reqs,
           engine::EngineConfig c, Kind base, Kind adapter, int64_t pages = 512,
           int64_t max_running = 64) {
  c.max_running = max_running;
  EngineRig rig(case_name, c, pages);
  if (c.speculate_medusa > 0) {
    c.medusa = heads_for(case_name, *rig.backend, base, adapter);
    rig.engine = std::make_unique<engine::Engine>(*rig.model, *rig.kv, rig.store.get(), c,
                                                  rig.tokenizer.get());
  }
  Result r;
  r.runs = test::run_engine(*rig.engine, reqs);
  r.stats = rig.engine->stats();
  EXPECT_LE(rig.kv->pages.num_held(), c.step_graphs ? 1 : 0)
      << "every page comes back (but the step runner's pad page)";
  return r;
}

// The golden requests (adapters and the base model in one batch; the case's
// first adapter with heads of its own, the others on the base model's) with
// random and with echo heads: HF's tokens.
TEST_F(EngineMedusa, GoldenTokensWithMixedAdapters) {
  for (const char* name : kGoldenCases)
    for (const Kind kind : {Kind::random, Kind::echo})
      for (const int64_t k : {1, 4}) {
        const Result got = run(name, golden_requests(name), config(k), kind, kind);
        const std::string what = std::string(name) + " K=" + std::to_string(k) +
                                 (kind == Kind::echo ? " echo" : " random");
        for (const nlohmann::json& ref :
             read_jsonl(test::golden_dir(name) / "generate_ref.jsonl")) {
          const auto id = ref["id"].get<std::string>();
          ASSERT_TRUE(got.runs.count(id)) << id;
          EXPECT_EQ(got.runs.at(id).tokens, ref["tokens"].get<std::vector<int32_t>>())
              << what << " " << id;
        }
        EXPECT_GT(got.stats.spec_draft_tokens, 0) << what << ": nothing was drafted";
      }
}

class MedusaSchedules : public EngineMedusa, public testing::WithParamInterface<Schedule> {};

// Long runs on every case, echo heads for the base model and random ones for
// the adapter: the plain output, drafts accepted and rejected.
TEST_P(MedusaSchedules, GreedyEqualsPlain) {
  const Schedule s = GetParam();
  int64_t accepted = 0, drafted = 0, preemptions = 0;
  for (const char* name : kGoldenCases) {
    const std::vector<engine::Request> reqs = long_requests(name);
    const Result plain = run(name, reqs, config(0, s.budget, s.prefix_cache), Kind::echo,
                             Kind::random, s.pages, s.max_running);
    const Result spec = run(name, reqs, config(4, s.budget, s.prefix_cache), Kind::echo,
                            Kind::random, s.pages, s.max_running);
    expect_same(spec, plain, std::string(s.name) + " " + name);
    accepted += spec.stats.spec_accepted_tokens;
    drafted += spec.stats.spec_draft_tokens;
    preemptions += spec.stats.preemptions;
    if (s.max_running < 64) {
      EXPECT_GT(spec.stats.prefix_cache_hits, 0) << name;
    }
    std::printf("[ %s %s ] drafted %lld accepted %lld, steps %lld vs %lld plain\n", s.name, name,
                (long long)spec.stats.spec_draft_tokens, (long long)spec.stats.spec_accepted_tokens,
                (long long)spec.stats.steps, (long long)plain.stats.steps);
  }
  EXPECT_GT(accepted, 0) << "no draft was accepted: the accepted path is not run";
  EXPECT_LT(accepted, drafted) << "no draft was rejected";
  if (s.pages < 512) {
    EXPECT_GT(preemptions, 0) << "the KV cache was not tight";
  }
}

INSTANTIATE_TEST_SUITE_P(engine, MedusaSchedules, testing::ValuesIn(test::kSchedules),
                         test::schedule_name);

// Seeded sampling (bias, bad words, min_new_tokens; raw and processed
// logprobs) draws what it draws without speculation.
TEST_F(EngineMedusa, SeededSamplingEqualsPlain) {
  int64_t accepted = 0;
  for (const char* name : kGoldenCases) {
    std::vector<engine::Request> reqs = long_requests(name);
    uint64_t seed = 7;
    for (size_t i = 0; i < reqs.size(); ++i) {
      engine::SamplingParams& p = reqs[i].sampling;
      p.greedy = false;
      p.temperature = i % 2 ? 0.3f : 0.7f;
      p.top_k = i % 3 ? 0 : 20;
      p.seed = seed++;
      p.logit_bias = {{int32_t(40 + i), 1.5f}};
      p.bad_words = {{90, 55}};
      reqs[i].min_new_tokens = 3;
      if (i % 2) reqs[i].logprob_kind = engine::LogprobKind::processed;
    }
    const Result plain = run(name, reqs, config(0), Kind::echo, Kind::echo);
    const Result spec = run(name, reqs, config(4), Kind::echo, Kind::echo);
    expect_same(spec, plain, std::string("sampling ") + name);
    accepted += spec.stats.spec_accepted_tokens;
  }
  EXPECT_GT(accepted, 0) << "no draft was accepted";
}

// Stop strings and max_new_tokens inside a step that kept several tokens end
// the output where they do without speculation.
TEST_F(EngineMedusa, StopsInsideAnAcceptedRun) {
  const std::string name = "gqa_multi_lora";
  const std::vector<engine::Request> base = long_requests(name);
  const Result free_run = run(name, base, config(4), Kind::echo, Kind::echo);
  std::vector<engine::Request> reqs;
  for (const engine::Request& b : base) {
    const test::Run& r = free_run.runs.at(b.id);
    const int64_t j = test::inside_accepted_run(r);
    if (j < 0) continue;
    engine::Request stop = b;
    stop.id += "-stop";
    stop.stop = {test::token_text(r.tokens[size_t(j)]) +
                 test::token_text(r.tokens[size_t(j + 1)]).substr(0, 1)};
    engine::Request length = b;
    length.id += "-length";
    length.max_new_tokens = j + 1;
    reqs.push_back(stop);
    reqs.push_back(length);
  }
  ASSERT_GE(reqs.size(), 2u) << "no step kept several tokens";
  const Result plain = run(name, reqs, config(0), Kind::echo, Kind::echo);
  const Result spec = run(name, reqs, config(4), Kind::echo, Kind::echo);
  expect_same(spec, plain, "stops");
}

// A request whose adapter has no heads drafts with the base model's; with no
// base heads it does not draft, and the adapter with heads still does.
TEST_F(EngineMedusa, AdaptersWithoutHeadsUseTheBaseHeads) {
  const std::string name = "gqa_multi_lora";
  std::vector<engine::Request> reqs = long_requests(name);
  std::erase_if(reqs, [](const engine::Request& r) { return r.adapter != std::string("b"); });
  ASSERT_FALSE(reqs.empty());
  const Result with_base = run(name, reqs, config(4), Kind::echo, Kind::echo);
  EXPECT_GT(with_base.stats.spec_draft_tokens, 0)
      << "adapter b (no heads) did not use the base heads";

  engine::EngineConfig c = config(4);
  EngineRig rig(name, c);
  auto set = heads_for(name, *rig.backend, Kind::echo, Kind::echo);
  set->base.reset();
  c.medusa = set;
  rig.engine = std::make_unique<engine::Engine>(*rig.model, *rig.kv, rig.store.get(), c,
                                                rig.tokenizer.get());
  test::run_engine(*rig.engine, reqs);
  EXPECT_EQ(rig.engine->stats().spec_draft_tokens, 0) << "drafted without heads";
  std::vector<engine::Request> a = long_requests(name);
  std::erase_if(a, [](const engine::Request& r) { return r.adapter != std::string("a"); });
  ASSERT_FALSE(a.empty());
  for (engine::Request& r : a) r.id += "-again";
  test::run_engine(*rig.engine, a);
  EXPECT_GT(rig.engine->stats().spec_draft_tokens, 0) << "adapter a's own heads did not draft";
  EXPECT_EQ(rig.kv->pages.num_held(), 0);
}

// n and best_of: each candidate (its own generator) drafts with its
// request's heads and gives what it gives without speculation; requests with
// penalties never draft (and their steps need no hidden states).
TEST_F(EngineMedusa, CandidatesEqualPlainAndPenaltiesDoNotDraft) {
  const std::string name = "gqa_multi_lora";
  std::vector<engine::Request> reqs = long_requests(name);
  reqs.resize(4);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].sampling.greedy = false;
    reqs[i].sampling.temperature = 0.5f;
    reqs[i].n = 2;
    if (i % 2) reqs[i].best_of = 3;
  }
  const Result plain = run(name, reqs, config(0), Kind::echo, Kind::echo);
  const Result spec = run(name, reqs, config(4), Kind::echo, Kind::echo);
  EXPECT_GT(spec.stats.spec_accepted_tokens, 0);
  for (const engine::Request& r : reqs) {
    EXPECT_EQ(test::by_output_index(spec.runs.at(r.id)), test::by_output_index(plain.runs.at(r.id)))
        << r.id;
  }

  std::vector<engine::Request> penalized = long_requests(name);
  for (engine::Request& r : penalized) r.sampling.repetition_penalty = 1.2f;
  const Result p0 = run(name, penalized, config(0), Kind::echo, Kind::echo);
  const Result p4 = run(name, penalized, config(4), Kind::echo, Kind::echo);
  expect_same(p4, p0, "penalties");
  EXPECT_EQ(p4.stats.spec_draft_tokens, 0);
}

// With step graphs on: decode steps and verification steps replay graphs
// (the heads read the replay's hidden states), prompts run eager, and the
// output is the plain one.
TEST_F(EngineMedusa, DraftedStepsReplayGraphs) {
  const std::string name = "gqa_multi_lora";
  std::vector<engine::Request> reqs = long_requests(name);
  for (size_t i = 0; i < reqs.size(); ++i)  // fewer and fewer run: late steps draft
    reqs[i].max_new_tokens = 8 + 3 * int64_t(i);
  engine::EngineConfig c = config(0);
  c.step_graphs = true;
  const Result plain = run(name, reqs, c, Kind::echo, Kind::echo);
  engine::EngineConfig m = config(4);
  m.step_graphs = true;
  m.speculate_max_batch = 4;  // more run at first: those steps have no heads' work
  EngineRig rig(name, m);
  m.medusa = heads_for(name, *rig.backend, Kind::echo, Kind::random);
  rig.engine = std::make_unique<engine::Engine>(*rig.model, *rig.kv, rig.store.get(), m,
                                                rig.tokenizer.get());
  Result spec;
  spec.runs = test::run_engine(*rig.engine, reqs);
  spec.stats = rig.engine->stats();
  expect_same(spec, plain, "graphs");
  EXPECT_GT(spec.stats.spec_draft_tokens, 0);
  const engine::StepRunnerStats& st = rig.engine->runner_stats();
  EXPECT_GT(st.graph_verify_steps, 0) << "no verification step replayed a graph";
  EXPECT_GT(st.graph_steps, st.graph_verify_steps) << "no decode step replayed a graph";
  EXPECT_GT(st.eager_steps, 0);
  EXPECT_EQ(rig.kv->pages.num_held(), 1) << "the runner's pad page alone";
}

}  // namespace
}  // namespace philora
