// sample (token selection, SamplingPlan's rule in backend.h) with neutral
// logit processors: temperature, top-k, top-p, the draw. Its outputs are token
// ids, which the harness's normalised error does not suit, so these tests run
// on the harness's backends (available_backends() and cpu-bf16) with exact
// checks of their own:
//   Random      every backend vs the float64 oracle (ops/sample_oracle.h), and
//               every other backend vs cpu, token for token.
//   Ties        equal logits: greedy takes the first, top-k and top-p take ties
//               in ascending index; all -inf rows.
//   Frequencies over many draws the tokens come with the kept set's
//               probabilities (a wrong temperature or cut shows); also with
//               min-p, typical-p, penalties and bias.
//   BadInput    wrong dtypes, row counts, bias tokens, count rows, logprob widths throw.
// The processors and logprobs have their own files (sample_processors_test.cpp,
// sample_logprobs_test.cpp).
//
// Exactness across backends: every backend sees the same logits (bf16 values),
// so the order of the candidates and the top-k set are exact; only the weights
// round differently (f64 on cpu, f32 on a GPU). The random rows therefore keep
// top_p and the draw at least kMargin (a fraction of the mass) away from any
// boundary where that rounding could change the token.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>

#include "engine/sampler.h"
#include "ops/harness.h"
#include "ops/sample_oracle.h"

