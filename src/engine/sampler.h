// A request's sampling parameters, and the host's part of sampling: one draw
// per row and step from the request's seeded generator, the per-step bans
// (bad words, min_new_tokens), and the rows of token counts the penalties read.
// The tokens themselves are chosen on the backend (Backend::sample; the order
// of the logit processors is SamplingPlan's rule in backend.h, and the CPU
// backend's implementation is the reference):
//   logit bias and bans → repetition, frequency, presence penalties → (greedy)
//   → temperature → min_p → top_k → top_p → typical_p → draw.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "backend/backend.h"

namespace philora::engine {

struct SamplingParams {
  bool greedy = true;
  float temperature = 1.0f;  // > 0 when sampling
  int64_t top_k = 0;         // 0 = whole vocabulary
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  float min_p = 0.0f;        // vLLM's min-p in [0, 1]: drop tokens of p < min_p · max p; 0 = off
  float typical_p = 1.0f;    // HF's typical-p mass in (0, 1]; 1 = off
  // HF / TGI: a token of the prompt or the output has its logit divided by
  // the penalty when positive, multiplied when not. > 0; 1 = off.
  float repetition_penalty = 1.0f;
  // OpenAI: logit -= frequency · (times generated) + presence · (generated at all),
  // over the output only. 0 = off.
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  // Added to the token's logit before anything else (OpenAI's logit_bias; vLLM
  // and OpenAI bound it to [-100, 100], which the API layer checks). Finite.
  std::map<int32_t, float> logit_bias;
  // Token-id sequences that must not be generated (HF's bad_words_ids, vLLM's
  // bad_words after tokenization): the last token of a sequence is banned when
  // the ones before it end the output so far (a one-token sequence: always).
  std::vector<std::vector<int32_t>> bad_words;
  // nullopt: the engine draws a seed (StepOutput::seed reports the one used).
  // The draws of a request depend on its seed alone, so the same seed and
  // request give the same tokens whatever else shares the batch.
  std::optional<uint64_t> seed;
};

// Whether the request's sampling reads token counts (any penalty set).
bool uses_counts(const SamplingParams& p);

// A draw in [0, 1) from 24 random bits: exact in f32, never 1.
float draw_uniform(std::mt19937_64& rng);

// The tokens banned at the next step: the last token of every bad word whose
// other tokens end `output` (the tokens generated so far).
std::vector<int32_t> banned_bad_words(const std::vector<std::vector<int32_t>>& bad_words,
                                      const std::vector<int32_t>& output);

// Rows of token counts on the backend (SamplingPlan::counts), one per running
// sequence whose sampling has penalties; the sample op updates a row with the
// token it chooses. The table is allocated at the first acquire.
class TokenCounts {
 public:
  TokenCounts(Backend& backend, int64_t vocab, int64_t capacity);

  // A free row, set to the counts of `tokens` (the first prompt_len of them the
  // prompt); nullopt when every row is held.
  std::optional<int32_t> acquire(const std::vector<int32_t>& tokens, int64_t prompt_len);
  void release(int32_t row);
  int64_t num_free() const { return int64_t(free_.size()); }
  const Tensor& table() const { return table_; }  // (capacity, vocab) i32, or empty

 private:
  Backend& backend_;
  int64_t vocab_;
  int64_t capacity_;
  Tensor table_;
  std::vector<int32_t> free_;  // free rows, the lowest last
};

}  // namespace philora::engine
