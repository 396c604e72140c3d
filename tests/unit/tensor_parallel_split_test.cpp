// Tensor parallelism's splits (model/shard.h, weight_specs) against slices
// made by hand here, from what each rank must compute, and the loopback
// communicator against sums made here in rank order.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/loopback_communicator.h"
#include "model/shard.h"
#include "model/weights.h"

namespace philora::model {
namespace {

Phi3Config config(int64_t heads, int64_t kv_heads, int64_t head_dim = 4) {
  Phi3Config c;
  c.vocab_size = 48;
  c.hidden_size = 20;  // not heads · head_dim: the splits must not assume it
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim;
  return c;
}

// A host f32 matrix whose element (i, j) is i · 1000 + j: a slice shows which
// rows and columns it took.
Tensor numbered(int64_t rows, int64_t cols) {
  Tensor t = host_alloc(DType::f32, {rows, cols});
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t.ptr<float>()[i * cols + j] = float(i * 1000 + j);
  return t;
}

// `t` must be exactly the rows `rows` (all columns of a `cols`-wide numbered
// matrix), or the columns `columns` of every one of `nrows` rows.
void expect_rows(const Tensor& t, const std::vector<int64_t>& rows, int64_t cols) {
  ASSERT_EQ(t.dim(0), int64_t(rows.size()));
  ASSERT_EQ(t.dim(1), cols);
  for (size_t i = 0; i < rows.size(); ++i)
    for (int64_t j = 0; j < cols; ++j)
      ASSERT_EQ(t.ptr<float>()[int64_t(i) * cols + j], float(rows[i] * 1000 + j))
          << "row " << i << " should be row " << rows[i];
}
void expect_cols(const Tensor& t, int64_t nrows, const std::vector<int64_t>& columns) {
  ASSERT_EQ(t.dim(0), nrows);
  ASSERT_EQ(t.dim(1), int64_t(columns.size()));
  for (int64_t i = 0; i < nrows; ++i)
    for (size_t j = 0; j < columns.size(); ++j)
      ASSERT_EQ(t.ptr<float>()[i * int64_t(columns.size()) + int64_t(j)],
                float(i * 1000 + columns[j]))
          << "column " << j << " should be column " << columns[j];
}

// What rank r of n must hold, derived from what it computes:
// its q heads are the n-th part of all heads in order; the kv heads it holds
// are exactly the ones those q heads read (GQA: head h reads h / (H / Hkv)).
std::vector<int64_t> q_heads(const Phi3Config& c, int64_t r, int64_t n) {
  std::vector<int64_t> h;
  for (int64_t i = 0; i < c.num_attention_heads; ++i)
    if (i * n / c.num_attention_heads == r) h.push_back(i);
  return h;
}
std::vector<int64_t> kv_heads_read(const Phi3Config& c, int64_t r, int64_t n) {
  std::set<int64_t> kv;
  for (int64_t h : q_heads(c, r, n)) kv.insert(h / (c.num_attention_heads / c.num_key_value_heads));
  return {kv.begin(), kv.end()};
}
std::vector<int64_t> qkv_rows(const Phi3Config& c, int64_t r, int64_t n) {
  const int64_t d = c.head_dim, q = c.num_attention_heads * d, kv = c.num_key_value_heads * d;
  std::vector<int64_t> rows;
  for (int64_t h : q_heads(c, r, n))
    for (int64_t i = 0; i < d; ++i) rows.push_back(h * d + i);
  for (int64_t base : {q, q + kv})
    for (int64_t h : kv_heads_read(c, r, n))
      for (int64_t i = 0; i < d; ++i) rows.push_back(base + h * d + i);
  return rows;
}
// gate_up rows [gate | up]: the rank computes silu(gate_j) · up_j for its own
// j, so it needs gate row j and up row I + j for each of them.
std::vector<int64_t> gate_up_rows(int64_t inter, int64_t r, int64_t n) {
  std::vector<int64_t> gate, up;
  for (int64_t j = 0; j < inter; ++j)
    if (j / (inter / n) == r) gate.push_back(j), up.push_back(inter + j);
  gate.insert(gate.end(), up.begin(), up.end());
  return gate;
}
// A range of n equal parts: element i belongs to rank i / (size / n).
std::vector<int64_t> part_of(int64_t size, int64_t r, int64_t n) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < size; ++i)
    if (i / (size / n) == r) v.push_back(i);
  return v;
}