namespace philora::optest {
namespace {

// ---- inputs -------------------------------------------------------------------

// Rows of the old four inputs (logits, temperature, top_k, top_p, uniform),
// every processor neutral.
struct Batch : SampleBatch {
  explicit Batch(int64_t v) : SampleBatch(v) {}
  void add(const std::vector<float>& l, float t, int32_t k, float p, float u) {
    SampleRowIn r;
    r.logits = l;
    r.temperature = t;
    r.top_k = k;
    r.top_p = p;
    r.uniform = u;
    rows.push_back(std::move(r));
  }
  const float* row(int64_t r) const { return rows[size_t(r)].logits.data(); }
};

std::vector<int32_t> tokens_of(Backend& b, const SampleBatch& in) {
  return run_sample(b, in).tokens;
}

// ---- random rows -------------------------------------------------------------------

float draw_top_p(Rng& rng) {
  const double u = rng.uniform(0, 1);
  return u < 0.35 ? 1.0f : u < 0.45 ? 1e-6f : u < 0.5 ? 1.5f : float(rng.uniform(0.05, 0.99));
}

float draw_uniform(Rng& rng) {
  const double u = rng.uniform(0, 1);
  return u < 0.05 ? 0.0f : u < 0.1 ? 0.99999f : float(rng.uniform(0, 1));
}

// Rows of bf16 logits in [-8, 8) (ties are common in big vocabularies; some
// rows hold -inf) with a mix of greedy rows, temperatures, cuts and draws;
// top_p and the draw are drawn again until they stand kMargin clear, and a row
// that finds no such draw is drawn again whole (a flat row of a big
// vocabulary at a high temperature can hold near ties at every cut).
Batch random_rows(Rng& rng, int64_t vocab, int64_t rows) {
  Batch in(vocab);
  for (int64_t r = 0; r < rows; ++r) {
    for (int fresh = 0;; ++fresh) {
      if (fresh == 20) throw std::runtime_error("random_rows: no row stands clear");
      std::vector<float> l = rng.bf16(vocab, -8, 8);
      if (r % 5 == 4)
        for (int64_t i = 0; i < vocab / 50; ++i)
          l[size_t(rng.integer(0, vocab - 1))] = -std::numeric_limits<float>::infinity();
      const double kind = rng.uniform(0, 1);
      float t = kind < 0.15 ? 0.0f : kind < 0.2 ? -1.0f : float(rng.uniform(0.2, 2.0));
      const double cut = rng.uniform(0, 1);
      const int32_t k = cut < 0.3    ? 0
                        : cut < 0.4  ? 1
                        : cut < 0.45 ? int32_t(vocab)
                        : cut < 0.5  ? int32_t(vocab + 5)
                        : cut < 0.8  ? int32_t(rng.integer(1, std::min<int64_t>(vocab, 64)))
                                     : int32_t(rng.integer(1, vocab));
      in.add(l, t, k, draw_top_p(rng), draw_uniform(rng));
      // A flat row over a big vocabulary may have no token wide enough at this
      // temperature: now and then a cooler one.
      SampleRowIn& row = in.rows.back();
      int tries = 1;
      for (; tries < 1000 && oracle(in, r).margin < kMargin; ++tries) {
        if (row.top_p < 1) row.top_p = draw_top_p(rng);
        row.uniform = draw_uniform(rng);
        if (tries % 50 == 0) row.temperature = float(rng.uniform(0.2, 1.0));
      }
      if (tries < 1000) break;
      in.rows.pop_back();  // a fresh row in its place
    }
  }
  return in;
}

// Compares token ids; names the first few rows that differ.
void expect_tokens(const Batch& in, const std::vector<int32_t>& got,
                   const std::vector<int32_t>& want, const std::string& against) {
  ASSERT_EQ(got.size(), want.size());
  int shown = 0, wrong = 0;
  for (int64_t r = 0; r < in.size(); ++r) {
    const int32_t g = got[size_t(r)], w = want[size_t(r)];
    if (g == w) continue;
    ++wrong;
    if (shown++ >= 8) continue;
    const bool in_range = g >= 0 && g < in.vocab;
    ADD_FAILURE() << in.describe(r) << ": token " << g << " (logit "
                  << (in_range ? in.row(r)[g] : NAN) << "), " << against << " says " << w
                  << " (logit " << in.row(r)[w] << "); the oracle says " << oracle(in, r).token;
  }
  EXPECT_EQ(wrong, 0) << wrong << " of " << in.size() << " rows differ from " << against;
}

class SampleOp : public testing::TestWithParam<std::string> {
 protected:
  Backend& backend() { return backend_named(GetParam()); }
  bool is_cpu() const { return GetParam() == "cpu"; }
};

// ---- (a), (b): random rows, exact -------------------------------------------------------

TEST_P(SampleOp, Random) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(fmt::format("seed {} (rerun with PHILORA_OP_SEED={})", seed, seed));
  Rng rng(seed);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 16}, {7, 300}, {1000, 512}, {1003, 64}, {32064, 48}, {100352, 24}, {200064, 6}};
  for (const auto& [vocab, rows] : shapes) {
    SCOPED_TRACE(fmt::format("vocab {}, {} rows", vocab, rows));
    const Batch in = random_rows(rng, vocab, rows);
    const std::vector<int32_t> got = tokens_of(backend(), in);
    std::vector<int32_t> want;
    for (int64_t r = 0; r < in.size(); ++r) want.push_back(oracle(in, r).token);
    expect_tokens(in, got, want, "the float64 oracle");
    if (!is_cpu()) {
      expect_tokens(in, got, tokens_of(backend_named("cpu"), in), "the cpu backend");
      expect_tokens(in, tokens_of(backend(), in), got, "its own first run");
    }
  }
}

// ---- structured output's masks ---------------------------------------------------------

