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

#include <algorithm>
#include <cmath>
#include <cstdlib>
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
  c.speculate_row_cost = 0.0;       // the longest chains every step: the most to verify
  c.wait_for_adapter_loads = true;  // as EngineRig's: a schedule that does not depend on the disk
  return c;
}

// The rig's engine again, on config `c` with heads `set`.
void restart_with_heads(EngineRig& rig, engine::EngineConfig c,
                        std::shared_ptr<engine::MedusaSet> set) {
  c.medusa = std::move(set);
  rig.engine = std::make_unique<engine::Engine>(*rig.model, *rig.kv, rig.store.get(), c,
                                                rig.tokenizer.get());
}

// Runs the requests on an engine over the case's model with `kinds` of heads
// (none when k is 0).
Result run(const std::string& case_name, const std::vector<engine::Request>& reqs,
           engine::EngineConfig c, Kind base, Kind adapter, int64_t pages = 512,
           int64_t max_running = 64) {
  c.max_running = max_running;
  EngineRig rig(case_name, c, pages);
  if (c.speculate_medusa > 0)
    restart_with_heads(rig, c, heads_for(case_name, *rig.backend, base, adapter));
  Result r;
  r.runs = test::run_engine(*rig.engine, reqs);
  r.stats = rig.engine->stats();
  r.heads_steps = rig.engine->runner_stats().heads_steps;
  EXPECT_LE(rig.kv->pages.num_held(), c.step_graphs ? 1 : 0)
      << "every page comes back (but the step runner's pad page)";
  return r;
}

// The golden requests (adapters and the base model in one batch; the case's
// first adapter with heads of its own, the others on the base model's) with
// random and with echo heads: HF's tokens. Steps whose drafting sequences
// share one heads set run them inside the step; steps of both sets run them
// after it.
TEST_F(EngineMedusa, GoldenTokensWithMixedAdapters) {
  int64_t inside = 0, after = 0;
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
        inside += got.heads_steps;
        after += got.stats.spec_eager_heads_steps;
      }
  EXPECT_GT(inside, 0) << "no step ran the heads inside";
  EXPECT_GT(after, 0) << "no step ran two sets of heads after it";
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

// Tree speculation (--speculate-paths 4): chains that branch into each
// head's likeliest tokens (medusa_draft_paths), each verified as a row group
// of its own: the plain output on every case under every schedule, with
// alternatives verified, and winning where the budget and the pages leave
// them room.
TEST_P(MedusaSchedules, TreeEqualsPlain) {
  const Schedule s = GetParam();
  int64_t chains = 0, won = 0;
  for (const char* name : kGoldenCases) {
    const std::vector<engine::Request> reqs = long_requests(name);
    const Result plain = run(name, reqs, config(0, s.budget, s.prefix_cache), Kind::echo,
                             Kind::random, s.pages, s.max_running);
    engine::EngineConfig c = config(4, s.budget, s.prefix_cache);
    c.speculate_paths = 4;
    const Result tree = run(name, reqs, c, Kind::echo, Kind::random, s.pages, s.max_running);
    expect_same(tree, plain, std::string("tree ") + s.name + " " + name);
    chains += tree.stats.spec_alt_chains;
    won += tree.stats.spec_alt_tokens;
    std::printf(
        "[ tree %s %s ] drafted %lld accepted %lld, alternative chains %lld won %lld, "
        "steps %lld vs %lld plain\n",
        s.name, name, (long long)tree.stats.spec_draft_tokens,
        (long long)tree.stats.spec_accepted_tokens, (long long)tree.stats.spec_alt_chains,
        (long long)tree.stats.spec_alt_tokens, (long long)tree.stats.steps,
        (long long)plain.stats.steps);
  }
  EXPECT_GT(chains, 0) << "no alternative chain was verified";
  if (s.budget >= 4096 && s.pages >= 512) {
    EXPECT_GT(won, 0) << "no alternative chain won";
  }
}

