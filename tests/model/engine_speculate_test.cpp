// Speculative decoding with n-gram drafts (--speculate ngram[:K]) in the
// engine: a drafted sequence's rows are verified in its step and it keeps the
// tokens it would have generated anyway. Greedy output is HF's golden tokens
// and, with long runs made to loop so that drafts get accepted (and others
// rejected), token for token the output without speculation, logprobs bit
// for bit (the CPU backend's rows are batch-invariant), whatever the schedule:
// mixed adapters, chunked prefill, preemption under a tight KV cache, prefix
// cache on and off; stop strings, stop ids and max_new_tokens that fall
// inside an accepted run end it there. Seeded sampling gives the same tokens
// as without speculation (row j draws the generator's j-th next uniform; the
// generator advances by the kept tokens), which is the speculative-sampling
// rule's distribution and more; its statistical check against float64 is in
// tests/ops/sample_speculative_test.cpp. Every page comes back.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/speculate.h"
#include "model/engine_rig.h"
#include "model/speculation_rig.h"

namespace philora {
namespace {

using engine::FinishReason;
using test::EngineRig;
using test::expect_same;
using test::golden_requests;
using test::kGoldenCases;
using test::long_requests;
using test::read_jsonl;
using test::Result;
using test::Schedule;

const char* kCase = "gqa_multi_lora";

engine::EngineConfig config(int64_t drafts, int64_t budget = 4096, bool prefix_cache = true) {
  engine::EngineConfig c;
  c.max_batched_tokens = budget;
  c.max_running = 64;
  c.step_graphs = false;
  c.prefix_cache = prefix_cache;
  c.speculate_ngram = drafts;
  c.speculate_row_cost = 0.0;  // the longest chains every step: the most to verify
  return c;
}

Result run(const std::vector<engine::Request>& reqs, engine::EngineConfig c, int64_t pages = 512,
           int64_t max_running = 64, const std::string& case_name = kCase) {
  c.max_running = max_running;
  EngineRig rig(case_name, c, pages);
  Result r;
  r.runs = test::run_engine(*rig.engine, reqs);
  r.stats = rig.engine->stats();
  r.graph_verify_steps = rig.engine->runner_stats().graph_verify_steps;
  EXPECT_EQ(rig.kv->pages.num_held(), c.step_graphs ? 1 : 0)
      << "every page comes back (but the graphs' pad page)";
  return r;
}

// The golden requests of every case (adapters and the base model in one
// batch; LongRoPE, a sliding window, partial rotary) with speculation: HF's tokens.
TEST(SpeculativeGreedy, GoldenTokensWithMixedAdapters) {
  for (const char* name : kGoldenCases)
    for (const int64_t k : {1, 4, 8}) {
      engine::EngineConfig c = config(k);
      c.step_graphs = k == 4;  // verification steps replay graphs (CPU: the body rerun)
      const Result got = run(golden_requests(name), c, 512, 64, name);
      for (const nlohmann::json& ref : read_jsonl(test::golden_dir(name) / "generate_ref.jsonl")) {
        const auto id = ref["id"].get<std::string>();
        ASSERT_TRUE(got.runs.count(id)) << id;
        EXPECT_EQ(got.runs.at(id).tokens, ref["tokens"].get<std::vector<int32_t>>())
            << name << " K=" << k << " " << id;
      }
      EXPECT_GT(got.stats.spec_draft_tokens, 0) << name << " K=" << k << ": nothing was drafted";
      if (c.step_graphs) {
        EXPECT_GT(got.graph_verify_steps, 0) << name << ": no verification step replayed a graph";
      }
    }
}

class SpeculativeSchedules : public testing::TestWithParam<Schedule> {};

TEST_P(SpeculativeSchedules, GreedyEqualsPlain) {
  const Schedule s = GetParam();
  const std::vector<engine::Request> reqs = long_requests(kCase);
  const Result plain = run(reqs, config(0, s.budget, s.prefix_cache), s.pages, s.max_running);
  EXPECT_EQ(plain.stats.spec_draft_tokens, 0);
  const Result spec = run(reqs, config(4, s.budget, s.prefix_cache), s.pages, s.max_running);
  expect_same(spec, plain, s.name);
  EXPECT_GT(spec.stats.spec_accepted_tokens, 0) << "no draft was accepted: the path is not run";
  EXPECT_LT(spec.stats.spec_accepted_tokens, spec.stats.spec_draft_tokens)
      << "no draft was rejected";
  // StepOutput::drafted: a step's output of a sequence is its first token and
  // then the drafts it kept, flagged; the flags add up to the accepted drafts
  // (fewer only where a stop inside a run dropped the rest).
  for (const Result* r : {&plain, &spec}) {
    int64_t flagged = 0;
    for (const auto& [id, run] : r->runs)
      for (const engine::StepOutput& o : run.steps) {
        ASSERT_EQ(o.drafted.size(), o.new_tokens.size()) << s.name << " " << id;
        for (size_t j = 0; j < o.drafted.size(); ++j) {
          EXPECT_EQ(o.drafted[j], j > 0 ? 1 : 0) << s.name << " " << id << " token " << j;
          flagged += o.drafted[j];
        }
      }
    EXPECT_LE(flagged, r->stats.spec_accepted_tokens) << s.name;
    EXPECT_GE(flagged, r == &spec ? 1 : 0) << s.name;
  }
  if (s.pages < 512) {
    EXPECT_GT(spec.stats.preemptions, 0) << "the KV cache was not tight";
  }
  if (s.max_running < 64) {
    EXPECT_GT(spec.stats.prefix_cache_hits, 0);
  }
  std::printf("[ %s ] drafted %lld accepted %lld (%.0f%%), steps %lld vs %lld plain\n", s.name,
              (long long)spec.stats.spec_draft_tokens, (long long)spec.stats.spec_accepted_tokens,
              100.0 * double(spec.stats.spec_accepted_tokens) /
                  double(std::max<int64_t>(spec.stats.spec_draft_tokens, 1)),
              (long long)spec.stats.steps, (long long)plain.stats.steps);
}

INSTANTIATE_TEST_SUITE_P(engine, SpeculativeSchedules, testing::ValuesIn(test::kSchedules),
                         test::schedule_name);

// A page that held rejected drafts is never published to the prefix cache:
// after request A ran with speculation, request B whose prompt is exactly A's
// context plus drafts that A's step rejected (recomputed here by the same
// rule: prompt lookup, the draft length from A's acceptance at the CPU's row
// cost) gets what it gets on an engine
// without speculation or prefix cache — were the page keyed by the drafts'
// tokens, B would reuse K/V that A later overwrote with its own tokens.
TEST(SpeculativeGreedy, PagesOfRejectedDraftsAreNeverCached) {
  constexpr int64_t kK = 4, kPage = 4;  // EngineRig's pages hold 4 tokens
  const engine::Request a = long_requests(kCase)[0];
  engine::EngineConfig c = config(kK);
  c.speculate_row_cost = engine::kCpuRowCost;
  EngineRig rig(kCase, c);
  const std::map<std::string, test::Run> first = test::run_engine(*rig.engine, {a});
  const test::Run& ra = first.at(a.id);
  std::vector<int32_t> tokens = a.prompt;
  tokens.push_back(ra.tokens[0]);  // the prompt's step: no drafts
  engine::DraftStats acceptance;
  int64_t generated = 1;
  std::vector<int32_t> rejected;  // A's context + drafts whose whole pages hold a rejected one
  for (size_t step = 1; step < ra.steps.size(); ++step) {
    const auto kept = int64_t(ra.steps[step].new_tokens.size());
    const int64_t limit = engine::draft_length(acceptance.rate(), c.speculate_row_cost, kK);
    const std::vector<int32_t> drafts =
        engine::ngram_drafts(tokens, std::min(limit, a.max_new_tokens - generated - 1));
    const auto k = int64_t(drafts.size());
    if (k > 0) {
      const int64_t accepted = kept - 1;
      const auto len = int64_t(tokens.size());
      if (rejected.empty() && accepted < k && (len + k) / kPage * kPage > len + accepted) {
        rejected = tokens;
        rejected.insert(rejected.end(), drafts.begin(), drafts.end());
      }
      acceptance.record(k, accepted);
    } else {
      ASSERT_EQ(kept, 1);
    }
    tokens.insert(tokens.end(), ra.steps[step].new_tokens.begin(), ra.steps[step].new_tokens.end());
    generated += kept;
  }
  ASSERT_EQ(tokens.size(), a.prompt.size() + ra.tokens.size()) << "the steps were not replayed";
  ASSERT_FALSE(rejected.empty()) << "no rejection filled a page";
  engine::Request b = a;
  b.id = "b";
  b.prompt = rejected;
  b.prompt.push_back(7);
  b.max_new_tokens = 8;
  const std::map<std::string, test::Run> second = test::run_engine(*rig.engine, {b});
  EXPECT_GT(rig.engine->stats().prefix_cache_hits, 0) << "B reused none of A's pages";
  EXPECT_EQ(rig.kv->pages.num_held(), 0);
  const Result want = run({b}, config(0, 4096, false));
  expect_same(second.at("b"), want.runs.at("b"), "B");
}

// Long runs on every golden case's model (a sliding window among them):
// the output without speculation, under a tight KV cache too.
TEST(SpeculativeGreedy, LongRunsEqualPlainOnEveryCase) {
  for (const char* name : kGoldenCases)
    for (const int64_t pages : {512, 40}) {
      const std::vector<engine::Request> reqs = long_requests(name);
      const Result plain = run(reqs, config(0), pages, 64, name);
      const Result spec = run(reqs, config(4), pages, 64, name);
      expect_same(spec, plain, std::string(name) + " pages " + std::to_string(pages));
      EXPECT_GT(spec.stats.spec_accepted_tokens, 0) << name;
      std::printf("[ %s pages %lld ] drafted %lld accepted %lld\n", name, (long long)pages,
                  (long long)spec.stats.spec_draft_tokens,
                  (long long)spec.stats.spec_accepted_tokens);
    }
}

// With step graphs (the CPU backend replays a recorded step's body): steps
// verifying drafts replay graphs of k + 1 rows a sequence, padded up to the
// graph's rows with rows that decode into the runner's pad page, on every
// golden case (mixed adapters, a sliding window, sequences with different
// numbers of drafts in one step), and the output is the eager plain one.
TEST(SpeculativeGreedy, VerificationStepsReplayGraphs) {
  for (const char* name : kGoldenCases) {
    const std::vector<engine::Request> reqs = long_requests(name);
    const Result plain = run(reqs, config(0), 512, 64, name);
    engine::EngineConfig c = config(4);
    c.step_graphs = true;
    const Result spec = run(reqs, c, 512, 64, name);
    expect_same(spec, plain, name);
    EXPECT_GT(spec.stats.spec_accepted_tokens, 0) << name;
    EXPECT_GT(spec.graph_verify_steps, 0) << name;
  }
}

// Stop strings, stop token ids and max_new_tokens that fall inside a run of
// accepted drafts end the output where they do without speculation.
TEST(SpeculativeGreedy, StopsInsideAnAcceptedRun) {
  const std::vector<engine::Request> base = long_requests(kCase);
  const Result free_run = run(base, config(4));
  std::vector<engine::Request> reqs;
  for (const engine::Request& b : base) {
    const test::Run& r = free_run.runs.at(b.id);
    const int64_t j = test::inside_accepted_run(r);
    if (j < 0) continue;
    const int32_t tok = r.tokens[size_t(j)];
    engine::Request stop = b;
    stop.id += "-stop";  // a stop string across two tokens, the first inside the run
    stop.stop = {test::token_text(tok) + test::token_text(r.tokens[size_t(j + 1)]).substr(0, 1)};
    engine::Request stop_id = b;
    stop_id.id += "-stop-id";
    stop_id.ignore_eos = false;
    stop_id.stop_token_ids = {tok};
    engine::Request length = b;
    length.id += "-length";
    length.max_new_tokens = j + 1;
    for (const engine::Request& q : {stop, stop_id, length}) reqs.push_back(q);
  }
  ASSERT_GE(reqs.size(), 6u) << "too few steps kept several tokens";
  const Result plain = run(reqs, config(0));
  const Result spec = run(reqs, config(4));
  expect_same(spec, plain, "stops");
  int stopped = 0;
  for (const auto& [id, r] : spec.runs) stopped += r.finish == FinishReason::stop_sequence;
  EXPECT_GT(stopped, 0) << "no stop string matched";
}

// Seeded sampling (bias, bad words and min_new_tokens, which vary per row,
// processed and raw logprobs) gives what it gives without speculation.
TEST(SpeculativeSampling, SeededEqualsPlain) {
  std::vector<engine::Request> reqs = long_requests(kCase);
  uint64_t seed = 7;
  for (size_t i = 0; i < reqs.size(); ++i) {
    engine::SamplingParams& p = reqs[i].sampling;
    p.greedy = false;
    p.temperature = i % 2 ? 0.3f : 0.7f;
    p.top_k = i % 3 ? 0 : 20;
    p.top_p = i % 4 ? 1.0f : 0.9f;
    p.seed = seed++;
    p.logit_bias = {{int32_t(40 + i), 1.5f}};
    p.bad_words = {{90, 55}};
    reqs[i].min_new_tokens = 3;
    reqs[i].ignore_eos = i % 2 == 0;
    if (i % 2) reqs[i].logprob_kind = engine::LogprobKind::processed;
  }
  const Result plain = run(reqs, config(0));
  const Result spec = run(reqs, config(4));
  expect_same(spec, plain, "sampling");
  EXPECT_GT(spec.stats.spec_accepted_tokens, 0) << "no draft was accepted";
  EXPECT_LT(spec.stats.spec_accepted_tokens, spec.stats.spec_draft_tokens);
}

// n and best_of: each candidate (its own generator, seed + i) gives what it
// gives without speculation, streamed (best_of = n) or held and ranked.
TEST(SpeculativeSampling, CandidatesEqualPlain) {
  std::vector<engine::Request> reqs = long_requests(kCase);
  reqs.resize(4);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].sampling.greedy = false;
    reqs[i].sampling.temperature = 0.5f;
    reqs[i].n = 2;
    if (i % 2) reqs[i].best_of = 3;
  }
  const Result plain = run(reqs, config(0));
  const Result spec = run(reqs, config(4));
  EXPECT_GT(spec.stats.spec_accepted_tokens, 0);
  for (const engine::Request& r : reqs) {
    const auto got = test::by_output_index(spec.runs.at(r.id));
    const auto want = test::by_output_index(plain.runs.at(r.id));
    EXPECT_EQ(got.size(), size_t(r.n + (r.best_of ? *r.best_of - r.n : 0))) << r.id;
    EXPECT_EQ(got, want) << r.id;
  }
}

