// matmul: y = x · wᵀ ;  x (T, in), w (out, in)  ->  y (T, out).
// matmul_add: y += x · wᵀ in place.
#include <fmt/format.h>

#include <cmath>

#include "ops/harness.h"

#if PHILORA_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_context.h"
#endif

namespace philora::optest {
namespace {

// x · wᵀ in float64; x (T, in), w (out, in).
std::vector<double> matmul_ref(const std::vector<float>& x, const std::vector<float>& w, int64_t T, int64_t in,
                               int64_t out) {
  std::vector<double> y(size_t(T * out));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t i = 0; i < in; ++i) acc += double(x[size_t(t * in + i)]) * double(w[size_t(o * in + i)]);
      y[size_t(t * out + o)] = acc;
    }
  return y;
}

class Matmul : public OpCase {
 public:
  Matmul(int64_t tokens, int64_t in, int64_t out) : T_(tokens), in_(in), out_(out) {}
  std::string name() const override {
    return fmt::format("matmul(T={} in={} out={})", T_, in_, out_);
  }
  void init(Rng& rng) override {
    x_ = rng.bf16(T_ * in_, -1, 1);
    const double w_range = 2.0 / std::sqrt(double(in_));  // keeps y of order 1
    w_ = rng.bf16(out_ * in_, -w_range, w_range);
  }
  std::vector<Output> run(Backend& b) const override {
    const Tensor x = upload(b, x_, {T_, in_}), w = upload(b, w_, {out_, in_});
    return {fetch(b, "y", b.matmul(x, w))};
  }
  std::vector<Expect> reference() const override { return {{"y", out_, matmul_ref(x_, w_, T_, in_, out_)}}; }

 protected:
  int64_t T_, in_, out_;
  std::vector<float> x_, w_;  // (T, in), (out, in)
};

// The same x and w, added into a random y.
class MatmulAdd : public Matmul {
 public:
  using Matmul::Matmul;
  std::string name() const override {
    return fmt::format("matmul_add(T={} in={} out={})", T_, in_, out_);
  }
  void init(Rng& rng) override {
    Matmul::init(rng);
    y0_ = rng.bf16(T_ * out_, -1, 1);
  }
  std::vector<Output> run(Backend& b) const override {
    const Tensor x = upload(b, x_, {T_, in_}), w = upload(b, w_, {out_, in_});
    Tensor y = upload(b, y0_, {T_, out_});
    b.matmul_add(x, w, y);
    return {fetch(b, "y", y)};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> y = matmul_ref(x_, w_, T_, in_, out_);
    for (size_t i = 0; i < y.size(); ++i) y[i] += y0_[i];
    return {{"y", out_, y}};
  }

 private:
  std::vector<float> y0_;  // (T, out)
};

// A weight with LoRA columns: w (out, in + extra) whose last `extra` columns
// (random here) the product must leave out; y = x · w[:, :in]ᵀ, or added to y0.
class MatmulWide : public OpCase {
 public:
  MatmulWide(int64_t tokens, int64_t in, int64_t extra, int64_t out, bool add)
      : T_(tokens), in_(in), extra_(extra), out_(out), add_(add) {}
  std::string name() const override {
    return fmt::format("{}(T={} in={} w cols={} out={})", add_ ? "matmul_add" : "matmul", T_, in_, in_ + extra_,
                       out_);
  }
  void init(Rng& rng) override {
    x_ = rng.bf16(T_ * in_, -1, 1);
    const double w_range = 2.0 / std::sqrt(double(in_));
    w_ = rng.bf16(out_ * (in_ + extra_), -w_range, w_range);
    y0_ = rng.bf16(T_ * out_, -1, 1);
  }
  std::vector<Output> run(Backend& b) const override {
    const Tensor x = upload(b, x_, {T_, in_}), w = upload(b, w_, {out_, in_ + extra_});
    if (!add_) return {fetch(b, "y", b.matmul(x, w))};
    Tensor y = upload(b, y0_, {T_, out_});
    b.matmul_add(x, w, y);
    return {fetch(b, "y", y)};
  }
  std::vector<Expect> reference() const override {
    std::vector<float> lead(size_t(out_ * in_));
    for (int64_t o = 0; o < out_; ++o)
      for (int64_t i = 0; i < in_; ++i) lead[size_t(o * in_ + i)] = w_[size_t(o * (in_ + extra_) + i)];
    std::vector<double> y = matmul_ref(x_, lead, T_, in_, out_);
    if (add_)
      for (size_t i = 0; i < y.size(); ++i) y[i] += y0_[i];
    return {{"y", out_, y}};
  }