// Random rows under allowed-token masks (dense, sparse, one token, none; some rows without
// one), with logprobs of both kinds: tokens and logprobs as the oracle says (raw logprobs
// read the logits before the mask).
TEST_P(SampleOp, Masks) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(fmt::format("seed {} (rerun with PHILORA_OP_SEED={})", seed, seed));
  Rng rng(seed);
  for (const auto& [vocab, rows] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 4}, {37, 40}, {1003, 64}, {32064, 24}}) {
    SCOPED_TRACE(fmt::format("vocab {}, {} rows", vocab, rows));
    Batch in = random_rows(rng, vocab, rows);
    for (int64_t r = 0; r < rows; ++r) {
      SampleRowIn& row = in.rows[size_t(r)];
      if (r % 5 == 0) continue;  // no mask
      const int64_t V = vocab;  // (a structured binding: clang 14's lambdas cannot capture it)
      auto draw_mask = [&] {
        row.mask.assign(size_t((V + 31) / 32), 0u);
        const double density = r % 5 == 1 ? 0.5 : r % 5 == 2 ? 0.02 : 0.0;
        for (int64_t t = 0; t < V; ++t)
          if (rng.uniform(0, 1) < density) row.mask[size_t(t / 32)] |= 1u << (t % 32);
        if (r % 5 != 4) {  // at least one token; r % 5 == 4 keeps none (greedy: the first index)
          const auto t = rng.integer(0, V - 1);
          row.mask[size_t(t / 32)] |= 1u << (t % 32);
        }
      };
      draw_mask();
      if (r % 3 == 0) {
        row.logprobs = int32_t(std::min<int64_t>(3, vocab));
        row.logprob_kind = r % 2;
      }
      // A mask that leaves near ties at every draw is drawn again.
      for (int tries = 1; oracle(in, r).margin < kMargin; ++tries) {
        if (tries == 2000) FAIL() << "no draw stands clear";
        row.uniform = draw_uniform(rng);
        if (tries % 50 == 0) row.temperature = float(rng.uniform(0.2, 1.0));
        if (tries % 400 == 0) draw_mask();
      }
    }
    const SampleOut got = run_sample(backend(), in);
    expect_matches_oracle(in, got, GetParam());
    for (int64_t r = 0; r < rows; ++r) {  // what the oracle says, from the rule itself
      const SampleRowIn& row = in.rows[size_t(r)];
      const int32_t t = got.tokens[size_t(r)];
      if (row.mask.empty() || t < 0 || t >= vocab) continue;
      bool any = false;
      for (uint32_t w : row.mask) any = any || w != 0;
      if (any)
        EXPECT_TRUE(row.mask[size_t(t / 32)] >> (t % 32) & 1u) << in.describe(r) << ": token " << t;
      else
        EXPECT_EQ(t, 0) << in.describe(r);
    }
  }
}

// ---- (c): ties --------------------------------------------------------------------------

