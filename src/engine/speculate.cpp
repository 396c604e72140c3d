#include "engine/speculate.h"

#include <algorithm>
#include <cmath>

namespace philora::engine {

std::vector<int32_t> ngram_drafts(std::span<const int32_t> tokens, int64_t max_drafts,
                                  int64_t max_n, int64_t min_n) {
  const auto len = int64_t(tokens.size());
  if (max_drafts <= 0) return {};
  for (int64_t n = std::min(max_n, len - 1); n >= std::max<int64_t>(min_n, 1); --n) {
    const std::span<const int32_t> tail = tokens.subspan(size_t(len - n));
    // An occurrence starting at i is followed by tokens[i + n], so i + n < len.
    for (int64_t i = len - n - 1; i >= 0; --i) {
      if (!std::equal(tail.begin(), tail.end(), tokens.begin() + i)) continue;
      const int64_t from = i + n, to = std::min(len, from + max_drafts);
      return std::vector<int32_t>(tokens.begin() + from, tokens.begin() + to);
    }
  }
  return {};
}

std::vector<std::vector<int32_t>> ngram_draft_paths(std::span<const int32_t> tokens,
                                                    int64_t max_drafts, int64_t max_paths,
                                                    int64_t max_n, int64_t min_n) {
  std::vector<std::vector<int32_t>> paths;
  const auto len = int64_t(tokens.size());
  if (max_drafts <= 0 || max_paths <= 0) return paths;
  for (int64_t n = std::min(max_n, len - 1); n >= std::max<int64_t>(min_n, 1); --n) {
    const std::span<const int32_t> tail = tokens.subspan(size_t(len - n));
    for (int64_t i = len - n - 1; i >= 0; --i) {
      if (!std::equal(tail.begin(), tail.end(), tokens.begin() + i)) continue;
      const int64_t from = i + n, to = std::min(len, from + max_drafts);
      const std::span<const int32_t> c = tokens.subspan(size_t(from), size_t(to - from));
      // A prefix of a candidate taken adds nothing; one that extends a
      // candidate (cut short by the end of the tokens) takes its place.
      auto known = std::find_if(paths.begin(), paths.end(), [&](const std::vector<int32_t>& p) {
        return starts_with(p, c) || starts_with(c, p);
      });
      if (known != paths.end()) {
        if (c.size() > known->size()) known->assign(c.begin(), c.end());
        continue;
      }
      paths.emplace_back(c.begin(), c.end());
      if (int64_t(paths.size()) == max_paths) return paths;
    }
  }
  return paths;
}

std::vector<std::vector<int32_t>> medusa_draft_paths(std::span<const int32_t> chain,
                                                     std::span<const int32_t> top,
                                                     std::span<const float> logprob, int64_t width,
                                                     int64_t max_paths) {
  const auto k = int64_t(chain.size());
  std::vector<std::vector<int32_t>> paths;
  if (k == 0 || max_paths <= 0) return paths;
  paths.emplace_back(chain.begin(), chain.end());
  // Head i's probability of token t (0 when t is not among its top list).
  auto prob = [&](int64_t i, int32_t t) {
    for (int64_t j = 0; j < width; ++j)
      if (top[size_t(i * width + j)] == t) return std::exp(double(logprob[size_t(i * width + j)]));
    return 0.0;
  };
  // tail[j]: the expected drafts the greedy chain keeps from depth j on, given depth j - 1 held.
  std::vector<double> tail(size_t(k + 1), 0.0);
  for (int64_t j = k - 1; j >= 0; --j)
    tail[size_t(j)] = prob(j, chain[size_t(j)]) * (1.0 + tail[size_t(j + 1)]);
  auto taken = [&](const std::vector<int32_t>& c,
                   int64_t depth) {  // a chain with c's first depth + 1
    return std::any_of(paths.begin(), paths.end(), [&](const std::vector<int32_t>& p) {
      return std::equal(c.begin(), c.begin() + depth + 1, p.begin());
    });
  };
  while (int64_t(paths.size()) < max_paths) {
    double best_gain = 0.0;
    std::vector<int32_t> best;
    for (size_t p = 0; p < paths.size(); ++p) {
      double before = 1.0;  // the probability that paths[p]'s first j drafts hold
      for (int64_t j = 0; j < k && before > 0.0; ++j) {
        for (int64_t c = 0; c < width; ++c) {
          const int32_t t = top[size_t(j * width + c)];
          std::vector<int32_t> cand(paths[p].begin(), paths[p].begin() + j);
          cand.push_back(t);
          cand.insert(cand.end(), chain.begin() + j + 1, chain.end());
          if (taken(cand, j)) continue;
          const double gain = before * prob(j, t) * (1.0 + tail[size_t(j + 1)]);
          if (gain > best_gain) best_gain = gain, best = std::move(cand);
        }
        before *= prob(j, paths[p][size_t(j)]);
      }
    }
    if (best.empty()) break;
    paths.push_back(std::move(best));
  }
  return paths;
}

int64_t accepted_drafts(std::span<const int32_t> drafts, std::span<const int32_t> sampled) {
  int64_t a = 0;
  while (a < int64_t(drafts.size()) && sampled[size_t(a)] == drafts[size_t(a)]) ++a;
  return a;
}

PathAcceptance accept_paths(const std::vector<std::vector<int32_t>>& drafts,
                            const std::vector<std::span<const int32_t>>& sampled) {
  PathAcceptance r;
  std::vector<int64_t> live(drafts.size());  // chains whose first j drafts were kept, in order
  for (size_t p = 0; p < drafts.size(); ++p) live[p] = int64_t(p);
  for (size_t j = 0;; ++j) {
    const int64_t first = live.front();
    const int32_t y = sampled[size_t(first)][j];
    r.row_path.push_back(int32_t(first));
    std::erase_if(live, [&](int64_t p) {
      return drafts[size_t(p)].size() <= j || drafts[size_t(p)][j] != y;
    });
    if (live.empty()) {
      r.path = first;
      r.accepted = int64_t(j);
      return r;
    }
  }
}

void DraftStats::record(int64_t drafted, int64_t kept) {
  accepted = kDraftDecay * accepted + double(kept);
  rejected = kDraftDecay * rejected + (kept < drafted ? 1.0 : 0.0);
}

void DraftStats::record_alternatives(int64_t gained) {
  alt_gained = kDraftDecay * alt_gained + double(gained);
  alt_steps = kDraftDecay * alt_steps + 1.0;
}

bool alternatives_pay(const DraftStats& stats, double row_cost, int64_t k, int64_t alt_rows) {
  double tokens = 1.0, power = 1.0;
  for (int64_t j = 1; j <= k; ++j) tokens += power *= stats.rate();
  const double cost = 1.0 + row_cost * double(k);
  return stats.alt_gain() / tokens > row_cost * double(alt_rows) / cost;
}

int64_t draft_length(double rate, double row_cost, int64_t max) {
  if (max <= 0) return 0;
  int64_t best = 1;
  double tokens = 1.0, power = 1.0, best_gain = 0.0;
  for (int64_t k = 1; k <= max; ++k) {
    power *= rate;
    tokens += power;
    const double gain = tokens / (1.0 + row_cost * double(k));
    if (gain > best_gain) best_gain = gain, best = k;
  }
  return best;
}

}  // namespace philora::engine