// Requests with penalties never draft (the sample op counts one token per
// row); speculation is off while more sequences than speculate_max_batch run.
TEST(SpeculativeSampling, PenaltiesAndLargeBatchesDoNotDraft) {
  std::vector<engine::Request> reqs = long_requests(kCase);
  for (engine::Request& r : reqs) r.sampling.repetition_penalty = 1.2f;
  const Result plain = run(reqs, config(0));
  const Result spec = run(reqs, config(4));
  expect_same(spec, plain, "penalties");
  EXPECT_EQ(spec.stats.spec_draft_tokens, 0);

  engine::EngineConfig small = config(4);
  small.speculate_max_batch = 1;
  std::vector<engine::Request> two = {long_requests(kCase)[0], long_requests(kCase)[1]};
  two[0].max_new_tokens = 8;
  EngineRig rig(kCase, small);
  for (const engine::Request& r : two) ASSERT_TRUE(rig.engine->add_request(r).ok());
  while (rig.engine->num_running() + rig.engine->num_waiting() == 2 && rig.engine->has_work())
    rig.engine->step();
  EXPECT_EQ(rig.engine->stats().spec_draft_tokens, 0) << "drafted with two running";
  while (rig.engine->has_work()) rig.engine->step();
  EXPECT_GT(rig.engine->stats().spec_draft_tokens, 0) << "the one left never drafted";
  EXPECT_EQ(rig.kv->pages.num_held(), 0);
}