// ngram+medusa: n-gram lookup's chain first, the heads' where lookup finds
// none — and with --speculate-paths both kinds as candidates: the plain output
// on every case under every schedule.
TEST_P(MedusaSchedules, NgramPlusMedusaEqualsPlain) {
  const Schedule s = GetParam();
  for (const int64_t paths : {1, 4}) {
    int64_t accepted = 0, medusa_only = 0;
    for (const char* name : kGoldenCases) {
      const std::vector<engine::Request> reqs = long_requests(name);
      const Result plain = run(name, reqs, config(0, s.budget, s.prefix_cache), Kind::echo,
                               Kind::random, s.pages, s.max_running);
      engine::EngineConfig c = config(4, s.budget, s.prefix_cache);
      c.speculate_ngram = 4;
      c.speculate_paths = paths;
      const Result both = run(name, reqs, c, Kind::echo, Kind::random, s.pages, s.max_running);
      expect_same(both, plain, std::string("ngram+medusa ") + s.name + " " + name);
      accepted += both.stats.spec_accepted_tokens;
      c.speculate_ngram = 0;
      medusa_only += run(name, reqs, c, Kind::echo, Kind::random, s.pages, s.max_running)
                         .stats.spec_accepted_tokens;
    }
    EXPECT_GT(accepted, 0) << "paths " << paths;
    std::printf("[ ngram+medusa %s paths %lld ] accepted %lld (medusa alone %lld)\n", s.name,
                (long long)paths, (long long)accepted, (long long)medusa_only);
  }
}

INSTANTIATE_TEST_SUITE_P(engine, MedusaSchedules, testing::ValuesIn(test::kSchedules),
                         test::schedule_name);

// Tree speculation with one set of heads in graphs: the heads' top lists
// come back with the step's tokens (one sample op, inside the replay), the
// alternatives replay verification graphs beside their sequences, and the
// output is the plain one; seeded sampling too.
TEST_F(EngineMedusa, TreeStepsReplayGraphs) {
  const std::string name = "gqa_multi_lora";
  std::vector<engine::Request> reqs = long_requests(name);
  std::erase_if(reqs, [](const engine::Request& r) { return r.adapter == std::string("a"); });
  ASSERT_GE(reqs.size(), 2u);
  for (const bool sampled : {false, true}) {
    if (sampled)
      for (size_t i = 0; i < reqs.size(); ++i) {
        reqs[i].sampling.greedy = false;
        reqs[i].sampling.temperature = i % 2 ? 0.3f : 0.8f;
      }
    engine::EngineConfig c = config(0);
    c.step_graphs = true;
    const Result plain = run(name, reqs, c, Kind::echo, Kind::echo);
    engine::EngineConfig m = config(4);
    m.step_graphs = true;
    m.speculate_paths = 4;
    EngineRig rig(name, m);
    restart_with_heads(rig, m, heads_for(name, *rig.backend, Kind::echo, Kind::random));
    Result tree;
    tree.runs = test::run_engine(*rig.engine, reqs);
    tree.stats = rig.engine->stats();
    const std::string what = sampled ? "tree graphs sampled" : "tree graphs";
    expect_same(tree, plain, what);
    const engine::StepRunnerStats& st = rig.engine->runner_stats();
    EXPECT_GT(tree.stats.spec_alt_chains, 0) << what;
    EXPECT_EQ(tree.stats.spec_eager_heads_steps, 0) << what;
    EXPECT_GT(st.heads_steps, 0) << what;
    EXPECT_GT(st.graph_verify_steps, 0) << what;
    std::printf(
        "[ %s ] drafted %lld accepted %lld, alternative chains %lld won %lld, graph "
        "steps %lld (verify %lld) of %lld\n",
        what.c_str(), (long long)tree.stats.spec_draft_tokens,
        (long long)tree.stats.spec_accepted_tokens, (long long)tree.stats.spec_alt_chains,
        (long long)tree.stats.spec_alt_tokens, (long long)st.graph_steps,
        (long long)st.graph_verify_steps, (long long)tree.stats.steps);
    EXPECT_EQ(rig.kv->pages.num_held(), 1) << "the runner's pad page alone";
  }
}

