// lora_shrink, lora_expand and lora_delta, alone and chained as `linear` chains them.
//   shrink: xa[t, :r] = A_s x[t]                       s = slot(t), r = rank_s
//   expand: y[t, off + j] += scale_s · (B_s xa[t, :r])[j]   for j < out
// only for tokens with s ≥ 0 and r > 0. Every batch mixes ranks 1, 8, 16, 64
// and 128, a slot whose rank is 0 for the module, and tokens without adapter;
// the segments and the per-token slots describe the same assignment.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "ops/harness.h"

namespace philora::optest {
namespace {

// The resident slots, as this module sees them: slot 5 does not touch it.
const std::vector<int32_t> kRanks = {1, 8, 16, 64, 128, 0};

struct Run {  // `len` consecutive tokens using adapter `slot` (-1 = none), shown len@slot
  int32_t slot;
  int64_t len;
};

std::string ranks_str() { return join(std::vector<int64_t>(kRanks.begin(), kRanks.end())); }

std::string runs_str(const std::vector<Run>& runs) {
  std::string s;
  for (const Run& r : runs)
    s += fmt::format("{}{}@{}", s.empty() ? "" : ",", r.len,
                     r.slot < 0 ? "none" : std::to_string(r.slot));
  return s;
}

// A module's adapters on one backend; owns the A and B tensors the table points to.
struct DeviceLora {
  std::vector<Tensor> a, b;  // [slots] (r, in), (out, r); empty when r = 0
  LoraModuleTable table;
};

// The part every LoRA case shares: the slots' A, B, scales, and the batch.
class LoraCase : public OpCase {
 public:
  LoraCase(int64_t in, int64_t out, std::vector<Run> runs)
      : in_(in), out_(out), runs_(std::move(runs)) {}

  void init(Rng& rng) override {
    a_.clear(), b_.clear(), scales_.clear();
    for (int32_t r : kRanks) {
      const double a_range = 2.0 / std::sqrt(double(in_)),
                   b_range = 2.0 / std::sqrt(double(std::max(r, 1)));
      a_.push_back(rng.bf16(r * in_, -a_range, a_range));
      b_.push_back(rng.bf16(out_ * r, -b_range, b_range));
      scales_.push_back(float(rng.uniform(0.25, 2.0)));
    }
    token_slot_.clear();
    for (const Run& run : runs_) token_slot_.insert(token_slot_.end(), size_t(run.len), run.slot);
    // Segments: maximal runs of equal slot, as the planner builds them.
    seg_indptr_ = {0};
    seg_slot_.clear();
    for (size_t t = 0; t < token_slot_.size(); ++t) {
      if (t > 0 && token_slot_[t] != token_slot_[t - 1]) seg_indptr_.push_back(int32_t(t));
      if (t == 0 || token_slot_[t] != token_slot_[t - 1]) seg_slot_.push_back(token_slot_[t]);
    }
    seg_indptr_.push_back(int32_t(token_slot_.size()));
    max_rank_ = 0;
    for (int32_t s : token_slot_)
      if (s >= 0) max_rank_ = std::max<int64_t>(max_rank_, kRanks[size_t(s)]);
  }

 protected:
  int64_t tokens() const { return int64_t(token_slot_.size()); }
  // Rank of token t's adapter on this module (0 without one).
  int64_t rank_of(int64_t t) const {
    const int32_t s = token_slot_[size_t(t)];
    return s < 0 ? 0 : kRanks[size_t(s)];
  }

