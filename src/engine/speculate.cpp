#include "engine/speculate.h"

#include <algorithm>

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

int64_t accepted_drafts(std::span<const int32_t> drafts, std::span<const int32_t> sampled) {
  int64_t a = 0;
  while (a < int64_t(drafts.size()) && sampled[size_t(a)] == drafts[size_t(a)]) ++a;
  return a;
}

void DraftStats::record(int64_t drafted, int64_t kept) {
  accepted = kDraftDecay * accepted + double(kept);
  rejected = kDraftDecay * rejected + (kept < drafted ? 1.0 : 0.0);
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
