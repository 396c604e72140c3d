// The ops that take part of a module's LoRA along (backend.h, "LoRA folded into
// the ops next to a matmul"): rms_norm_lora adds the delta of one module (`add`:
// B, scale, the given xa) to its input and returns the shrink of its output by
// another module (`shrink`: A); silu_mul_lora returns the shrink of its output.
// Batches mix ranks and tokens without adapter (ops/lora_fixture.h).
//   rms_norm_lora: residual += delta; x = w · residual / rms(residual); xa = A x
//   silu_mul_lora: [g | u] = gate_up; h = silu(g) · u; xa = A h
// Decode-sized batches take CUDA's fused kernels; prefill-sized ones (kLoraLong)
// and rows whose width is not a multiple of 8 take the chained ops.
#include <fmt/format.h>

#include <cmath>

#include "ops/harness.h"
#include "ops/lora_fixture.h"

namespace philora::optest {
namespace {

enum class Parts { add, shrink, both };

const char* parts_str(Parts p) { return p == Parts::add ? "add" : p == Parts::shrink ? "shrink" : "add+shrink"; }

// Two modules over the same tokens: `add_` (out = the op's input width) and
// `shrink_` (in = the op's output width). Their A, B and scales differ.
class FoldCase : public OpCase {
 public:
  FoldCase(int64_t add_out, int64_t shrink_in, std::vector<LoraRun> runs, Parts parts)
      : add_(29, add_out, runs), shrink_(shrink_in, 29, runs), parts_(parts) {}

 protected:
  bool adds() const { return parts_ != Parts::shrink; }
  bool shrinks() const { return parts_ != Parts::add; }
  int64_t T() const { return add_.tokens(); }

  void draw(Rng& rng) {
    add_.draw(rng);
    shrink_.draw(rng);
    xa_in_ = add_.random_xa(rng);
  }

  struct Uploaded {
    DeviceLora add, shrink;
    LoraBatch batch;
    Tensor xa_in;
  };
  Uploaded upload_parts(Backend& b) const {
    Uploaded u{add_.upload_lora(b), shrink_.upload_lora(b), add_.upload_batch(b), Tensor()};
    u.xa_in = b.upload(host_tensor(xa_in_, {T(), add_.max_rank()}), DType::f32);
    return u;
  }
  LoraPart add_part(const Uploaded& u) const { return adds() ? LoraPart{&u.add.table, &u.batch} : LoraPart{}; }
  LoraPart shrink_part(const Uploaded& u) const {
    return shrinks() ? LoraPart{&u.shrink.table, &u.batch} : LoraPart{};
  }

  // delta[j] of token t (float64, 0 without adapter), j < add_out.
  double delta(int64_t t, int64_t j) const {
    const int64_t r = add_.rank_of(t);
    if (!adds() || r == 0) return 0.0;
    std::vector<double> xa;
    for (int64_t k = 0; k < r; ++k) xa.push_back(xa_in_[size_t(t * add_.max_rank() + k)]);
    return add_.expand_ref(add_.slot_of(t), xa, j);
  }
  // The Expect of xa: A_s v for the token's rank, unspecified past it.
  Expect xa_ref(const std::vector<double>& v, int64_t width) const {
    const int64_t R = shrink_.max_rank();
    Expect e{"xa", R, std::vector<double>(size_t(T() * R), 0.0), std::vector<Role>(size_t(T() * R), Role::free)};
    for (int64_t t = 0; t < T(); ++t) {
      std::vector<float> row(v.begin() + t * width, v.begin() + (t + 1) * width);
      for (int64_t k = 0; k < shrink_.rank_of(t); ++k) {
        e.want[size_t(t * R + k)] = shrink_.shrink_ref(shrink_.slot_of(t), row.data(), k);
        e.role[size_t(t * R + k)] = Role::value;
      }
    }
    return e;
  }
  LoraFixture add_, shrink_;
  Parts parts_;
  std::vector<float> xa_in_;  // (T, max_rank): add_'s shrink, NaN where it must not be read
};

class RmsNormLora : public FoldCase {
 public:
  RmsNormLora(int64_t n, std::vector<LoraRun> runs, Parts parts) : FoldCase(n, n, std::move(runs), parts), n_(n) {}
  std::string name() const override {
    return fmt::format("rms_norm_lora(n={} {} ranks={} runs={})", n_, parts_str(parts_), lora_ranks_str(),
                       lora_runs_str(add_.runs()));
  }
  void init(Rng& rng) override {
    draw(rng);
    residual_ = rng.bf16(T() * n_, -1, 1);
    w_ = rng.bf16(n_, 0.5, 1.5);
  }
  std::vector<Output> run(Backend& b) const override {
    const Uploaded u = upload_parts(b);
    Tensor residual = upload(b, residual_, {T(), n_});
    const Tensor w = upload(b, w_, {n_});
    auto [x, xa] = b.rms_norm_lora(residual, w, kEps, add_part(u), u.xa_in, shrink_part(u));
    std::vector<Output> out = {fetch(b, "x", x)};
    if (adds()) out.push_back(fetch(b, "residual", residual));  // else x shows it unchanged
    if (shrinks()) out.push_back(fetch(b, "xa", xa));
    return out;
  }
  std::vector<Expect> reference() const override {
    std::vector<double> r(residual_.begin(), residual_.end()), x(r.size());
    Expect res{"residual", n_, r, std::vector<Role>(r.size(), Role::keep), r};
    for (int64_t t = 0; t < T(); ++t) {
      double ss = 0;
      for (int64_t j = 0; j < n_; ++j) {
        double& v = r[size_t(t * n_ + j)];
        if (adds() && add_.rank_of(t) > 0) {
          v += delta(t, j);
          res.role[size_t(t * n_ + j)] = Role::value;
        }
        ss += v * v;
      }
      const double inv = 1.0 / std::sqrt(ss / double(n_) + double(kEps));
      for (int64_t j = 0; j < n_; ++j) x[size_t(t * n_ + j)] = double(w_[size_t(j)]) * r[size_t(t * n_ + j)] * inv;
    }
    res.want = r;
    std::vector<Expect> e = {{"x", n_, x}};
    if (adds()) e.push_back(res);
    if (shrinks()) e.push_back(xa_ref(x, n_));
    return e;
  }

