// sample's logprobs (SamplingPlan's step 6 in backend.h): the target's logprob
// and the top k, raw (log_softmax of the model's logits) or processed (the
// distribution the token was drawn from), for greedy, sampled and prompt rows
// (a given target).
//   Random    every backend vs the float64 oracle (ops/sample_oracle.h): values
//             within 1e-4 · max(1, |value|), the top lists' order exact where no
//             near tie makes it a matter of rounding.
//   Uniform   equal logits: the values are -log n exactly, ties in ascending id,
//             and -inf for the tokens a cut removed.
//   Widths    a plan's width larger than a row's k; k = 0; no logprobs at all.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/harness.h"
#include "ops/sample_oracle.h"

namespace philora::optest {
namespace {

class SampleLogprobs : public testing::TestWithParam<std::string> {
 protected:
  Backend& backend() { return backend_named(GetParam()); }
};

TEST_P(SampleLogprobs, Random) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(fmt::format("seed {} (rerun with PHILORA_OP_SEED={})", seed, seed));
  Rng rng(seed);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 4},     {19, 40},    {1000, 64},
                                                           {1003, 33}, {32064, 12}, {100352, 5}};
  for (const auto& [vocab, rows] : shapes) {
    SCOPED_TRACE(fmt::format("vocab {}, {} rows", vocab, rows));
    SampleBatch in(vocab);
    for (int64_t r = 0; r < rows; ++r) {
      SampleRowIn s;
      s.logits = rng.bf16(vocab, -10, 10);
      const double kind = rng.uniform(0, 1);
      if (kind < 0.3) {  // a prompt row: greedy, raw, a given target
        s.target = int32_t(rng.integer(0, vocab - 1));
      } else if (kind > 0.5) {  // a sampled row
        s.temperature = float(rng.uniform(0.3, 1.7));
        s.top_k =
            rng.uniform(0, 1) < 0.5 ? 0 : int32_t(rng.integer(1, std::min<int64_t>(vocab, 40)));
        s.top_p = rng.uniform(0, 1) < 0.5 ? 1.0f : float(rng.uniform(0.5, 0.99));
        s.uniform = float(rng.uniform(0, 1));
      }
      s.logprob_kind = kind < 0.3 ? 0 : int32_t(rng.integer(0, 1));
      s.logprobs = int32_t(std::min<int64_t>(vocab, int64_t(rng.integer(0, 20))));
      in.rows.push_back(s);
      SampleRowIn& row = in.rows.back();
      for (int tries = 1; oracle(in, r).margin < kMargin; ++tries) {
        ASSERT_LT(tries, 3000) << "no draw stands clear";
        row.uniform = float(rng.uniform(0, 1));
        if (row.top_p < 1) row.top_p = float(rng.uniform(0.5, 0.99));
        if (tries % 500 == 0) row.logits = rng.bf16(vocab, -10, 10);  // near ties at every draw: other logits
      }
    }
    expect_matches_oracle(in, run_sample(backend(), in), GetParam());
  }
}

TEST_P(SampleLogprobs, Uniform) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const int64_t vocab : {int64_t(8), int64_t(1000)}) {
    SCOPED_TRACE(fmt::format("vocab {}", vocab));
    SampleBatch in(vocab);
    SampleRowIn s;
    s.logits.assign(size_t(vocab), 1.5f);
    s.logprobs = 5;
    in.rows.push_back(s);  // greedy raw: token 0, -log V for all
    s.logprob_kind = 1;
    s.temperature = 0.7f;
    s.top_k = 4;
    s.uniform = 0.6f;
    in.rows.push_back(s);  // processed, top 4 of equal logits: ids 0..3 at -log 4, then -inf
    const SampleOut got = run_sample(backend(), in);
    EXPECT_EQ(got.tokens[0], 0);
    EXPECT_EQ(got.tokens[1], 2) << "0.6 of 4 equal weights";
    const double lv = -std::log(double(vocab)), l4 = -std::log(4.0);
    EXPECT_NEAR(got.logprob[0], lv, 1e-6 * std::max(1.0, -lv));
    EXPECT_NEAR(got.logprob[1], l4, 1e-6);
    for (int32_t j = 0; j < 5; ++j) {
      EXPECT_EQ(got.top_tokens[size_t(j)], j) << "ties in ascending id";
      EXPECT_NEAR(got.top_logprobs[size_t(j)], lv, 1e-6 * std::max(1.0, -lv));
      EXPECT_EQ(got.top_tokens[size_t(5 + j)], j);
      if (j < 4)
        EXPECT_NEAR(got.top_logprobs[size_t(5 + j)], l4, 1e-6);
      else
        EXPECT_EQ(got.top_logprobs[size_t(5 + j)], -inf) << "cut: -inf";
    }
  }
}

TEST_P(SampleLogprobs, Widths) {
  Backend& b = backend();
  Rng rng(5);
  SampleBatch in(300);
  for (int r = 0; r < 3; ++r) {
    SampleRowIn s;
    s.logits = rng.bf16(300, -4, 4);
    s.logprobs = r == 0 ? 0 : r == 1 ? 3 : -1;
    in.rows.push_back(s);
  }
  SampleOut got = run_sample(b, in);
  ASSERT_EQ(got.width, 3);
  expect_matches_oracle(in, got, GetParam());
  // A plan wider than any row (a graph's): the rows' lists are the same.
  SampleBatch wide = in;
  wide.rows.push_back(in.rows[2]);
  wide.rows.back().logprobs = kMaxLogprobs;
  const SampleOut w = run_sample(b, wide);
  for (int64_t j = 0; j < 3; ++j) {
    EXPECT_EQ(w.top_tokens[size_t(kMaxLogprobs + j)], got.top_tokens[size_t(3 + j)]);
    EXPECT_EQ(w.top_logprobs[size_t(kMaxLogprobs + j)], got.top_logprobs[size_t(3 + j)]);
  }
  EXPECT_EQ(w.logprob[0], got.logprob[0]);
  // No row asks: no logprob tensors.
  for (SampleRowIn& s : in.rows) s.logprobs = -1;
  got = run_sample(b, in);
  EXPECT_EQ(got.width, -1);
  EXPECT_TRUE(got.logprob.empty());
}

INSTANTIATE_TEST_SUITE_P(sample, SampleLogprobs, testing::ValuesIn(sample_backends()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

}  // namespace
}  // namespace philora::optest
