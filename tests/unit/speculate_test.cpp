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

TEST(SpeculateAccept, DraftLimitAdapts) {
  EXPECT_EQ(engine::next_draft_limit(3, 3, 4), 4);  // all accepted: one more
  EXPECT_EQ(engine::next_draft_limit(4, 4, 4), 4);  // up to the maximum
  EXPECT_EQ(engine::next_draft_limit(4, 1, 4), 2);  // else the accepted ones and one more
  EXPECT_EQ(engine::next_draft_limit(4, 0, 4), 1);
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