 private:
  static constexpr float kEps = 1e-5f;
  int64_t n_;
  std::vector<float> residual_, w_;  // (T, n), (n)
};

class SiluMulLora : public FoldCase {
 public:
  SiluMulLora(int64_t n, std::vector<LoraRun> runs) : FoldCase(29, n, std::move(runs), Parts::shrink), n_(n) {}
  std::string name() const override {
    return fmt::format("silu_mul_lora(n={} ranks={} runs={})", n_, lora_ranks_str(), lora_runs_str(add_.runs()));
  }
  void init(Rng& rng) override {
    draw(rng);
    gate_up_ = rng.bf16(T() * 2 * n_, -3, 3);
  }
  std::vector<Output> run(Backend& b) const override {
    const Uploaded u = upload_parts(b);
    const Tensor gate_up = upload(b, gate_up_, {T(), 2 * n_});
    auto [h, xa] = b.silu_mul_lora(gate_up, shrink_part(u));
    return {fetch(b, "h", h), fetch(b, "xa", xa)};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> h(size_t(T() * n_));
    for (int64_t t = 0; t < T(); ++t)
      for (int64_t j = 0; j < n_; ++j) {
        const double g = gate_up_[size_t(t * 2 * n_ + j)], u = gate_up_[size_t(t * 2 * n_ + n_ + j)];
        h[size_t(t * n_ + j)] = g / (1.0 + std::exp(-g)) * u;
      }
    return {{"h", n_, h}, xa_ref(h, n_)};
  }

 private:
  int64_t n_;
  std::vector<float> gate_up_;  // (T, 2n)
};

const std::vector<LoraRun> kOne128 = {{4, 1}};  // T = 1, rank 128

std::vector<CaseFactory> fold_cases() {
  return {
      make_case<RmsNormLora>(3072, kLoraDecode, Parts::both),   // a post-attention norm of Phi-3-mini
      make_case<RmsNormLora>(3072, kLoraDecode, Parts::add),    // the final norm
      make_case<RmsNormLora>(5120, kOne128, Parts::shrink),     // layer 0's input norm, Phi-4 width
      make_case<RmsNormLora>(1000, kLoraDecode, Parts::both),   // the last block of a row part-full
      make_case<RmsNormLora>(1002, kLoraDecode, Parts::both),   // not 8-wide: the chained ops
      make_case<RmsNormLora>(1000, kLoraLong, Parts::both),     // prefill-sized: the chained ops
      make_case<SiluMulLora>(8192, kLoraDecode),   // Phi-3-mini's down_proj input
      make_case<SiluMulLora>(1000, kLoraDecode),
      make_case<SiluMulLora>(17920, kOne128),      // Phi-4's
      make_case<SiluMulLora>(1002, kLoraDecode),   // not 8-wide: the chained ops
      make_case<SiluMulLora>(1000, kLoraLong),     // prefill-sized: the chained ops
  };
}

PHILORA_OP_CASES(LoraFold, fold_cases());

}  // namespace
}  // namespace philora::optest
