// Sampling in the engine: the logit processors on HF's logits (a prompt's
// first new token is chosen from HF's logits of its last position, processed
// in float64 here), penalties over the output kept on the backend across
// steps, graphs, chunks and preemption; seeds drawn and reported; and batch
// invariance: the same request and seed give the same tokens and logprobs
// whatever else is in the batch, bit for bit on the CPU backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "model/engine_rig.h"

namespace philora {
namespace {

using engine::FinishReason;
using test::EngineRig;
using test::read_jsonl;

const char* kCase = "gqa_multi_lora";

std::vector<nlohmann::json> score_lines() {
  return read_jsonl(test::golden_dir(kCase) / "requests.jsonl");
}

// The first index of the largest value, and how far the runner-up is below it.
std::pair<int32_t, double> argmax_with_margin(const std::vector<double>& x) {
  const auto best = int32_t(std::max_element(x.begin(), x.end()) - x.begin());
  double second = -INFINITY;
  for (size_t i = 0; i < x.size(); ++i)
    if (int32_t(i) != best) second = std::max(second, x[i]);
  return {best, x[size_t(best)] - second};
}

// A prompt's first token under each processor, from HF's logits of the
// prompt's last position, processed in float64 (SamplingPlan's rule): every
// score request, in one batch, with its adapter.
TEST(EngineSampling, FirstTokenFollowsTheProcessorsOnHFLogits) {
  EngineRig rig(kCase, {4096, 64, false});
  const std::vector<int64_t>& eos = rig.model->config().eos_token_ids;
  std::vector<engine::Request> reqs;
  std::map<std::string, int32_t> want;
  int skipped = 0;
  for (const nlohmann::json& line : score_lines()) {
    engine::Request base = test::request_of(line);
    base.max_new_tokens = 1;
    base.ignore_eos = true;
    const std::vector<double> hf = test::hf_logits(kCase, base.id).back();
    const auto [best, best_margin] = argmax_with_margin(hf);
    std::vector<int32_t> order(hf.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return hf[size_t(a)] > hf[size_t(b)]; });
    auto expect = [&](engine::Request r, const std::string& name, std::vector<double> x) {
      r.id = base.id + "/" + name;
      const auto [token, margin] = argmax_with_margin(x);
      if (margin < 1e-3) {  // a near tie of HF's own logits: fp32 may pick either
        ++skipped;
        return;
      }
      want[r.id] = token;
      reqs.push_back(r);
    };
    // Repetition penalty over the prompt (HF: the prompt is part of input_ids).
    {
      engine::Request r = base;
      r.sampling.repetition_penalty = 1.7f;
      std::vector<double> x = hf;
      for (int32_t t : std::set<int32_t>(base.prompt.begin(), base.prompt.end()))
        x[size_t(t)] = x[size_t(t)] > 0 ? x[size_t(t)] / 1.7 : x[size_t(t)] * 1.7;
      expect(r, "repetition", x);
    }
    // Frequency and presence: the output only, empty before the first token.
    {
      engine::Request r = base;
      r.sampling.frequency_penalty = 1.5f;
      r.sampling.presence_penalty = 2.0f;
      expect(r, "frequency", hf);
    }
    // Logit bias: the best pushed far down (finite, as every bias must be),
    // the 4th raised by 1.5.
    {
      engine::Request r = base;
      r.sampling.logit_bias = {{best, -1e30f}, {order[3], 1.5f}};
      std::vector<double> x = hf;
      x[size_t(best)] -= 1e30;
      x[size_t(order[3])] += 1.5;
      expect(r, "bias", x);
    }
    // A one-token bad word: HF's best never comes.
    {
      engine::Request r = base;
      r.sampling.bad_words = {{best}};
      std::vector<double> x = hf;
      x[size_t(best)] = -INFINITY;
      expect(r, "bad_word", x);
    }
    // A two-token bad word whose first token ends the prompt: the output is
    // empty, so it bans nothing (vLLM: bad words match the output).
    {
      engine::Request r = base;
      r.sampling.bad_words = {{base.prompt.back(), best}};
      expect(r, "bad_word_prompt", hf);
    }
    // min_new_tokens: the eos ids and stop token ids are banned until then.
    {
      engine::Request r = base;
      r.ignore_eos = false;
      r.min_new_tokens = 1;
      r.stop_token_ids = {best};
      std::vector<double> x = hf;
      x[size_t(best)] = -INFINITY;
      for (int64_t e : eos) x[size_t(e)] = -INFINITY;
      expect(r, "min_new_tokens", x);
    }
  }
  const auto runs = test::run_engine(*rig.engine, reqs);
  for (const auto& [id, token] : want) {
    ASSERT_EQ(runs.at(id).tokens.size(), 1u) << id;
    EXPECT_EQ(runs.at(id).tokens[0], token) << id;
  }
  EXPECT_GT(want.size(), 40u) << skipped << " skipped as near ties";
}

// Requests with penalties over the output, for the property they must give:
// a presence or frequency penalty of 50 never lets a generated token come
// again (every logit is within a few units of the others).
std::vector<engine::Request> penalised_requests() {
  std::vector<engine::Request> reqs;
  const auto lines = read_jsonl(test::golden_dir(kCase) / "generate_requests.jsonl");
  for (size_t i = 0; i < lines.size(); ++i) {
    engine::Request r = test::request_of(lines[i]);
    r.max_new_tokens = 14;
    if (i % 2 == 0)
      r.sampling.presence_penalty = 50;
    else
      r.sampling.frequency_penalty = 50;
    if (i % 3 == 0) {  // sampled too
      r.sampling.greedy = false;
      r.sampling.temperature = 0.9f;
      r.sampling.seed = 40 + i;
    }
    reqs.push_back(r);
  }
  return reqs;
}

TEST(EngineSampling, PenaltiesHoldOverTheOutputThroughGraphsChunksAndPreemption) {
  std::map<std::string, std::vector<int32_t>> first;
  struct Setting {
    const char* name;
    engine::EngineConfig config;
    int64_t pages;
  };
  for (const Setting& s :
       {Setting{"roomy", {4096, 64, false}, 512}, Setting{"graphs", {4096, 64, true}, 512},
        Setting{"chunked", {5, 64, true}, 512}, Setting{"tight", {16, 64, true}, 13}}) {
    SCOPED_TRACE(s.name);
    EngineRig rig(kCase, s.config, s.pages);
    const auto runs = test::run_engine(*rig.engine, penalised_requests());
    for (const auto& [id, run] : runs) {
      ASSERT_EQ(run.tokens.size(), 14u) << id;
      EXPECT_EQ(std::set<int32_t>(run.tokens.begin(), run.tokens.end()).size(), run.tokens.size())
          << id << ": a generated token came again";
      if (first.count(id)) {
        EXPECT_EQ(run.tokens, first[id]) << id << " differs from the roomy run";
      } else {
        first[id] = run.tokens;
      }
    }
    if (std::string(s.name) == "tight") {
      EXPECT_GT(rig.engine->stats().preemptions, 0) << "the setting must preempt";
    }
    if (s.config.step_graphs) {
      EXPECT_GT(rig.engine->runner_stats().graph_steps, 0);
    }
  }
}

// Count rows are a pool: more penalised requests than rows wait for one.
TEST(EngineSampling, RequestsWaitForACountRow) {
  EngineRig rig(kCase, {4096, 64, false, true, /*count_rows=*/2});
  const auto runs = test::run_engine(*rig.engine, penalised_requests());
  EXPECT_EQ(runs.size(), 5u);
  EngineRig roomy(kCase, {4096, 64, false});
  const auto want = test::run_engine(*roomy.engine, penalised_requests());
  for (const auto& [id, run] : runs) EXPECT_EQ(run.tokens, want.at(id).tokens) << id;
}

TEST(EngineSampling, SeedsAreDrawnReportedAndReproduce) {
  const auto line = read_jsonl(test::golden_dir(kCase) / "generate_requests.jsonl")[1];
  engine::Request r = test::request_of(line);
  r.max_new_tokens = 12;
  r.sampling.greedy = false;
  r.sampling.temperature = 1.5f;
  std::vector<engine::Request> reqs;
  for (int i = 0; i < 4; ++i) {
    r.id = "unseeded" + std::to_string(i);
    reqs.push_back(r);
  }
  EngineRig rig(kCase, {4096, 64, false});
  const auto runs = test::run_engine(*rig.engine, reqs);
  std::set<uint64_t> seeds;
  std::set<std::vector<int32_t>> outputs;
  for (const auto& [id, run] : runs) {
    seeds.insert(run.seed);
    outputs.insert(run.tokens);
    for (const engine::StepOutput& o : run.steps) EXPECT_EQ(o.seed, run.seed) << id;
  }
  EXPECT_EQ(seeds.size(), 4u) << "each request draws its own seed";
  EXPECT_GT(outputs.size(), 1u) << "identical unseeded requests give different text";
  // Each seed, given back, gives the same tokens.
  std::vector<engine::Request> again;
  for (const auto& [id, run] : runs) {
    r.id = id + "/again";
    r.sampling.seed = run.seed;
    again.push_back(r);
  }
  EngineRig rig2(kCase, {4096, 64, false});
  const auto reruns = test::run_engine(*rig2.engine, again);
  for (const auto& [id, run] : runs) {
    EXPECT_EQ(reruns.at(id + "/again").tokens, run.tokens) << id;
    EXPECT_EQ(reruns.at(id + "/again").seed, run.seed) << id;
  }
}

// ---- batch invariance ------------------------------------------------------------------

// Sampled requests with every kind of parameter, over the golden prompts and
// adapters, each with its own seed.
std::vector<engine::Request> varied_requests() {
  const auto lines = read_jsonl(test::golden_dir(kCase) / "generate_requests.jsonl");
  std::vector<engine::Request> reqs;
  for (int i = 0; i < 10; ++i) {
    engine::Request r = test::request_of(lines[size_t(i) % lines.size()]);
    r.id = "v" + std::to_string(i);
    r.max_new_tokens = 10;
    r.sampling.greedy = i == 9;
    r.sampling.temperature = 0.6f + 0.15f * float(i % 5);
    r.sampling.seed = 1000 + uint64_t(i);
    if (i % 3 == 0) r.sampling.top_k = 20;
    if (i % 4 == 1) r.sampling.top_p = 0.9f;
    if (i % 5 == 2) r.sampling.min_p = 0.05f;
    if (i % 5 == 3) r.sampling.typical_p = 0.8f;
    if (i % 2 == 0) r.sampling.repetition_penalty = 1.3f;
    if (i % 3 == 1) r.sampling.frequency_penalty = 0.7f;
    if (i % 4 == 2) r.sampling.presence_penalty = 0.5f;
    if (i % 3 == 2) r.sampling.logit_bias = {{7, 2.0f}, {11, -3.0f}, {100, 1.0f}};
    if (i % 4 == 3) r.sampling.bad_words = {{7}, {120, 121}};
    if (i % 2 == 1) r.min_new_tokens = 2;
    r.logprobs = i % 3 == 0 ? 5 : i % 3 == 1 ? 0 : 20;
    r.logprob_kind = i % 2 == 0 ? engine::LogprobKind::raw : engine::LogprobKind::processed;
    if (i % 4 == 0) r.prompt_logprobs = 3;
    reqs.push_back(r);
  }
  return reqs;
}

// Other work for the batch: long prompts, other adapters, a prompt that
// shares the cache with a varied one, sampled and greedy.
std::vector<engine::Request> noise_requests() {
  std::vector<engine::Request> reqs;
  for (const nlohmann::json& line : score_lines()) {
    engine::Request r = test::request_of(line);
    r.id = "noise/" + r.id;
    r.max_new_tokens = 6;
    r.sampling.greedy = r.prompt.size() % 2 == 0;
    r.sampling.temperature = 1.1f;
    r.sampling.seed = 7;
    r.sampling.presence_penalty = 0.3f;
    reqs.push_back(r);
  }
  engine::Request twin = varied_requests()[3];
  twin.id = "noise/twin";
  twin.sampling.seed = 99;
  reqs.push_back(twin);
  return reqs;
}

void expect_same(const test::Run& got, const test::Run& want, const std::string& what) {
  EXPECT_EQ(got.tokens, want.tokens) << what;
  ASSERT_EQ(got.logprobs.size(), want.logprobs.size()) << what;
  for (size_t k = 0; k < got.logprobs.size(); ++k) {
    EXPECT_EQ(got.logprobs[k].chosen.token, want.logprobs[k].chosen.token)
        << what << " token " << k;
    EXPECT_EQ(got.logprobs[k].chosen.logprob, want.logprobs[k].chosen.logprob)
        << what << " token " << k;
    ASSERT_EQ(got.logprobs[k].top.size(), want.logprobs[k].top.size()) << what;
    for (size_t j = 0; j < got.logprobs[k].top.size(); ++j) {
      EXPECT_EQ(got.logprobs[k].top[j].token, want.logprobs[k].top[j].token)
          << what << " " << k << "/" << j;
      EXPECT_EQ(got.logprobs[k].top[j].logprob, want.logprobs[k].top[j].logprob)
          << what << " " << k << "/" << j;
    }
  }
  ASSERT_EQ(bool(got.prompt_logprobs), bool(want.prompt_logprobs)) << what;
  if (got.prompt_logprobs) {
    ASSERT_EQ(got.prompt_logprobs->size(), want.prompt_logprobs->size()) << what;
    for (size_t k = 0; k < got.prompt_logprobs->size(); ++k)
      EXPECT_EQ((*got.prompt_logprobs)[k].chosen.logprob, (*want.prompt_logprobs)[k].chosen.logprob)
          << what;
  }
}

TEST(EngineSampling, BatchInvariance) {
  // Each request alone.
  std::map<std::string, test::Run> alone;
  for (const engine::Request& r : varied_requests()) {
    EngineRig rig(kCase, {4096, 64, false});
    alone[r.id] = test::run_engine(*rig.engine, {r}).at(r.id);
  }
  std::set<int32_t> distinct;
  for (const auto& [id, run] : alone) distinct.insert(run.tokens.begin(), run.tokens.end());
  EXPECT_GT(distinct.size(), 20u) << "sampling must vary the tokens";
  struct Setting {
    const char* name;
    engine::EngineConfig config;
    int64_t pages;
  };
  for (const Setting& s :
       {Setting{"together", {4096, 64, false}, 512}, Setting{"chunked_graphs", {7, 64, true}, 512},
        Setting{"tight_graphs", {24, 64, true}, 40}}) {
    SCOPED_TRACE(s.name);
    EngineRig rig(kCase, s.config, s.pages);
    std::vector<engine::Request> all = noise_requests();
    for (const engine::Request& r : varied_requests())
      all.insert(all.begin() + int64_t(all.size() / 2), r);
    const auto runs = test::run_engine(*rig.engine, all);
    for (const auto& [id, want] : alone) expect_same(runs.at(id), want, id + " [" + s.name + "]");
    std::printf("[%s] steps %ld, preemptions %ld, graph steps %ld, prefix-cache hits %ld\n", s.name,
                long(rig.engine->stats().steps), long(rig.engine->stats().preemptions),
                long(rig.engine->runner_stats().graph_steps),
                long(rig.engine->stats().prefix_cache_hits));
    if (std::string(s.name) == "tight_graphs") {
      EXPECT_GT(rig.engine->stats().preemptions, 0) << "the setting must preempt";
    }
  }
}

TEST(EngineSampling, InvalidSamplingParametersAreRefused) {
  EngineRig rig(kCase, {4096, 64, false});
  const engine::Request base = varied_requests()[0];
  auto refused = [&](engine::Request r, const char* what) {
    r.id = what;
    EXPECT_FALSE(rig.engine->add_request(r).ok()) << what;
  };
  engine::Request r = base;
  r.sampling.min_p = 1.5f;
  refused(r, "min_p above 1");
  r = base;
  r.sampling.typical_p = 0;
  refused(r, "typical_p 0");
  r = base;
  r.sampling.repetition_penalty = 0;
  refused(r, "repetition_penalty 0");
  r = base;
  r.sampling.frequency_penalty = NAN;
  refused(r, "a NaN frequency_penalty");
  r = base;
  r.sampling.logit_bias = {{200, 1.0f}};
  refused(r, "a bias outside the vocabulary");
  r = base;
  r.sampling.logit_bias = {{3, INFINITY}};
  refused(r, "an infinite bias");
  r = base;
  r.sampling.bad_words = {{}};
  refused(r, "an empty bad word");
  r = base;
  r.sampling.bad_words = {{1, -1}};
  refused(r, "a bad word outside the vocabulary");
  r = base;
  r.logprobs = 21;
  refused(r, "21 logprobs");
  r = base;
  r.prompt_logprobs = -1;
  refused(r, "negative prompt logprobs");
}

}  // namespace
}  // namespace philora