  DeviceLora upload_lora(Backend& b) const {
    DeviceLora d;
    std::vector<int64_t> a_ptrs, b_ptrs;
    for (size_t s = 0; s < kRanks.size(); ++s) {
      const int64_t r = kRanks[s];
      d.a.push_back(r == 0 ? Tensor() : upload(b, a_[s], {r, in_}));
      d.b.push_back(r == 0 ? Tensor() : upload(b, b_[s], {out_, r}));
      a_ptrs.push_back(reinterpret_cast<int64_t>(d.a.back().data));
      b_ptrs.push_back(reinterpret_cast<int64_t>(d.b.back().data));
    }
    LoraModuleTable& m = d.table;
    m.a_ptrs = b.upload_i64(a_ptrs);
    m.b_ptrs = b.upload_i64(b_ptrs);
    m.ranks = b.upload_i32(kRanks);
    m.scales = b.upload_f32(scales_);
    m.dtype = b.compute_dtype();
    m.num_slots = int64_t(kRanks.size());
    m.in_features = in_;
    m.out_features = out_;
    m.max_rank = *std::max_element(kRanks.begin(), kRanks.end());
    return d;
  }

  LoraBatch upload_batch(Backend& b) const {
    LoraBatch batch;
    batch.active = true;
    batch.seg_indptr = b.upload_i32(seg_indptr_);
    batch.seg_slot = b.upload_i32(seg_slot_);
    batch.token_slot = b.upload_i32(token_slot_);
    batch.num_segments = int64_t(seg_slot_.size());
    batch.max_rank = max_rank_;
    return batch;
  }

  // xa (T, max_rank) f32, random where a token's rank reaches, NaN past it and in
  // rows without adapter (which the op must not read).
  std::vector<float> random_xa(Rng& rng) const {
    std::vector<float> xa(size_t(tokens() * max_rank_), NAN);
    for (int64_t t = 0; t < tokens(); ++t)
      for (int64_t k = 0; k < rank_of(t); ++k) xa[size_t(t * max_rank_ + k)] = round_bf16(rng.uniform(-1, 1));
    return xa;
  }

  // (A_s x)[k] in float64.
  double shrink_ref(int32_t s, const float* x, int64_t k) const {
    double acc = 0;
    for (int64_t i = 0; i < in_; ++i)
      acc += double(a_[size_t(s)][size_t(k * in_ + i)]) * double(x[i]);
    return acc;
  }
  // scale_s · (B_s xa)[j] in float64, xa of length r.
  double expand_ref(int32_t s, const std::vector<double>& xa, int64_t j) const {
    double acc = 0;
    for (size_t k = 0; k < xa.size(); ++k)
      acc += double(b_[size_t(s)][size_t(j) * xa.size() + k]) * xa[k];
    return double(scales_[size_t(s)]) * acc;
  }

  // y = W x + scale_s · B_s (A_s x) per token (+ y0 when given), float64; x (T, in), w (out, in).
  std::vector<double> linear_ref(const std::vector<float>& x, const std::vector<float>& w,
                                 const std::vector<float>* y0 = nullptr) const {
    std::vector<double> y(size_t(tokens() * out_), 0.0);
    for (int64_t t = 0; t < tokens(); ++t) {
      std::vector<double> xa;
      for (int64_t k = 0; k < rank_of(t); ++k) xa.push_back(shrink_ref(token_slot_[size_t(t)], &x[size_t(t * in_)], k));
      for (int64_t j = 0; j < out_; ++j) {
        double acc = y0 ? double((*y0)[size_t(t * out_ + j)]) : 0.0;
        for (int64_t i = 0; i < in_; ++i) acc += double(x[size_t(t * in_ + i)]) * double(w[size_t(j * in_ + i)]);
        y[size_t(t * out_ + j)] = acc + (xa.empty() ? 0.0 : expand_ref(token_slot_[size_t(t)], xa, j));
      }
    }
    return y;
  }

