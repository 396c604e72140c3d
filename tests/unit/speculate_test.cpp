// n-gram drafts (prompt lookup), the acceptance count and the adaptive draft
// limit (engine/speculate.h), and PageManager::truncate (rollback of the
// pages of rejected drafts).
#include <gtest/gtest.h>

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
  // No earlier (9 9 3) nor (9 3): the 1-gram 3's last earlier occurrence (index 7) is followed by 7.
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
