// Token selection and logprobs on the GPU by SamplingPlan's rule (backend.h),
// one block per logit row and no sort: the row's processed logits (bias, bans,
// penalties from the count table) go to an f32 scratch row, then top-k, top-p
// and typical-p are radix selects over order-preserving keys, min-p a test on
// each weight, and the kept tokens are walked in vocabulary order. Every sum
// has a fixed order, so a row gives the same token run after run. NaN logits
// count as -inf; a row whose maximum is not finite is greedy (as the cpu
// backend does).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace philora::cuda {

// The most alternatives a row may ask for (kMaxLogprobs in backend.h).
constexpr int kMaxTopLogprobs = 20;

struct SampleArgs {
  const void* logits = nullptr;  // (rows, vocab) bf16
  float* processed = nullptr;    // (rows, vocab) f32 scratch: the processed logits
  int64_t rows = 0;              // R
  int vocab = 0;                 // ≥ 1
  // per row [R]
  const float* temperature = nullptr;  // ≤ 0: greedy
  const int32_t* top_k = nullptr;      // 0 or ≥ vocab: no cut
  const float* top_p = nullptr;        // ≥ 1: no cut
  const float* min_p = nullptr;        // ≤ 0: no cut
  const float* typical_p = nullptr;    // ≥ 1: no cut
  const float* uniform = nullptr;      // the row's draw in [0, 1)
  const float* repetition = nullptr;
  const float* frequency = nullptr;
  const float* presence = nullptr;
  const int32_t* count_row = nullptr;     // -1: no penalties
  const int32_t* logprobs = nullptr;      // -1: none, else k
  const int32_t* logprob_kind = nullptr;  // 0 raw, 1 processed
  const int32_t* target = nullptr;        // -1: the chosen token
  const int32_t* bias_indptr = nullptr;   // [R + 1]
  const int32_t* bias_token = nullptr;    // [N]
  const float* bias_value = nullptr;      // [N]
  // Allowed-token bitmasks: row r's is mask[mask_row[r]] when 0 ≤ mask_row[r] < mask_rows
  // (null mask_row: none); bit t % 32 of word t / 32 clear = x[t] is -inf.
  const int32_t* mask_row = nullptr;  // [R]
  const uint32_t* mask = nullptr;     // (mask_rows, mask_words)
  int64_t mask_rows = 0;
  int64_t mask_words = 0;             // ceil(vocab / 32)
  int32_t* counts = nullptr;              // (count_rows, vocab), updated; null: none
  int64_t count_rows = 0;
  int32_t* out = nullptr;         // [R] the chosen token ids
  float* logprob = nullptr;       // [R] the target's logprob; null without logprobs
  int32_t* top_tokens = nullptr;  // (R, width)
  float* top_logprobs = nullptr;  // (R, width)
  int width = 0;                  // ≤ kMaxTopLogprobs
};

void launch_sample(const SampleArgs& a, cudaStream_t stream);

// counts[row, :] = the counts of tokens [n] (2 · generated + in prompt), the
// first prompt_len of them the prompt.
void launch_reset_token_counts(int32_t* counts, int vocab, int64_t row, const int32_t* tokens,
                               int64_t n, int64_t prompt_len, cudaStream_t stream);

}  // namespace philora::cuda
