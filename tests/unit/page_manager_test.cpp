// The KV page manager: refcounts, fork, the prefix table and its LRU eviction.
// The last test runs random sequences against a simulated cache in which a
// position's "K/V" is a function of its whole prefix (and salt), and checks
// that every reused page holds exactly what recomputing it would write.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "core/hash.h"
#include "kv/page_manager.h"

namespace philora {
namespace {

using kv::PageManager;
using kv::PageTable;
using kv::PrefixSalt;

// The same invariant every test ends with: each page is free, held, or cached
// and unheld, never two of them.
void expect_consistent(const PageManager& m) {
  int32_t held = 0, cached_unheld = 0;
  for (int32_t p = 0; p < m.num_pages(); ++p) {
    EXPECT_GE(m.refcount(p), 0);
    if (m.refcount(p) > 0) ++held;
    if (m.refcount(p) == 0 && m.is_cached(p)) ++cached_unheld;
  }
  EXPECT_EQ(held, m.num_held());
  EXPECT_EQ(m.num_free() + held + cached_unheld, m.num_pages());
  EXPECT_EQ(m.num_available(), m.num_free() + cached_unheld);
}

TEST(PageManager, AllocatesReleasesAndRefcounts) {
  PageManager m(3, 4);
  auto p0 = m.allocate(), p1 = m.allocate(), p2 = m.allocate();
  ASSERT_TRUE(p0 && p1 && p2);
  EXPECT_EQ(*p0, 0) << "page 0 first";
  EXPECT_NE(*p0, *p1);
  EXPECT_NE(*p1, *p2);
  EXPECT_FALSE(m.allocate().has_value()) << "pool of 3 is exhausted";
  EXPECT_EQ(m.num_held(), 3);
  m.retain(*p1);
  EXPECT_EQ(m.refcount(*p1), 2);
  m.release(*p1);
  EXPECT_EQ(m.num_free(), 0) << "still held once";
  m.release(*p1);
  EXPECT_EQ(m.num_free(), 1);
  EXPECT_EQ(*m.allocate(), *p1);
  expect_consistent(m);
}

TEST(PageManager, ReserveGrowsAndFailsCleanlyWhenFull) {
  PageManager m(3, 4);
  PageTable t;
  ASSERT_TRUE(m.reserve(t, 1));
  EXPECT_EQ(t.ids.size(), 1u);
  ASSERT_TRUE(m.reserve(t, 4));
  EXPECT_EQ(t.ids.size(), 1u) << "4 tokens fit one page of 4";
  ASSERT_TRUE(m.reserve(t, 5));
  EXPECT_EQ(t.ids.size(), 2u);
  PageTable u;
  EXPECT_FALSE(m.reserve(u, 9)) << "needs 3 pages, 1 available";
  EXPECT_TRUE(u.ids.empty()) << "nothing allocated on failure";
  EXPECT_EQ(m.num_free(), 1);
  m.release(t);
  EXPECT_TRUE(t.ids.empty());
  EXPECT_EQ(m.num_free(), 3);
  expect_consistent(m);
}

TEST(PageManager, ForkSharesPagesUntilTheLastHolder) {
  PageManager m(4, 4);
  PageTable a;
  ASSERT_TRUE(m.reserve(a, 7));
  PageTable b = m.fork(a);
  EXPECT_EQ(b.ids, a.ids);
  for (int32_t p : a.ids) EXPECT_EQ(m.refcount(p), 2);
  m.release(a);
  EXPECT_EQ(m.num_free(), 2) << "the fork still holds both pages";
  for (int32_t p : b.ids) EXPECT_EQ(m.refcount(p), 1);
  m.release(b);
  EXPECT_EQ(m.num_free(), 4);
  expect_consistent(m);
}

// A fork of the whole pages only (n / best_of candidates): the partial last
// page stays the first holder's; the forked table grows pages of its own.
TEST(PageManager, ForkOfTheFirstPagesLeavesTheRestToTheFirstHolder) {
  PageManager m(6, 4);
  PageTable a;
  ASSERT_TRUE(m.reserve(a, 10));  // 3 pages, the last partly full
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  m.cache_full_pages(a, tokens, 10, {});
  ASSERT_EQ(a.keys.size(), 2u);
  PageTable b = m.fork(a, 2);
  EXPECT_EQ(b.ids, std::vector<int32_t>(a.ids.begin(), a.ids.begin() + 2));
  EXPECT_EQ(b.keys, a.keys);
  EXPECT_EQ(m.refcount(a.ids[0]), 2);
  EXPECT_EQ(m.refcount(a.ids[1]), 2);
  EXPECT_EQ(m.refcount(a.ids[2]), 1) << "the partial page is not shared";
  ASSERT_TRUE(m.reserve(b, 10));
  EXPECT_NE(b.ids[2], a.ids[2]) << "the fork computes its last page into one of its own";
  PageTable c = m.fork(a, 9);
  EXPECT_EQ(c.ids, a.ids) << "no more than the table holds";
  m.release(a);
  m.release(b);
  m.release(c);
  EXPECT_EQ(m.num_held(), 0);
  expect_consistent(m);
}

TEST(PageManager, PageKeysChainAndSalt) {
  const std::vector<int32_t> t = {1, 2, 3, 4};
  const kv::PageKey k = kv::page_key(kv::kRootKey, {}, t);
  EXPECT_EQ(k, kv::page_key(kv::kRootKey, {}, t)) << "deterministic";
  EXPECT_NE(k, kv::page_key(k, {}, t)) << "the parent is part of the key";
  EXPECT_NE(k, kv::page_key(kv::kRootKey, {7, false}, t)) << "the adapter is";
  EXPECT_NE(k, kv::page_key(kv::kRootKey, {0, true}, t)) << "the RoPE factors are";
  EXPECT_NE(k, kv::page_key(kv::kRootKey, {}, std::vector<int32_t>{1, 2, 4, 3})) << "order is";
}

// Computes `tokens` into a new table with caching: what the engine does for
// a sequence that runs to num_computed = tokens.size().
PageTable compute(PageManager& m, const std::vector<int32_t>& tokens, const PrefixSalt& salt) {
  PageTable t;
  const int64_t hit = m.match_prefix(t, tokens, salt, int64_t(tokens.size()) - 1);
  EXPECT_TRUE(m.reserve(t, int64_t(tokens.size())));
  (void)hit;
  m.cache_full_pages(t, tokens, int64_t(tokens.size()), salt);
  return t;
}

TEST(PageManager, MatchesTheLongestCachedPrefixOfWholePages) {
  PageManager m(16, 4);
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};  // 2 full pages + 2
  PageTable ta = compute(m, a, {});
  EXPECT_EQ(m.num_cached(), 2) << "the partial last page is not cached";
  EXPECT_TRUE(m.is_cached(ta.ids[0]) && m.is_cached(ta.ids[1]) && !m.is_cached(ta.ids[2]));
  EXPECT_EQ(ta.keys.size(), 2u);

