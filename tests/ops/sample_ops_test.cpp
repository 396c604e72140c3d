// sample (token selection, SamplingPlan's rule in backend.h). Its outputs are
// token ids, which the harness's normalised error does not suit, so these tests
// run on the harness's backends (available_backends() and cpu-bf16) with exact
// checks of their own:
//   Random      cpu vs the float64 oracle below; every other backend vs cpu,
//               token for token.
//   Ties        equal logits: greedy takes the first, top-k and top-p take ties
//               in ascending index; all -inf rows.
//   Frequencies over many draws the tokens come with the kept set's
//               probabilities (a wrong temperature or cut shows).
//   BadInput    wrong dtypes and row counts throw.
//
// Exactness across backends: every backend sees the same logits (bf16 values),
// so the order of the candidates and the top-k set are exact; only the weights
// round differently (f64 on cpu, f32 on a GPU). The random rows therefore keep
// top_p and the draw at least kMargin (a fraction of the mass) away from any
// boundary where that rounding could change the token.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>

#include "engine/sampler.h"
#include "ops/bf16_emulator.h"
#include "ops/harness.h"

namespace philora::optest {
namespace {

// f32 sums of up to 200k weights along a fixed tree (chunks of a few hundred,
// then a block scan) are off by at most a few 1e-6 of the total.
constexpr double kMargin = 1e-5;
constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- inputs -------------------------------------------------------------------

struct Batch {
  int64_t vocab = 0;
  std::vector<float> logits;       // (rows, vocab), bf16 values
  std::vector<float> temperature;  // [rows]
  std::vector<int32_t> top_k;      // [rows]
  std::vector<float> top_p;        // [rows]
  std::vector<float> uniform;      // [rows]

