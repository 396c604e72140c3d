// lora_shrink, lora_expand and lora_delta, alone and chained as `linear` chains
// them (semantics and adapters: ops/lora_fixture.h). Every batch mixes ranks and
// tokens without adapter.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "ops/harness.h"
#include "ops/lora_fixture.h"

namespace philora::optest {
namespace {

using Run = LoraRun;
std::string ranks_str() { return lora_ranks_str(); }
std::string runs_str(const std::vector<Run>& runs) { return lora_runs_str(runs); }

class LoraCase : public OpCase, public LoraFixture {
 public:
  LoraCase(int64_t in, int64_t out, std::vector<Run> runs) : LoraFixture(in, out, std::move(runs)) {}
  void init(Rng& rng) override { draw(rng); }
};

class LoraShrink : public LoraCase {
 public:
  LoraShrink(int64_t in, std::vector<Run> runs) : LoraCase(in, 37, std::move(runs)) {}
  std::string name() const override {
    return fmt::format("lora_shrink(in={} ranks={} runs={})", in_, ranks_str(), runs_str(runs_));
  }
  void init(Rng& rng) override {
    draw(rng);
    x_ = rng.bf16(tokens() * in_, -1, 1);
  }
  std::vector<Output> run(Backend& b) const override {
    const DeviceLora lora = upload_lora(b);
    const Tensor x = upload(b, x_, {tokens(), in_});
    return {fetch(b, "xa", b.lora_shrink(x, lora.table, upload_batch(b)))};
  }
  std::vector<Expect> reference() const override {
    // Rows of tokens without adapter, and columns past the token's rank, are unspecified.
    Expect e{"xa", max_rank_, std::vector<double>(size_t(tokens() * max_rank_), 0.0),
             std::vector<Role>(size_t(tokens() * max_rank_), Role::free)};
    for (int64_t t = 0; t < tokens(); ++t)
      for (int64_t k = 0; k < rank_of(t); ++k) {
        e.want[size_t(t * max_rank_ + k)] =
            shrink_ref(token_slot_[size_t(t)], &x_[size_t(t * in_)], k);
        e.role[size_t(t * max_rank_ + k)] = Role::value;
      }
    return {e};
  }

 private:
  std::vector<float> x_;  // (T, in)
};

class LoraExpand : public LoraCase {
 public:
  LoraExpand(int64_t out, int64_t width, int64_t offset, std::vector<Run> runs)
      : LoraCase(37, out, std::move(runs)), width_(width), offset_(offset) {}
  std::string name() const override {
    return fmt::format("lora_expand(out={} y_width={} col_offset={} ranks={} runs={})", out_,
                       width_, offset_, ranks_str(), runs_str(runs_));
  }
  void init(Rng& rng) override {
    draw(rng);
    xa_ = random_xa(rng);
    y0_ = initial_y(rng, width_, offset_);
  }
  std::vector<Output> run(Backend& b) const override {
    const DeviceLora lora = upload_lora(b);
    const Tensor xa = b.upload(host_tensor(xa_, {tokens(), max_rank_}), DType::f32);
    Tensor y = upload(b, y0_, {tokens(), width_});
    b.lora_expand(xa, lora.table, upload_batch(b), y, offset_);
    return {fetch(b, "y", y)};
  }
  std::vector<Expect> reference() const override {
    std::vector<std::vector<double>> xa(static_cast<size_t>(tokens()));
    for (int64_t t = 0; t < tokens(); ++t)
      for (int64_t k = 0; k < rank_of(t); ++k)
        xa[size_t(t)].push_back(xa_[size_t(t * max_rank_ + k)]);
    return {y_ref(y0_, width_, offset_, xa)};
  }

 private:
  int64_t width_, offset_;
  std::vector<float> xa_;  // (T, max_rank)
  std::vector<float> y0_;  // (T, width)
};

// shrink then expand into a slice of y, as `linear` does for a fused module.
class LoraShrinkExpand : public LoraCase {
 public:
  LoraShrinkExpand(int64_t in, int64_t out, int64_t width, int64_t offset, std::vector<Run> runs)
      : LoraCase(in, out, std::move(runs)), width_(width), offset_(offset) {}
  std::string name() const override {
    return fmt::format("lora_shrink_expand(in={} out={} y_width={} col_offset={} ranks={} runs={})",
                       in_, out_, width_, offset_, ranks_str(), runs_str(runs_));
  }
  void init(Rng& rng) override {
    draw(rng);
    x_ = rng.bf16(tokens() * in_, -1, 1);
    y0_ = initial_y(rng, width_, offset_);
  }
  std::vector<Output> run(Backend& b) const override {
    const DeviceLora lora = upload_lora(b);
    const LoraBatch batch = upload_batch(b);
    const Tensor x = upload(b, x_, {tokens(), in_});
    Tensor y = upload(b, y0_, {tokens(), width_});
    const Tensor xa = b.lora_shrink(x, lora.table, batch);
    b.lora_expand(xa, lora.table, batch, y, offset_);
    return {fetch(b, "y", y)};
  }
  std::vector<Expect> reference() const override {
    std::vector<std::vector<double>> xa(static_cast<size_t>(tokens()));
    for (int64_t t = 0; t < tokens(); ++t)
      for (int64_t k = 0; k < rank_of(t); ++k)
        xa[size_t(t)].push_back(shrink_ref(token_slot_[size_t(t)], &x_[size_t(t * in_)], k));
    return {y_ref(y0_, width_, offset_, xa)};
  }

