#include "kv/page_manager.h"

#include <algorithm>
#include <cassert>

#include "core/hash.h"

namespace philora::kv {

PageKey page_key(PageKey parent, const PrefixSalt& salt, std::span<const int32_t> tokens) {
  PageKey h = hash_combine(parent, salt.adapter);
  h = hash_combine(h, salt.rope_long ? 1 : 0);
  for (int32_t t : tokens) h = hash_combine(h, uint32_t(t));
  return hash_combine(h, tokens.size());
}

PageManager::PageManager(int32_t num_pages, int32_t page_size)
    : page_size_(page_size), refcount_(size_t(num_pages), 0), entries_(size_t(num_pages)) {
  free_.reserve(size_t(num_pages));
  for (int32_t p = num_pages - 1; p >= 0; --p) free_.push_back(p);  // hand out 0 first
}

std::optional<int32_t> PageManager::allocate() {
  int32_t page;
  if (!free_.empty()) {
    page = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {  // evict the least recently used cached page
    page = lru_.front();
    uncache(page);
    ++evictions_;
  } else {
    return std::nullopt;
  }
  refcount_[size_t(page)] = 1;
  ++held_;
  return page;
}

void PageManager::retain(int32_t page) {
  Entry& e = entries_[size_t(page)];
  int32_t& rc = refcount_[size_t(page)];
  assert(rc > 0 || e.cached);
  if (rc++ == 0) {  // a cached page nobody held: no longer evictable
    lru_.erase(e.lru);
    ++held_;
  }
}

void PageManager::release(int32_t page) {
  Entry& e = entries_[size_t(page)];
  int32_t& rc = refcount_[size_t(page)];
  assert(rc > 0);
  if (--rc > 0) return;
  --held_;
  if (e.cached)
    e.lru = lru_.insert(lru_.end(), page);
  else
    free_.push_back(page);
}

// Takes a cached page nobody holds out of the cache (it is about to be reused).
void PageManager::uncache(int32_t page) {
  Entry& e = entries_[size_t(page)];
  assert(e.cached && refcount_[size_t(page)] == 0);
  lru_.erase(e.lru);
  table_.erase(e.key);
  e.cached = false;
}

bool PageManager::reserve(PageTable& t, int64_t num_tokens) {
  const size_t need = size_t((num_tokens + page_size_ - 1) / page_size_);
  if (need <= t.ids.size()) return true;
  if (size_t(num_available()) < need - t.ids.size()) return false;
  while (t.ids.size() < need) t.ids.push_back(*allocate());
  return true;
}

void PageManager::release(PageTable& t) {
  for (auto it = t.ids.rbegin(); it != t.ids.rend(); ++it) release(*it);
  t.ids.clear();
  t.keys.clear();
}

void PageManager::truncate(PageTable& t, int64_t num_tokens) {
  const size_t keep = size_t((std::max<int64_t>(num_tokens, 0) + page_size_ - 1) / page_size_);
  while (t.ids.size() > keep) {
    release(t.ids.back());
    t.ids.pop_back();
  }
  if (t.keys.size() > keep) t.keys.resize(keep);
}

PageTable PageManager::fork(const PageTable& t, int64_t num_pages) {
  const size_t n = num_pages < 0 ? t.ids.size() : std::min(size_t(num_pages), t.ids.size());
  PageTable f;
  f.ids.assign(t.ids.begin(), t.ids.begin() + int64_t(n));
  f.keys.assign(t.keys.begin(), t.keys.begin() + int64_t(std::min(n, t.keys.size())));
  for (int32_t page : f.ids) retain(page);
  return f;
}

std::optional<int32_t> PageManager::lookup(PageKey key, PageKey parent, const PrefixSalt& salt,
                                           std::span<const int32_t> tokens) const {
  auto it = table_.find(key);
  if (it == table_.end()) return std::nullopt;
  const Entry& e = entries_[size_t(it->second)];
  if (e.parent != parent || !(e.salt == salt) ||
      !std::equal(tokens.begin(), tokens.end(), e.tokens.begin(), e.tokens.end()))
    return std::nullopt;  // a 64-bit collision
  return it->second;
}

int64_t PageManager::match_prefix(PageTable& t, std::span<const int32_t> tokens,
                                  const PrefixSalt& salt, int64_t max_tokens) {
  assert(t.ids.empty());
  const int64_t P = page_size_;
  const int64_t limit = std::min<int64_t>(max_tokens, int64_t(tokens.size()));
  PageKey parent = kRootKey;
  for (int64_t i = 0; (i + 1) * P <= limit; ++i) {
    const auto page_tokens = tokens.subspan(size_t(i * P), size_t(P));
    const PageKey key = page_key(parent, salt, page_tokens);
    const std::optional<int32_t> page = lookup(key, parent, salt, page_tokens);
    if (!page) break;
    retain(*page);
    t.ids.push_back(*page);
    t.keys.push_back(key);
    parent = key;
  }
  return int64_t(t.ids.size()) * P;
}

void PageManager::cache_full_pages(PageTable& t, std::span<const int32_t> tokens,
                                   int64_t num_computed, const PrefixSalt& salt) {
  const int64_t P = page_size_;
  const int64_t full = std::min<int64_t>(num_computed / P, int64_t(t.ids.size()));
  for (int64_t i = int64_t(t.keys.size()); i < full; ++i) {
    const PageKey parent = i == 0 ? kRootKey : t.keys[size_t(i - 1)];
    const auto page_tokens = tokens.subspan(size_t(i * P), size_t(P));
    const PageKey key = page_key(parent, salt, page_tokens);
    t.keys.push_back(key);
    const int32_t page = t.ids[size_t(i)];
    if (table_.count(key) || entries_[size_t(page)].cached) continue;  // cached already
    Entry& e = entries_[size_t(page)];
    e.cached = true;
    e.key = key;
    e.parent = parent;
    e.salt = salt;
    e.tokens.assign(page_tokens.begin(), page_tokens.end());
    table_.emplace(key, page);
  }
}

}  // namespace philora::kv
