// The row ops that also compute the LoRA shrink of their output (backend.h,
// "row ops with the next module's LoRA shrink"), for batches of mixed ranks and
// tokens without adapter (ops/lora_fixture.h):
//   rms_norm_shrink: y = w · x / rms(x);        xa = A_s y
//   silu_mul_shrink: h = silu(gate) · up;        xa = A_s h
// Decode-sized batches take CUDA's fused kernels; prefill-sized ones (kLoraLong)
// and rows whose width is not a multiple of 8 take the chained ops.
#include <fmt/format.h>

#include <cmath>

#include "ops/harness.h"
#include "ops/lora_fixture.h"

namespace philora::optest {
namespace {

// A row op over T rows of width n whose output feeds a module (in = n) with LoRA.
class ShrinkCase : public OpCase {
 public:
  ShrinkCase(int64_t n, std::vector<LoraRun> runs) : n_(n), lora_(n, 29, std::move(runs)) {}

 protected:
  int64_t T() const { return lora_.tokens(); }

  // The outputs: the op's own, then xa (when some token's adapter has a rank here).
  std::vector<Output> fetch_both(Backend& b, const std::pair<Tensor, Tensor>& out, const char* name) const {
    if (lora_.max_rank() == 0) return {fetch(b, name, out.first)};
    return {fetch(b, name, out.first), fetch(b, "xa", out.second)};
  }
  std::vector<Expect> expect_both(Expect own, const std::vector<double>& v) const {
    if (lora_.max_rank() == 0) return {std::move(own)};
    return {std::move(own), xa_ref(v)};
  }
  // xa = A_s v for the token's rank, unspecified past it and without adapter.
  Expect xa_ref(const std::vector<double>& v) const {
    const int64_t R = lora_.max_rank();
    Expect e{"xa", R, std::vector<double>(size_t(T() * R), 0.0), std::vector<Role>(size_t(T() * R), Role::free)};
    for (int64_t t = 0; t < T(); ++t) {
      const std::vector<float> row(v.begin() + t * n_, v.begin() + (t + 1) * n_);
      for (int64_t k = 0; k < lora_.rank_of(t); ++k) {
        e.want[size_t(t * R + k)] = lora_.shrink_ref(lora_.slot_of(t), row.data(), k);
        e.role[size_t(t * R + k)] = Role::value;
      }
    }
    return e;
  }

  int64_t n_;
  LoraFixture lora_;
};

class RmsNormShrink : public ShrinkCase {
 public:
  using ShrinkCase::ShrinkCase;
  std::string name() const override {
    return fmt::format("rms_norm_shrink(n={} ranks={} runs={})", n_, lora_ranks_str(), lora_runs_str(lora_.runs()));
  }
  void init(Rng& rng) override {
    lora_.draw(rng);
    for (int64_t t = 0; t < T(); ++t) {  // rows of different scales, so the norm matters
      const double scale = std::exp2(rng.uniform(-3, 3));
      for (int64_t j = 0; j < n_; ++j) x_.push_back(round_bf16(scale * rng.uniform(-1, 1)));
    }
    w_ = rng.bf16(n_, 0.5, 1.5);
  }
  std::vector<Output> run(Backend& b) const override {
    const DeviceLora adapters = lora_.upload_lora(b);
    const LoraBatch batch = lora_.upload_batch(b);
    const Tensor x = upload(b, x_, {T(), n_}), w = upload(b, w_, {n_});
    return fetch_both(b, b.rms_norm_shrink(x, w, kEps, LoraPart{&adapters.table, &batch}), "y");
  }
  std::vector<Expect> reference() const override {
    std::vector<double> y(x_.size());
    for (int64_t t = 0; t < T(); ++t) {
      double ss = 0;
      for (int64_t j = 0; j < n_; ++j) ss += double(x_[size_t(t * n_ + j)]) * x_[size_t(t * n_ + j)];
      const double inv = 1.0 / std::sqrt(ss / double(n_) + double(kEps));
      for (int64_t j = 0; j < n_; ++j) y[size_t(t * n_ + j)] = double(w_[size_t(j)]) * x_[size_t(t * n_ + j)] * inv;
    }
    return expect_both({"y", n_, y}, y);
  }

 private:
  static constexpr float kEps = 1e-5f;
  std::vector<float> x_, w_;  // (T, n), (n)
};

class SiluMulShrink : public ShrinkCase {
 public:
  using ShrinkCase::ShrinkCase;
  std::string name() const override {
    return fmt::format("silu_mul_shrink(n={} ranks={} runs={})", n_, lora_ranks_str(), lora_runs_str(lora_.runs()));
  }
  void init(Rng& rng) override {
    lora_.draw(rng);
    gate_up_ = rng.bf16(T() * 2 * n_, -3, 3);
  }
  std::vector<Output> run(Backend& b) const override {
    const DeviceLora adapters = lora_.upload_lora(b);
    const LoraBatch batch = lora_.upload_batch(b);
    const Tensor gate_up = upload(b, gate_up_, {T(), 2 * n_});
    return fetch_both(b, b.silu_mul_shrink(gate_up, LoraPart{&adapters.table, &batch}), "h");
  }
  std::vector<Expect> reference() const override {
    std::vector<double> h(size_t(T() * n_));
    for (int64_t t = 0; t < T(); ++t)
      for (int64_t j = 0; j < n_; ++j) {
        const double g = gate_up_[size_t(t * 2 * n_ + j)], u = gate_up_[size_t(t * 2 * n_ + n_ + j)];
        h[size_t(t * n_ + j)] = g / (1.0 + std::exp(-g)) * u;
      }
    return expect_both({"h", n_, h}, h);
  }

 private:
  std::vector<float> gate_up_;  // (T, 2n)
};

const std::vector<LoraRun> kOne128 = {{4, 1}};             // T = 1, rank 128
const std::vector<LoraRun> kNone = {{-1, 3}, {5, 2}};      // no token touches the module

std::vector<CaseFactory> shrink_cases() {
  return {
      make_case<RmsNormShrink>(3072, kLoraDecode),   // Phi-3-mini's norms before qkv and gate_up
      make_case<RmsNormShrink>(5120, kOne128),       // Phi-4's width
      make_case<RmsNormShrink>(1000, kLoraDecode),   // a chunk of the row part-full
      make_case<RmsNormShrink>(3072, kNone),         // the norm alone
      make_case<RmsNormShrink>(1002, kLoraDecode),   // not 8-wide: the chained ops
      make_case<RmsNormShrink>(1000, kLoraLong),     // prefill-sized: the chained ops
      make_case<SiluMulShrink>(8192, kLoraDecode),   // Phi-3-mini's down_proj input
      make_case<SiluMulShrink>(17920, kOne128),      // Phi-4's
      make_case<SiluMulShrink>(1000, kLoraDecode),
      make_case<SiluMulShrink>(1000, kNone),
      make_case<SiluMulShrink>(1002, kLoraDecode),   // not 8-wide: the chained ops
      make_case<SiluMulShrink>(1000, kLoraLong),     // prefill-sized: the chained ops
  };
}

PHILORA_OP_CASES(LoraShrinkFused, shrink_cases());

}  // namespace
}  // namespace philora::optest
