// n and best_of in the engine: a request's candidates are prefilled once and
// share the prompt's pages; candidate i draws from seed + i, so on the CPU
// backend it gives exactly what the request with that seed and n = 1 gives
// (batch invariance), whatever the schedule (chunks, preemption, the prefix
// cache on or off); greedy copies are HF's tokens; best_of returns the n
// candidates of highest cumulative logprob, checked against the logprobs the
// candidates' single requests report; aborts end every candidate; every page
// comes back.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "model/engine_rig.h"
#include "model/speculation_rig.h"

namespace philora {
namespace {

using engine::FinishReason;
using test::EngineRig;
using test::expect_same;
using test::read_jsonl;

const char* kCase = "gqa_multi_lora";

using Key = std::pair<std::string, int32_t>;  // (request id, output index)

// Every output of every request, merged per (id, index), with what the
// outputs said about the request as a whole.
struct Outputs {
  std::map<Key, test::Run> runs;
  std::map<Key, engine::StepOutput> last;       // each output's finishing StepOutput
  std::map<std::string, int> request_finished;  // id -> outputs that said the request ended
  std::map<std::string, int> after_end;         // id -> outputs that came after that
  int64_t max_held = 0;                         // most KV pages held after any step
};

void collect(engine::StepOutput& o, Outputs& got) {
  EXPECT_TRUE(o.error.empty()) << o.id << ": " << o.error;
  if (got.request_finished[o.id] > 0) ++got.after_end[o.id];
  if (o.request_finished()) ++got.request_finished[o.id];
  test::Run& r = got.runs[{o.id, o.index}];
  EXPECT_FALSE(r.finish != FinishReason::none)
      << o.id << "/" << o.index << ": output after its end";
  r.tokens.insert(r.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
  r.text += o.text;
  r.logprobs.insert(r.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
  if (o.prompt_logprobs) r.prompt_logprobs = o.prompt_logprobs;
  r.finish = o.finish;
  r.seed = o.seed;
  if (o.finished()) got.last[{o.id, o.index}] = o;
  r.steps.push_back(std::move(o));
}

Outputs run_all(EngineRig& rig, const std::vector<engine::Request>& requests) {
  for (const engine::Request& r : requests) {
    const Status s = rig.engine->add_request(r);
    EXPECT_TRUE(s.ok()) << s.message();
  }
  Outputs got;
  for (int guard = 0; rig.engine->has_work() && guard < 100000; ++guard) {
    for (engine::StepOutput& o : rig.engine->step()) collect(o, got);
    got.max_held = std::max<int64_t>(got.max_held, rig.kv->pages.num_held());
  }
  EXPECT_FALSE(rig.engine->has_work());
  return got;
}

std::vector<nlohmann::json> generate_lines() {
  return read_jsonl(test::golden_dir(kCase) / "generate_requests.jsonl");
}

// ---- n: parallel sampling ------------------------------------------------------------------

struct Scenario {
  const char* name;
  int64_t budget;
  int64_t pages;
  bool prefix_cache = true;
  int64_t max_running = 64;
};

class ParallelSampling : public testing::TestWithParam<Scenario> {};

// Sampled requests with n = 3 over the golden prompts and adapters (some with
// penalties and logprobs): each output equals its seed's single request.
TEST_P(ParallelSampling, EachOutputIsItsSeedsRequest) {
  const Scenario sc = GetParam();
  constexpr int32_t kN = 3;
  std::vector<engine::Request> reqs, singles;
  int i = 0;
  for (const nlohmann::json& line : generate_lines()) {
    engine::Request r = test::request_of(line);
    r.n = kN;
    r.sampling.greedy = false;
    r.sampling.temperature = 1.0f;
    r.sampling.seed = 500 + uint64_t(i);
    if (i % 2 == 0) r.sampling.presence_penalty = 0.5f;
    if (i % 2 == 1) r.logprobs = 3;
    if (i == 1) r.prompt_logprobs = 2;
    reqs.push_back(r);
    for (int32_t k = 0; k < kN; ++k) {
      engine::Request s = r;
      s.n = 1;
      s.id = r.id + "#" + std::to_string(k);
      s.sampling.seed = engine::candidate_seed(*r.sampling.seed, k);
      if (k > 0) s.prompt_logprobs.reset();
      singles.push_back(s);
    }
    ++i;
  }
  EngineRig rig(kCase, {sc.budget, sc.max_running, false, sc.prefix_cache}, sc.pages);
  const Outputs got = run_all(rig, reqs);
  EngineRig alone(kCase, {4096, 256, false, false});
  const Outputs want = run_all(alone, singles);

  for (const engine::Request& r : reqs) {
    std::set<std::vector<int32_t>> distinct;
    for (int32_t k = 0; k < kN; ++k) {
      const std::string what = r.id + "/" + std::to_string(k) + " [" + sc.name + "]";
      ASSERT_TRUE(got.runs.count({r.id, k})) << what;
      const test::Run& run = got.runs.at({r.id, k});
      expect_same(run, want.runs.at({r.id + "#" + std::to_string(k), 0}), what);
      EXPECT_EQ(run.steps.size(), run.tokens.size()) << what << ": streamed, a token a step";
      EXPECT_EQ(bool(run.prompt_logprobs), k == 0 && r.prompt_logprobs) << what;
      for (const engine::StepOutput& o : run.steps) EXPECT_FALSE(o.best_of_extra) << what;
      distinct.insert(run.tokens);
    }
    EXPECT_EQ(distinct.size(), size_t(kN)) << r.id << ": each output draws its own stream";
    EXPECT_EQ(got.request_finished.at(r.id), 1) << r.id << ": one output ends the request";
    EXPECT_EQ(got.after_end.count(r.id), 0u) << r.id << ": nothing after the request's end";
    EXPECT_EQ(got.runs.count({r.id, kN}), 0u) << r.id;
  }
  if (std::string(sc.name).starts_with("tight")) {
    EXPECT_GT(rig.engine->stats().preemptions, 0) << "the scenario must preempt";
  }
  EXPECT_EQ(rig.kv->pages.num_held(), 0) << "every page comes back";
  EXPECT_EQ(rig.store->pins(), 0);
}

const Scenario kScenarios[] = {
    {"roomy", 4096, 512},
    {"roomy_no_prefix_cache", 4096, 512, false},
    {"chunked", 5, 512},
    {"tight", 16, 12},  // 12 pages of 4: candidates preempted and recomputed
    {"tight_no_prefix_cache", 16, 12, false},
    {"two_running", 4096, 512, true, 2},  // candidates wait for room at the head of the queue
};

INSTANTIATE_TEST_SUITE_P(Schedules, ParallelSampling, testing::ValuesIn(kScenarios),
                         [](const auto& info) { return std::string(info.param.name); });

// Greedy with n = 2: two copies of HF's greedy tokens.
TEST(ParallelSamplingGreedy, CopiesAreHFTokens) {
  std::vector<engine::Request> reqs;
  for (const nlohmann::json& line : generate_lines()) {
    engine::Request r = test::request_of(line);
    r.n = 2;
    reqs.push_back(r);
  }
  EngineRig rig(kCase, {4096, 64, false});
  const Outputs got = run_all(rig, reqs);
  for (const nlohmann::json& ref : read_jsonl(test::golden_dir(kCase) / "generate_ref.jsonl")) {
    const auto id = ref["id"].get<std::string>();
    const auto hf = ref["tokens"].get<std::vector<int32_t>>();
    for (int32_t k = 0; k < 2; ++k) {
      ASSERT_TRUE(got.runs.count({id, k})) << id << "/" << k;
      EXPECT_EQ(got.runs.at({id, k}).tokens, hf) << id << "/" << k;
    }
  }
  EXPECT_EQ(rig.kv->pages.num_held(), 0);
}

// The candidates hold the prompt's whole pages but the last one once: after
// the prompt's step, each page before the one holding the last prompt token
// has n holders; over the run fewer pages are held than by n separate
// requests (the prefix cache off, so that only the fork shares).
TEST(ParallelSamplingPages, CandidatesShareThePromptPages) {
  constexpr int32_t kN = 4;
  engine::Request r;
  r.id = "shared";
  r.prompt = test::request_of(generate_lines()[3]).prompt;  // 20 tokens: 5 pages of 4
  r.adapter = "c";
  r.n = kN;
  r.max_new_tokens = 6;
  r.ignore_eos = true;
  r.sampling.greedy = false;
  r.sampling.seed = 3;
  const int64_t page = 4;
  const int64_t shared = (int64_t(r.prompt.size()) - 1) / page;

  EngineRig rig(kCase, {4096, 64, false, false});
  ASSERT_TRUE(rig.engine->add_request(r).ok());
  Outputs got;
  while (rig.engine->stats().steps == 0)  // (its adapter loads first) then the prompt, once
    for (engine::StepOutput& o : rig.engine->step()) collect(o, got);
  EXPECT_EQ(rig.engine->stats().prompt_tokens, int64_t(r.prompt.size()));
  int32_t pages_with_n = 0;
  for (int32_t p = 0; p < rig.kv->pages.num_pages(); ++p)
    if (rig.kv->pages.refcount(p) == kN) ++pages_with_n;
  EXPECT_EQ(pages_with_n, shared);
  EXPECT_EQ(rig.engine->num_running(), kN) << "the candidates run from the next step";
  while (rig.engine->has_work()) {
    for (engine::StepOutput& o : rig.engine->step()) collect(o, got);
    got.max_held = std::max<int64_t>(got.max_held, rig.kv->pages.num_held());
  }
  // Each other candidate computes the tokens of the last prompt page again, and no more.
  EXPECT_EQ(rig.engine->stats().prompt_tokens,
            int64_t(r.prompt.size()) + (kN - 1) * (int64_t(r.prompt.size()) - shared * page));
  EXPECT_EQ(rig.kv->pages.num_held(), 0);

  std::vector<engine::Request> separate;
  for (int32_t k = 0; k < kN; ++k) {
    engine::Request s = r;
    s.n = 1;
    s.id = "separate" + std::to_string(k);
    s.sampling.seed = engine::candidate_seed(3, k);
    separate.push_back(s);
  }
  EngineRig rig2(kCase, {4096, 64, false, false});
  const Outputs sep = run_all(rig2, separate);
  std::printf("pages held at most: %ld with n = %d, %ld as %d requests\n", long(got.max_held), kN,
              long(sep.max_held), kN);
  EXPECT_LE(got.max_held + (kN - 1) * shared, sep.max_held) << "the shared pages, held once";
  for (int32_t k = 0; k < kN; ++k)
    EXPECT_EQ(got.runs.at({"shared", k}).tokens,
              sep.runs.at({"separate" + std::to_string(k), 0}).tokens);
}

// ---- best_of ------------------------------------------------------------------------------

// best_of = 5, n = 2: each candidate comes once, when the last has finished;
// the two of highest cumulative logprob first. Each candidate is its seed's
// single request, whose reported raw logprobs, summed, are its cumulative
// logprob: the ranking must follow those sums.
TEST(BestOf, ReturnsTheNHighestCumulativeLogprobs) {
  constexpr int32_t kN = 2, kBestOf = 5;
  std::vector<engine::Request> reqs, singles;
  int i = 0;
  for (const nlohmann::json& line : generate_lines()) {
    engine::Request r = test::request_of(line);
    r.n = kN;
    r.best_of = kBestOf;
    r.sampling.greedy = false;
    r.sampling.temperature = 1.3f;
    r.sampling.seed = 900 + uint64_t(i);
    if (i % 2 == 1) r.logprobs = 2;  // asked or not, the ranking is by raw logprobs
    if (i == 0) r.prompt_logprobs = 1;
    reqs.push_back(r);
    for (int32_t k = 0; k < kBestOf; ++k) {
      engine::Request s = r;
      s.n = 1;
      s.best_of.reset();
      s.id = r.id + "#" + std::to_string(k);
      s.sampling.seed = engine::candidate_seed(*r.sampling.seed, k);
      s.logprobs = r.logprobs ? r.logprobs : 0;
      s.prompt_logprobs.reset();
      singles.push_back(s);
    }
    ++i;
  }
  EngineRig rig(kCase, {16, 64, false}, 24);  // chunks and preemption
  const Outputs got = run_all(rig, reqs);
  EngineRig alone(kCase, {4096, 256, false});
  const Outputs want = run_all(alone, singles);

  for (const engine::Request& r : reqs) {
    // Each candidate's sum of raw logprobs, from its single request.
    std::map<uint64_t, std::pair<double, const test::Run*>> by_seed;
    for (int32_t k = 0; k < kBestOf; ++k) {
      const test::Run& s = want.runs.at({r.id + "#" + std::to_string(k), 0});
      double sum = 0;
      for (const engine::PositionLogprobs& lp : s.logprobs) sum += double(lp.chosen.logprob);
      by_seed[s.seed] = {sum, &s};
    }
    std::vector<double> sums;
    for (int32_t k = 0; k < kBestOf; ++k) {
      const std::string what = r.id + "/" + std::to_string(k);
      ASSERT_TRUE(got.runs.count({r.id, k})) << what;
      const test::Run& run = got.runs.at({r.id, k});
      ASSERT_EQ(run.steps.size(), 1u) << what << ": held back and handed out once, finished";
      const engine::StepOutput& o = run.steps[0];
      EXPECT_TRUE(o.finished()) << what;
      EXPECT_EQ(o.best_of_extra, k >= kN) << what;
      EXPECT_EQ(o.outputs_running, kBestOf - 1 - k) << what;
      ASSERT_TRUE(by_seed.count(run.seed)) << what << ": seed " << run.seed;
      const auto& [sum, single] = by_seed.at(run.seed);
      EXPECT_EQ(run.tokens, single->tokens) << what;
      EXPECT_EQ(run.text, single->text) << what;
      ASSERT_TRUE(o.cumulative_logprob) << what;
      EXPECT_EQ(*o.cumulative_logprob, sum) << what;
      if (r.logprobs) {
        expect_same(run, *single, what);
      } else {
        EXPECT_TRUE(run.logprobs.empty()) << what << ": none asked for";
      }
      EXPECT_EQ(bool(run.prompt_logprobs), k == 0 && r.prompt_logprobs) << what;
      sums.push_back(sum);
      by_seed.erase(run.seed);  // each candidate once
    }
    for (size_t k = 1; k < sums.size(); ++k)
      EXPECT_GE(sums[k - 1], sums[k]) << r.id << ": ranked by cumulative logprob";
    EXPECT_EQ(got.request_finished.at(r.id), 1) << r.id;
  }
  EXPECT_GT(rig.engine->stats().preemptions, 0) << "the schedule must preempt";
  EXPECT_EQ(rig.kv->pages.num_held(), 0);
}

// ---- aborts, errors, bad parameters -------------------------------------------------------

// An abort ends every output of the request, before or after the prompt's
// step, held back (best_of) or streamed; every page comes back.
TEST(NBestOf, AbortEndsEveryOutput) {
  EngineRig rig(kCase, {4096, 64, false});
  const auto lines = generate_lines();
  std::vector<engine::Request> reqs;
  for (int i = 0; i < 3; ++i) {
    engine::Request r = test::request_of(lines[size_t(i)]);
    r.id = "abort" + std::to_string(i);
    r.n = 3;
    if (i == 2) r.best_of = 4;
    r.sampling.greedy = false;
    r.sampling.seed = 1;
    r.max_new_tokens = 50;
    reqs.push_back(r);
    ASSERT_TRUE(rig.engine->add_request(r).ok());
  }
  Outputs got;
  rig.engine->abort("abort0");  // still waiting: its other outputs not forked yet
  for (int s = 0; s < 3; ++s)
    for (engine::StepOutput& o : rig.engine->step()) collect(o, got);
  EXPECT_GT(rig.kv->pages.num_held(), 0);
  rig.engine->abort("abort1");
  rig.engine->abort("abort2");
  for (engine::StepOutput& o : rig.engine->step()) collect(o, got);
  EXPECT_FALSE(rig.engine->has_work());
  for (int i = 0; i < 3; ++i) {
    const std::string id = "abort" + std::to_string(i);
    const int32_t outputs = i == 2 ? 4 : 3;
    for (int32_t k = 0; k < outputs; ++k) {
      ASSERT_TRUE(got.runs.count({id, k})) << id << "/" << k;
      EXPECT_EQ(got.runs.at({id, k}).finish, FinishReason::abort) << id << "/" << k;
    }
    EXPECT_EQ(got.runs.count({id, outputs}), 0u) << id;
    EXPECT_EQ(got.request_finished.at(id), 1) << id;
    EXPECT_EQ(got.after_end.count(id), 0u) << id;
  }
  EXPECT_EQ(got.runs.at({"abort1", 1}).tokens.size(), 2u) << "streamed until the abort";
  EXPECT_EQ(rig.kv->pages.num_held(), 0);
  EXPECT_EQ(rig.store->pins(), 0);
}

// The engine's waiting count is of requests: a request whose first output
// runs while its other candidates wait for a place (max_running 1) is not
// waiting, nor counted once per candidate (the server's queue limit and
// queue times read it).
TEST(NBestOf, WaitingCountsRequestsNotCandidates) {
  EngineRig rig(kCase, {4096, 1, false});
  const auto lines = generate_lines();
  engine::Request r = test::request_of(lines[0]);
  r.n = 4;
  r.max_new_tokens = 6;
  ASSERT_TRUE(rig.engine->add_request(r).ok());
  EXPECT_EQ(rig.engine->num_waiting(), 1);
  Outputs got;
  for (engine::StepOutput& o : rig.engine->step()) collect(o, got);  // the prompt; 3 candidates forked
  EXPECT_EQ(rig.engine->num_running(), 1);
  EXPECT_EQ(rig.engine->num_waiting(), 0) << "its candidates wait, the request runs";
  engine::Request other = test::request_of(lines[1]);
  ASSERT_TRUE(rig.engine->add_request(other).ok());
  EXPECT_EQ(rig.engine->num_waiting(), 1);
  while (rig.engine->has_work())
    for (engine::StepOutput& o : rig.engine->step()) collect(o, got);
  for (int32_t k = 0; k < 4; ++k) EXPECT_TRUE(got.runs.count({r.id, k})) << k;
  EXPECT_EQ(rig.kv->pages.num_held(), 0);
}

// An adapter that does not exist ends every output with the error.
TEST(NBestOf, AnUnknownAdapterEndsEveryOutput) {
  EngineRig rig(kCase, {4096, 64, false});
  engine::Request r = test::request_of(generate_lines()[0]);
  r.adapter = "nope";
  r.n = 2;
  r.best_of = 3;
  r.sampling.greedy = false;
  ASSERT_TRUE(rig.engine->add_request(r).ok());
  std::vector<engine::StepOutput> outs;
  while (rig.engine->has_work())
    for (engine::StepOutput& o : rig.engine->step()) outs.push_back(std::move(o));
  ASSERT_EQ(outs.size(), 3u);
  std::set<int32_t> indices;
  for (const engine::StepOutput& o : outs) {
    EXPECT_EQ(o.finish, FinishReason::unknown_adapter);
    EXPECT_NE(o.error.find("nope"), std::string::npos) << o.error;
    indices.insert(o.index);
  }
  EXPECT_EQ(indices, (std::set<int32_t>{0, 1, 2}));
  EXPECT_TRUE(outs.back().request_finished());
  EXPECT_FALSE(outs.front().request_finished());
}

TEST(NBestOf, BadValuesAreRefused) {
  EngineRig rig(kCase, {4096, 64, false});
  engine::Request base = test::request_of(generate_lines()[0]);
  base.sampling.greedy = false;
  auto refused = [&](engine::Request r, const std::string& words) {
    const Status s = rig.engine->add_request(r);
    EXPECT_FALSE(s.ok()) << words;
    EXPECT_NE(s.message().find(words), std::string::npos) << s.message();
  };
  engine::Request r = base;
  r.n = 0;
  refused(r, "n must be at least 1");
  r = base;
  r.n = 3;
  r.best_of = 2;
  refused(r, "best_of (2) must be at least n (3)");
  r = base;
  r.best_of = engine::kMaxBestOf + 1;
  refused(r, "at most 128");
  r = base;
  r.best_of = 2;
  r.sampling.greedy = true;
  refused(r, "needs sampling");
  r.sampling.greedy = false;
  r.sampling.temperature = 0.0f;
  refused(r, "needs sampling");
  r = base;
  r.n = 2;
  r.max_new_tokens = 0;
  refused(r, "max_new_tokens");
  r = base;
  r.n = 2;
  r.prompt_logits = true;
  refused(r, "prompt logits");
  EXPECT_FALSE(rig.engine->has_work());
  r = base;
  r.n = 2;
  r.sampling.greedy = true;  // n greedy copies are fine
  EXPECT_TRUE(rig.engine->add_request(r).ok());
}

}  // namespace
}  // namespace philora