// Logits from a few levels; the row's kept set and expected tokens follow from
// counting, with no oracle.
TEST_P(SampleOp, Ties) {
  for (const int64_t vocab : {int64_t(1000), int64_t(1003)}) {  // 16-byte loads and not
    SCOPED_TRACE(fmt::format("vocab {}", vocab));
    Batch in(vocab);
    std::vector<int32_t> want;
    auto add = [&](const std::vector<float>& l, float t, int32_t k, float p, float u,
                   int64_t token) {
      in.add(l, t, k, p, u);
      want.push_back(int32_t(token));
    };
    const float ninf = -std::numeric_limits<float>::infinity();

    // All equal: every weight is exactly 1, so the sums are exact.
    const std::vector<float> flat(size_t(vocab), 0.75f);
    add(flat, 0.0f, 0, 1.0f, 0.5f, 0);             // greedy: the first index
    add(flat, 1.0f, 1, 1.0f, 0.99f, 0);            // top_k 1
    add(flat, 1.0f, 5, 1.0f, 0.999f, 4);           // top 5 = indices 0..4; the last of them
    add(flat, 1.0f, 5, 1.0f, 0.0f, 0);             // ... the first
    add(flat, 1.0f, 5, 1.0f, 0.5f, 2);             // 2.5 of 5
    add(flat, 0.3f, 0, 1.0f, 0.9995f, vocab - 1);  // no cut: 999.5 of 1000
    add(flat, 1.0f, 0, 0.0105f, 0.99f, 10);        // top_p: 10.5 of 1000 needs 11 ties
    add(flat, 1.0f, 20, 0.5f, 0.99f, 9);           // 10 of 20, reached exactly at the 10th tie
    add(flat, 2.0f, 0, 1e-6f, 0.7f, 0);            // tiny top_p: the first tie

    // Three levels at random places: hi (rare), mid, lo; ties cut in index order.
    Rng rng(1234 + uint64_t(vocab));
    std::vector<float> lv(size_t(vocab), 0.0f);
    std::vector<int64_t> hi, mid, lo;  // indices of each level, ascending
    for (int64_t i = 0; i < vocab; ++i) {
      const double u = rng.uniform(0, 1);
      lv[size_t(i)] = u < 0.05 ? 2.0f : u < 0.35 ? 0.0f : -1.0f;
      (u < 0.05 ? hi : u < 0.35 ? mid : lo).push_back(i);
    }
    ASSERT_GE(hi.size(), 2u);
    auto last_of = [](std::vector<int64_t> s) { return *std::max_element(s.begin(), s.end()); };
    std::vector<int64_t> hi_mid3 = hi, hi_mid4 = hi;
    hi_mid3.insert(hi_mid3.end(), mid.begin(), mid.begin() + 3);
    hi_mid4.insert(hi_mid4.end(), mid.begin(), mid.begin() + 4);
    const int32_t k = int32_t(hi.size() + 3);
    add(lv, 0.0f, 0, 1.0f, 0.5f, hi[0]);  // greedy: the first of the max
    add(lv, 1.0f, int32_t(hi.size()), 1.0f, 0.99999f, hi.back());
    add(lv, 1.0f, k, 1.0f, 0.99999f, last_of(hi_mid3));  // the 3 lowest mid ties are kept
    add(lv, 1.0f, k, 1.0f, 0.0f, std::min(hi[0], mid[0]));
    // top_p whose mass is reached inside the mid level, after 4 of its ties.
    const double e1 = std::exp(-2.0), e2 = std::exp(-3.0);
    const double sum = double(hi.size()) + double(mid.size()) * e1 + double(lo.size()) * e2;
    const float p = float((double(hi.size()) + 3.5 * e1) / sum);
    add(lv, 1.0f, 0, p, 0.99999f, last_of(hi_mid4));
    add(lv, 1.0f, 0, p, 0.0f, std::min(hi[0], mid[0]));
    add(lv, 1.0f, 0, float((double(hi.size()) - 0.5) / sum), 0.99999f, hi.back());  // within hi

    // -inf: all of the row (greedy fallback), or all but one token.
    std::vector<float> dead(size_t(vocab), ninf);
    add(dead, 1.0f, 0, 0.9f, 0.5f, 0);
    add(dead, 0.0f, 0, 1.0f, 0.5f, 0);
    dead[size_t(vocab / 2)] = -3.0f;
    add(dead, 1.0f, 0, 1.0f, 0.99999f, vocab / 2);
    add(dead, 0.7f, 7, 0.5f, 0.0f, vocab / 2);

    expect_tokens(in, tokens_of(backend(), in), want, "the counted answer");
  }
}

// ---- (d): frequencies ---------------------------------------------------------------------

// The probabilities row r is drawn with (the oracle's processed logprobs).
std::vector<double> drawn_with(const SampleBatch& in, int64_t r) {
  SampleBatch one = in;
  one.rows = {in.rows[size_t(r)]};
  one.rows[0].logprobs = 0;
  one.rows[0].logprob_kind = 1;
  std::vector<double> p = oracle(one, 0).logprob;
  for (double& x : p) x = std::exp(x);
  return p;
}