  // Same first page, different second: one page hit.
  PageTable tb;
  const std::vector<int32_t> b = {1, 2, 3, 4, 5, 6, 0, 8, 9};
  EXPECT_EQ(m.match_prefix(tb, b, {}, 8), 4);
  ASSERT_EQ(tb.ids.size(), 1u);
  EXPECT_EQ(tb.ids[0], ta.ids[0]);
  EXPECT_EQ(m.refcount(ta.ids[0]), 2);
  m.release(tb);

  // The whole of a: both full pages, unless max_tokens cuts it.
  PageTable tc;
  EXPECT_EQ(m.match_prefix(tc, a, {}, 9), 8);
  m.release(tc);
  EXPECT_EQ(m.match_prefix(tc, a, {}, 7), 4) << "at most 7 tokens: one page";
  m.release(tc);
  EXPECT_EQ(m.match_prefix(tc, a, {}, 3), 0);
  EXPECT_TRUE(tc.ids.empty());

  // Another adapter or the other RoPE factors: nothing.
  EXPECT_EQ(m.match_prefix(tc, a, {42, false}, 9), 0);
  EXPECT_EQ(m.match_prefix(tc, a, {0, true}, 9), 0);
  // A page equal to a's second but after a different first one: nothing.
  const std::vector<int32_t> d = {9, 9, 9, 9, 5, 6, 7, 8, 1};
  EXPECT_EQ(m.match_prefix(tc, d, {}, 9), 0);