 private:
  int64_t width_, offset_;
  std::vector<float> x_;   // (T, in)
  std::vector<float> y0_;  // (T, width)
};

// lora_delta: y (T, out) = scale_s · B_s xa[t] for tokens with an adapter, 0 for the others.
class LoraDelta : public LoraCase {
 public:
  LoraDelta(int64_t out, std::vector<Run> runs) : LoraCase(37, out, std::move(runs)) {}
  std::string name() const override {
    return fmt::format("lora_delta(out={} ranks={} runs={})", out_, ranks_str(), runs_str(runs_));
  }
  void init(Rng& rng) override {
    draw(rng);
    xa_ = random_xa(rng);
  }
  std::vector<Output> run(Backend& b) const override {
    const DeviceLora lora = upload_lora(b);
    const Tensor xa = b.upload(host_tensor(xa_, {tokens(), max_rank_}), DType::f32);
    return {fetch(b, "y", b.lora_delta(xa, lora.table, upload_batch(b)))};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> y(size_t(tokens() * out_), 0.0);
    for (int64_t t = 0; t < tokens(); ++t) {
      std::vector<double> xa;
      for (int64_t k = 0; k < rank_of(t); ++k) xa.push_back(xa_[size_t(t * max_rank_ + k)]);
      if (xa.empty()) continue;
      for (int64_t j = 0; j < out_; ++j) y[size_t(t * out_ + j)] = expand_ref(token_slot_[size_t(t)], xa, j);
    }
    return {{"y", out_, y}};
  }

 private:
  std::vector<float> xa_;  // (T, max_rank)
};

// What `linear` does with LoRA: shrink, delta, then the matmul adds W x.
class LoraLinear : public LoraCase {
 public:
  LoraLinear(int64_t in, int64_t out, std::vector<Run> runs) : LoraCase(in, out, std::move(runs)) {}
  std::string name() const override {
    return fmt::format("lora_linear(in={} out={} ranks={} runs={})", in_, out_, ranks_str(), runs_str(runs_));
  }
  void init(Rng& rng) override {
    draw(rng);
    x_ = rng.bf16(tokens() * in_, -1, 1);
    const double w_range = 2.0 / std::sqrt(double(in_));
    w_ = rng.bf16(out_ * in_, -w_range, w_range);
  }
  std::vector<Output> run(Backend& b) const override {
    const DeviceLora lora = upload_lora(b);
    const LoraBatch batch = upload_batch(b);
    const Tensor x = upload(b, x_, {tokens(), in_}), w = upload(b, w_, {out_, in_});
    const Tensor xa = b.lora_shrink(x, lora.table, batch);
    Tensor y = b.lora_delta(xa, lora.table, batch);
    b.matmul_add(x, w, y);
    return {fetch(b, "y", y)};
  }
  std::vector<Expect> reference() const override {
    std::vector<double> y(size_t(tokens() * out_), 0.0);
    for (int64_t t = 0; t < tokens(); ++t) {
      std::vector<double> xa;
      for (int64_t k = 0; k < rank_of(t); ++k)
        xa.push_back(shrink_ref(token_slot_[size_t(t)], &x_[size_t(t * in_)], k));
      for (int64_t j = 0; j < out_; ++j) {
        double acc = 0;
        for (int64_t i = 0; i < in_; ++i) acc += double(x_[size_t(t * in_ + i)]) * double(w_[size_t(j * in_ + i)]);
        y[size_t(t * out_ + j)] = acc + (xa.empty() ? 0.0 : expand_ref(token_slot_[size_t(t)], xa, j));
      }
    }
    return {{"y", out_, y}};
  }

 private:
  std::vector<float> x_, w_;  // (T, in), (out, in)
};

// Token layouts. Slot 5 has rank 0 here; -1 is no adapter.
const std::vector<Run> kOne = {{4, 1}};                                     // T = 1, rank 128
const std::vector<Run> kThree = {{0, 1}, {-1, 1}, {3, 1}};                  // T = 3
const std::vector<Run> kSeven = {{1, 2}, {5, 1}, {4, 1}, {-1, 1}, {1, 2}};  // T = 7, slot 1 twice
const std::vector<Run> kNineteen = {
    {3, 5}, {0, 1}, {2, 4}, {-1, 3}, {4, 6}};  // T = 19, prefill-like
const std::vector<Run>& kDecode = kLoraDecode;
const std::vector<Run>& kLong = kLoraLong;

std::vector<CaseFactory> lora_cases() {
  return {
      make_case<LoraShrink>(37, kOne),
      make_case<LoraShrink>(1002, kThree),
      make_case<LoraShrink>(37, kSeven),
      make_case<LoraShrink>(1002, kNineteen),
      make_case<LoraShrink>(1002, kDecode),
      make_case<LoraShrink>(1002, kLong),
      make_case<LoraExpand>(37, 37, 0, kOne),
      make_case<LoraExpand>(96, 288, 96, kThree),        // the k slice of a fused qkv
      make_case<LoraExpand>(37, 111, 74, kSeven),        // the last slice
      make_case<LoraExpand>(1002, 2004, 1002, kDecode),  // the up half of gate_up
      make_case<LoraExpand>(1002, 1002, 0, kLong),
      make_case<LoraShrinkExpand>(1002, 37, 74, 37, kNineteen),
      make_case<LoraShrinkExpand>(37, 1002, 1002, 0, kLong),
      make_case<LoraShrinkExpand>(1002, 96, 288, 192, kDecode),
      make_case<LoraDelta>(1002, kDecode),
      make_case<LoraDelta>(37, kSeven),
      make_case<LoraDelta>(288, kLong),
      make_case<LoraLinear>(1002, 96, kDecode),
      make_case<LoraLinear>(64, 520, kOne),
      make_case<LoraLinear>(37, 1002, kLong),
  };
}

PHILORA_OP_CASES(Lora, lora_cases());

}  // namespace
}  // namespace philora::optest