// Drafts come from what the step's required work leaves: with a budget of 2
// tokens, an older sequence decoding copy-heavy text and a newer one still in
// its prompt, the newer one's prompt advances as it does without speculation
// (its first token comes in the same step; before, the older one drafted
// budget - 1 tokens and the newer one's chunk waited), and once both decode
// each gets its token in every step; the outputs are the plain ones.
TEST(SpeculativeSchedule, DraftsNeverTakeAnotherSequencesToken) {
  std::vector<engine::Request> reqs;
  for (const engine::Request& r : long_requests(kCase))
    if (r.id.size() > 6 && r.id.substr(r.id.size() - 6) == "-twice" && reqs.size() < 2)
      reqs.push_back(r);
  ASSERT_EQ(reqs.size(), 2u);
  struct Steps {
    std::map<std::string, int64_t> first, last;  // steps of each request's first and last output
    std::vector<std::set<std::string>> outputs;  // per step: the requests that got tokens
    engine::EngineStats stats;
  };
  auto steps = [&](int64_t drafts) {
    EngineRig rig(kCase, config(drafts, /*budget=*/2));
    for (const engine::Request& r : reqs) EXPECT_TRUE(rig.engine->add_request(r).ok());
    Steps s;
    while (rig.engine->has_work()) {
      std::set<std::string> got;
      for (const engine::StepOutput& o : rig.engine->step()) {
        if (o.new_tokens.empty()) continue;
        got.insert(o.id);
        const auto step = int64_t(s.outputs.size());
        if (!s.first.count(o.id)) s.first[o.id] = step;
        s.last[o.id] = step;
      }
      s.outputs.push_back(got);
    }
    s.stats = rig.engine->stats();
    EXPECT_EQ(rig.kv->pages.num_held(), 0);
    return s;
  };
  const Steps plain = steps(0), spec = steps(4);
  EXPECT_GT(spec.stats.spec_accepted_tokens, 0) << "nothing was drafted and kept";
  EXPECT_EQ(spec.first, plain.first) << "speculation delayed a request's first token";
  for (const auto& [id, f] : spec.first)
    for (int64_t step = f; step <= spec.last.at(id); ++step)
      EXPECT_TRUE(spec.outputs[size_t(step)].count(id)) << id << " got no token in step " << step;
  expect_same(run(reqs, config(4, 2)), run(reqs, config(0, 2)), "budget 2");
}

