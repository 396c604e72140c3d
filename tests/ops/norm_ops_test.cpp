// rms_norm and add_rms_norm (with and without a residual).
//   rms_norm(x)[t, i] = w[i] * x[t, i] / sqrt(mean_i(x[t, :]²) + eps)
//   add_rms_norm(h, r) = (rms_norm(h + r), h + r);  an empty r means h.
#include <fmt/format.h>

#include <cmath>

#include "ops/harness.h"

namespace philora::optest {
namespace {

// Rows of very different scales (2^-3 .. 2^3), so the norm matters.
std::vector<float> scaled_rows(Rng& rng, int64_t rows, int64_t cols) {
  std::vector<float> x(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const double scale = std::exp2(rng.uniform(-3, 3));
    for (int64_t c = 0; c < cols; ++c)
      x[size_t(r * cols + c)] = round_bf16(scale * rng.uniform(-1, 1));
  }
  return x;
}

// The oracle: rms_norm of every row of x (rows, cols), in float64.
std::vector<double> rms_norm_ref(const std::vector<double>& x, const std::vector<float>& w,
                                 int64_t cols, float eps) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / size_t(cols); ++r) {
    double sum_sq = 0;
    for (int64_t i = 0; i < cols; ++i)
      sum_sq += x[r * size_t(cols) + size_t(i)] * x[r * size_t(cols) + size_t(i)];
    const double inv_rms = 1.0 / std::sqrt(sum_sq / double(cols) + double(eps));
    for (int64_t i = 0; i < cols; ++i)
      y[r * size_t(cols) + size_t(i)] =
          double(w[size_t(i)]) * x[r * size_t(cols) + size_t(i)] * inv_rms;
  }
  return y;
}

class RmsNorm : public OpCase {
 public:
  RmsNorm(int64_t tokens, int64_t hidden, float eps) : T_(tokens), n_(hidden), eps_(eps) {}
  std::string name() const override {
    return fmt::format("rms_norm(T={} n={} eps={:g})", T_, n_, eps_);
  }
  void init(Rng& rng) override {
    x_ = scaled_rows(rng, T_, n_);
    w_ = rng.bf16(n_, 0.5, 1.5);
  }
  std::vector<Output> run(Backend& b) const override {
    const Tensor x = upload(b, x_, {T_, n_}), w = upload(b, w_, {n_});
    return {fetch(b, "y", b.rms_norm(x, w, eps_))};
  }
  std::vector<Expect> reference() const override {
    return {{"y", n_, rms_norm_ref(std::vector<double>(x_.begin(), x_.end()), w_, n_, eps_)}};
  }

 private:
  int64_t T_, n_;
  float eps_;
  std::vector<float> x_, w_;  // (T, n), (n)
};

class AddRmsNorm : public OpCase {
 public:
  AddRmsNorm(int64_t tokens, int64_t hidden, float eps, bool residual)
      : T_(tokens), n_(hidden), eps_(eps), residual_(residual) {}
  std::string name() const override {
    return fmt::format("add_rms_norm(T={} n={} eps={:g} residual={})", T_, n_, eps_,
                       residual_ ? "yes" : "empty");
  }
  void init(Rng& rng) override {
    h_ = scaled_rows(rng, T_, n_);
    if (residual_) r_ = scaled_rows(rng, T_, n_);
    w_ = rng.bf16(n_, 0.5, 1.5);
  }
  std::vector<Output> run(Backend& b) const override {
    const Tensor h = upload(b, h_, {T_, n_}), w = upload(b, w_, {n_});
    const Tensor r = residual_ ? upload(b, r_, {T_, n_}) : Tensor();
    auto [y, sum] = b.add_rms_norm(h, r, w, eps_);
    return {fetch(b, "normed", y), fetch(b, "sum", sum)};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> sum(h_.size());
    for (size_t i = 0; i < h_.size(); ++i)
      sum[i] = double(h_[i]) + (residual_ ? double(r_[i]) : 0.0);
    return {{"normed", n_, rms_norm_ref(sum, w_, n_, eps_)}, {"sum", n_, sum}};
  }

 private:
  int64_t T_, n_;
  float eps_;
  bool residual_;
  std::vector<float> h_, r_, w_;  // (T, n), (T, n) or empty, (n)
};

std::vector<CaseFactory> norm_cases() {
  std::vector<CaseFactory> cases;
  for (int64_t t : {1, 3, 7, 19, 733})
    for (int64_t n : {37, 1002}) cases.push_back(make_case<RmsNorm>(t, n, 1e-5f));
  cases.push_back(make_case<RmsNorm>(7, 3072, 1e-6f));  // Phi-3-mini hidden
  for (int64_t t : {1, 7, 733})
    for (int64_t n : {37, 1002}) cases.push_back(make_case<AddRmsNorm>(t, n, 1e-5f, true));
  for (int64_t t : {3, 19}) cases.push_back(make_case<AddRmsNorm>(t, 1002, 1e-6f, false));
  return cases;
}

PHILORA_OP_CASES(Norm, norm_cases());

}  // namespace
}  // namespace philora::optest
