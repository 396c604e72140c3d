// embedding, silu_mul, gather_rows, random_uniform.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ops/harness.h"

namespace philora::optest {
namespace {

// out[t, :] = table[ids[t], :]
class Embedding : public OpCase {
 public:
  Embedding(int64_t tokens, int64_t vocab, int64_t hidden)
      : T_(tokens), vocab_(vocab), n_(hidden) {}
  std::string name() const override {
    return fmt::format("embedding(T={} vocab={} hidden={})", T_, vocab_, n_);
  }
  bool exact() const override { return true; }
  void init(Rng& rng) override {
    table_ = rng.bf16(vocab_ * n_, -1, 1);
    ids_.resize(size_t(T_));
    for (int32_t& id : ids_) id = int32_t(rng.integer(0, vocab_ - 1));
    ids_[0] = int32_t(vocab_ - 1);  // the last row of the table
    if (T_ > 1) ids_[size_t(T_ - 1)] = 0;
    if (T_ > 2) ids_[1] = ids_[0];  // a repeated id
  }
  std::vector<Output> run(Backend& b) const override {
    const Tensor table = upload(b, table_, {vocab_, n_});
    return {fetch(b, "out", b.embedding(b.upload_i32(ids_), table))};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> out;
    for (int32_t id : ids_)
      for (int64_t i = 0; i < n_; ++i) out.push_back(table_[size_t(id * n_ + i)]);
    return {{"out", n_, out}};
  }

 private:
  int64_t T_, vocab_, n_;
  std::vector<float> table_;  // (vocab, hidden)
  std::vector<int32_t> ids_;  // [T]
};

// gate_up (T, 2I) = [gate | up]  ->  silu(gate) * up  (T, I)
class SiluMul : public OpCase {
 public:
  SiluMul(int64_t tokens, int64_t inter) : T_(tokens), I_(inter) {}
  std::string name() const override { return fmt::format("silu_mul(T={} I={})", T_, I_); }
  void init(Rng& rng) override { gate_up_ = rng.bf16(T_ * 2 * I_, -8, 8); }  // silu's tails too
  std::vector<Output> run(Backend& b) const override {
    return {fetch(b, "out", b.silu_mul(upload(b, gate_up_, {T_, 2 * I_})))};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> out;
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t i = 0; i < I_; ++i) {
        const double g = gate_up_[size_t(t * 2 * I_ + i)],
                     u = gate_up_[size_t(t * 2 * I_ + I_ + i)];
        out.push_back(g / (1.0 + std::exp(-g)) * u);
      }
    return {{"out", I_, out}};
  }

 private:
  int64_t T_, I_;
  std::vector<float> gate_up_;  // (T, 2I)
};

// rows of x at `rows`  ->  (R, cols)
class GatherRows : public OpCase {
 public:
  GatherRows(int64_t rows, int64_t cols, int64_t picked) : N_(rows), n_(cols), R_(picked) {}
  std::string name() const override {
    return fmt::format("gather_rows(x={}x{} rows={})", N_, n_, R_);
  }
  bool exact() const override { return true; }
  void init(Rng& rng) override {
    x_ = rng.bf16(N_ * n_, -1, 1);
    rows_.resize(size_t(R_));
    for (int32_t& r : rows_) r = int32_t(rng.integer(0, N_ - 1));
    std::sort(rows_.begin(), rows_.end());  // the planner's order: last token of each sequence
    rows_.back() = int32_t(N_ - 1);
  }
  std::vector<Output> run(Backend& b) const override {
    const Tensor x = upload(b, x_, {N_, n_});
    return {fetch(b, "out", b.gather_rows(x, b.upload_i32(rows_)))};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> out;
    for (int32_t r : rows_)
      for (int64_t i = 0; i < n_; ++i) out.push_back(x_[size_t(r * n_ + i)]);
    return {{"out", n_, out}};
  }

