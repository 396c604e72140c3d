// Token selection on the GPU by SamplingPlan's rule (backend.h), one block per
// logit row and no sort: top-k and top-p are radix selects over the logits'
// order-preserving keys, and the kept tokens are walked in vocabulary order.
// Every sum has a fixed order, so a row gives the same token run after run.
// NaN logits count as -inf; a row whose maximum is not finite is greedy (as the
// cpu backend does).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace philora::cuda {

struct SampleArgs {
  const void* logits = nullptr;        // (rows, vocab) bf16
  int64_t rows = 0;                    // R
  int vocab = 0;                       // ≥ 1
  const float* temperature = nullptr;  // [R] ≤ 0: greedy
  const int32_t* top_k = nullptr;      // [R] 0 or ≥ vocab: no cut
  const float* top_p = nullptr;        // [R] ≥ 1: no cut
  const float* uniform = nullptr;      // [R] the row's draw in [0, 1)
  int32_t* out = nullptr;              // [R] the chosen token ids
};

void launch_sample(const SampleArgs& a, cudaStream_t stream);

}  // namespace philora::cuda