  explicit Batch(int64_t v) : vocab(v) {}
  int64_t rows() const { return int64_t(temperature.size()); }
  const float* row(int64_t r) const { return logits.data() + r * vocab; }
  void add(const std::vector<float>& l, float t, int32_t k, float p, float u) {
    logits.insert(logits.end(), l.begin(), l.end());
    temperature.push_back(t);
    top_k.push_back(k);
    top_p.push_back(p);
    uniform.push_back(u);
  }
  std::string describe(int64_t r) const {
    return fmt::format("row {} (vocab {}, T={} top_k={} top_p={} uniform={})", r, vocab,
                       temperature[size_t(r)], top_k[size_t(r)], top_p[size_t(r)],
                       uniform[size_t(r)]);
  }
};

std::vector<int32_t> run_sample(Backend& b, const Batch& in) {
  const SamplingPlan plan{b.upload_f32(in.temperature), b.upload_i32(in.top_k),
                          b.upload_f32(in.top_p), b.upload_f32(in.uniform)};
  return b.download_i32(b.sample(upload(b, in.logits, {in.rows(), in.vocab}), plan));
}

// ---- the float64 oracle ----------------------------------------------------------

// The kept set of one row and its probabilities.
struct Kept {
  std::vector<int64_t> tokens;  // ascending index
  std::vector<double> prob;     // [tokens]
  double margin = kInf;         // how far top_p is from changing the set, in mass fractions
};

Kept kept_set(const float* logits, int64_t vocab, float temperature, int32_t top_k, float top_p) {
  Kept kept;
  const int64_t first_max = std::max_element(logits, logits + vocab) - logits;
  if (!(temperature > 0) || !std::isfinite(logits[first_max])) {
    kept.tokens = {first_max};
    kept.prob = {1.0};
    return kept;
  }
  // Candidates by descending logit; the stable sort keeps ties in index order.
  std::vector<int64_t> order(size_t(vocab), 0);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  if (top_k > 0 && top_k < vocab) order.resize(size_t(top_k));
  // Softmax at the temperature over the top-k candidates.
  std::vector<double> p(order.size());
  double sum = 0;
  for (size_t j = 0; j < order.size(); ++j)
    sum += p[j] = std::exp((double(logits[order[j]]) - double(logits[first_max])) / temperature);
  for (double& x : p) x /= sum;
  size_t keep = order.size();
  if (top_p < 1) {
    double mass = 0;
    kept.margin = 0;  // unless the mass is reached clearly
    for (size_t j = 0; j < order.size(); ++j) {
      const double before = mass;
      mass += p[j];
      if (mass >= top_p) {
        keep = j + 1;
        kept.margin = std::min(mass - top_p, j > 0 ? top_p - before : kInf);
        break;
      }
    }
  }
  std::vector<std::pair<int64_t, double>> chosen;
  for (size_t j = 0; j < keep; ++j) chosen.push_back({order[j], p[j]});
  std::sort(chosen.begin(), chosen.end());
  double mass = 0;
  for (const auto& [i, q] : chosen) mass += q;
  for (const auto& [i, q] : chosen) kept.tokens.push_back(i), kept.prob.push_back(q / mass);
  return kept;
}

struct Choice {
  int32_t token = -1;
  double margin = kInf;  // how far top_p and the draw are from changing the token
};

Choice oracle(const float* logits, int64_t vocab, float temperature, int32_t top_k, float top_p,
              float uniform) {
  const Kept kept = kept_set(logits, vocab, temperature, top_k, top_p);
  if (kept.tokens.size() == 1) return {int32_t(kept.tokens[0]), kInf};  // greedy, or one left
  double cdf = 0;
  for (size_t j = 0; j < kept.tokens.size(); ++j) {
    const double before = cdf;
    cdf += kept.prob[j];
    if (cdf > uniform) {
      const double below = before == 0 && uniform == 0 ? kInf : uniform - before;
      return {int32_t(kept.tokens[j]), std::min({kept.margin, cdf - uniform, below})};
    }
  }
  return {int32_t(kept.tokens.back()), 0.0};
}

Choice oracle(const Batch& in, int64_t r) {
  const size_t i = size_t(r);
  return oracle(in.row(r), in.vocab, in.temperature[i], in.top_k[i], in.top_p[i], in.uniform[i]);
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
// top_p and the draw are drawn again until they stand kMargin clear.
Batch random_rows(Rng& rng, int64_t vocab, int64_t rows) {
  Batch in(vocab);
  for (int64_t r = 0; r < rows; ++r) {
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
    float p = draw_top_p(rng), u = draw_uniform(rng);
    // A flat row over a big vocabulary may have no token wide enough at this
    // temperature: now and then a cooler one.
    for (int tries = 1; oracle(l.data(), vocab, t, k, p, u).margin < kMargin; ++tries) {
      if (tries == 1000) throw std::runtime_error("random_rows: no draw stands clear");
      if (p < 1) p = draw_top_p(rng);
      u = draw_uniform(rng);
      if (tries % 50 == 0) t = float(rng.uniform(0.2, 1.0));
    }
    in.add(l, t, k, p, u);
  }
  return in;
}

// ---- backends ----------------------------------------------------------------------

// The backends the op harness runs on: available_backends() and cpu-bf16.
std::vector<std::string> backends() {
  std::vector<std::string> names = available_backends();
  names.push_back("cpu-bf16");
  return names;
}

Backend& backend_named(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Backend>> made;
  std::unique_ptr<Backend>& b = made[name];
  if (!b) {
    if (name == "cpu-bf16") {
      b = make_bf16_emulator();
    } else {
      auto m = make_backend(name);
      if (!m) throw std::runtime_error("make_backend(" + name + "): " + m.status().message());
      b = std::move(m).value();
    }
  }
  return *b;
}

uint64_t fresh_seed() {
  if (const char* env = std::getenv("PHILORA_OP_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

// Compares token ids; names the first few rows that differ.
void expect_tokens(const Batch& in, const std::vector<int32_t>& got,
                   const std::vector<int32_t>& want, const std::string& against) {
  ASSERT_EQ(got.size(), want.size());
  int shown = 0, wrong = 0;
  for (int64_t r = 0; r < in.rows(); ++r) {
    const int32_t g = got[size_t(r)], w = want[size_t(r)];
    if (g == w) continue;
    ++wrong;
    if (shown++ >= 8) continue;
    const bool in_range = g >= 0 && g < in.vocab;
    ADD_FAILURE() << in.describe(r) << ": token " << g << " (logit "
                  << (in_range ? in.row(r)[g] : NAN) << "), " << against << " says " << w
                  << " (logit " << in.row(r)[w] << "); the oracle says " << oracle(in, r).token;
  }
  EXPECT_EQ(wrong, 0) << wrong << " of " << in.rows() << " rows differ from " << against;
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
    const std::vector<int32_t> got = run_sample(backend(), in);
    if (is_cpu()) {
      std::vector<int32_t> want;
      for (int64_t r = 0; r < in.rows(); ++r) want.push_back(oracle(in, r).token);
      expect_tokens(in, got, want, "the float64 oracle");
    } else {
      expect_tokens(in, got, run_sample(backend_named("cpu"), in), "the cpu backend");
      expect_tokens(in, run_sample(backend(), in), got, "its own first run");
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

    expect_tokens(in, run_sample(backend(), in), want, "the counted answer");
  }
}

// ---- (d): frequencies ---------------------------------------------------------------------

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
  struct Config {
    float temperature;
    int32_t top_k;
    float top_p;
  };
  for (const Config c : {Config{0.7f, 0, 0.9f}, Config{1.5f, 8, 1.0f}, Config{1.0f, 0, 1.0f},
                         Config{0.5f, 30, 0.99f}}) {
    SCOPED_TRACE(fmt::format("T={} top_k={} top_p={}", c.temperature, c.top_k, c.top_p));
    Batch in(kVocab);
    std::mt19937_64 gen(77);
    for (int64_t r = 0; r < kRows; ++r)
      in.add(l, c.temperature, c.top_k, c.top_p, engine::draw_uniform(gen));
    std::vector<int64_t> count(kVocab, 0);
    for (const int32_t t : run_sample(backend(), in)) {
      ASSERT_TRUE(t >= 0 && t < kVocab) << t;
      ++count[size_t(t)];
    }
    const Kept kept = kept_set(l.data(), kVocab, c.temperature, c.top_k, c.top_p);
    std::vector<double> expected(kVocab, 0.0);
    for (size_t j = 0; j < kept.tokens.size(); ++j)
      expected[size_t(kept.tokens[j])] = kept.prob[j] * kRows;
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
    EXPECT_EQ(outside, 0) << "tokens outside the kept set of " << kept.tokens.size();
    const double df = std::max(1, bins - 1);
    EXPECT_LT(chi2, df + 6 * std::sqrt(2 * df) + 6)
        << bins << " bins over a kept set of " << kept.tokens.size() << " tokens";
  }
}

// ---- (e): bad input ------------------------------------------------------------------------

TEST_P(SampleOp, BadInput) {
  Backend& b = backend();
  const int64_t rows = 3, vocab = 10;
  const std::vector<float> values(size_t(rows * vocab), 0.5f);
  const Tensor logits = upload(b, values, {rows, vocab});
  const SamplingPlan plan{b.upload_f32({1, 1, 1}), b.upload_i32({0, 0, 0}), b.upload_f32({1, 1, 1}),
                          b.upload_f32({0.5f, 0.5f, 0.5f})};
  EXPECT_EQ(b.download_i32(b.sample(logits, plan)).size(), size_t(rows));  // the good call

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
}

INSTANTIATE_TEST_SUITE_P(sample, SampleOp, testing::ValuesIn(backends()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

}  // namespace
}  // namespace philora::optest