// Tree speculation (--speculate-paths): a sequence's other candidate chains
// (n-gram lookup's other continuations) each run as a row group of their own
// that shares the sequence's full pages and a copy of its partial page; the
// kept tokens follow the chains that drafted them (engine::accept_paths).
engine::EngineConfig tree_config(int64_t budget = 4096, bool prefix_cache = true) {
  engine::EngineConfig c = config(4, budget, prefix_cache);
  c.speculate_paths = 4;
  return c;
}

void print_tree_stats(const std::string& what, const Result& r) {
  std::printf(
      "[ %s ] drafted %lld accepted %lld, alternative chains %lld won %lld tokens, %lld steps\n",
      what.c_str(), (long long)r.stats.spec_draft_tokens, (long long)r.stats.spec_accepted_tokens,
      (long long)r.stats.spec_alt_chains, (long long)r.stats.spec_alt_tokens,
      (long long)r.stats.steps);
}

class TreeSchedules : public testing::TestWithParam<Schedule> {};

// Greedy under every schedule (chunked prefill, preemption, prefix hits, mixed
// adapters): the plain output, logprobs bit for bit, with alternatives
// verified, and winning where the budget and the pages leave room for them
// (a step's alternatives take only what its required work leaves, and only
// free pages); every page comes back (run()).
TEST_P(TreeSchedules, GreedyEqualsPlain) {
  const Schedule s = GetParam();
  const std::vector<engine::Request> reqs = long_requests(kCase);
  const Result plain = run(reqs, config(0, s.budget, s.prefix_cache), s.pages, s.max_running);
  const Result tree = run(reqs, tree_config(s.budget, s.prefix_cache), s.pages, s.max_running);
  expect_same(tree, plain, s.name);
  if (s.pages >= 512) {  // a tight cache leaves few free pages once the first chains have theirs
    EXPECT_GT(tree.stats.spec_alt_chains, 0) << s.name << ": no alternative chain was verified";
  }
  if (s.budget >= 4096 && s.pages >= 512) {
    EXPECT_GT(tree.stats.spec_alt_tokens, 0) << s.name << ": no alternative chain won";
  }
  print_tree_stats(s.name, tree);
}

