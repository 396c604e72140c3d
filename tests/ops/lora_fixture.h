// The adapters and token layouts LoRA op cases share (lora_ops_test.cpp, and
// the cases of ops that take part of a module's LoRA along: norm, rope, silu).
//   shrink: xa[t, :r] = A_s x[t]                       s = slot(t), r = rank_s
//   expand: y[t, off + j] += scale_s · (B_s xa[t, :r])[j]   for j < out
// only for tokens with s ≥ 0 and r > 0. The slots mix ranks 1, 8, 16, 64 and
// 128 and a slot whose rank is 0 for the module; the segments and the
// per-token slots describe the same assignment.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ops/harness.h"

namespace philora::optest {

// The resident slots, as this module sees them: slot 5 does not touch it.
inline const std::vector<int32_t> kLoraRanks = {1, 8, 16, 64, 128, 0};

struct LoraRun {  // `len` consecutive tokens using adapter `slot` (-1 = none), shown len@slot
  int32_t slot;
  int64_t len;
};

inline std::string lora_ranks_str() { return join(std::vector<int64_t>(kLoraRanks.begin(), kLoraRanks.end())); }

inline std::string lora_runs_str(const std::vector<LoraRun>& runs) {
  std::string s;
  for (const LoraRun& r : runs)
    s += fmt::format("{}{}@{}", s.empty() ? "" : ",", r.len,
                     r.slot < 0 ? "none" : std::to_string(r.slot));
  return s;
}

// A module's adapters on one backend; owns the A and B tensors the table points to.
struct DeviceLora {
  std::vector<Tensor> a, b;  // [slots] (r, in), (out, r); empty when r = 0
  LoraModuleTable table;
};

// What every LoRA case has: one module's slots (A, B, scales) and each token's slot.
class LoraFixture {
 public:
  LoraFixture(int64_t in, int64_t out, std::vector<LoraRun> runs)
      : in_(in), out_(out), runs_(std::move(runs)) {}

  void draw(Rng& rng) {
    a_.clear(), b_.clear(), scales_.clear();
    for (int32_t r : kLoraRanks) {
      const double a_range = 2.0 / std::sqrt(double(in_)),
                   b_range = 2.0 / std::sqrt(double(std::max(r, 1)));
      a_.push_back(rng.bf16(r * in_, -a_range, a_range));
      b_.push_back(rng.bf16(out_ * r, -b_range, b_range));
      scales_.push_back(float(rng.uniform(0.25, 2.0)));
    }
    token_slot_.clear();
    for (const LoraRun& run : runs_) token_slot_.insert(token_slot_.end(), size_t(run.len), run.slot);
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
      if (s >= 0) max_rank_ = std::max<int64_t>(max_rank_, kLoraRanks[size_t(s)]);
  }

 public:
  int64_t tokens() const { return int64_t(token_slot_.size()); }
  int32_t slot_of(int64_t t) const { return token_slot_[size_t(t)]; }
  int64_t max_rank() const { return max_rank_; }
  const std::vector<LoraRun>& runs() const { return runs_; }
  // Rank of token t's adapter on this module (0 without one).
  int64_t rank_of(int64_t t) const {
    const int32_t s = token_slot_[size_t(t)];
    return s < 0 ? 0 : kLoraRanks[size_t(s)];
  }

  DeviceLora upload_lora(Backend& b) const {
    DeviceLora d;
    std::vector<int64_t> a_ptrs, b_ptrs;
    for (size_t s = 0; s < kLoraRanks.size(); ++s) {
      const int64_t r = kLoraRanks[s];
      d.a.push_back(r == 0 ? Tensor() : upload(b, a_[s], {r, in_}));
      d.b.push_back(r == 0 ? Tensor() : upload(b, b_[s], {out_, r}));
      a_ptrs.push_back(reinterpret_cast<int64_t>(d.a.back().data));
      b_ptrs.push_back(reinterpret_cast<int64_t>(d.b.back().data));
    }
    LoraModuleTable& m = d.table;
    m.a_ptrs = b.upload_i64(a_ptrs);
    m.b_ptrs = b.upload_i64(b_ptrs);
    m.ranks = b.upload_i32(kLoraRanks);
    m.scales = b.upload_f32(scales_);
    m.dtype = b.compute_dtype();
    m.num_slots = int64_t(kLoraRanks.size());
    m.in_features = in_;
    m.out_features = out_;
    m.max_rank = *std::max_element(kLoraRanks.begin(), kLoraRanks.end());
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
  std::vector<LoraRun> runs_;
  std::vector<std::vector<float>> a_, b_;  // [slots] (r, in), (out, r)
  std::vector<float> scales_;              // [slots]
  std::vector<int32_t> token_slot_;        // [T]
  std::vector<int32_t> seg_indptr_;        // [G + 1]
  std::vector<int32_t> seg_slot_;          // [G]
  int64_t max_rank_ = 0;                   // over the slots the batch uses
};

// Token layouts: len@slot runs. Slot 5 has rank 0; -1 is no adapter.
inline const std::vector<LoraRun> kLoraDecode = {
    {0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1},  {-1, 1},            // T = 19,
    {4, 1}, {3, 1}, {2, 1}, {1, 1}, {0, 1}, {-1, 1}, {5, 1},             // one token
    {1, 1}, {3, 1}, {0, 1}, {4, 1}, {2, 1}};                             // per seq
inline const std::vector<LoraRun> kLoraLong = {{4, 300}, {-1, 100}, {1, 1},  {3, 200},  // T = 733
                                {5, 20},  {2, 50},   {0, 61}, {1, 1}};

}  // namespace philora::optest
