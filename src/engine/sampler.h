// A request's sampling parameters, and the host's part of sampling: one draw
// per row and step from the request's seeded generator. The tokens themselves
// are chosen on the backend (Backend::sample, SamplingPlan's rule in
// backend.h; the CPU backend's implementation is the reference).
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

// A draw in [0, 1) from 24 random bits: exact in f32, never 1.
float draw_uniform(std::mt19937_64& rng);

}  // namespace philora::engine