// Many rows of the same logits with draws from a fixed generator: the token
// counts must fit the kept set's probabilities (chi-square, bound far in the
// tail) and no other token may come.
TEST_P(SampleOp, Frequencies) {
  constexpr int64_t kVocab = 1000, kRows = 8000;
  Rng rng(20240611);
  std::vector<float> l = rng.bf16(kVocab, -6, 0);
  for (int i = 0; i < 12; ++i)
    l[size_t(rng.integer(0, kVocab - 1))] = round_bf16(rng.uniform(2, 5));
  for (int i = 0; i < 10; ++i) l[size_t(rng.integer(0, kVocab - 1))] = -INFINITY;
  // A history for the penalties (the same in every row's own count row) and a bias.
  std::vector<int32_t> history(kVocab, 0);
  for (int i = 0; i < 60; ++i)
    history[size_t(rng.integer(0, kVocab - 1))] = int32_t(rng.integer(1, 7));
  std::vector<std::pair<int32_t, float>> bias;
  for (int32_t t = 0; t < kVocab; t += 97) bias.push_back({t, float(rng.uniform(-2, 3))});
  bias.push_back({int32_t(std::max_element(l.begin(), l.end()) - l.begin()), -INFINITY});
  struct Config {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p = 0.0f;
    float typical_p = 1.0f;
    bool processors = false;  // penalties over the history, the bias
  };
  for (const Config c :
       {Config{0.7f, 0, 0.9f}, Config{1.5f, 8, 1.0f}, Config{1.0f, 0, 1.0f},
        Config{0.5f, 30, 0.99f}, Config{1.0f, 0, 1.0f, 0.02f}, Config{1.2f, 0, 1.0f, 0.0f, 0.7f},
        Config{0.9f, 40, 0.95f, 0.01f, 0.8f}, Config{1.0f, 0, 1.0f, 0.0f, 1.0f, true},
        Config{0.8f, 0, 0.9f, 0.05f, 0.9f, true}}) {
    SCOPED_TRACE(fmt::format("T={} top_k={} top_p={} min_p={} typical_p={} processors={}",
                             c.temperature, c.top_k, c.top_p, c.min_p, c.typical_p, c.processors));
    Batch in(kVocab);
    std::mt19937_64 gen(77);
    for (int64_t r = 0; r < kRows; ++r) {
      in.add(l, c.temperature, c.top_k, c.top_p, engine::draw_uniform(gen));
      SampleRowIn& row = in.rows.back();
      row.min_p = c.min_p;
      row.typical_p = c.typical_p;
      if (c.processors) {
        row.repetition = 1.3f;
        row.frequency = 0.4f;
        row.presence = 0.6f;
        row.count_row = int32_t(r);
        row.bias = bias;
        in.counts.insert(in.counts.end(), history.begin(), history.end());
        ++in.count_rows;
      }
    }
    const SampleOut out = run_sample(backend(), in);
    std::vector<int64_t> count(kVocab, 0);
    for (const int32_t t : out.tokens) {
      ASSERT_TRUE(t >= 0 && t < kVocab) << t;
      ++count[size_t(t)];
    }
    const std::vector<double> prob = drawn_with(in, 0);
    std::vector<double> expected(kVocab, 0.0);
    int64_t kept = 0;
    for (int64_t i = 0; i < kVocab; ++i) {
      expected[size_t(i)] = prob[size_t(i)] * kRows;
      kept += prob[size_t(i)] > 0;
    }
    // Tokens expected ≥ 10 times are bins of their own, the rest one pooled bin.
    double chi2 = 0, pooled_want = 0, pooled_got = 0;
    int bins = 0;
    int64_t outside = 0;
    for (int64_t i = 0; i < kVocab; ++i) {
      if (expected[size_t(i)] == 0) {
        outside += count[size_t(i)];
      } else if (expected[size_t(i)] >= 10) {
        const double d = double(count[size_t(i)]) - expected[size_t(i)];
        chi2 += d * d / expected[size_t(i)];
        ++bins;
      } else {
        pooled_want += expected[size_t(i)];
        pooled_got += double(count[size_t(i)]);
      }
    }
    if (pooled_want > 0) {
      chi2 += (pooled_got - pooled_want) * (pooled_got - pooled_want) / std::max(pooled_want, 1.0);
      ++bins;
    }
    EXPECT_GT(kept, 1) << "a degenerate configuration";
    EXPECT_EQ(outside, 0) << "tokens outside the kept set of " << kept;
    const double df = std::max(1, bins - 1);
    EXPECT_LT(chi2, df + 6 * std::sqrt(2 * df) + 6)
        << bins << " bins over a kept set of " << kept << " tokens";
  }
}

// ---- (e): bad input ------------------------------------------------------------------------