INSTANTIATE_TEST_SUITE_P(engine, TreeSchedules, testing::ValuesIn(test::kSchedules),
                         test::schedule_name);

// Every golden case (LongRoPE, a sliding window, partial rotary): HF's golden
// tokens with step graphs, and long runs equal to the plain ones, under a
// tight KV cache too; a chain is never longer than the first one.
TEST(TreeSpeculation, EveryCaseGoldenAndLongRuns) {
  for (const char* name : kGoldenCases) {
    engine::EngineConfig graphs = tree_config();
    graphs.step_graphs = true;
    const Result got = run(golden_requests(name), graphs, 512, 64, name);
    for (const nlohmann::json& ref : read_jsonl(test::golden_dir(name) / "generate_ref.jsonl")) {
      const auto id = ref["id"].get<std::string>();
      ASSERT_TRUE(got.runs.count(id)) << id;
      EXPECT_EQ(got.runs.at(id).tokens, ref["tokens"].get<std::vector<int32_t>>())
          << name << " " << id;
    }
    for (const int64_t pages : {512, 40}) {
      const std::vector<engine::Request> reqs = long_requests(name);
      const Result plain = run(reqs, config(0), pages, 64, name);
      const Result tree = run(reqs, tree_config(), pages, 64, name);
      const std::string what = std::string(name) + " pages " + std::to_string(pages);
      expect_same(tree, plain, what);
      if (pages >= 512) {  // a tight cache leaves few free pages for alternatives
        EXPECT_GT(tree.stats.spec_alt_chains, 0) << what;
      }
      print_tree_stats(what, tree);
    }
  }
}

