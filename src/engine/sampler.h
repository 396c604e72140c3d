// Token selection on the host: greedy, or temperature / top-k / top-p sampling.
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
int32_t sample(const float* logits, int64_t vocab, const SamplingParams& params,
               std::mt19937_64& rng);

}  // namespace philora::engine