// A plan of `rows` neutral greedy rows on b.
SamplingPlan neutral_plan(Backend& b, int64_t rows) {
  const std::vector<float> zeros(size_t(rows), 0.0f), ones(size_t(rows), 1.0f);
  const std::vector<int32_t> none(size_t(rows), -1), zero(size_t(rows), 0);
  SamplingPlan p;
  p.temperature = b.upload_f32(ones);
  p.top_k = b.upload_i32(zero);
  p.top_p = b.upload_f32(ones);
  p.min_p = b.upload_f32(zeros);
  p.typical_p = b.upload_f32(ones);
  p.uniform = b.upload_f32(std::vector<float>(size_t(rows), 0.5f));
  p.repetition_penalty = b.upload_f32(ones);
  p.frequency_penalty = b.upload_f32(zeros);
  p.presence_penalty = b.upload_f32(zeros);
  p.count_row = b.upload_i32(none);
  p.bias_indptr = b.upload_i32(std::vector<int32_t>(size_t(rows + 1), 0));
  p.bias_token = b.upload_i32({});
  p.bias_value = b.upload_f32({});
  p.logprobs = b.upload_i32(none);
  p.logprob_kind = b.upload_i32(zero);
  p.target = b.upload_i32(none);
  return p;
}

TEST_P(SampleOp, BadInput) {
  Backend& b = backend();
  const int64_t rows = 3, vocab = 10;
  const std::vector<float> values(size_t(rows * vocab), 0.5f);
  const Tensor logits = upload(b, values, {rows, vocab});
  const SamplingPlan plan = neutral_plan(b, rows);
  EXPECT_EQ(b.download_i32(b.sample(logits, plan).tokens).size(), size_t(rows));  // the good call

  const Tensor ints =
      b.upload_i32(std::vector<int32_t>(size_t(rows * vocab), 1)).reshape({rows, vocab});
  EXPECT_THROW(b.sample(ints, plan), std::runtime_error) << "i32 logits";
  EXPECT_THROW(b.sample(logits.reshape({rows * vocab}), plan), std::runtime_error) << "1-d logits";
  SamplingPlan bad = plan;
  bad.temperature = b.upload_f32({1, 1, 1, 1});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "4 temperatures for 3 rows";
  bad = plan;
  bad.uniform = b.upload_f32({0.5f, 0.5f});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "2 draws for 3 rows";
  bad = plan;
  bad.top_k = b.upload_f32({0, 0, 0});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "f32 top_k";
  bad = plan;
  bad.top_p = b.upload_i32({1, 1, 1});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "i32 top_p";
  bad = plan;
  bad.min_p = Tensor();
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "no min_p";
  bad = plan;
  bad.bias_indptr = b.upload_i32({0, 0, 0});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "3 bias offsets for 3 rows";
  bad = plan;
  bad.logprobs_width = kMaxLogprobs + 1;
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "too wide top lists";
  bad = plan;
  bad.counts = b.upload_f32(std::vector<float>(size_t(2 * vocab), 0.0f)).reshape({2, vocab});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "f32 counts";
  bad = plan;
  bad.counts =
      b.upload_i32(std::vector<int32_t>(size_t(2 * (vocab + 1)), 0)).reshape({2, vocab + 1});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "counts of another vocabulary";

  // Values the host can read: the cpu backend checks them (a device backend's
  // kernel skips what is out of range instead).
  if (b.device() != Device::cpu) return;
  bad = plan;
  bad.bias_indptr = b.upload_i32({0, 1, 1, 1});
  bad.bias_token = b.upload_i32({vocab});
  bad.bias_value = b.upload_f32({1.0f});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "a bias token outside the vocabulary";
  bad = plan;
  bad.count_row = b.upload_i32({0, -1, -1});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "a count row without counts";
  bad.counts = b.upload_i32(std::vector<int32_t>(size_t(vocab), 0)).reshape({1, vocab});
  bad.count_row = b.upload_i32({1, -1, -1});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "count row 1 of 1";
  bad = plan;
  bad.logprobs = b.upload_i32({2, -1, -1});
  bad.logprobs_width = 1;
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "2 logprobs in a plan of width 1";
  bad = plan;
  bad.target = b.upload_i32({vocab, -1, -1});
  EXPECT_THROW(b.sample(logits, bad), std::runtime_error) << "a target outside the vocabulary";
}

INSTANTIATE_TEST_SUITE_P(sample, SampleOp, testing::ValuesIn(sample_backends()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

}  // namespace
}  // namespace philora::optest
