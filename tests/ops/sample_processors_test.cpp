// sample's logit processors (SamplingPlan's steps 2-5 in backend.h): logit
// bias and bans, repetition / frequency / presence penalties from the count
// table, min-p and typical-p, and the count table's updates; reset_token_counts.
//   Random     rows mixing every processor and cut, every backend vs the
//              float64 oracle (ops/sample_oracle.h), and vs cpu token for token.
//   ByHand     penalties and bias on a tiny row, worked out in the comments.
//   Bans       a row banned but for a few tokens (min_new_tokens, bad words)
//              never gives a banned one, greedy or sampled.
//   ResetCounts  reset_token_counts vs counting on the host.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <stdexcept>

#include "ops/harness.h"
#include "ops/sample_oracle.h"

namespace philora::optest {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
T pick(Rng& rng, std::initializer_list<T> values) {
  return *(values.begin() + rng.integer(0, int64_t(values.size()) - 1));
}

// A count row of random history: ~3% of the tokens in the prompt, ~3%
// generated 1-6 times (some both). Returns its index.
int32_t add_count_row(Rng& rng, SampleBatch& in) {
  const int64_t V = in.vocab;
  std::vector<int32_t> row(size_t(V), 0);
  for (int64_t t = 0; t < V; ++t) {
    if (rng.uniform(0, 1) < 0.03) row[size_t(t)] |= 1;
    if (rng.uniform(0, 1) < 0.03) row[size_t(t)] += 2 * int32_t(rng.integer(1, 6));
  }
  in.counts.insert(in.counts.end(), row.begin(), row.end());
  return int32_t(in.count_rows++);
}

// Distinct tokens with random biases, some of them bans.
std::vector<std::pair<int32_t, float>> random_bias(Rng& rng, int64_t vocab, int64_t n) {
  std::set<int32_t> tokens;
  while (int64_t(tokens.size()) < std::min(n, vocab))
    tokens.insert(int32_t(rng.integer(0, vocab - 1)));
  std::vector<std::pair<int32_t, float>> bias;
  for (const int32_t t : tokens)
    bias.push_back({t, rng.uniform(0, 1) < 0.15 ? kNegInf : float(rng.uniform(-4, 4))});
  return bias;
}

float draw_cut(Rng& rng, double off, double lo, double hi, float none) {
  return rng.uniform(0, 1) < off ? none : float(rng.uniform(lo, hi));
}

// One random row of every processor and cut; the parameters are drawn again
// until the oracle says the row stands kMargin clear of any rounding. False
// (the row taken out again) when no draw does.
bool try_random_row(Rng& rng, SampleBatch& in) {
  const int64_t V = in.vocab;
  SampleRowIn s;
  s.logits = rng.bf16(V, -8, 8);
  if (rng.uniform(0, 1) < 0.2)
    for (int64_t i = 0; i < V / 40; ++i) s.logits[size_t(rng.integer(0, V - 1))] = kNegInf;
  s.temperature = rng.uniform(0, 1) < 0.2 ? 0.0f : float(rng.uniform(0.3, 1.8));
  const double cut = rng.uniform(0, 1);
  s.top_k = cut < 0.5   ? 0
            : cut < 0.8 ? int32_t(rng.integer(1, std::min<int64_t>(V, 50)))
                        : int32_t(rng.integer(1, V));
  s.top_p = draw_cut(rng, 0.5, 0.3, 0.99, 1.0f);
  s.min_p = draw_cut(rng, 0.5, 0.001, 0.3, 0.0f);
  s.typical_p = draw_cut(rng, 0.6, 0.3, 0.98, 1.0f);
  if (rng.uniform(0, 1) < 0.6) {
    s.count_row = add_count_row(rng, in);
    s.repetition = pick(rng, {1.0f, 0.7f, 1.2f, 1.8f});
    s.frequency = pick(rng, {0.0f, 0.3f, -0.4f, 1.1f});
    s.presence = pick(rng, {0.0f, 0.5f, -0.6f});
  }
  if (rng.uniform(0, 1) < 0.5) s.bias = random_bias(rng, V, rng.integer(1, 40));
  if (V > 3 && rng.uniform(0, 1) < 0.1) {  // all banned but three tokens
    std::set<int32_t> allowed;
    while (allowed.size() < 3) allowed.insert(int32_t(rng.integer(0, V - 1)));
    s.bias.clear();
    for (int32_t t = 0; t < V; ++t)
      if (!allowed.count(t)) s.bias.push_back({t, kNegInf});
  }
  if (rng.uniform(0, 1) < 0.5) {
    s.logprobs = int32_t(std::min<int64_t>(V, pick(rng, {0, 1, 2, 5, 20})));
    s.logprob_kind = int32_t(rng.integer(0, 1));
    if (rng.uniform(0, 1) < 0.2) s.target = int32_t(rng.integer(0, V - 1));
  }
  s.uniform = float(rng.uniform(0, 1));
  in.rows.push_back(std::move(s));
  SampleRowIn& row = in.rows.back();
  const int64_t r = in.size() - 1;
  for (int tries = 1; oracle(in, r).margin < kMargin; ++tries) {
    if (tries == 1500) {
      in.rows.pop_back();  // its count row, if any, stays unused
      return false;
    }
    row.uniform = float(rng.uniform(0, 1));
    if (row.top_p < 1) row.top_p = float(rng.uniform(0.3, 0.99));
    if (row.min_p > 0) row.min_p = float(rng.uniform(0.001, 0.3));
    if (row.typical_p < 1) row.typical_p = float(rng.uniform(0.3, 0.98));
    if (tries % 50 == 0) row.temperature = float(rng.uniform(0.2, 1.0));
    if (tries % 300 == 0) {  // a near tie of biased or penalised logits: without them
      row.bias.clear();
      row.count_row = -1;
    }
  }
  return true;
}

// A random row that stands clear; a row whose every draw falls near a
// rounding boundary (a flat row of a big vocabulary) is drawn again whole.
void add_random_row(Rng& rng, SampleBatch& in) {
  for (int fresh = 0; fresh < 20; ++fresh)
    if (try_random_row(rng, in)) return;
  throw std::runtime_error("add_random_row: no row stands clear");
}

class SampleProcessors : public testing::TestWithParam<std::string> {
 protected:
  Backend& backend() { return backend_named(GetParam()); }
  bool is_cpu() const { return GetParam() == "cpu"; }
};

TEST_P(SampleProcessors, Random) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(fmt::format("seed {} (rerun with PHILORA_OP_SEED={})", seed, seed));
  Rng rng(seed);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 8},     {7, 100},    {1000, 96},
                                                           {1003, 48}, {32064, 16}, {100352, 6}};
  for (const auto& [vocab, rows] : shapes) {
    SCOPED_TRACE(fmt::format("vocab {}, {} rows", vocab, rows));
    SampleBatch in(vocab);
    for (int64_t r = 0; r < rows; ++r) add_random_row(rng, in);
    add_count_row(rng, in);  // a row no one uses: it must stay as it is
    const SampleOut got = run_sample(backend(), in);
    expect_matches_oracle(in, got, GetParam());
    if (!is_cpu()) {
      EXPECT_EQ(got.tokens, run_sample(backend_named("cpu"), in).tokens) << "vs the cpu backend";
    }
  }
}