TEST(TensorParallelSplit, WeightSpecsSplitEachTensorByItsParts) {
  const Phi3Config c = config(4, 2);
  for (const WeightSpec& s : weight_specs(c)) {
    SCOPED_TRACE(s.name);
    Split want = Split::replicated;  // embedding, norms
    if (s.name.ends_with("qkv_proj.weight")) want = Split::qkv_heads;
    if (s.name.ends_with("gate_up_proj.weight")) want = Split::gate_up;
    if (s.name.ends_with("o_proj.weight") || s.name.ends_with("down_proj.weight"))
      want = Split::row;
    if (s.name == "lm_head.weight") want = Split::vocab;
    EXPECT_EQ(s.split, want);
  }
}

// Every weight of every spec, for head counts that split evenly, that
// replicate kv heads (Hkv < N), and MQA; rank by rank against the slices above.
TEST(TensorParallelSplit, WeightsMatchSlicesMadeByHand) {
  struct Case {
    int64_t heads, kv, n;
  };
  for (const Case k : {Case{4, 2, 2}, Case{4, 2, 4}, Case{8, 4, 2}, Case{8, 2, 4}, Case{8, 2, 8},
                       Case{6, 6, 3}, Case{4, 1, 4}, Case{6, 3, 3}, Case{4, 4, 1}}) {
    const Phi3Config c = config(k.heads, k.kv);
    ASSERT_TRUE(check_tensor_parallel(c, k.n).ok()) << k.heads << "/" << k.kv << "/" << k.n;
    for (const WeightSpec& s : weight_specs(c)) {
      if (s.shape.size() != 2) continue;
      const Tensor full = numbered(s.shape[0], s.shape[1]);
      for (int64_t r = 0; r < k.n; ++r) {
        SCOPED_TRACE(s.name + " H=" + std::to_string(k.heads) + " Hkv=" + std::to_string(k.kv) +
                     " rank " + std::to_string(r) + " of " + std::to_string(k.n));
        const Tensor got = take_slice(full, weight_slice(s.split, s.shape, c, {r, k.n}));
        if (s.split == Split::qkv_heads) {
          expect_rows(got, qkv_rows(c, r, k.n), s.shape[1]);
        } else if (s.split == Split::gate_up) {
          expect_rows(got, gate_up_rows(c.intermediate_size, r, k.n), s.shape[1]);
        } else if (s.split == Split::row) {
          expect_cols(got, s.shape[0], part_of(s.shape[1], r, k.n));
        } else if (s.split == Split::vocab) {
          expect_rows(got, part_of(s.shape[0], r, k.n), s.shape[1]);
        } else {
          expect_rows(got, part_of(s.shape[0], 0, 1), s.shape[1]);
        }
        // The rank's sizes, as its forward and KV cache see them.
        const Phi3Config local = shard_config(c, k.n);
        if (s.split == Split::qkv_heads) {
          EXPECT_EQ(got.dim(0), local.qkv_size());
        }
        if (s.split == Split::gate_up) {
          EXPECT_EQ(got.dim(0), 2 * local.intermediate_size);
        }
        if (s.name.ends_with("o_proj.weight")) {
          EXPECT_EQ(got.dim(1), local.q_size());
        }
      }
    }
  }
}

// The bug this replaces: a contiguous slice of gate_up gives rank 0 only gate
// rows and the last rank only up rows.
TEST(TensorParallelSplit, GateUpIsNotAContiguousSlice) {
  const Phi3Config c = config(4, 2);
  const Tensor full = numbered(2 * c.intermediate_size, c.hidden_size);
  const Tensor rank0 = take_slice(
      full, weight_slice(Split::gate_up, {2 * c.intermediate_size, c.hidden_size}, c, {0, 2}));
  EXPECT_EQ(rank0.ptr<float>()[0], 0.0f);  // gate row 0
  EXPECT_EQ(rank0.ptr<float>()[c.intermediate_size / 2 * c.hidden_size],
            float(c.intermediate_size * 1000));  // then up row I (the first up row), not gate
}