  m.release(ta);
  EXPECT_EQ(m.num_held(), 0);
  EXPECT_EQ(m.num_cached(), 2) << "released pages stay cached";
  EXPECT_EQ(m.num_available(), 16);
  EXPECT_EQ(m.match_prefix(tc, a, {}, 9), 8) << "and are found by the next sequence";
  m.release(tc);
  expect_consistent(m);
}

TEST(PageManager, ADuplicatePageStaysUncachedAndIsFreed) {
  PageManager m(8, 4);
  const std::vector<int32_t> a = {1, 2, 3, 4, 5};
  // Two sequences compute the same prefix at once (neither found the other's).
  PageTable t1, t2;
  ASSERT_TRUE(m.reserve(t1, 5));
  ASSERT_TRUE(m.reserve(t2, 5));
  m.cache_full_pages(t1, a, 5, {});
  m.cache_full_pages(t2, a, 5, {});
  EXPECT_TRUE(m.is_cached(t1.ids[0]));
  EXPECT_FALSE(m.is_cached(t2.ids[0]));
  EXPECT_EQ(t2.keys, t1.keys) << "keyed all the same (a later page chains on it)";
  EXPECT_EQ(m.num_cached(), 1);
  m.release(t2);
  EXPECT_EQ(m.num_free(), 8 - 2) << "t2's pages are free, t1's held";
  m.release(t1);
  EXPECT_EQ(m.num_free(), 8 - 1) << "t1's first page stays cached";
  expect_consistent(m);
}

TEST(PageManager, EvictsLeastRecentlyUsedUnheldPagesOnlyUnderPressure) {
  PageManager m(4, 2);
  const std::vector<int32_t> a = {1, 1, 2, 2}, b = {7, 7, 8, 8};
  PageTable ta = compute(m, a, {}), tb = compute(m, b, {});
  const std::vector<int32_t> a_ids = ta.ids;
  EXPECT_EQ(m.num_free(), 0);
  EXPECT_EQ(m.num_cached(), 4);
  EXPECT_FALSE(m.allocate().has_value()) << "cached pages that are held are never evicted";
  m.release(ta);  // last page first: a's first page is the more recently used of the two
  m.release(tb);
  EXPECT_EQ(m.num_available(), 4);
  EXPECT_EQ(m.num_free(), 0) << "all four stay cached";
  // LRU order now: a1, a0, b1, b0. One page: a's second goes.
  auto p = m.allocate();
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, a_ids[1]);
  EXPECT_EQ(m.num_evictions(), 1);
  EXPECT_EQ(m.num_cached(), 3);
  PageTable t;
  EXPECT_EQ(m.match_prefix(t, a, {}, 4), 2) << "a keeps its first page";
  m.release(t);
  EXPECT_EQ(m.match_prefix(t, b, {}, 4), 4) << "b is untouched";
  m.release(t);
  m.release(*p);
  expect_consistent(m);
}