 private:
  int64_t T_, in_, extra_, out_;
  bool add_;
  std::vector<float> x_, w_, y0_;
};

// Pins the CUDA backend's skinny kernels (whatever its first-use timing would
// choose) for a scope; Skinny::timed, the default, after. Other backends: nothing.
class PinSkinny {
 public:
  explicit PinSkinny(Backend& b) {
#if PHILORA_HAVE_CUDA
    cuda_ = dynamic_cast<CudaBackend*>(&b);
    if (cuda_) cuda_->context().matmul->set_skinny(cuda::LtMatmul::Skinny::always);
#else
    (void)b;
#endif
  }
  ~PinSkinny() {
#if PHILORA_HAVE_CUDA
    if (cuda_) cuda_->context().matmul->set_skinny(cuda::LtMatmul::Skinny::timed);
#endif
  }
  PinSkinny(const PinSkinny&) = delete;
  PinSkinny& operator=(const PinSkinny&) = delete;

 private:
#if PHILORA_HAVE_CUDA
  CudaBackend* cuda_ = nullptr;
#endif
};

// The decode-sized form on the CUDA backend's own skinny kernel (pinned, so the
// kernel runs whatever the timing would choose; its default split-K): y = x ·
// w[:, :in]ᵀ or y += …, w (out, ldw ≥ in) — a weight with LoRA columns when
// ldw > in. Other backends run the plain op.

class SkinnyMatmul : public OpCase {
 public:
  SkinnyMatmul(int64_t tokens, int64_t in, int64_t ldw, int64_t out, bool add)
      : T_(tokens), in_(in), ldw_(ldw), out_(out), add_(add) {}
  std::string name() const override {
    return fmt::format("skinny_{}(T={} in={} ldw={} out={})", add_ ? "matmul_add" : "matmul", T_, in_, ldw_, out_);
  }
  void init(Rng& rng) override {
    x_ = rng.bf16(T_ * in_, -1, 1);
    const double w_range = 2.0 / std::sqrt(double(in_));
    w_ = rng.bf16(out_ * ldw_, -w_range, w_range);
    y0_ = rng.bf16(T_ * out_, -1, 1);
  }
  std::vector<Output> run(Backend& b) const override {
    const Tensor x = upload(b, x_, {T_, in_}), w = upload(b, w_, {out_, ldw_});
    Tensor y = upload(b, y0_, {T_, out_});
    const PinSkinny pin(b);
    if (add_)
      b.matmul_add(x, w, y);
    else
      y = b.matmul(x, w);
    return {fetch(b, "y", y)};
  }
  std::vector<Expect> reference() const override {
    std::vector<float> lead(size_t(out_ * in_));
    for (int64_t o = 0; o < out_; ++o)
      for (int64_t i = 0; i < in_; ++i) lead[size_t(o * in_ + i)] = w_[size_t(o * ldw_ + i)];
    std::vector<double> y = matmul_ref(x_, lead, T_, in_, out_);
    if (add_)
      for (size_t i = 0; i < y.size(); ++i) y[i] += y0_[i];
    return {{"y", out_, y}};
  }

 private:
  int64_t T_, in_, ldw_, out_;
  bool add_;
  std::vector<float> x_, w_, y0_;  // (T, in), (out, ldw), (T, out)
};

// x made by an elementwise prologue inside the matmul (Backend::fused_matmul
// and fused_matmul_add): x = rms_norm(src, g, eps) with src (T, in), or
// x = silu(gate) · up with src = [gate | up] (T, 2 in); then y = x · w[:, :in]ᵀ
// (+ y0). On CUDA the GEMV fuses it at T ≤ 4 (pinned here, as SkinnyMatmul
// pins it); larger T and other backends run the two ops.
enum class Pro { rms_norm, silu_mul };