TEST(TensorParallelSplit, LoraFollowsItsBaseWeight) {
  const Phi3Config c = config(8, 2);
  const int64_t n = 4, rank = 3, d = c.head_dim, inter = c.intermediate_size;
  for (int64_t r = 0; r < n; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    // qkv: A whole, B's rows as the base rows
    auto [qa, qb] = shard_lora(LoraTarget::qkv, numbered(rank, c.hidden_size),
                               numbered(c.qkv_size(), rank), c, {r, n});
    expect_rows(qa, part_of(rank, 0, 1), c.hidden_size);
    expect_rows(qb, qkv_rows(c, r, n), rank);
    // o: A's columns as the base columns (the rank's q heads), B whole
    auto [oa, ob] = shard_lora(LoraTarget::o, numbered(rank, c.q_size()),
                               numbered(c.hidden_size, rank), c, {r, n});
    std::vector<int64_t> cols;
    for (int64_t h : q_heads(c, r, n))
      for (int64_t i = 0; i < d; ++i) cols.push_back(h * d + i);
    expect_cols(oa, rank, cols);
    expect_rows(ob, part_of(c.hidden_size, 0, 1), rank);
    // gate_up: B's gate and up rows; down: A's columns
    auto [ga, gb] = shard_lora(LoraTarget::gate_up, numbered(rank, c.hidden_size),
                               numbered(2 * inter, rank), c, {r, n});
    expect_rows(gb, gate_up_rows(inter, r, n), rank);
    auto [da, db] = shard_lora(LoraTarget::down, numbered(rank, inter),
                               numbered(c.hidden_size, rank), c, {r, n});
    expect_cols(da, rank, part_of(inter, r, n));
    expect_rows(db, part_of(c.hidden_size, 0, 1), rank);
    // lm_head: B's vocabulary rows
    auto [la, lb] = shard_lora(LoraTarget::lm_head, numbered(rank, c.hidden_size),
                               numbered(c.vocab_size, rank), c, {r, n});
    expect_rows(la, part_of(rank, 0, 1), c.hidden_size);
    expect_rows(lb, part_of(c.vocab_size, r, n), rank);
  }
}

TEST(TensorParallelSplit, RefusesCountsThatDoNotSplitNamingThem) {
  // Phi-4 / Phi-3-medium: 40 query heads, 10 kv heads: 4 ranks cannot hold whole kv heads.
  Phi3Config phi4 = config(40, 10, 128);
  phi4.intermediate_size = 17920;
  phi4.vocab_size = 100352;
  EXPECT_TRUE(check_tensor_parallel(phi4, 2).ok());
  EXPECT_FALSE(check_tensor_parallel(phi4, 8).ok());
  const Status s = check_tensor_parallel(phi4, 4);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("num_key_value_heads is 10"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("4 ranks"), std::string::npos) << s.message();
  // Query heads
  const Status h = check_tensor_parallel(config(2, 1), 4);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.message().find("num_attention_heads is 2"), std::string::npos) << h.message();
  // kv heads that neither divide into the ranks nor divide them: 6 over 4
  EXPECT_FALSE(check_tensor_parallel(config(12, 6), 4).ok());
  // MQA and GQA with fewer kv heads than ranks: replicated
  EXPECT_TRUE(check_tensor_parallel(config(8, 1), 8).ok());
  EXPECT_TRUE(check_tensor_parallel(config(8, 2), 8).ok());
  // Intermediate and vocabulary
  Phi3Config odd = config(4, 2);
  odd.intermediate_size = 30;
  const Status i = check_tensor_parallel(odd, 4);
  ASSERT_FALSE(i.ok());
  EXPECT_NE(i.message().find("intermediate_size is 30"), std::string::npos) << i.message();
  odd = config(4, 2);
  odd.vocab_size = 50;
  EXPECT_NE(check_tensor_parallel(odd, 4).message().find("vocab_size is 50"), std::string::npos);
  EXPECT_FALSE(check_tensor_parallel(config(4, 2), 0).ok());
}

