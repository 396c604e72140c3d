// n-gram drafts (prompt lookup), the acceptance count and the adaptive draft
// limit (engine/speculate.h), tree speculation's candidates and walk (against
// plain sampling draw for draw, and a chi-square against a float64
// distribution), and PageManager::truncate (rollback of the pages of rejected
// drafts).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <span>
#include <vector>

#include "engine/speculate.h"
#include "kv/page_manager.h"

namespace philora {
namespace {

using engine::ngram_drafts;
using V = std::vector<int32_t>;

TEST(SpeculateNgram, LongestTrailingNgramFirst) {
  // The trailing 3-gram (1 2 3) occurred at 0: the tokens after it.
  EXPECT_EQ(ngram_drafts(V{1, 2, 3, 4, 5, 9, 2, 3, 7, 1, 2, 3}, 2), (V{4, 5}));
  // No earlier (9 9 3) nor (9 3): the 1-gram 3's last earlier occurrence (index 7) is followed
  // by 7.
  EXPECT_EQ(ngram_drafts(V{1, 2, 3, 4, 5, 9, 2, 3, 7, 9, 9, 3}, 3), (V{7, 9, 9}));
  // The last occurrence wins, and the drafts stop at the end of the tokens.
  EXPECT_EQ(ngram_drafts(V{5, 6, 1, 5, 6, 2, 5, 6}, 4), (V{2, 5, 6}));
  // Overlapping with the tail: a run of one token drafts more of it.
  EXPECT_EQ(ngram_drafts(V{4, 8, 8, 8}, 4), (V{8}));
  EXPECT_EQ(ngram_drafts(V{4, 8, 8, 8, 8}, 4), (V{8}));  // (8 8 8) at 1, then the last 8
}

TEST(SpeculateNgram, NothingWhenNoNgramRecurs) {
  EXPECT_TRUE(ngram_drafts(V{1, 2, 3, 4}, 4).empty());
  EXPECT_TRUE(ngram_drafts(V{7}, 4).empty());
  EXPECT_TRUE(ngram_drafts(V{}, 4).empty());
  EXPECT_TRUE(ngram_drafts(V{1, 2, 1}, 0).empty());
  // min_n 2: a recurring 1-gram alone is not enough.
  EXPECT_TRUE(ngram_drafts(V{1, 2, 3, 1}, 4, 3, 2).empty());
}

TEST(SpeculateNgramPaths, EveryEarlierContinuation) {
  using Paths = std::vector<V>;
  // (1 2 3) at 5 then at 0; the 2- and 1-gram occurrences repeat them.
  const V t = {1, 2, 3, 4, 9, 1, 2, 3, 5, 9, 1, 2, 3};
  EXPECT_EQ(engine::ngram_draft_paths(t, 3, 4), (Paths{{5, 9, 1}, {4, 9, 1}}));
  EXPECT_EQ(engine::ngram_draft_paths(t, 3, 1), (Paths{engine::ngram_drafts(t, 3)}));
  EXPECT_EQ(engine::ngram_draft_paths(t, 2, 4), (Paths{{5, 9}, {4, 9}}));
  // The 1-gram 7: at 2 (8 9 7), at 0 (8 7 8 9), the latest first.
  EXPECT_EQ(engine::ngram_draft_paths(V{7, 8, 7, 8, 9, 7}, 4, 4), (Paths{{8, 9, 7}, {8, 7, 8, 9}}));
  // (2 1) cut short by the end of the tokens, then (2 1 2 1) from the 1-gram
  // at 0 extends it and takes its place; the 2-gram's (2 1) adds nothing.
  EXPECT_EQ(engine::ngram_draft_paths(V{1, 2, 1, 2, 1}, 4, 4), (Paths{{2, 1, 2, 1}}));
  EXPECT_EQ(engine::ngram_draft_paths(V{7, 8, 7, 8, 9, 7}, 4, 1), (Paths{{8, 9, 7}}));
  EXPECT_TRUE(engine::ngram_draft_paths(V{1, 2, 3}, 4, 4).empty());
  EXPECT_TRUE(engine::ngram_draft_paths(V{1, 2, 1}, 4, 0).empty());
}

// The walk, worked out by hand.
TEST(SpeculateAcceptPaths, FollowsTheKeptTokens) {
  using S = std::span<const int32_t>;
  {
    // Depth 0: chain 0's row gives 4 (chains 0, 1 drafted it); depth 1:
    // chain 0's row gives 7, which chain 1 drafted; depth 2 and 3: chain 1's
    // rows give 8 (drafted) and 1 (past its drafts).
    const std::vector<V> d = {{4, 5, 6}, {4, 7, 8}, {9}};
    const V s0 = {4, 7, 0, 0}, s1 = {4, 7, 8, 1}, s2 = {2, 3};
    const engine::PathAcceptance a = engine::accept_paths(d, {S(s0), S(s1), S(s2)});
    EXPECT_EQ(a.path, 1);
    EXPECT_EQ(a.accepted, 3);
    EXPECT_EQ(a.row_path, (std::vector<int32_t>{0, 0, 1, 1}));
  }
  {
    const std::vector<V> d = {{4}, {5}, {2, 3}};
    const V s0 = {2, 0}, s1 = {2, 0}, s2 = {2, 3, 9};
    const engine::PathAcceptance a = engine::accept_paths(d, {S(s0), S(s1), S(s2)});
    EXPECT_EQ(a.path, 2);
    EXPECT_EQ(a.accepted, 2);
    EXPECT_EQ(a.row_path, (std::vector<int32_t>{0, 2, 2}));
  }
  {
    const std::vector<V> d = {{4, 5}, {6}};
    const V s0 = {1, 1, 1}, s1 = {1, 1};
    const engine::PathAcceptance a = engine::accept_paths(d, {S(s0), S(s1)});
    EXPECT_EQ(a.path, 0);
    EXPECT_EQ(a.accepted, 0);
    EXPECT_EQ(a.row_path, (std::vector<int32_t>{0}));
  }
}

// A toy model over 4 tokens whose next-token distribution depends on the
// whole context (logits from a generator seeded by it), sampled by inverse
// CDF in float64. A tree step — every candidate chain's row j sampled with the
// j-th uniform from its own context, accept_paths keeping y_0 .. y_a — then
// plain steps with the following uniforms give, for every draw of the
// uniforms, the tokens plain sampling gives; and over 20,000 draws the first
// two tokens follow the float64 product p(x0) p(x1 | x0) (chi-square, 15
// degrees of freedom, significance 1e-3: 37.697).
TEST(SpeculateAcceptPaths, KeepsPlainSamplingsDistribution) {
  constexpr int kVocab = 4;
  auto probs = [](std::span<const int32_t> context) {
    uint64_t h = 1469598103934665603ull;
    for (int32_t t : context) h = (h ^ uint64_t(t + 1)) * 1099511628211ull;
    std::mt19937_64 g(h);
    std::vector<double> p(kVocab);
    double sum = 0;
    for (double& x : p) sum += x = std::exp(2.0 * std::uniform_real_distribution<double>(0, 1)(g));
    for (double& x : p) x /= sum;
    return p;
  };
  auto pick = [&](std::span<const int32_t> context, double u) {
    const std::vector<double> p = probs(context);
    double c = 0;
    for (int t = 0; t < kVocab; ++t)
      if (u < (c += p[size_t(t)])) return int32_t(t);
    return int32_t(kVocab - 1);
  };
  const std::vector<V> chains = {{0, 1, 2}, {0, 2}, {1, 0, 3}, {3}, {1, 3}};
  constexpr int kTokens = 4, kDraws = 20000;
  std::mt19937_64 rng(12345);
  std::map<std::pair<int32_t, int32_t>, int64_t> count;
  int64_t alternative_wins = 0, accepted = 0;
  for (int n = 0; n < kDraws; ++n) {
    std::vector<double> u(kTokens + 4);
    for (double& x : u) x = std::uniform_real_distribution<double>(0, 1)(rng);
    V plain;
    for (int j = 0; j < kTokens; ++j) plain.push_back(pick(plain, u[size_t(j)]));
    std::vector<V> rows(chains.size());
    for (size_t p = 0; p < chains.size(); ++p)
      for (size_t j = 0; j <= chains[p].size(); ++j)
        rows[p].push_back(pick(std::span<const int32_t>(chains[p]).first(j), u[j]));
    std::vector<std::span<const int32_t>> sampled(rows.begin(), rows.end());
    const engine::PathAcceptance a = engine::accept_paths(chains, sampled);
    V got;
    for (int64_t j = 0; j <= a.accepted; ++j)
      got.push_back(rows[size_t(a.row_path[size_t(j)])][size_t(j)]);
    for (size_t j = got.size(); j < size_t(kTokens); ++j) got.push_back(pick(got, u[j]));
    got.resize(kTokens);
    ASSERT_EQ(got, plain) << "draw " << n;
    alternative_wins += a.path > 0;
    accepted += a.accepted;
    ++count[{got[0], got[1]}];
  }
  EXPECT_GT(alternative_wins, kDraws / 10) << "the alternatives were hardly tried";
  EXPECT_GT(accepted, kDraws / 2);
  double chi2 = 0;
  for (int32_t x0 = 0; x0 < kVocab; ++x0)
    for (int32_t x1 = 0; x1 < kVocab; ++x1) {
      const V c0 = {}, c1 = {x0};
      const double want = kDraws * probs(c0)[size_t(x0)] * probs(c1)[size_t(x1)];
      const double have = double(count[{x0, x1}]);
      chi2 += (have - want) * (have - want) / want;
    }
  EXPECT_LT(chi2, 37.697);
}

// Medusa's chains, worked out by hand: head probabilities (0.6, 0.3), (0.5,
// 0.4), (0.9, 0.05); the greedy chain keeps 0.6 + 0.3 + 0.27 drafts on
// average (tail from depth 1: 0.95, from depth 2: 0.9). Branching at depth 0
// to 11 adds 0.3 · 1.95 = 0.585; at depth 1 to 21, 0.6 · 0.4 · 1.9 = 0.456;
// then from (11 ...) at depth 1, 0.3 · 0.4 · 1.9 = 0.228 beats (10 20 31),
// 0.3 · 0.05 = 0.015.
TEST(SpeculateMedusaPaths, MostExpectedDraftsFirst) {
  using Paths = std::vector<V>;
  const V chain = {10, 20, 30}, top = {10, 11, 20, 21, 30, 31};
  const std::vector<float> lp = {std::log(0.6f), std::log(0.3f), std::log(0.5f),
                                 std::log(0.4f), std::log(0.9f), std::log(0.05f)};
  EXPECT_EQ(engine::medusa_draft_paths(chain, top, lp, 2, 4),
            (Paths{{10, 20, 30}, {11, 20, 30}, {10, 21, 30}, {11, 21, 30}}));
  EXPECT_EQ(engine::medusa_draft_paths(chain, top, lp, 2, 1), (Paths{chain}));
  // Two drafts: (11 20) 0.3 · 1.5 = 0.45, (10 21) 0.6 · 0.4 = 0.24, (11 21) 0.12.
  EXPECT_EQ(engine::medusa_draft_paths(V{10, 20}, top, lp, 2, 8),
            (Paths{{10, 20}, {11, 20}, {10, 21}, {11, 21}}));
  EXPECT_TRUE(engine::medusa_draft_paths(V{}, top, lp, 2, 4).empty());
}

TEST(SpeculateAccept, LongestMatchingPrefix) {
  EXPECT_EQ(engine::accepted_drafts(V{4, 5, 6}, V{4, 5, 6, 7}), 3);
  EXPECT_EQ(engine::accepted_drafts(V{4, 5, 6}, V{4, 9, 6, 7}), 1);
  EXPECT_EQ(engine::accepted_drafts(V{4, 5, 6}, V{3, 5, 6, 7}), 0);
  EXPECT_EQ(engine::accepted_drafts(V{}, V{3}), 0);
}

// The draft length maximises (1 + α + … + α^k) / (1 + c k) over k in 1..max,
// worked out by hand here.
TEST(SpeculateAccept, DraftLengthPaysForItself) {
  // c = 0: every draft is free, so the most.
  EXPECT_EQ(engine::draft_length(0.1, 0.0, 4), 4);
  // α = 0.5, c = 0.3: k = 1: 1.5 / 1.3 = 1.154; k = 2: 1.75 / 1.6 = 1.094.
  EXPECT_EQ(engine::draft_length(0.5, 0.3, 4), 1);
  // α = 0.8, c = 0.3: k = 1: 1.8 / 1.3 = 1.385; 2: 2.44 / 1.6 = 1.525;
  // 3: 2.952 / 1.9 = 1.554; 4: 3.3616 / 2.2 = 1.528.
  EXPECT_EQ(engine::draft_length(0.8, 0.3, 4), 3);
  EXPECT_EQ(engine::draft_length(0.8, 0.3, 2), 2);  // capped by max
  // α = 0.5, c = 0.03: k = 3: 1.875 / 1.09 = 1.720; 4: 1.9375 / 1.12 = 1.730;
  // 5: 1.96875 / 1.15 = 1.712.
  EXPECT_EQ(engine::draft_length(0.5, 0.03, 8), 4);
  EXPECT_EQ(engine::draft_length(0.9, 5.0, 4), 1);  // at least one
  EXPECT_EQ(engine::draft_length(0.9, 0.0, 0), 0);
}

TEST(SpeculateAccept, AcceptanceDecays) {
  engine::DraftStats s;
  EXPECT_DOUBLE_EQ(s.rate(), 0.5);  // the prior: one accepted, one rejected
  s.record(4, 4);                   // all kept: no rejection
  EXPECT_DOUBLE_EQ(s.rate(), 5.0 / 6.0);
  s.record(4, 1);  // accepted 0.8 · 4 + 1 = 4.2, rejected 1
  EXPECT_DOUBLE_EQ(s.accepted, 4.2);
  EXPECT_DOUBLE_EQ(s.rejected, 1.0);
  EXPECT_DOUBLE_EQ(s.rate(), 5.2 / 7.2);
  s.record(2, 0);  // accepted 3.36, rejected 1.8
  EXPECT_DOUBLE_EQ(s.rate(), 4.36 / 7.16);
}

// Alternatives pay when their gain per first-chain token outweighs their rows'
// share of the step: α = 0.5 and k = 4 give T = 1.9375, C = 1 + 4 c; the
// prior gain 0.5 over T is 0.258.
TEST(SpeculateAccept, AlternativesPayForTheirRows) {
  engine::DraftStats s;
  EXPECT_DOUBLE_EQ(s.alt_gain(), 0.5);
  EXPECT_TRUE(engine::alternatives_pay(s, 0.03, 4, 5));    // 0.03 · 5 / 1.12 = 0.134
  EXPECT_FALSE(engine::alternatives_pay(s, 0.03, 4, 10));  // 0.268
  EXPECT_FALSE(engine::alternatives_pay(s, 0.3, 4, 5));    // 0.682
  EXPECT_TRUE(engine::alternatives_pay(s, 0.0, 4, 100));
  s.record_alternatives(0);  // (0 + 0.5) / 2
  EXPECT_DOUBLE_EQ(s.alt_gain(), 0.25);
  EXPECT_FALSE(engine::alternatives_pay(s, 0.03, 4, 5));  // 0.129 < 0.134
  s.record_alternatives(3);                               // (3 + 0.5) / 2.8
  EXPECT_DOUBLE_EQ(s.alt_gain(), 3.5 / 2.8);
  EXPECT_TRUE(engine::alternatives_pay(s, 0.03, 4, 10));
}

TEST(PageManagerTruncate, FreesThePagesPastTheTokens) {
  kv::PageManager pm(8, 4);
  kv::PageTable t;
  ASSERT_TRUE(pm.reserve(t, 14));  // 4 pages
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  pm.cache_full_pages(t, tokens, 9, {});  // pages 0 and 1 keyed
  EXPECT_EQ(pm.num_cached(), 2);
  pm.truncate(t, 9);  // 3 pages hold 9 tokens
  EXPECT_EQ(t.ids.size(), 3u);
  EXPECT_EQ(pm.num_held(), 3);
  pm.truncate(t, 8);
  EXPECT_EQ(t.ids.size(), 2u);
  EXPECT_EQ(t.keys.size(), 2u);
  EXPECT_EQ(pm.num_free(), 6);
  pm.truncate(t, 5);  // a keyed page goes: still cached, no longer held
  EXPECT_EQ(t.ids.size(), 2u);
  pm.truncate(t, 4);
  EXPECT_EQ(t.ids.size(), 1u);
  EXPECT_EQ(t.keys.size(), 1u);
  EXPECT_EQ(pm.num_held(), 1);
  EXPECT_EQ(pm.num_cached(), 2);
  pm.release(t);
  EXPECT_EQ(pm.num_held(), 0);
}

}  // namespace
}  // namespace philora