// Seeded sampling (logit bias, min_new_tokens, processed and raw logprobs) and
// n / best_of (fewer requests: speculation stops above speculate_max_batch
// sequences): what they give without speculation — row j of every chain
// draws the generator's j-th next uniform.
TEST(TreeSpeculation, SeededSamplingAndCandidatesEqualPlain) {
  for (const bool candidates : {false, true}) {
    std::vector<engine::Request> reqs = long_requests(kCase);
    if (candidates) reqs.resize(4);
    test::make_seeded_sampling(reqs, /*bad_words=*/false);
    for (size_t i = 0; i < reqs.size(); ++i) {
      if (candidates) reqs[i].n = 2;
      if (candidates && i % 2) reqs[i].best_of = 3;
    }
    const Result plain = run(reqs, config(0));
    const Result tree = run(reqs, tree_config());
    for (const engine::Request& r : reqs) {
      const auto got = test::by_output_index(tree.runs.at(r.id));
      const auto want = test::by_output_index(plain.runs.at(r.id));
      EXPECT_EQ(got, want) << r.id;
    }
    EXPECT_GT(tree.stats.spec_alt_chains, 0);
    EXPECT_GT(tree.stats.spec_accepted_tokens, 0);
    print_tree_stats(candidates ? "n / best_of" : "sampling", tree);
  }
}

// One chain where a row's bans follow its own drafts: bad words (and a
// constraint's matcher, whose masks advance over the one chain).
TEST(TreeSpeculation, BadWordsKeepOneChain) {
  std::vector<engine::Request> reqs = long_requests(kCase);
  for (engine::Request& r : reqs) r.sampling.bad_words = {{90, 55}};
  const Result plain = run(reqs, config(0));
  const Result tree = run(reqs, tree_config());
  expect_same(tree, plain, "bad words");
  EXPECT_GT(tree.stats.spec_draft_tokens, 0);
  EXPECT_EQ(tree.stats.spec_alt_chains, 0);
}

}  // namespace
}  // namespace philora