// ---- the loopback communicator ----------------------------------------------

// Runs fn(rank, communicator) on one thread per rank.
template <typename Fn>
void on_ranks(int64_t n, Fn fn) {
  auto comms = LoopbackGroup::communicators(n);
  std::vector<std::thread> threads;
  for (int64_t r = 0; r < n; ++r) threads.emplace_back([&, r] { fn(r, *comms[size_t(r)]); });
  for (auto& t : threads) t.join();
}

// The same over communicators the caller keeps (to reuse the group afterwards).
template <typename Fn>
void on_ranks_of(std::vector<std::unique_ptr<Communicator>>& comms, Fn fn) {
  std::vector<std::thread> threads;
  for (size_t r = 0; r < comms.size(); ++r)
    threads.emplace_back([&, r] { fn(int64_t(r), *comms[r]); });
  for (auto& t : threads) t.join();
}

TEST(LoopbackCommunicator, AllReduceSumsInRankOrderOnEveryRank) {
  for (const int64_t n : {1, 2, 3, 4}) {
    const int64_t rows = 7, cols = 19;
    std::mt19937 rng(static_cast<uint32_t>(n));
    std::normal_distribution<float> normal(0.0f, 100.0f);
    std::vector<std::vector<float>> inputs(size_t(n), std::vector<float>(size_t(rows * cols)));
    for (auto& v : inputs)
      for (float& x : v) x = normal(rng);
    std::vector<float> want(size_t(rows * cols));  // ((x0 + x1) + x2) + ... in f32
    for (size_t i = 0; i < want.size(); ++i) {
      float s = inputs[0][i];
      for (int64_t r = 1; r < n; ++r) s += inputs[size_t(r)][i];
      want[i] = s;
    }
    for (int round = 0; round < 3; ++round) {  // the group is reusable
      std::vector<Tensor> results(static_cast<size_t>(n));
      on_ranks(n, [&](int64_t r, Communicator& comm) {
        EXPECT_EQ(comm.rank(), r);
        EXPECT_EQ(comm.world_size(), n);
        Tensor x = host_alloc(DType::f32, {rows, cols});
        std::copy(inputs[size_t(r)].begin(), inputs[size_t(r)].end(), x.ptr<float>());
        comm.all_reduce_sum(x);
        results[size_t(r)] = x;
      });
      for (int64_t r = 0; r < n; ++r)
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_EQ(results[size_t(r)].ptr<float>()[i], want[i]) << "rank " << r << " i " << i;
    }
  }
}

TEST(LoopbackCommunicator, AllReduceOfBf16AddsInF32AndRoundsOnce) {
  const int64_t n = 4, len = 33;
  std::vector<Tensor> results(static_cast<size_t>(n));
  on_ranks(n, [&](int64_t r, Communicator& comm) {
    Tensor x = host_alloc(DType::bf16, {len});
    for (int64_t i = 0; i < len; ++i)
      x.ptr<uint16_t>()[i] = f32_to_bf16(float(i) * 0.37f + float(r) * 1.01f);
    comm.all_reduce_sum(x);
    results[size_t(r)] = x;
  });
  for (int64_t i = 0; i < len; ++i) {
    float s = 0;
    for (int64_t r = 0; r < n; ++r)
      s += bf16_to_f32(f32_to_bf16(float(i) * 0.37f + float(r) * 1.01f));
    for (int64_t r = 0; r < n; ++r)
      ASSERT_EQ(results[size_t(r)].ptr<uint16_t>()[i], f32_to_bf16(s)) << i;
  }
}

TEST(LoopbackCommunicator, AllGatherPutsEachRanksColumnsInRankOrder) {
  const int64_t n = 3, rows = 5, c = 4;
  std::vector<Tensor> results(static_cast<size_t>(n));
  on_ranks(n, [&](int64_t r, Communicator& comm) {
    Tensor x = host_alloc(DType::f32, {rows, c});
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < c; ++j) x.ptr<float>()[i * c + j] = float(i * 1000 + r * c + j);
    Tensor out = host_alloc(DType::f32, {rows, n * c});
    comm.all_gather_cols(x, out);
    results[size_t(r)] = out;
  });
  for (int64_t r = 0; r < n; ++r) expect_cols(results[size_t(r)], rows, part_of(n * c, 0, 1));
}

