// What the speculation tests (n-gram drafts, Medusa drafts) share: the golden
// cases, their requests and the long copy-heavy runs made from them, the six
// schedules that a plain run and a speculative one are compared under, and the
// comparison itself (tokens, text, finish, stop string, seed, logprobs bit for
// bit), which the n / best_of tests use for a candidate against its request
// alone too.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/engine_rig.h"

namespace philora::test {

// Every golden case: adapters, LongRoPE, partial rotary with tied embeddings,
// a sliding window.
inline constexpr const char* kGoldenCases[] = {"gqa_multi_lora", "mqa_longrope",
                                               "partial_rotary_tied", "sliding_window"};

// A case's golden requests (greedy); max_new_tokens replaced unless negative.
inline std::vector<engine::Request> golden_requests(const std::string& case_name,
                                                    int64_t max_new_tokens = -1) {
  std::vector<engine::Request> reqs;
  for (const nlohmann::json& line : read_jsonl(golden_dir(case_name) / "generate_requests.jsonl")) {
    engine::Request r = request_of(line);
    if (max_new_tokens >= 0) r.max_new_tokens = max_new_tokens;
    reqs.push_back(r);
  }
  return reqs;
}

// Long greedy runs of the golden prompts, each also with its prompt repeated
// (copy-heavy text; and a prefix another request shares), logprobs asked for
// and a seed to compare by: the random golden models fall into loops that the
// drafts follow, and leave them.
inline std::vector<engine::Request> long_requests(const std::string& case_name) {
  std::vector<engine::Request> reqs = golden_requests(case_name, 40);
  const auto config = model::load_config((golden_dir(case_name) / "model").string());
  EXPECT_TRUE(config.ok());
  const size_t n = reqs.size();
  for (size_t i = 0; i < n; ++i) {
    if (2 * reqs[i].prompt.size() + 40 > size_t(config->max_position_embeddings)) continue;
    engine::Request r = reqs[i];
    r.id += "-twice";
    r.prompt.insert(r.prompt.end(), reqs[i].prompt.begin(), reqs[i].prompt.end());
    reqs.push_back(r);
  }
  uint64_t seed = 1000;
  for (engine::Request& r : reqs) {
    r.logprobs = 2;
    r.sampling.seed = seed++;  // greedy rows draw nothing; a seed to compare outputs by
  }
  return reqs;
}

// Turns the requests into seeded sampled ones whose rows differ: temperature,
// top-k, logit bias, min_new_tokens, raw and processed logprobs, and with
// `bad_words` a bad-word list (seeds 7, 8, ...).
inline void make_seeded_sampling(std::vector<engine::Request>& reqs, bool bad_words) {
  uint64_t seed = 7;
  for (size_t i = 0; i < reqs.size(); ++i) {
    engine::SamplingParams& p = reqs[i].sampling;
    p.greedy = false;
    p.temperature = i % 2 ? 0.3f : 0.7f;
    p.top_k = i % 3 ? 0 : 20;
    p.seed = seed++;
    p.logit_bias = {{int32_t(40 + i), 1.5f}};
    if (bad_words) p.bad_words = {{90, 55}};
    reqs[i].min_new_tokens = 3;
    if (i % 2) reqs[i].logprob_kind = engine::LogprobKind::processed;
  }
}

// A schedule to run requests under: the step's token budget, the KV cache's
// pages (of 4 tokens), the prefix cache on or off, the most sequences running.
struct Schedule {
  const char* name;
  int64_t budget;
  int64_t pages;
  bool prefix_cache;
  int64_t max_running = 64;  // fewer: later requests find the earlier ones' pages cached
};

// One batch; no prefix cache; prefix hits; chunked prefill; preemption under a
// tight KV cache, chunked too. With testing::ValuesIn and schedule_name.
inline constexpr Schedule kSchedules[] = {
    {"one_batch", 4096, 512, true},      {"no_prefix_cache", 4096, 512, false},
    {"prefix_hits", 4096, 512, true, 3}, {"chunked", 7, 512, true},
    {"tight_kv", 4096, 40, true},        {"tight_kv_chunked", 9, 40, false},
};

// A parameterised test's name under a schedule: the schedule's name.
inline std::string schedule_name(const testing::TestParamInfo<Schedule>& info) {
  return info.param.name;
}

// The index in the output of the first token of the first step that kept
// several tokens (accepted drafts); -1 when none.
inline int64_t inside_accepted_run(const Run& r) {
  int64_t at = 0;
  for (const engine::StepOutput& o : r.steps) {
    if (o.new_tokens.size() >= 2) return at;
    at += int64_t(o.new_tokens.size());
  }
  return -1;
}

// A request's outputs per output index (its n / best_of candidates): the
// tokens and their chosen logprobs, in order.
inline std::map<int32_t, std::pair<std::vector<int32_t>, std::vector<float>>> by_output_index(
    const Run& run) {
  std::map<int32_t, std::pair<std::vector<int32_t>, std::vector<float>>> by_index;
  for (const engine::StepOutput& o : run.steps) {
    auto& [tokens, logprobs] = by_index[o.index];
    tokens.insert(tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
    for (const engine::PositionLogprobs& lp : o.logprobs) logprobs.push_back(lp.chosen.logprob);
  }
  return by_index;
}

// An engine's outputs by request id, and its counters at the end.
struct Result {
  std::map<std::string, Run> runs;
  engine::EngineStats stats;
  int64_t graph_verify_steps = 0;  // StepRunnerStats::graph_verify_steps
  int64_t heads_steps = 0;         // StepRunnerStats::heads_steps
};

// Two runs are the same: tokens, text, finish, stop string, seed, and the
// logprobs (chosen and top, tokens and values) bit for bit.
inline void expect_same(const Run& got, const Run& want, const std::string& what) {
  EXPECT_EQ(got.tokens, want.tokens) << what;
  EXPECT_EQ(got.text, want.text) << what;
  EXPECT_EQ(got.finish, want.finish) << what;
  EXPECT_EQ(got.stop_string, want.stop_string) << what;
  EXPECT_EQ(got.seed, want.seed) << what;
  ASSERT_EQ(got.logprobs.size(), want.logprobs.size()) << what;
  for (size_t k = 0; k < got.logprobs.size(); ++k) {
    EXPECT_EQ(got.logprobs[k].chosen.token, want.logprobs[k].chosen.token) << what << " " << k;
    EXPECT_EQ(got.logprobs[k].chosen.logprob, want.logprobs[k].chosen.logprob) << what << " " << k;
    ASSERT_EQ(got.logprobs[k].top.size(), want.logprobs[k].top.size()) << what;
    for (size_t j = 0; j < got.logprobs[k].top.size(); ++j) {
      EXPECT_EQ(got.logprobs[k].top[j].token, want.logprobs[k].top[j].token) << what;
      EXPECT_EQ(got.logprobs[k].top[j].logprob, want.logprobs[k].top[j].logprob) << what;
    }
  }
}

// The same requests, and each request's run the same.
inline void expect_same(const Result& got, const Result& want, const std::string& what) {
  ASSERT_EQ(got.runs.size(), want.runs.size()) << what;
  for (const auto& [id, w] : want.runs) {
    ASSERT_TRUE(got.runs.count(id)) << what << " " << id;
    expect_same(got.runs.at(id), w, what + " " + id);
  }
}

}  // namespace philora::test
