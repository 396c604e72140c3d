// Logprobs against HF: the golden fixtures hold HF's logits of every prompt
// position (score_ref.safetensors), log_softmax'ed here in float64.
//   Prompt logprobs: every prompt token after the first, with the top 5, in
//     one step, in 5-token chunks, and under preemption (a recomputed row is
//     not reported twice), mixed with adapters and with generating requests.
//   Generated logprobs: the first new token of every prefix of every scored
//     prompt (its logits are HF's of the prefix's last position): raw with the
//     top 20; processed for a sampled row (temperature, top-k: the drawn
//     distribution) and for a greedy row with a repetition penalty.
// Values within 1e-4 · max(1, |value|) (fp32 logits vs HF's float64); ids
// exact except where HF's own values nearly tie.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "model/engine_rig.h"
#include "model/rope.h"

namespace philora {
namespace {

using test::EngineRig;
using test::read_jsonl;

constexpr double kTolerance = 1e-4;

bool close(double got, double want) {
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::fabs(got - want) <= kTolerance * std::max(1.0, std::fabs(want));
}

// Token ids by value desc, ties by id.
std::vector<int32_t> ranked(const std::vector<double>& lp) {
  std::vector<int32_t> order(lp.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return lp[size_t(a)] > lp[size_t(b)]; });
  return order;
}

// `got` against the float64 logprobs `want` of one position: its token's value,
// and the top list (values in order; ids where HF's neighbours stand 1e-3 apart).
void expect_position(const engine::PositionLogprobs& got, const std::vector<double>& want,
                     int32_t token, size_t k, const std::string& what) {
  EXPECT_EQ(got.chosen.token, token) << what;
  EXPECT_TRUE(close(got.chosen.logprob, want[size_t(token)]))
      << what << ": logprob " << got.chosen.logprob << ", HF " << want[size_t(token)];
  ASSERT_EQ(got.top.size(), k) << what;
  const std::vector<int32_t> order = ranked(want);
  for (size_t j = 0; j < k; ++j) {
    EXPECT_TRUE(close(got.top[j].logprob, want[size_t(order[j])]))
        << what << " top " << j << ": " << got.top[j].logprob << ", HF " << want[size_t(order[j])];
    EXPECT_TRUE(close(got.top[j].logprob, want[size_t(got.top[j].token)]))
        << what << " top " << j << " is token " << got.top[j].token << ", which HF gives "
        << want[size_t(got.top[j].token)];
    auto apart = [&](size_t i) {
      return i >= order.size() || std::fabs(want[size_t(order[i])] - want[size_t(order[j])]) > 1e-3;
    };
    if ((j == 0 || apart(j - 1)) && apart(j + 1)) {
      EXPECT_EQ(got.top[j].token, order[j]) << what << " top " << j;
    }
  }
}

struct Scenario {
  const char* name;
  int64_t budget;
  int64_t pages;  // of 4 tokens
};

class EnginePromptLogprobs : public testing::TestWithParam<std::tuple<std::string, Scenario>> {};

TEST_P(EnginePromptLogprobs, MatchHF) {
  const auto& [case_name, sc] = GetParam();
  EngineRig rig(case_name, {sc.budget, 64, false}, sc.pages);
  std::vector<engine::Request> reqs;
  const auto lines = read_jsonl(test::golden_dir(case_name) / "requests.jsonl");
  for (size_t i = 0; i < lines.size(); ++i) {
    engine::Request r = test::request_of(lines[i]);
    r.prompt_logprobs = 5;
    r.max_new_tokens =
        i % 3 == 0 ? 2 : 0;  // some generate: their prompt logprobs come with the first token
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  for (const nlohmann::json& g :
       read_jsonl(test::golden_dir(case_name) / "generate_requests.jsonl"))
    reqs.push_back(test::request_of(g));  // other work in the same steps
  const auto runs = test::run_engine(*rig.engine, reqs);
  std::printf("[%s/%s] steps %ld, preemptions %ld\n", case_name.c_str(), sc.name,
              long(rig.engine->stats().steps), long(rig.engine->stats().preemptions));
  if (std::string(sc.name) == "tight") {
    EXPECT_GT(rig.engine->stats().preemptions, 0) << "the scenario must preempt";
  }
  for (const engine::Request& r : reqs) {
    if (!r.prompt_logprobs) continue;
    const test::Run& run = runs.at(r.id);
    ASSERT_TRUE(run.prompt_logprobs) << r.id;
    const auto hf = test::hf_logits(case_name, r.id);
    ASSERT_EQ(run.prompt_logprobs->size(), r.prompt.size() - 1) << r.id;
    for (size_t i = 0; i + 1 < r.prompt.size(); ++i)
      expect_position(
          (*run.prompt_logprobs)[i], test::log_softmax(hf[i]), r.prompt[i + 1], 5,
          case_name + "/" + r.id + " position " + std::to_string(i) + " [" + sc.name + "]");
    if (r.max_new_tokens > 0) {
      EXPECT_EQ(run.steps.front().prompt_logprobs.has_value(), true)
          << r.id << ": with the first token";
      EXPECT_EQ(run.tokens.size(), 2u);
    }
  }
  for (const auto& ref : read_jsonl(test::golden_dir(case_name) / "generate_ref.jsonl"))
    EXPECT_EQ(runs.at(ref["id"].get<std::string>()).tokens,
              ref["tokens"].get<std::vector<int32_t>>());
  EXPECT_EQ(rig.kv->pages.num_held(), 0);
}

const Scenario kScenarios[] = {{"one_step", 4096, 512}, {"chunked", 5, 512}, {"tight", 16, 12}};

INSTANTIATE_TEST_SUITE_P(Schedules, EnginePromptLogprobs,
                         testing::Combine(testing::Values("gqa_multi_lora", "mqa_longrope",
                                                          "sliding_window", "partial_rotary_tied"),
                                          testing::ValuesIn(kScenarios)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::get<1>(info.param).name;
                         });

// The first new token of every prefix of every scored prompt: its logits are
// HF's logits of the prefix's last position (a prefix whose LongRoPE choice
// cannot be HF's for the whole prompt is left out).
class EngineGeneratedLogprobs : public testing::TestWithParam<std::string> {};

TEST_P(EngineGeneratedLogprobs, MatchHF) {
  const std::string case_name = GetParam();
  EngineRig rig(case_name, {4096, 256, true});  // decode-free: every row is a prompt's last
  struct Want {
    std::vector<double> raw;        // HF's log_softmax at the prefix's last position
    std::vector<double> processed;  // the drawn distribution's, for the processed rows
    int32_t greedy = -1;            // HF's argmax, when it stands clear
  };
  std::vector<engine::Request> reqs;
  std::map<std::string, Want> want;
  for (const nlohmann::json& line : read_jsonl(test::golden_dir(case_name) / "requests.jsonl")) {
    const engine::Request full = test::request_of(line);
    const auto hf = test::hf_logits(case_name, full.id);
    const model::Phi3Config& c = rig.model->config();
    const bool hf_long = model::uses_long_rope(c, int64_t(full.prompt.size()));
    for (size_t j = 1; j <= full.prompt.size(); ++j) {
      engine::Request r = full;
      r.prompt.resize(j);
      // HF scored the whole prompt with the LongRoPE factors of its length: the
      // prefix asks for as many new tokens as take it to the same choice.
      r.max_new_tokens = hf_long ? std::max<int64_t>(1, int64_t(full.prompt.size() - j)) : 1;
      if (model::uses_long_rope(c, int64_t(j) + r.max_new_tokens) != hf_long) continue;
      r.ignore_eos = true;
      const std::vector<double>& x = hf[j - 1];
      const std::vector<double> raw = test::log_softmax(x);
      const std::vector<int32_t> order = ranked(x);
      const std::string prefix = full.id + "/" + std::to_string(j);
      // Greedy, raw, the top 20.
      if (x[size_t(order[0])] - x[size_t(order[1])] > 1e-3) {
        r.id = prefix + "/raw";
        r.logprobs = 20;
        reqs.push_back(r);
        want[r.id] = {raw, {}, order[0]};
      }
      // Sampled at T = 0.8 among the top 5: processed logprobs are those of
      // softmax(x / 0.8) over the 5, -inf for the rest.
      if (x[size_t(order[4])] - x[size_t(order[5])] > 1e-3) {
        engine::Request s = r;
        s.id = prefix + "/processed";
        s.sampling.greedy = false;
        s.sampling.temperature = 0.8f;
        s.sampling.top_k = 5;
        s.sampling.seed = j;
        s.logprobs = 8;
        s.logprob_kind = engine::LogprobKind::processed;
        std::vector<double> p(x.size(), -INFINITY);
        for (int i = 0; i < 5; ++i) p[size_t(order[size_t(i)])] = x[size_t(order[size_t(i)])] / 0.8;
        reqs.push_back(s);
        want[s.id] = {raw, test::log_softmax(p), -1};
      }
      // Greedy with a repetition penalty: processed = log_softmax of the penalised logits.
      {
        engine::Request g = r;
        g.id = prefix + "/penalised";
        g.sampling.repetition_penalty = 1.4f;
        g.logprobs = 3;
        g.logprob_kind = engine::LogprobKind::processed;
        std::vector<double> p = x;
        for (int32_t t : std::set<int32_t>(r.prompt.begin(), r.prompt.end()))
          p[size_t(t)] = p[size_t(t)] > 0 ? p[size_t(t)] / 1.4 : p[size_t(t)] * 1.4;
        const std::vector<int32_t> po = ranked(p);
        if (p[size_t(po[0])] - p[size_t(po[1])] > 1e-3) {
          reqs.push_back(g);
          want[g.id] = {raw, test::log_softmax(p), po[0]};
        }
      }
    }
  }
  const auto runs = test::run_engine(*rig.engine, reqs);
  size_t checked = 0;
  for (const engine::Request& r : reqs) {
    const test::Run& run = runs.at(r.id);
    const Want& w = want.at(r.id);
    ASSERT_EQ(run.tokens.size(), size_t(r.max_new_tokens)) << r.id;
    ASSERT_EQ(run.logprobs.size(), run.tokens.size()) << r.id;
    const int32_t token = run.tokens[0];
    if (w.greedy >= 0) {
      EXPECT_EQ(token, w.greedy) << r.id;
    }
    const bool processed = r.logprob_kind == engine::LogprobKind::processed;
    const std::vector<double>& lp = processed ? w.processed : w.raw;
    EXPECT_TRUE(std::isfinite(lp[size_t(token)]))
        << r.id << ": token " << token << " outside the kept set";
    expect_position(run.logprobs[0], lp, token, size_t(*r.logprobs), case_name + "/" + r.id);
    ++checked;
  }
  EXPECT_GT(checked, 100u);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineGeneratedLogprobs,
                         testing::Values("gqa_multi_lora", "mqa_longrope", "sliding_window",
                                         "partial_rotary_tied"));

}  // namespace
}  // namespace philora