class PrologueMatmul : public OpCase {
 public:
  PrologueMatmul(int64_t tokens, int64_t in, int64_t ldw, int64_t out, Pro pro, bool add)
      : T_(tokens), in_(in), ldw_(ldw), out_(out), pro_(pro), add_(add) {}
  std::string name() const override {
    return fmt::format("{}_{}(T={} in={} ldw={} out={})", pro_ == Pro::rms_norm ? "rms_norm" : "silu_mul",
                       add_ ? "matmul_add" : "matmul", T_, in_, ldw_, out_);
  }
  void init(Rng& rng) override {
    const int64_t src_cols = pro_ == Pro::silu_mul ? 2 * in_ : in_;
    src_.resize(size_t(T_ * src_cols));
    for (int64_t t = 0; t < T_; ++t) {  // rows of different scales, so the norm matters
      const double scale = pro_ == Pro::rms_norm ? std::exp2(rng.uniform(-3, 3)) : 2.0;
      for (int64_t c = 0; c < src_cols; ++c) src_[size_t(t * src_cols + c)] = round_bf16(scale * rng.uniform(-1, 1));
    }
    g_ = rng.bf16(in_, 0.5, 1.5);
    const double w_range = 2.0 / std::sqrt(double(in_));
    w_ = rng.bf16(out_ * ldw_, -w_range, w_range);
    y0_ = rng.bf16(T_ * out_, -1, 1);
  }
  std::vector<Output> run(Backend& b) const override {
    const int64_t src_cols = pro_ == Pro::silu_mul ? 2 * in_ : in_;
    const Tensor src = upload(b, src_, {T_, src_cols}), w = upload(b, w_, {out_, ldw_});
    const Prologue p = pro_ == Pro::rms_norm ? Prologue::rms_norm(upload(b, g_, {in_}), kEps) : Prologue::silu_mul();
    Tensor y = upload(b, y0_, {T_, out_});
    const PinSkinny pin(b);
    if (add_)
      b.fused_matmul_add(src, p, w, y);
    else
      y = b.fused_matmul(src, p, w);
    return {fetch(b, "y", y)};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> x(size_t(T_ * in_));
    for (int64_t t = 0; t < T_; ++t) {
      if (pro_ == Pro::rms_norm) {
        double ss = 0;
        for (int64_t i = 0; i < in_; ++i) ss += double(src_[size_t(t * in_ + i)]) * src_[size_t(t * in_ + i)];
        const double inv = 1.0 / std::sqrt(ss / double(in_) + double(kEps));
        for (int64_t i = 0; i < in_; ++i) x[size_t(t * in_ + i)] = double(g_[size_t(i)]) * src_[size_t(t * in_ + i)] * inv;
      } else {
        for (int64_t i = 0; i < in_; ++i) {
          const double g = src_[size_t(t * 2 * in_ + i)], u = src_[size_t(t * 2 * in_ + in_ + i)];
          x[size_t(t * in_ + i)] = g / (1.0 + std::exp(-g)) * u;
        }
      }
    }
    std::vector<double> y(size_t(T_ * out_));
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t o = 0; o < out_; ++o) {
        double acc = add_ ? double(y0_[size_t(t * out_ + o)]) : 0.0;
        for (int64_t i = 0; i < in_; ++i) acc += x[size_t(t * in_ + i)] * double(w_[size_t(o * ldw_ + i)]);
        y[size_t(t * out_ + o)] = acc;
      }
    return {{"y", out_, y}};
  }

 private:
  static constexpr float kEps = 1e-5f;
  int64_t T_, in_, ldw_, out_;
  Pro pro_;
  bool add_;
  std::vector<float> src_, g_, w_, y0_;  // (T, in or 2 in), [in], (out, ldw), (T, out)
};