// Random traffic over a small pool: sequences share prefixes (from a small
// alphabet, with a few salts), are matched, computed in chunks, preempted
// (released and recomputed), forked and finished. The simulated K/V of
// position j is a hash of (salt, tokens[0..j]); a page is written only while
// its one holder computes it, never once cached or shared, and every page a
// match returns holds exactly the values a cold computation would write.
TEST(PageManager, RandomTrafficReusesOnlyWhatRecomputingWouldWrite) {
  constexpr int32_t kPages = 24, kP = 3;
  PageManager m(kPages, kP);
  std::vector<std::vector<uint64_t>> content(kPages, std::vector<uint64_t>(kP, 0));
  auto value = [](const PrefixSalt& s, const std::vector<int32_t>& tokens, int64_t j) {
    uint64_t h = hash_combine(s.adapter, s.rope_long);
    for (int64_t i = 0; i <= j; ++i) h = hash_combine(h, uint32_t(tokens[size_t(i)]));
    return h;
  };
  struct Seq {
    std::vector<int32_t> tokens;
    PrefixSalt salt;
    PageTable t;
    int64_t computed = 0;
  };
  std::mt19937 rng(1234);
  auto pick = [&](int n) { return int(rng() % uint32_t(n)); };
  std::vector<Seq> live;
  int64_t hits = 0, reused_checked = 0;
  auto admit = [&](Seq s) {
    const int64_t hit = m.match_prefix(s.t, s.tokens, s.salt, int64_t(s.tokens.size()) - 1);
    for (int64_t j = 0; j < hit; ++j) {
      const int32_t page = s.t.ids[size_t(j / kP)];
      ASSERT_EQ(content[size_t(page)][size_t(j % kP)], value(s.salt, s.tokens, j))
          << "a reused page must hold what recomputing it would write";
      ++reused_checked;
    }
    hits += hit;
    s.computed = hit;
    live.push_back(std::move(s));
  };
  for (int iter = 0; iter < 4000; ++iter) {
    const int op = pick(10);
    if (op < 3 && live.size() < 6) {  // a new sequence: a shared stem + a random tail
      Seq s;
      const int stem = pick(3);
      for (int i = 0; i < 2 + pick(6); ++i) s.tokens.push_back(stem * 10 + i % 2);
      for (int i = 0, n = 1 + pick(6); i < n; ++i) s.tokens.push_back(pick(3));
      s.salt = {uint64_t(pick(2)), pick(4) == 0};
      admit(std::move(s));
    } else if (op < 7 && !live.empty()) {  // a chunk of one sequence
      Seq& s = live[size_t(pick(int(live.size())))];
      const int64_t n = std::min<int64_t>(1 + pick(4), int64_t(s.tokens.size()) - s.computed);
      if (n <= 0 || !m.reserve(s.t, s.computed + n)) continue;
      for (int64_t j = s.computed; j < s.computed + n; ++j) {
        const int32_t page = s.t.ids[size_t(j / kP)];
        ASSERT_EQ(m.refcount(page), 1) << "a page is written by its only holder";
        ASSERT_FALSE(m.is_cached(page)) << "a cached page is never written";
        content[size_t(page)][size_t(j % kP)] = value(s.salt, s.tokens, j);
      }
      s.computed += n;
      m.cache_full_pages(s.t, s.tokens, s.computed, s.salt);
      if (s.computed == int64_t(s.tokens.size()) && pick(2) == 0)
        s.tokens.push_back(pick(3));       // "decode": one more token to compute
    } else if (op < 8 && !live.empty()) {  // preempt: release, recompute later
      const size_t i = size_t(pick(int(live.size())));
      Seq s = std::move(live[i]);
      live.erase(live.begin() + int64_t(i));
      m.release(s.t);
      s.computed = 0;
      admit(std::move(s));
    } else if (!live.empty()) {  // finish (sometimes after a fork that finishes too)
      const size_t i = size_t(pick(int(live.size())));
      if (pick(3) == 0) {
        PageTable f = m.fork(live[i].t);
        m.release(f);
      }
      m.release(live[i].t);
      live.erase(live.begin() + int64_t(i));
    }
    if (::testing::Test::HasFatalFailure()) return;
  }
  for (Seq& s : live) m.release(s.t);
  EXPECT_EQ(m.num_held(), 0);
  for (int32_t p = 0; p < kPages; ++p) EXPECT_EQ(m.refcount(p), 0);
  expect_consistent(m);
  EXPECT_GT(hits, 100) << "the traffic must reuse pages";
  EXPECT_GT(reused_checked, 100);
  std::printf("reused %ld tokens\n", long(hits));
}

}  // namespace
}  // namespace philora
