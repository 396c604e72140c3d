// Token selection on the host: greedy, or temperature / top-k / top-p sampling
// by the rule of backend.h's SamplingPlan, so that the host and the backends'
// sample op choose the same token from the same draw.
#pragma once

#include <cstdint>
#include <random>

namespace philora::engine {

struct SamplingParams {
  bool greedy = true;
  float temperature = 1.0f;  // > 0 when sampling
  int64_t top_k = 0;         // 0 = whole vocabulary
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  uint64_t seed = 0;
};

// Greedy picks the first index of the maximum (as torch.argmax does).
int32_t argmax(const float* logits, int64_t vocab);

// A draw in [0, 1) from 24 random bits: exact in f32, never 1.
float draw_uniform(std::mt19937_64& rng);

// SamplingPlan's rule for one row of logits [vocab] and its draw in [0, 1):
// greedy (params.greedy or temperature ≤ 0) is argmax; otherwise the candidates
// in (logit desc, index asc) order are cut to top_k, weighted
// w = exp((logit − max) / temperature), cut to the shortest prefix whose mass
// reaches top_p · Σw, and the kept tokens are walked in vocabulary order: the
// first whose running sum of w exceeds uniform · Σ_kept w is chosen (the last
// kept one if rounding leaves none). NaN logits count as -inf; a row whose
// maximum is not finite is chosen greedily.
int32_t sample(const float* logits, int64_t vocab, const SamplingParams& params, float uniform);
// The same with the draw taken from rng (draw_uniform; greedy draws nothing).
int32_t sample(const float* logits, int64_t vocab, const SamplingParams& params,
               std::mt19937_64& rng);

}  // namespace philora::engine
