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

float draw_uniform(std::mt19937_64& rng) { return float(rng() >> 40) * 0x1p-24f; }

int32_t sample(const float* row, int64_t vocab, const SamplingParams& p, float uniform) {
  std::vector<float> logits(row, row + vocab);
  for (float& x : logits)
    if (std::isnan(x)) x = -INFINITY;
  const int32_t best = argmax(logits.data(), vocab);
  if (p.greedy || !(p.temperature > 0.0f) || !std::isfinite(logits[size_t(best)])) return best;

  // Candidates in (logit desc, index asc) order, cut to top_k.
  std::vector<int32_t> order(size_t(vocab), 0);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] != logits[size_t(b)] ? logits[size_t(a)] > logits[size_t(b)] : a < b;
  });
  const int64_t k = p.top_k <= 0 || p.top_k >= vocab ? vocab : p.top_k;

  // Weights of the candidates, then the shortest prefix whose mass reaches top_p · Σw.
  std::vector<double> w(size_t(vocab), 0.0);
  double sum = 0;
  for (int64_t j = 0; j < k; ++j) {
    const size_t i = size_t(order[size_t(j)]);
    w[i] = std::exp((double(logits[i]) - double(logits[size_t(best)])) / double(p.temperature));
    sum += w[i];
  }
  int64_t keep = k;
  if (p.top_p < 1.0f) {
    double mass = 0;
    for (int64_t j = 0; j < k; ++j) {
      mass += w[size_t(order[size_t(j)])];
      if (mass >= double(p.top_p) * sum) {
        keep = j + 1;
        break;
      }
    }
  }
  std::vector<bool> kept(size_t(vocab), false);
  for (int64_t j = 0; j < keep; ++j) kept[size_t(order[size_t(j)])] = true;

  // The kept tokens in vocabulary order.
  double total = 0;
  for (int64_t i = 0; i < vocab; ++i)
    if (kept[size_t(i)]) total += w[size_t(i)];
  double running = 0;
  int32_t last = best;
  for (int64_t i = 0; i < vocab; ++i) {
    if (!kept[size_t(i)]) continue;
    running += w[size_t(i)];
    last = int32_t(i);
    if (running > double(uniform) * total) return last;
  }
  return last;
}

int32_t sample(const float* logits, int64_t vocab, const SamplingParams& p, std::mt19937_64& rng) {
  const bool greedy = p.greedy || !(p.temperature > 0.0f);
  return sample(logits, vocab, p, greedy ? 0.0f : draw_uniform(rng));
}

}  // namespace philora::engine