// gather_cols: rank 0 receives every rank's columns in rank order (as
// all_gather_cols would give it); the others pass no out and their x is untouched.
TEST(LoopbackCommunicator, GatherColsFillsRankZerosOutOnly) {
  for (const int64_t n : {1, 2, 3}) {
    const int64_t rows = 3, c = 5;
    std::vector<Tensor> inputs(static_cast<size_t>(n));
    Tensor out = host_alloc(DType::f32, {rows, n * c});
    std::fill(out.ptr<float>(), out.ptr<float>() + out.numel(), std::nanf(""));
    on_ranks(n, [&](int64_t r, Communicator& comm) {
      Tensor x = host_alloc(DType::f32, {rows, c});
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < c; ++j) x.ptr<float>()[i * c + j] = float(i * 1000 + r * c + j);
      comm.gather_cols(x, r == 0 ? &out : nullptr);
      inputs[size_t(r)] = x;
    });
    expect_cols(out, rows, part_of(n * c, 0, 1));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < c; ++j)
          ASSERT_EQ(inputs[size_t(r)].ptr<float>()[i * c + j], float(i * 1000 + r * c + j));
  }
}

TEST(LoopbackCommunicator, AbortReleasesRanksWaitingForAFailedOne) {
  auto comms = LoopbackGroup::communicators(3);
  std::vector<int> threw(3, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      Tensor x = host_alloc(DType::f32, {4});
      try {
        comms[size_t(r)]->all_reduce_sum(x);
      } catch (const std::runtime_error&) {
        threw[size_t(r)] = 1;
      }
    });
  comms[2]->abort();  // rank 2 failed before its collective
  for (auto& t : threads) t.join();
  EXPECT_EQ(threw[0], 1);
  EXPECT_EQ(threw[1], 1);
  // Once every rank has left, reset() makes the group work again (ranks 0 and 1 had
  // arrived at the barrier they left through the abort: they must not count).
  comms[0]->reset();
  std::vector<float> sums(3, 0.0f);
  threads.clear();
  for (int r = 0; r < 3; ++r)
    threads.emplace_back([&, r] {
      Tensor x = host_alloc(DType::f32, {1});
      x.ptr<float>()[0] = float(r + 1);
      comms[size_t(r)]->all_reduce_sum(x);
      sums[size_t(r)] = x.ptr<float>()[0];
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(sums, std::vector<float>(3, 6.0f));
}

// A rank whose tensor's shape differs: every rank throws the same error (each compares
// every post with rank 0's) after the last barrier, none waits forever, and the group
// is usable after reset().
TEST(LoopbackCommunicator, AShapeMismatchFailsEveryRankAlike) {
  auto comms = LoopbackGroup::communicators(3);
  std::vector<std::string> errors(3);
  on_ranks_of(comms, [&](int64_t r, Communicator& comm) {
    Tensor x = host_alloc(DType::f32, {r == 2 ? 5 : 4});
    try {
      comm.all_reduce_sum(x);
    } catch (const std::invalid_argument& e) {
      errors[size_t(r)] = e.what();
    }
  });
  for (const std::string& e : errors) {
    EXPECT_NE(e.find("rank 2 has"), std::string::npos) << e;
    EXPECT_EQ(e, errors[0]);
  }
  comms[0]->reset();
  std::vector<Tensor> out(3);
  on_ranks_of(comms, [&](int64_t r, Communicator& comm) {
    Tensor x = host_alloc(DType::f32, {2, 1});
    x.ptr<float>()[0] = float(r);
    x.ptr<float>()[1] = float(10 * r);
    Tensor all = host_alloc(DType::f32, {2, 3});
    comm.all_gather_cols(x, all);
    out[size_t(r)] = all;
  });
  for (const Tensor& t : out)
    EXPECT_EQ(std::vector<float>(t.ptr<float>(), t.ptr<float>() + 6),
              (std::vector<float>{0, 1, 2, 0, 10, 20}));
}

}  // namespace
}  // namespace philora::model