 private:
  int64_t N_, n_, R_;
  std::vector<float> x_;       // (N, cols)
  std::vector<int32_t> rows_;  // [R]
};

// Element i = mean + half_width · u(seed, i), u the (i+1)-th output of
// splitmix64 seeded with `seed`, its top 24 bits mapped to [-1, 1).
class RandomUniform : public OpCase {
 public:
  RandomUniform(std::vector<int64_t> shape, float mean, float half_width)
      : shape_(std::move(shape)), mean_(mean), half_width_(half_width) {}
  std::string name() const override {
    return fmt::format("random_uniform(shape={} mean={:g} half_width={:g})", join(shape_, "x"),
                       mean_, half_width_);
  }
  void init(Rng& rng) override { seed_ = rng.bits(); }
  std::vector<Output> run(Backend& b) const override {
    const auto& s = shape_;
    Tensor t = s.size() == 1   ? b.random_uniform({s[0]}, seed_, mean_, half_width_)
               : s.size() == 2 ? b.random_uniform({s[0], s[1]}, seed_, mean_, half_width_)
                               : b.random_uniform({s[0], s[1], s[2]}, seed_, mean_, half_width_);
    return {fetch(b, "out", t)};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> out;
    uint64_t state = seed_;
    for (int64_t i = 0; i < numel(); ++i) {
      state += 0x9e3779b97f4a7c15ull;
      uint64_t z = state;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z = z ^ (z >> 31);
      const double u = (double(z >> 40) - 8388608.0) / 8388608.0;  // 24 bits -> [-1, 1)
      out.push_back(double(mean_) + double(half_width_) * u);
    }
    return {{"out", shape_.back(), out}};
  }
  // The range is respected, and a large tensor fills it evenly.
  void check_properties(const std::vector<Output>& out) const override {
    const std::vector<float>& v = out[0].got;
    const double slack = half_width_ / 64 + std::abs(mean_) / 128;  // bf16 rounding
    double sum = 0, lo = INFINITY, hi = -INFINITY;
    for (float x : v) sum += x, lo = std::min(lo, double(x)), hi = std::max(hi, double(x));
    EXPECT_GE(lo, mean_ - half_width_ - slack) << "value below mean - half_width";
    EXPECT_LE(hi, mean_ + half_width_ + slack) << "value above mean + half_width";
    if (v.size() >= 10000) {
      EXPECT_NEAR(sum / double(v.size()), mean_, 0.02 * half_width_) << "sample mean";
      EXPECT_LT(lo, mean_ - 0.99 * half_width_ + slack)
          << "the low end of the range is never reached";
      EXPECT_GT(hi, mean_ + 0.99 * half_width_ - slack)
          << "the high end of the range is never reached";
    }
  }

 private:
  int64_t numel() const {
    return std::accumulate(shape_.begin(), shape_.end(), int64_t(1), std::multiplies<>());
  }
  std::vector<int64_t> shape_;
  float mean_, half_width_;
  uint64_t seed_ = 0;
};

std::vector<CaseFactory> misc_cases() {
  std::vector<CaseFactory> cases;
  for (int64_t t : {1, 7, 733}) {
    cases.push_back(make_case<Embedding>(t, 1002, 37));
    cases.push_back(make_case<Embedding>(t, 37, 1002));
  }
  for (int64_t t : {1, 3, 19, 733})
    for (int64_t inter : {37, 1002}) cases.push_back(make_case<SiluMul>(t, inter));
  cases.push_back(make_case<SiluMul>(3, 8192));  // Phi-3-mini intermediate
  cases.push_back(make_case<GatherRows>(1, 37, 1));
  cases.push_back(make_case<GatherRows>(19, 1002, 3));
  cases.push_back(make_case<GatherRows>(733, 1002, 19));
  cases.push_back(make_case<GatherRows>(7, 37, 7));
  cases.push_back(make_case<RandomUniform>(std::vector<int64_t>{1}, 0.0f, 1.0f));
  cases.push_back(make_case<RandomUniform>(std::vector<int64_t>{37, 1002}, 0.0f, 1.0f));
  cases.push_back(make_case<RandomUniform>(std::vector<int64_t>{3, 7, 1002}, 0.5f, 0.02f));
  cases.push_back(make_case<RandomUniform>(std::vector<int64_t>{733, 19}, -3.0f, 2.0f));
  return cases;
}

PHILORA_OP_CASES(Misc, misc_cases());

}  // namespace
}  // namespace philora::optest
