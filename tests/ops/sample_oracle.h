// What the sample op tests share: a batch of rows with every SamplingPlan
// input, running it on a backend, the backends the tests run on, and the
// float64 oracle of SamplingPlan's rule (backend.h), written here as plainly
// as it reads there: processed logits, cuts, draw, logprobs — all in f64.
//
// Exactness across backends and precisions: every backend sees the same
// logits (bf16 values), so a row's choice is exact wherever no rounding can
// change it. The oracle says how far each row is from such a change (its
// margin: a fraction of the mass, 0 when two tokens that different
// arithmetic reaches — a bias, a penalty — nearly tie at a cut), and the
// tests draw their rows until that margin is at least kMargin.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "ops/harness.h"

namespace philora::optest {

// f32 sums of up to 200k weights along a fixed tree are off by a few 1e-6 of
// the total; f32 processed logits by an ulp.
inline constexpr double kMargin = 1e-5;
inline constexpr double kInf = std::numeric_limits<double>::infinity();
// Logprobs: |got − want| ≤ kLogprobTolerance · max(1, |want|).
inline constexpr double kLogprobTolerance = 1e-4;

struct SampleRowIn {
  std::vector<float> logits;  // [vocab] bf16 values (or ±inf, NaN)
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float typical_p = 1.0f;
  float uniform = 0.0f;
  float repetition = 1.0f;
  float frequency = 0.0f;
  float presence = 0.0f;
  int32_t count_row = -1;
  std::vector<std::pair<int32_t, float>> bias;  // tokens distinct
  int32_t logprobs = -1;
  int32_t logprob_kind = 0;
  int32_t target = -1;
  std::vector<uint32_t> mask;  // [ceil(vocab / 32)] allowed tokens (structured output); empty: all
};

struct SampleBatch {
  int64_t vocab = 0;
  std::vector<SampleRowIn> rows;
  int64_t count_rows = 0;
  std::vector<int32_t> counts;  // (count_rows, vocab): 2 · generated + in prompt

  explicit SampleBatch(int64_t v) : vocab(v) {}
  int64_t size() const { return int64_t(rows.size()); }
  int64_t width() const;  // the largest logprobs of a row (-1: none)
  std::string describe(int64_t r) const;
};

struct SampleOut {
  std::vector<int32_t> tokens;      // [R]
  int64_t width = -1;               // K
  std::vector<float> logprob;       // [R]
  std::vector<int32_t> top_tokens;  // [R · K]
  std::vector<float> top_logprobs;  // [R · K]
  std::vector<int32_t> counts;      // the table after the op
};

// Uploads the batch (logits in the backend's compute dtype), samples, fetches.
SampleOut run_sample(Backend& b, const SampleBatch& in);

// The oracle's answer for one row.
struct OracleRow {
  int32_t token = -1;
  double margin = kInf;           // how far rounding is from changing the token (0: unclear)
  std::vector<double> processed;  // [vocab] the processed logits x (after bias and penalties)
  std::vector<double> logprob;    // [vocab] the row's kind of logprobs (when it asks)
  bool greedy = false;
};
OracleRow oracle(const SampleBatch& in, int64_t r);

// Checks a backend's output against the oracle, row by row: tokens exactly,
// count table updates, logprobs within kLogprobTolerance (top lists: the
// oracle's values, in order; tokens exactly where no near tie makes the
// order a matter of rounding).
void expect_matches_oracle(const SampleBatch& in, const SampleOut& got, const std::string& backend);

// The backends the sample tests run on: available_backends() and cpu-bf16.
std::vector<std::string> sample_backends();
Backend& backend_named(const std::string& name);
uint64_t fresh_seed();  // PHILORA_OP_SEED or a random one

}  // namespace philora::optest
