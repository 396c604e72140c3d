// The KV page manager: one pool of fixed-size pages (a page id is valid in
// every layer), handed out with reference counts, and the prefix cache that
// lets sequences share the pages of a common prefix (vLLM v1's
// KVCacheManager, page for block).
//
// Each page is, at any time, exactly one of
//   free     refcount 0, holds nothing anyone will read again;
//   held     refcount n > 0: in the page tables of n sequences (or the step
//            runner's pad page); it may also be cached;
//   cached   full, keyed in the prefix table, and when its refcount is 0 kept
//            in an LRU list from which allocate() evicts, oldest first, only
//            when no page is free.
//
// Prefix cache: a page that is full (page_size tokens whose K and V are all
// written) is keyed by the chained hash
//   key_i = H(key_{i-1}, salt, tokens[i·P, (i+1)·P))        key_{-1} = kRootKey
// where the salt is everything else that decides its K and V (the adapter,
// the LongRoPE factor choice). A new sequence reuses the cached pages of its
// longest prefix of whole pages; pages are only ever written while a single
// sequence holds them and before they are full, so a shared page is never
// written. A lookup checks the page's tokens, salt and parent key besides the
// key itself, so a wrong hit needs two prefixes whose 64-bit keys collide.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

namespace philora::kv {

using PageKey = uint64_t;
inline constexpr PageKey kRootKey = 0x70686c6f72614b56ull;  // the parent key of a first page

// Everything besides the token ids that decides a page's K and V.
struct PrefixSalt {
  uint64_t adapter = 0;    // the sequence's adapter (AdapterStore::identity); 0: the base model
  bool rope_long = false;  // LongRoPE long factors (decided at admission; false on other models)
  bool operator==(const PrefixSalt&) const = default;
};

// The prefix-cache key of a full page holding `tokens` [page_size] after the
// page keyed `parent`.
PageKey page_key(PageKey parent, const PrefixSalt& salt, std::span<const int32_t> tokens);

// A sequence's KV pages.
struct PageTable {
  std::vector<int32_t> ids;   // [pages] page i holds tokens [i·P, (i+1)·P)
  std::vector<PageKey> keys;  // [full pages keyed so far] page i's prefix-cache key
};

class PageManager {
 public:
  PageManager(int32_t num_pages, int32_t page_size);

  int32_t num_pages() const { return int32_t(refcount_.size()); }
  int32_t page_size() const { return page_size_; }
  // Pages allocate() can hand out now: free ones and cached ones nobody holds.
  int32_t num_available() const { return int32_t(free_.size() + lru_.size()); }
  int32_t num_free() const { return int32_t(free_.size()); }
  int32_t num_held() const { return held_; }
  int32_t num_cached() const { return int32_t(table_.size()); }  // held or not
  int32_t refcount(int32_t page) const { return refcount_[size_t(page)]; }
  bool is_cached(int32_t page) const { return entries_[size_t(page)].cached; }
  int64_t num_evictions() const { return evictions_; }  // cached pages allocate() reused

  // A page for the caller alone (refcount 1): a free one, else the least
  // recently used cached page nobody holds, which leaves the cache; nullopt
  // when every page is held.
  std::optional<int32_t> allocate();
  void retain(int32_t page);  // one more holder
  // One holder fewer; after the last, a cached page becomes the most recently
  // used evictable one, any other page is free.
  void release(int32_t page);

  // Grows `table` to hold `num_tokens` tokens. False, allocating nothing, when
  // fewer pages are available than it needs.
  bool reserve(PageTable& table, int64_t num_tokens);
  // Releases every page of `table`, its last page first (so that, of pages
  // released together, a prefix's first pages are evicted last), and empties it.
  void release(PageTable& table);
  // Shrinks `table` to the pages that hold its first `num_tokens` tokens,
  // releasing the others last page first (speculative decoding: the pages of
  // rejected drafts). A page past them is never keyed (cache_full_pages keys
  // computed tokens only), so it becomes free.
  void truncate(PageTable& table, int64_t num_tokens);
  // A second holder of the first `num_pages` pages of `table` (-1: all), each
  // retained, their keys copied. Only full pages may be shared by sequences
  // that go on writing (a shared page is never written): a sequence forked
  // mid-page recomputes the tokens of its partial last page into a page of
  // its own rather than copying it (engine: n / best_of candidates).
  PageTable fork(const PageTable& table, int64_t num_pages = -1);

  // Fills the empty `table` with the cached pages (each retained) that hold
  // the longest prefix of `tokens` made of whole pages and at most
  // `max_tokens` tokens; returns how many tokens they hold.
  int64_t match_prefix(PageTable& table, std::span<const int32_t> tokens, const PrefixSalt& salt,
                       int64_t max_tokens);
  // Keys the pages of `table` that the first `num_computed` tokens fill and
  // that have no key yet, and caches each one unless a page of the same key
  // is cached already (then this one stays uncached, and is freed on release).
  // `tokens` are the sequence's tokens (at least num_computed).
  void cache_full_pages(PageTable& table, std::span<const int32_t> tokens, int64_t num_computed,
                        const PrefixSalt& salt);

 private:
  struct Entry {  // a page's prefix-cache key and what it was computed from
    bool cached = false;
    PageKey key = 0;
    PageKey parent = 0;
    PrefixSalt salt;
    std::vector<int32_t> tokens;       // [page_size]
    std::list<int32_t>::iterator lru;  // valid while cached with refcount 0
  };
  void uncache(int32_t page);
  // The page cached under `key` if it was computed from exactly (parent, salt, tokens).
  std::optional<int32_t> lookup(PageKey key, PageKey parent, const PrefixSalt& salt,
                                std::span<const int32_t> tokens) const;

  int32_t page_size_;
  std::vector<int32_t> refcount_;               // [num_pages]
  std::vector<int32_t> free_;                   // stack of free page ids (page 0 handed out first)
  std::vector<Entry> entries_;                  // [num_pages]
  std::unordered_map<PageKey, int32_t> table_;  // key -> cached page
  std::list<int32_t> lru_;  // cached pages nobody holds, least recently used first
  int32_t held_ = 0;        // pages with refcount > 0
  int64_t evictions_ = 0;   // see num_evictions()
};

}  // namespace philora::kv