  // y before expand, and what it must become: NaN outside the slice
  // [off, off + out) (must stay NaN), random inside it; rows without adapter
  // must keep their values, rows with one gain the op's part (see y_ref).
  std::vector<float> initial_y(Rng& rng, int64_t width, int64_t offset) const {
    std::vector<float> y(size_t(tokens() * width), NAN);
    for (int64_t t = 0; t < tokens(); ++t)
      for (int64_t j = 0; j < out_; ++j)
        y[size_t(t * width + offset + j)] = round_bf16(rng.uniform(-0.25, 0.25));
    return y;
  }
  // The Expect of y given each token's xa (float64, length rank_of(t)).
  Expect y_ref(const std::vector<float>& y0, int64_t width, int64_t offset,
               const std::vector<std::vector<double>>& xa) const {
    Expect e{"y", width, std::vector<double>(y0.begin(), y0.end()),
             std::vector<Role>(y0.size(), Role::keep), std::vector<double>(y0.begin(), y0.end())};
    for (int64_t t = 0; t < tokens(); ++t) {
      if (rank_of(t) == 0) continue;
      for (int64_t j = 0; j < out_; ++j) {
        const size_t i = size_t(t * width + offset + j);
        e.want[i] += expand_ref(token_slot_[size_t(t)], xa[size_t(t)], j);
        e.role[i] = Role::value;
      }
    }
    return e;
  }

  int64_t in_, out_;
  std::vector<Run> runs_;
  std::vector<std::vector<float>> a_, b_;  // [slots] (r, in), (out, r)
  std::vector<float> scales_;              // [slots]
  std::vector<int32_t> token_slot_;        // [T]
  std::vector<int32_t> seg_indptr_;        // [G + 1]
  std::vector<int32_t> seg_slot_;          // [G]
  int64_t max_rank_ = 0;                   // over the slots the batch uses
};

class LoraShrink : public LoraCase {
 public:
  LoraShrink(int64_t in, std::vector<Run> runs) : LoraCase(in, 37, std::move(runs)) {}
  std::string name() const override {
    return fmt::format("lora_shrink(in={} ranks={} runs={})", in_, ranks_str(), runs_str(runs_));
  }
  void init(Rng& rng) override {
    LoraCase::init(rng);
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
    LoraCase::init(rng);
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
    LoraCase::init(rng);
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
    LoraCase::init(rng);
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
    LoraCase::init(rng);
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
  std::vector<Expect> reference() const override { return {{"y", out_, linear_ref(x_, w_)}}; }

 protected:
  std::vector<float> x_, w_;  // (T, in), (out, in)
};

// LoRA columns: slot s's B_s lives in columns in + kOffsets[s] .. + r_s of a
// wide weight (slot 5, rank 0 here, has none), within kColumns; past the last
// range the columns stay zero.
const std::vector<int32_t> kOffsets = {0, 8, 16, 32, 96, -1};
constexpr int64_t kColumns = 256;

// Gives a module's table and a batch the LoRA columns above.
void use_columns(Backend& b, LoraModuleTable& table, LoraBatch& batch) {
  table.col_offsets = b.upload_i32(kOffsets);
  table.columns = kColumns;
  batch.lora_columns = kColumns;
}

// lora_shrink_columns: X (T, in + columns) = [x | scale_s · A_s x at the slot's columns, 0 elsewhere];
// with a prologue (apply_prologue first, as linear does), x = rms_norm(src, g, eps) of src (T, in)
// or silu(gate) · up of src = [gate | up] (T, 2 in).
enum class XFrom { x, rms_norm, silu_mul };

class LoraShrinkColumns : public LoraCase {
 public:
  LoraShrinkColumns(int64_t in, std::vector<Run> runs, XFrom from = XFrom::x)
      : LoraCase(in, 37, std::move(runs)), from_(from) {}
  std::string name() const override {
    const char* op = from_ == XFrom::x          ? "lora_shrink_columns"
                     : from_ == XFrom::rms_norm ? "rms_norm_lora_shrink_columns"
                                                : "silu_mul_lora_shrink_columns";
    return fmt::format("{}(in={} columns={} ranks={} runs={})", op, in_, kColumns, ranks_str(), runs_str(runs_));
  }
  void init(Rng& rng) override {
    LoraCase::init(rng);
    const int64_t cols = src_cols();
    src_.resize(size_t(tokens() * cols));
    for (int64_t t = 0; t < tokens(); ++t) {  // rows of different scales, so a norm matters
      const double scale = from_ == XFrom::rms_norm ? std::exp2(rng.uniform(-3, 3)) : 1.0;
      for (int64_t c = 0; c < cols; ++c) src_[size_t(t * cols + c)] = round_bf16(scale * rng.uniform(-1, 1));
    }
    g_ = rng.bf16(in_, 0.5, 1.5);
  }
  std::vector<Output> run(Backend& b) const override {
    DeviceLora lora = upload_lora(b);
    LoraBatch batch = upload_batch(b);
    use_columns(b, lora.table, batch);
    const Tensor src = upload(b, src_, {tokens(), src_cols()});
    if (from_ == XFrom::x) return {fetch(b, "X", b.lora_shrink_columns(src, lora.table, batch))};
    const Prologue p =
        from_ == XFrom::rms_norm ? Prologue::rms_norm(upload(b, g_, {in_}), kEps) : Prologue::silu_mul();
    return {fetch(b, "X", b.lora_shrink_columns(b.apply_prologue(src, p), lora.table, batch))};
  }
  std::vector<Expect> reference() const override {
    const int64_t ld = in_ + kColumns;
    std::vector<double> want(size_t(tokens() * ld), 0.0);
    for (int64_t t = 0; t < tokens(); ++t) {
      const std::vector<double> x = x_ref(t);
      for (int64_t i = 0; i < in_; ++i) want[size_t(t * ld + i)] = x[size_t(i)];
      const int32_t s = token_slot_[size_t(t)];
      for (int64_t k = 0; k < rank_of(t); ++k) {
        double acc = 0;
        for (int64_t i = 0; i < in_; ++i) acc += double(a_[size_t(s)][size_t(k * in_ + i)]) * x[size_t(i)];
        want[size_t(t * ld + in_ + kOffsets[size_t(s)] + k)] = double(scales_[size_t(s)]) * acc;
      }
    }
    return {{"X", ld, want}};
  }