// Worked by hand. Logits [2, -1, 0.5, 3, 1, -2]; token 0 is in the prompt,
// token 3 was generated twice, token 5 once and is in the prompt; repetition
// 2, frequency 0.5, presence 1:
//   0: 2 / 2 = 1            3: 3 / 2 - (0.5·2 + 1) = -0.5
//   5: -2 · 2 - (0.5 + 1) = -5.5     the others as they are.
// Then bias +0.75 on token 4 (1 → 1.75) and a ban of token 2.
TEST_P(SampleProcessors, ByHand) {
  SampleBatch in(6);
  in.count_rows = 2;
  in.counts = {1, 0, 0, 4, 0, 3, /* row 1: */ 0, 0, 0, 0, 0, 0};
  SampleRowIn s;
  s.logits = {2, -1, 0.5, 3, 1, -2};
  s.count_row = 0;
  s.repetition = 2;
  s.frequency = 0.5f;
  s.presence = 1;
  s.logprobs = 6;
  s.logprob_kind = 1;    // processed: log_softmax of [1, -1, 0.5, -0.5, 1, -5.5] for a greedy row
  in.rows.push_back(s);  // greedy: 0 and 4 tie at 1: the first
  s.bias = {{2, kNegInf}, {4, 0.75f}};
  s.count_row = 1;
  s.logprob_kind = 0;  // raw: log_softmax of the logits, whatever the processors
  SampleRowIn t = s;
  t.count_row = -1;
  in.rows.push_back(t);  // [2, -1, -inf, 3, 1.75, -2]: 3
  s.count_row = 1;       // a count row of zeros: no penalty
  s.temperature = 1;
  s.top_k = 1;
  s.logprob_kind = 1;
  in.rows.push_back(s);  // [2, -1, -inf, 3, 1.75, -2], top 1: 3
  const SampleOut got = run_sample(backend(), in);
  EXPECT_EQ(got.tokens, (std::vector<int32_t>{0, 3, 3}));
  // Row 0's processed logprobs: x − log Σ exp x.
  const std::vector<double> x = {1, -1, 0.5, -0.5, 1, -5.5};
  double sum = 0;
  for (double v : x) sum += std::exp(v);
  const std::vector<int32_t> order = {0, 4, 2, 3, 1, 5};  // by x desc, ties by id
  for (size_t j = 0; j < 6; ++j) {
    EXPECT_EQ(got.top_tokens[j], order[j]) << j;
    EXPECT_NEAR(got.top_logprobs[j], x[size_t(order[j])] - std::log(sum), 1e-5) << j;
  }
  EXPECT_NEAR(got.logprob[0], 1 - std::log(sum), 1e-5);
  // Row 1's raw logprob of its token 3.
  double raw = 0;
  for (double v : {2.0, -1.0, 0.5, 3.0, 1.0, -2.0}) raw += std::exp(v);
  EXPECT_NEAR(got.logprob[1], 3 - std::log(raw), 1e-5);
  // Row 2 (processed, top_k 1): token 3 has probability 1, the rest -inf.
  EXPECT_NEAR(got.logprob[2], 0.0, 1e-6);
  EXPECT_EQ(got.top_tokens[2 * 6], 3);
  EXPECT_EQ(got.top_logprobs[2 * 6 + 1], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(got.top_tokens[2 * 6 + 1], 0) << "-inf ties in ascending id";
  // Counts: +2 for the chosen token of the rows with a count row (0 and 2).
  std::vector<int32_t> want = in.counts;
  want[0] += 2;
  want[6 + 3] += 2;
  EXPECT_EQ(got.counts, want);
}

// Bans (min_new_tokens' eos ids, bad words) hold for greedy and sampled rows,
// whatever the logits: a banned token never comes.
TEST_P(SampleProcessors, Bans) {
  for (const int64_t vocab : {int64_t(64), int64_t(1000), int64_t(32064)}) {
    SCOPED_TRACE(fmt::format("vocab {}", vocab));
    Rng rng(99 + uint64_t(vocab));
    SampleBatch in(vocab);
    std::vector<std::set<int32_t>> allowed;
    for (int r = 0; r < 64; ++r) {
      SampleRowIn s;
      s.logits = rng.bf16(vocab, -3, 3);
      const int32_t eos = int32_t(rng.integer(0, vocab - 1));
      s.logits[size_t(eos)] = 30;  // the model wants to stop
      s.temperature = r % 4 == 0 ? 0.0f : float(rng.uniform(0.5, 3));
      s.top_p = r % 3 == 0 ? 1.0f : 0.9f;
      std::set<int32_t> banned{eos};
      if (r % 2 == 1)
        while (banned.size() < size_t(vocab) / 2) banned.insert(int32_t(rng.integer(0, vocab - 1)));
      for (int32_t t : banned) s.bias.push_back({t, kNegInf});
      std::set<int32_t> ok;
      for (int32_t t = 0; t < vocab; ++t)
        if (!banned.count(t)) ok.insert(t);
      allowed.push_back(ok);
      s.uniform = float(rng.uniform(0, 1));
      in.rows.push_back(s);
    }
    const SampleOut got = run_sample(backend(), in);
    for (size_t r = 0; r < allowed.size(); ++r)
      EXPECT_TRUE(allowed[r].count(got.tokens[r]))
          << in.describe(int64_t(r)) << ": banned token " << got.tokens[r];
  }
}

TEST_P(SampleProcessors, ResetCounts) {
  Backend& b = backend();
  Rng rng(7);
  const int64_t rows = 4, vocab = 1003;
  std::vector<int32_t> table(size_t(rows * vocab));
  for (int32_t& v : table) v = int32_t(rng.integer(0, 9));
  Tensor counts = b.upload_i32(table).reshape({rows, vocab});
  std::vector<int32_t> tokens;
  for (int i = 0; i < 300; ++i) tokens.push_back(int32_t(rng.integer(0, 80)));  // many repeats
  const int64_t prompt_len = 120;
  b.reset_token_counts(counts, 2, b.upload_i32(tokens), prompt_len);
  std::vector<int32_t> want = table;
  std::fill_n(want.begin() + 2 * vocab, vocab, 0);
  for (size_t i = 0; i < tokens.size(); ++i) {
    int32_t& c = want[size_t(2 * vocab + tokens[i])];
    if (int64_t(i) < prompt_len)
      c |= 1;
    else
      c += 2;
  }
  EXPECT_EQ(b.download_i32(counts), want);
  // An empty history: zeros.
  b.reset_token_counts(counts, 0, b.upload_i32({}), 0);
  std::fill_n(want.begin(), vocab, 0);
  EXPECT_EQ(b.download_i32(counts), want);
  EXPECT_THROW(b.reset_token_counts(counts, rows, b.upload_i32(tokens), prompt_len),
               std::runtime_error);
  EXPECT_THROW(b.reset_token_counts(counts, 0, b.upload_i32(tokens), 301), std::runtime_error);
}

INSTANTIATE_TEST_SUITE_P(sample, SampleProcessors, testing::ValuesIn(sample_backends()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

}  // namespace
}  // namespace philora::optest