std::vector<CaseFactory> matmul_cases() {
  std::vector<CaseFactory> cases;
  for (int64_t t : {1, 3, 7, 19})
    for (int64_t in : {37, 1002})
      for (int64_t out : {37, 1002}) cases.push_back(make_case<Matmul>(t, in, out));
  cases.push_back(make_case<Matmul>(733, 37, 1002));
  cases.push_back(make_case<Matmul>(733, 1002, 37));
  cases.push_back(make_case<Matmul>(733, 1002, 96));
  cases.push_back(make_case<Matmul>(1, 3072, 3072));  // a Phi-3-mini o_proj at decode
  for (int64_t t : {1, 7, 733}) cases.push_back(make_case<MatmulAdd>(t, 1002, 96));
  cases.push_back(make_case<MatmulAdd>(64, 3072, 1000));
  for (int64_t t : {1, 7, 64}) {
    cases.push_back(make_case<MatmulWide>(t, 96, 32, 200, false));
    cases.push_back(make_case<MatmulWide>(t, 96, 32, 200, true));
  }
  cases.push_back(make_case<MatmulWide>(3, 1002, 22, 37, false));
  cases.push_back(make_case<MatmulWide>(300, 256, 64, 96, true));
  // Skinny kernel: m across its row tiles (1, 3, 8 | 17 | 33, 64), n and k off
  // its 32-row and 256-k tiles, ldw > k, LoRA-column widths (in + 16 of a
  // weight with 64 columns), split-K (few rows, long k), k of one piece.
  for (int64_t t : {1, 3, 8, 17, 33, 64}) {
    cases.push_back(make_case<SkinnyMatmul>(t, 776, 800, 1000, false));
    cases.push_back(make_case<SkinnyMatmul>(t, 3072 + 16, 3072 + 64, 200, t % 2 == 1));
  }
  for (int64_t t : {1, 8, 33}) cases.push_back(make_case<SkinnyMatmul>(t, 4096, 4096, 200, t == 8));
  cases.push_back(make_case<SkinnyMatmul>(5, 8, 8, 37, false));
  cases.push_back(make_case<SkinnyMatmul>(2, 3072, 3072, 3072, true));
  cases.push_back(make_case<SkinnyMatmul>(64, 8192, 8192, 96, true));
  // Prologues: the GEMV's m (1, 2, 4) and a T it leaves to the two ops (7);
  // Phi-3-mini's qkv (norm, in 3072) and down (silu, in 8192) widths, a weight
  // with LoRA columns (ldw > in), k off the 256-piece chunks, a row longer
  // than rms_norm's 128-thread block holds (in 5120: 256 threads).
  for (int64_t t : {1, 2, 4, 7}) {
    cases.push_back(make_case<PrologueMatmul>(t, 3072, 3072, 300, Pro::rms_norm, false));
    cases.push_back(make_case<PrologueMatmul>(t, 776, 800, 1000, Pro::silu_mul, t % 2 == 1));
  }
  cases.push_back(make_case<PrologueMatmul>(1, 5120, 5120 + 64, 96, Pro::rms_norm, true));
  cases.push_back(make_case<PrologueMatmul>(3, 8192, 8192, 96, Pro::silu_mul, true));
  cases.push_back(make_case<PrologueMatmul>(2, 8, 8, 37, Pro::rms_norm, false));
  return cases;
}

PHILORA_OP_CASES(Matmul, matmul_cases());

#if PHILORA_HAVE_CUDA
// The GEMV's prologue makes x with rms_norm's and silu_mul's own arithmetic
// (the same summation order for the norm): the fused product equals the op
// followed by the same GEMV, bit for bit.
TEST(PrologueMatmulBits, FusedEqualsTheOpThenTheGemv) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  auto made = make_backend("cuda");
  ASSERT_TRUE(made) << made.status().message();
  Backend& b = **made;
  const PinSkinny pin(b);
  Rng rng(7);
  for (int64_t in : {3072, 5120, 8192})
    for (int64_t t : {1, 3})
      for (bool silu : {false, true}) {
        const int64_t cols = silu ? 2 * in : in, out = 200;
        const Tensor src = upload(b, rng.bf16(t * cols, -4, 4), {t, cols});
        const Tensor w = upload(b, rng.bf16(out * in, -0.05, 0.05), {out, in});
        const Prologue p = silu ? Prologue::silu_mul() : Prologue::rms_norm(upload(b, rng.bf16(in, 0.5, 1.5), {in}), 1e-5f);
        const std::vector<float> fused = fetch(b, "y", b.fused_matmul(src, p, w)).got;
        const std::vector<float> plain = fetch(b, "y", b.matmul(b.apply_prologue(src, p), w)).got;
        EXPECT_EQ(fused, plain) << (silu ? "silu_mul" : "rms_norm") << " in=" << in << " T=" << t;
      }
}
#endif

}  // namespace
}  // namespace philora::optest