// Seeded sampling (bias, bad words, min_new_tokens; raw and processed
// logprobs) draws what it draws without speculation.
TEST_F(EngineMedusa, SeededSamplingEqualsPlain) {
  int64_t accepted = 0;
  for (const char* name : kGoldenCases) {
    std::vector<engine::Request> reqs = long_requests(name);
    test::make_seeded_sampling(reqs, /*bad_words=*/true);
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
  restart_with_heads(rig, c, set);
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
  restart_with_heads(rig, m, heads_for(name, *rig.backend, Kind::echo, Kind::random));
  Result spec;
  spec.runs = test::run_engine(*rig.engine, reqs);
  spec.stats = rig.engine->stats();
  expect_same(spec, plain, "graphs");
  EXPECT_GT(spec.stats.spec_draft_tokens, 0);
  const engine::StepRunnerStats& st = rig.engine->runner_stats();
  EXPECT_GT(st.graph_verify_steps, 0) << "no verification step replayed a graph";
  EXPECT_GT(st.graph_steps, st.graph_verify_steps) << "no decode step replayed a graph";
  EXPECT_GT(st.eager_steps, 0);
  EXPECT_GT(st.heads_steps, 0) << "no step ran the heads inside";
  std::printf("[ graphs ] heads inside %lld steps, after %lld, graph steps %lld (verify %lld)\n",
              (long long)st.heads_steps, (long long)spec.stats.spec_eager_heads_steps,
              (long long)st.graph_steps, (long long)st.graph_verify_steps);
  EXPECT_EQ(rig.kv->pages.num_held(), 1) << "the runner's pad page alone";
}

// One set of heads (requests on the base model and on adapter b, which has
// none): every step that drafts runs the heads inside, in graphs for decode
// and verification steps, under chunked prefill and a tight KV cache
// (preemption); the output is the plain one and no step waits for the device
// twice.
TEST_F(EngineMedusa, OneSetRunsInsideGraphs) {
  const std::string name = "gqa_multi_lora";
  std::vector<engine::Request> reqs = long_requests(name);
  std::erase_if(reqs, [](const engine::Request& r) { return r.adapter == std::string("a"); });
  ASSERT_GE(reqs.size(), 2u);
  for (engine::Request& r : reqs) r.logprobs.reset();  // their lists are downloads of their own
  for (const Schedule& s : {test::kSchedules[0], test::kSchedules[3], test::kSchedules[5]}) {
    engine::EngineConfig c = config(0, s.budget, s.prefix_cache);
    c.step_graphs = true;
    const Result plain = run(name, reqs, c, Kind::echo, Kind::echo, s.pages, s.max_running);
    engine::EngineConfig m = config(4, s.budget, s.prefix_cache);
    m.step_graphs = true;
    m.max_running = s.max_running;
    EngineRig rig(name, m, s.pages);
    restart_with_heads(rig, m, heads_for(name, *rig.backend, Kind::echo, Kind::random));
    Result spec;
    spec.runs = test::run_engine(*rig.engine, reqs);
    spec.stats = rig.engine->stats();
    expect_same(spec, plain, std::string("one set ") + s.name);
    const engine::StepRunnerStats& st = rig.engine->runner_stats();
    EXPECT_GT(spec.stats.spec_accepted_tokens, 0) << s.name;
    EXPECT_EQ(spec.stats.spec_eager_heads_steps, 0) << s.name;
    EXPECT_GT(st.heads_steps, 0) << s.name;
    EXPECT_GT(st.graph_verify_steps, 0) << s.name;
    EXPECT_LE(st.downloads, spec.stats.steps) << s.name << ": one wait a step at most";
    if (s.pages < 512) {
      EXPECT_GT(spec.stats.preemptions, 0) << s.name;
    }
    std::printf("[ %s ] heads inside %lld of %lld steps, graph steps %lld (verify %lld)\n", s.name,
                (long long)st.heads_steps, (long long)spec.stats.steps, (long long)st.graph_steps,
                (long long)st.graph_verify_steps);
    EXPECT_EQ(rig.kv->pages.num_held(), 1) << "the runner's pad page alone";
  }
}

// The heads inside a step (StepRunner::run with heads): on every logit row of
// a prompt step, a decode step and a verification-shaped step (k + 1 rows per
// sequence, k = 0, 2, 5), eager and replaying CPU graphs (the prompt step's
// gathering its logit rows), with heads on the
// model's lm_head (MedusaV2) and with their own output matrices (MedusaV1),
// the step's drafts are MedusaHeads::draft's on the same rows' hidden states
// (the eager, independent path), its tokens are the tokens of the same step
// without heads, and it waits for the device once. PHILORA_TEST_DEVICE=cuda
// runs it on the GPU (CUDA graphs; both paths read the same bf16 logits).
class StepHeads : public EngineMedusa,
                  public testing::WithParamInterface<std::tuple<bool, bool>> {};

TEST_P(StepHeads, DraftsEqualTheEagerHeads) {
  const bool graphs = std::get<0>(GetParam()), own_out = std::get<1>(GetParam());
  const char* device = std::getenv("PHILORA_TEST_DEVICE");
  std::unique_ptr<Backend> backend;
  if (!device || std::string(device) == "cpu") {
    backend = std::make_unique<CpuBackend>(2, graphs);
  } else {
    auto b = make_backend(device);
    ASSERT_TRUE(b.ok()) << b.status().message();
    backend = std::move(*b);
  }
  const auto model = test::load_model(test::golden_dir("gqa_multi_lora") / "model", *backend);
  const model::Phi3Config& mc = model->config();
  kv::KvCache kv(*backend, mc.num_hidden_layers, 64, 4, mc.num_key_value_heads, mc.head_dim);
  auto loaded = model::MedusaHeads::load(write_heads(own_out ? "v1" : "v2", mc, own_out ? 4 : 3,
                                                     own_out ? 2 : 1, own_out, Kind::random, 21)
                                             .string(),
                                         mc, *backend);
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  const model::MedusaHeads& heads = *loaded;
  const int64_t K = heads.num_heads();
  engine::StepRunner runner(*model, kv, nullptr, graphs);

  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> token(3, int32_t(mc.vocab_size) - 1);
  const std::vector<int64_t> prompt = {5, 9, 3}, drafts = {2, 0, 5};
  std::vector<engine::Sequence> seqs(prompt.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    engine::Sequence& q = seqs[i];
    q.id = "s" + std::to_string(i);
    for (int64_t j = 0; j < prompt[i]; ++j) q.tokens.push_back(token(rng));
    q.prompt_len = prompt[i];
    const int64_t total = prompt[i] + 2 + drafts[i];
    while (int64_t(q.pages.ids.size()) * kv.page_size < total)
      q.pages.ids.push_back(*kv.pages.allocate());
  }
  // One step over `work` with heads (and their hidden states) and without.
  auto step = [&](const std::vector<engine::SeqWork>& work,
                  const std::string& what) -> std::vector<int32_t> {
    const engine::StepPlan plan = engine::plan_step(work, kv.page_size);
    std::vector<engine::SampleRow> rows(plan.logit_rows.size());
    rows[0].temperature = 0.8f;  // one sampled row: its draw is the same with heads
    rows[0].uniform = 0.37f;
    const engine::StepRunnerStats before = runner.stats();
    const engine::StepResult with =
        runner.run(plan, rows, Tensor(), nullptr, /*want_hidden=*/true, &heads);
    const engine::StepRunnerStats& after = runner.stats();
    EXPECT_EQ(after.downloads - before.downloads, 1) << what << ": one wait for the device";
    EXPECT_EQ(after.heads_steps - before.heads_steps, 1) << what;
    EXPECT_EQ(after.graph_steps - before.graph_steps, graphs ? 1 : 0) << what;
    EXPECT_EQ(after.graph_gather_steps - before.graph_gather_steps,
              graphs && what == "prompt" ? 1 : 0)
        << what << ": a prompt step's graph gathers its logit rows";
    const auto R = int64_t(plan.logit_rows.size());
    EXPECT_EQ(int64_t(with.drafts.size()), R * K) << what;
    if (int64_t(with.drafts.size()) != R * K) return with.tokens;
    std::vector<int32_t> eager = heads.draft(*backend, with.hidden, model->lm_head());
    eager.resize(size_t(R * K));  // a graph's hidden states hold its padding rows too
    EXPECT_EQ(with.drafts, eager) << what;
    const engine::StepResult without = runner.run(plan, rows);
    EXPECT_EQ(with.tokens, without.tokens) << what;
    EXPECT_TRUE(without.drafts.empty());
    // Tree speculation's top lists: each head's 3 likeliest tokens and their
    // logprobs, against a float64 log-softmax of the head's logits on the
    // same hidden states (MedusaHeads::logits, the independent path).
    constexpr int64_t kTop = 3;
    const engine::StepResult top =
        runner.run(plan, rows, Tensor(), nullptr, /*want_hidden=*/true, &heads, kTop);
    EXPECT_EQ(top.tokens, with.tokens) << what;
    EXPECT_EQ(top.drafts, with.drafts) << what;
    EXPECT_TRUE(top.top_tokens.empty()) << what << ": the step's rows asked for no logprobs";
    EXPECT_EQ(int64_t(top.draft_top.size()), R * K * kTop) << what;
    if (int64_t(top.draft_top.size()) != R * K * kTop) return with.tokens;
    const Tensor hidden_rows = top.hidden.row_slice(0, R);
    const bool gpu = backend->device() != Device::cpu;
    for (int64_t i = 0; i < K; ++i) {
      const Tensor logits =
          backend->to_host_f32(heads.logits(*backend, hidden_rows, model->lm_head(), i));
      for (int64_t r = 0; r < R; ++r) {
        const float* x = logits.ptr<float>() + r * logits.cols();
        std::vector<double> lp(size_t(logits.cols()));
        double most = -INFINITY, sum = 0;
        for (int64_t v = 0; v < logits.cols(); ++v) most = std::max(most, double(x[v]));
        for (int64_t v = 0; v < logits.cols(); ++v) sum += std::exp(double(x[v]) - most);
        for (int64_t v = 0; v < logits.cols(); ++v)
          lp[size_t(v)] = double(x[v]) - most - std::log(sum);
        for (int64_t j = 0; j < kTop; ++j) {
          const auto at = size_t((r * K + i) * kTop + j);
          const int32_t t = top.draft_top[at];
          EXPECT_TRUE(t >= 0 && t < logits.cols()) << what << ": token " << t;
          if (t < 0 || t >= logits.cols()) continue;
          const double tolerance = (gpu ? 2e-2 : 1e-4) * std::max(1.0, std::abs(lp[size_t(t)]));
          EXPECT_NEAR(top.draft_top_logprob[at], lp[size_t(t)], tolerance)
              << what << " row " << r << " head " << i << " top " << j;
          int64_t above = 0;  // tokens likelier than t: exactly j of them (ties aside)
          for (int64_t v = 0; v < logits.cols(); ++v) above += lp[size_t(v)] > lp[size_t(t)];
          if (!gpu) {
            EXPECT_EQ(above, j) << what << " row " << r << " head " << i << " top " << j;
          }
        }
        EXPECT_EQ(top.draft_top[size_t((r * K + i) * kTop)], with.drafts[size_t(r * K + i)])
            << what << ": the greedy draft is the likeliest";
      }
    }
    return with.tokens;
  };
  // The prompts (a prompt step: its graph gathers the logit rows).
  std::vector<engine::SeqWork> work;
  for (engine::Sequence& q : seqs) work.push_back({&q, q.prompt_len, true, false, true});
  std::vector<int32_t> next = step(work, "prompt");
  for (size_t i = 0; i < seqs.size(); ++i) {
    seqs[i].num_computed = seqs[i].prompt_len;
    seqs[i].tokens.push_back(next[i]);
  }
  // A decode step.
  work.clear();
  for (engine::Sequence& q : seqs) work.push_back({&q, 1, true, false, true});
  next = step(work, "decode");
  // Verification-shaped: the new token and k drafts each, every row a logit row.
  work.clear();
  for (size_t i = 0; i < seqs.size(); ++i) {
    engine::Sequence& q = seqs[i];
    q.num_computed += 1;
    q.tokens.push_back(next[i]);
    for (int64_t j = 0; j < drafts[i]; ++j) q.tokens.push_back(token(rng));
    work.push_back({&q, 1 + drafts[i], true, true, false});
  }
  step(work, "verify");
  if (graphs) {
    EXPECT_GT(runner.stats().graph_verify_steps, 0);
  }
  for (engine::Sequence& q : seqs)
    for (int32_t p : q.pages.ids) kv.pages.release(p);
  EXPECT_EQ(kv.pages.num_held(), graphs && backend->can_capture() ? 1 : 0);
}

INSTANTIATE_TEST_SUITE_P(engine, StepHeads, testing::Combine(testing::Bool(), testing::Bool()),
                         [](const testing::TestParamInfo<std::tuple<bool, bool>>& info) {
                           return std::string(std::get<0>(info.param) ? "graphs" : "eager") +
                                  (std::get<1>(info.param) ? "_own_output" : "_lm_head");
                         });

}  // namespace
}  // namespace philora