 private:
  static constexpr float kEps = 1e-6f;
  int64_t src_cols() const { return from_ == XFrom::silu_mul ? 2 * in_ : in_; }
  // Token t's x in float64.
  std::vector<double> x_ref(int64_t t) const {
    const int64_t cols = src_cols();
    const float* row = &src_[size_t(t * cols)];
    std::vector<double> x(static_cast<size_t>(in_));
    double ss = 0;
    for (int64_t i = 0; i < in_; ++i) ss += double(row[i]) * row[i];
    const double inv = 1.0 / std::sqrt(ss / double(in_) + double(kEps));
    for (int64_t i = 0; i < in_; ++i) {
      const double v = row[i];
      x[size_t(i)] = from_ == XFrom::x          ? v
                     : from_ == XFrom::rms_norm ? double(g_[size_t(i)]) * v * inv
                                                : v / (1.0 + std::exp(-v)) * double(row[in_ + i]);
    }
    return x;
  }

  XFrom from_;
  std::vector<float> src_, g_;  // (T, in or 2 in), [in]
};

// The one-matmul form `linear` takes at decode: the B matrices placed into a
// wide weight's columns (write_columns), lora_shrink_columns, then one matmul
// (or matmul_add into y0, as o_proj and down_proj add into the residual).
class LoraLinearColumns : public LoraCase {
 public:
  // batched: the columns hold noise first, then one write_columns_batch puts
  // every slot's B and the zeros after it up to the next slot's range.
  LoraLinearColumns(int64_t in, int64_t out, std::vector<Run> runs, bool add, bool batched = false)
      : LoraCase(in, out, std::move(runs)), add_(add), batched_(batched) {}
  std::string name() const override {
    return fmt::format("lora_linear_columns(in={} out={} columns={} add={}{} ranks={} runs={})", in_, out_,
                       kColumns, add_, batched_ ? " batched" : "", ranks_str(), runs_str(runs_));
  }
  void init(Rng& rng) override {
    LoraCase::init(rng);
    x_ = rng.bf16(tokens() * in_, -1, 1);
    const double w_range = 2.0 / std::sqrt(double(in_));
    w_ = rng.bf16(out_ * in_, -w_range, w_range);
    y0_ = rng.bf16(tokens() * out_, -1, 1);
    noise_ = rng.bf16(out_ * kColumns, -1, 1);
  }
  std::vector<Output> run(Backend& b) const override {
    DeviceLora lora = upload_lora(b);
    LoraBatch batch = upload_batch(b);
    use_columns(b, lora.table, batch);
    // The wide weight: W, then zeros, then each slot's B at its columns.
    Tensor wide = b.alloc(b.compute_dtype(), {out_, in_ + kColumns});
    b.write_columns(wide, 0, upload(b, w_, {out_, in_}));
    if (batched_) {
      b.write_columns(wide, in_, upload(b, noise_, {out_, kColumns}));
      std::vector<Backend::ColumnWrite> writes;
      for (size_t s = 0; s < kRanks.size(); ++s) {
        if (kOffsets[s] < 0) continue;
        int64_t end = kColumns;  // the next range's start
        for (int32_t o : kOffsets)
          if (o > kOffsets[s]) end = std::min<int64_t>(end, o);
        writes.push_back({wide, in_ + kOffsets[s], kRanks[s] > 0 ? lora.b[s] : Tensor(), end - kOffsets[s]});
      }
      if (kOffsets.front() > 0) writes.push_back({wide, in_, Tensor(), kOffsets.front()});
      b.write_columns_batch(writes);
    } else {
      b.write_columns(wide, in_, Tensor(), kColumns);
      for (size_t s = 0; s < kRanks.size(); ++s)
        if (kRanks[s] > 0) b.write_columns(wide, in_ + kOffsets[s], lora.b[s]);
    }
    const Tensor X = b.lora_shrink_columns(upload(b, x_, {tokens(), in_}), lora.table, batch);
    if (!add_) return {fetch(b, "y", b.matmul(X, wide))};
    Tensor y = upload(b, y0_, {tokens(), out_});
    b.matmul_add(X, wide, y);
    return {fetch(b, "y", y)};
  }
  std::vector<Expect> reference() const override {
    return {{"y", out_, linear_ref(x_, w_, add_ ? &y0_ : nullptr)}};
  }

