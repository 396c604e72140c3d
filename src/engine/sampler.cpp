#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace philora::engine {

int32_t argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return int32_t(best);
}

int32_t sample(const float* logits, int64_t vocab, const SamplingParams& p, std::mt19937_64& rng) {
  if (p.greedy || p.temperature <= 0.0f) return argmax(logits, vocab);
  // Candidates sorted by logit, cut to top-k, softmax at temperature, cut to top-p mass.
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  const int64_t k = p.top_k > 0 ? std::min(p.top_k, vocab) : vocab;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  idx.resize(size_t(k));
  std::vector<double> prob(static_cast<size_t>(k));
  const double top = logits[idx[0]];
  double sum = 0;
  for (int64_t i = 0; i < k; ++i)
    sum += prob[size_t(i)] = std::exp((logits[idx[size_t(i)]] - top) / p.temperature);
  int64_t keep = k;
  if (p.top_p < 1.0f) {
    double mass = 0;
    for (int64_t i = 0; i < k; ++i) {
      mass += prob[size_t(i)] / sum;
      if (mass >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += prob[size_t(i)];
  double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (int64_t i = 0; i < keep; ++i) {
    u -= prob[size_t(i)];
    if (u < 0) return idx[size_t(i)];
  }
  return idx[size_t(keep - 1)];
}

}  // namespace philora::engine
