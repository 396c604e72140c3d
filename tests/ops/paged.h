// A batch of sequences in a paged KV cache, built on the host the way the
// planner builds it (FlashInfer's layout), with the pages of every sequence
// drawn in shuffled order from a pool that also holds spare, unused pages.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "ops/harness.h"

namespace philora::optest {

// One sequence's share of a step: `cached` tokens already in the cache (a
// prefix; chunked prefill or decode), then `q_len` new tokens computed now.
struct SeqSpec {
  int64_t cached = 0;
  int64_t q_len = 0;
};

inline std::string seqs_str(const std::vector<SeqSpec>& seqs) {
  std::string s;
  for (const SeqSpec& q : seqs)
    s += fmt::format("{}{}+{}", s.empty() ? "" : ",", q.cached, q.q_len);
  return s;
}

struct PagedBatch {
  int64_t page_size = 0;
  int64_t num_pages = 0;                    // in the pool, spares included
  std::vector<SeqSpec> seqs;                // [S]
  std::vector<std::vector<int32_t>> pages;  // [S][pages of s]: s's block table
  // The step's flat arrays (T = Σ q_len)
  std::vector<int32_t> positions;         // [T]
  std::vector<int32_t> kv_locs;           // [T] KV location: page * page_size + offset
  std::vector<int32_t> q_indptr;          // [S + 1]
  std::vector<int32_t> kv_indptr;         // [S + 1]
  std::vector<int32_t> kv_indices;        // [Σ pages]
  std::vector<int32_t> kv_last_page_len;  // [S]
  int64_t max_q_len = 0, max_kv_len = 0;

  int64_t tokens() const { return int64_t(positions.size()); }
  int64_t kv_len(size_t s) const { return seqs[s].cached + seqs[s].q_len; }
  // The KV location (page * page_size + offset) of token j of sequence s.
  int64_t loc(size_t s, int64_t j) const {
    return int64_t(pages[s][size_t(j / page_size)]) * page_size + j % page_size;
  }

  static PagedBatch make(const std::vector<SeqSpec>& seqs, int64_t page_size, int64_t spare_pages,
                         Rng& rng) {
    PagedBatch p;
    p.page_size = page_size;
    p.seqs = seqs;
    int64_t needed = 0;
    for (const SeqSpec& s : seqs) needed += (s.cached + s.q_len + page_size - 1) / page_size;
    p.num_pages = needed + spare_pages;
    std::vector<int32_t> pool(size_t(p.num_pages));
    std::iota(pool.begin(), pool.end(), 0);
    rng.shuffle(pool);
    size_t next = 0;
    p.q_indptr = {0};
    p.kv_indptr = {0};
    for (const SeqSpec& s : seqs) {
      const int64_t len = s.cached + s.q_len, n = (len + page_size - 1) / page_size;
      p.pages.emplace_back(pool.begin() + int64_t(next), pool.begin() + int64_t(next) + n);
      next += size_t(n);
      for (int64_t j = s.cached; j < len; ++j) {
        p.positions.push_back(int32_t(j));
        p.kv_locs.push_back(int32_t(p.loc(p.pages.size() - 1, j)));
      }
      p.kv_indices.insert(p.kv_indices.end(), p.pages.back().begin(), p.pages.back().end());
      p.q_indptr.push_back(int32_t(p.positions.size()));
      p.kv_indptr.push_back(int32_t(p.kv_indices.size()));
      p.kv_last_page_len.push_back(int32_t(len - (n - 1) * page_size));
      p.max_q_len = std::max(p.max_q_len, s.q_len);
      p.max_kv_len = std::max(p.max_kv_len, len);
    }
    return p;
  }
};

}  // namespace philora::optest