 private:
  bool add_, batched_;
  std::vector<float> x_, w_, y0_, noise_;  // (T, in), (out, in), (T, out), (out, columns)
};

// LoraLinear's case through a weight with LoRA columns whose table points B_s
// into those columns (b_ld = the wide row): what prefill does once an
// adapter's B lives only in the columns. Long runs take the segment kernels.
class LoraLinearStridedB : public LoraLinear {
 public:
  using LoraLinear::LoraLinear;
  std::string name() const override {
    return fmt::format("lora_linear_strided_b(in={} out={} columns={} ranks={} runs={})", in_, out_, kColumns,
                       ranks_str(), runs_str(runs_));
  }
  std::vector<Output> run(Backend& b) const override {
    DeviceLora lora = upload_lora(b);
    Tensor wide = b.alloc(b.compute_dtype(), {out_, in_ + kColumns});
    b.write_columns(wide, 0, upload(b, w_, {out_, in_}));
    b.write_columns(wide, in_, Tensor(), kColumns);
    std::vector<int64_t> b_ptrs(kRanks.size(), 0);
    std::vector<int32_t> b_ld(kRanks.size(), int32_t(in_ + kColumns));
    const size_t elem = dtype_size(wide.dtype);
    for (size_t s = 0; s < kRanks.size(); ++s) {
      if (kRanks[s] == 0) continue;
      b.write_columns(wide, in_ + kOffsets[s], lora.b[s]);
      b_ptrs[s] = reinterpret_cast<int64_t>(static_cast<char*>(wide.data) + size_t(in_ + kOffsets[s]) * elem);
    }
    lora.b.clear();  // the table's B is the columns' now
    lora.table.b_ptrs = b.upload_i64(b_ptrs);
    lora.table.b_ld = b.upload_i32(b_ld);
    const LoraBatch batch = upload_batch(b);
    const Tensor x = upload(b, x_, {tokens(), in_});
    const Tensor xa = b.lora_shrink(x, lora.table, batch);
    Tensor y = b.lora_delta(xa, lora.table, batch);
    b.matmul_add(x, wide, y);
    return {fetch(b, "y", y)};
  }

};

// Token layouts. Slot 5 has rank 0 here; -1 is no adapter.
const std::vector<Run> kOne = {{4, 1}};                                     // T = 1, rank 128
const std::vector<Run> kThree = {{0, 1}, {-1, 1}, {3, 1}};                  // T = 3
const std::vector<Run> kSeven = {{1, 2}, {5, 1}, {4, 1}, {-1, 1}, {1, 2}};  // T = 7, slot 1 twice
const std::vector<Run> kNineteen = {
    {3, 5}, {0, 1}, {2, 4}, {-1, 3}, {4, 6}};  // T = 19, prefill-like
const std::vector<Run> kDecode = {
    {0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1},  {-1, 1},            // T = 19,
    {4, 1}, {3, 1}, {2, 1}, {1, 1}, {0, 1}, {-1, 1}, {5, 1},             // one token
    {1, 1}, {3, 1}, {0, 1}, {4, 1}, {2, 1}};                             // per seq
const std::vector<Run> kLong = {{4, 300}, {-1, 100}, {1, 1},  {3, 200},  // T = 733
                                {5, 20},  {2, 50},   {0, 61}, {1, 1}};

std::vector<CaseFactory> lora_cases() {
  return {
      make_case<LoraShrink>(37, kOne),
      make_case<LoraShrink>(1002, kThree),
      make_case<LoraShrink>(37, kSeven),
      make_case<LoraShrink>(1002, kNineteen),
      make_case<LoraShrink>(1002, kDecode),
      make_case<LoraShrink>(1002, kLong),
      make_case<LoraShrink>(8192, kDecode),  // down_proj-sized: 8 chunks a row, 1024-thread blocks
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
      make_case<LoraShrinkColumns>(96, kOne),
      make_case<LoraShrinkColumns>(1024, kDecode),
      make_case<LoraShrinkColumns>(96, kSeven),
      make_case<LoraShrinkColumns>(8192, kDecode),  // Phi-3-mini's down_proj
      make_case<LoraShrinkColumns>(5000, kSeven),   // a part-filled last chunk
      // With the norm and SiLU·mul as prologues (the op, then the shrink, as
      // linear runs them with LoRA columns): Phi-3-mini's qkv /
      // gate_up (norm, 3072) and down (silu, 8192) at decode, a row past
      // rms_norm's 128-thread block (5120), and small rows.
      make_case<LoraShrinkColumns>(3072, kDecode, XFrom::rms_norm),
      make_case<LoraShrinkColumns>(5120, kSeven, XFrom::rms_norm),
      make_case<LoraShrinkColumns>(96, kOne, XFrom::rms_norm),
      make_case<LoraShrinkColumns>(8192, kDecode, XFrom::silu_mul),
      make_case<LoraShrinkColumns>(96, kSeven, XFrom::silu_mul),
      make_case<LoraLinearColumns>(1024, 96, kDecode, false),
      make_case<LoraLinearColumns>(64, 520, kOne, true),
      make_case<LoraLinearColumns>(96, 1002, kSeven, true),
      make_case<LoraLinearColumns>(1024, 96, kDecode, false, true),
      make_case<LoraLinearColumns>(96, 1002, kSeven, true, true),
      make_case<LoraLinearStridedB>(1024, 96, kDecode),
      make_case<LoraLinearStridedB>(96, 1002, kLong),
      make_case<LoraLinearStridedB>(64, 37, kSeven),
  };
}

PHILORA_OP_CASES(Lora, lora_cases());

}  // namespace
}  // namespace philora::optest
