// The speculative-sampling rule for deterministic (n-gram) drafts, as the
// engine runs it (engine/speculate.h): the rows of a drafted sequence are
// sampled by the CPU sample op, each with its own draw, and the sequence
// keeps y_0 .. y_a, a = accepted_drafts(drafts, y). With a one-hot draft q_j
// the rule says: the token kept at position j is distributed as p_j; the
// draft d_j is accepted with probability p_j(d_j); a rejected position's
// token is distributed as (p_j - q_j)+ normalised, p_j without d_j. Checked
// over many trials on a small vocabulary against p computed in float64 by
// the sample oracle (tests/ops/sample_oracle.h): chi-square and binomial
// tests at significance 1e-3 each, with fixed seeds, so the test is
// deterministic (a wrong rule — every draft accepted, one draw shared by the
// rows, no residual — fails it by far).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "engine/speculate.h"
#include "ops/harness.h"
#include "ops/sample_oracle.h"

namespace philora::optest {
namespace {

constexpr int64_t kVocab = 7;
constexpr int64_t kDrafts = 2;
constexpr int64_t kTrials = 30000;

// Chi-square critical values at significance 1e-3, by degrees of freedom 1 .. 6.
constexpr double kChi2Critical[] = {0, 10.828, 13.816, 16.266, 18.467, 20.515, 22.458};

// The probabilities `row` is drawn with, in float64 (the oracle's processed logprobs).
std::vector<double> target(const SampleRowIn& row) {
  SampleBatch one(kVocab);
  one.rows = {row};
  one.rows[0].logprobs = 0;
  one.rows[0].logprob_kind = 1;
  std::vector<double> p = oracle(one, 0).logprob;
  for (double& x : p) x = std::exp(x);
  return p;
}

// p without `removed`, renormalised: (p - onehot(removed))+ / Σ.
std::vector<double> residual(std::vector<double> p, int32_t removed) {
  const double rest = 1.0 - p[size_t(removed)];
  p[size_t(removed)] = 0;
  for (double& x : p) x /= rest;
  return p;
}

// Chi-square of `tokens` against `p`: no token outside p's support, and the
// statistic below the critical value for its degrees of freedom.
void expect_distributed_as(const std::vector<int32_t>& tokens, const std::vector<double>& p,
                           const std::string& what) {
  std::vector<int64_t> count(kVocab, 0);
  for (int32_t t : tokens) ++count[size_t(t)];
  double chi2 = 0;
  int bins = 0;
  for (int64_t t = 0; t < kVocab; ++t) {
    const double want = p[size_t(t)] * double(tokens.size());
    if (p[size_t(t)] == 0) {
      EXPECT_EQ(count[size_t(t)], 0) << what << ": token " << t << " is outside the kept set";
      continue;
    }
    ASSERT_GE(want, 5.0) << what << ": too few trials for token " << t;
    chi2 += (double(count[size_t(t)]) - want) * (double(count[size_t(t)]) - want) / want;
    ++bins;
  }
  ASSERT_GE(bins, 2) << what;
  EXPECT_LT(chi2, kChi2Critical[bins - 1]) << what << ": " << bins << " bins, " << tokens.size()
                                           << " tokens";
}

// `hits` successes in `n` trials of probability p: |z| below 3.29 (two-sided 1e-3).
void expect_binomial(int64_t hits, int64_t n, double p, const std::string& what) {
  const double z = (double(hits) - double(n) * p) / std::sqrt(double(n) * p * (1 - p));
  EXPECT_LT(std::abs(z), 3.29) << what << ": " << hits << " of " << n << ", p = " << p;
}

TEST(SpeculativeRule, KeptTokensFollowTheTarget) {
  Rng rng(20261207);
  // Rows 0 .. kDrafts: temperature and a top-k cut (the last row: top-p), bf16 logits.
  std::vector<SampleRowIn> rows(kDrafts + 1);
  for (int64_t j = 0; j <= kDrafts; ++j) {
    rows[size_t(j)].logits = rng.bf16(kVocab, -1.5, 1.5);
    rows[size_t(j)].temperature = 0.8f;
    rows[size_t(j)].top_k = j < kDrafts ? 5 : 0;
    rows[size_t(j)].top_p = j < kDrafts ? 1.0f : 0.9f;
  }
  std::vector<std::vector<double>> p;
  for (const SampleRowIn& r : rows) p.push_back(target(r));
  // Drafts: the most likely token at position 0, a kept token of middling
  // probability at position 1.
  std::vector<int32_t> drafts(kDrafts);
  drafts[0] = int32_t(std::max_element(p[0].begin(), p[0].end()) - p[0].begin());
  std::vector<int32_t> order(kVocab);
  for (int32_t t = 0; t < kVocab; ++t) order[size_t(t)] = t;
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[1][size_t(a)] > p[1][size_t(b)]; });
  drafts[1] = order[2];
  ASSERT_GT(p[1][size_t(drafts[1])], 0.05);

  SampleBatch in(kVocab);
  std::mt19937_64 gen(99);
  for (int64_t t = 0; t < kTrials; ++t)
    for (int64_t j = 0; j <= kDrafts; ++j) {
      in.rows.push_back(rows[size_t(j)]);
      in.rows.back().uniform = engine::draw_uniform(gen);  // each row its own draw
    }
  const SampleOut out = run_sample(backend_named("cpu"), in);

  // kept[j]: the tokens kept at position j over the trials that reach it;
  // rejected[j]: those of the trials whose draft j was rejected.
  std::vector<std::vector<int32_t>> kept(kDrafts + 1), rejected(kDrafts);
  std::vector<int64_t> reached(kDrafts + 1, 0), accepted(kDrafts, 0);
  for (int64_t t = 0; t < kTrials; ++t) {
    const std::vector<int32_t> y(out.tokens.begin() + t * (kDrafts + 1),
                                 out.tokens.begin() + (t + 1) * (kDrafts + 1));
    const int64_t a = engine::accepted_drafts(drafts, y);
    for (int64_t j = 0; j <= a; ++j) {
      ++reached[size_t(j)];
      kept[size_t(j)].push_back(y[size_t(j)]);
      if (j < kDrafts && j < a) ++accepted[size_t(j)];
      if (j < kDrafts && j == a) rejected[size_t(j)].push_back(y[size_t(j)]);
    }
  }
  for (int64_t j = 0; j <= kDrafts; ++j) {
    const std::string at = "position " + std::to_string(j);
    expect_distributed_as(kept[size_t(j)], p[size_t(j)], at);
    if (j == kDrafts) break;
    expect_binomial(accepted[size_t(j)], reached[size_t(j)], p[size_t(j)][size_t(drafts[size_t(j)])],
                    at + " acceptance");
    expect_distributed_as(rejected[size_t(j)], residual(p[size_t(j)], drafts[size_t(j)]),
                          at + " after a rejection");
  }
}

}  // namespace
}  // namespace philora::optest
