// What one rank of a tensor-parallel model holds and does (DESIGN.md, "Scale
// beyond one GPU and one host"; Megatron-LM's split, vLLM's rules for head
// counts). With N ranks, rank r holds:
//   qkv_proj      its q heads H/N and its kv heads, rows taken per part
//                 [q heads | k heads | v heads] (never one contiguous slice of
//                 the fused matrix); Hkv ≥ N: Hkv/N kv heads each; Hkv < N
//                 (N a multiple of Hkv): one kv head, kv head r / (N / Hkv),
//                 replicated over the N / Hkv ranks whose q heads read it
//   o_proj        the columns of its q heads (row parallel: partial sums,
//                 one all-reduce)
//   gate_up_proj  gate rows r·I/N .. and the same up rows (gate and up split
//                 separately, so that silu(gate) · up stays local)
//   down_proj     the columns r·I/N .. (row parallel, one all-reduce)
//   lm_head       vocabulary rows r·V/N .. (all-gather of the logits);
//                 tied: those rows of the embedding
//   embedding, norms: whole (replicated)
// LoRA follows its base weight: column-parallel modules (qkv, gate_up,
// lm_head) keep A whole and take B's rows as the base rows; row-parallel
// ones (o, down) take A's columns as the base columns and keep B whole, so
// that s · B (A_r x_r) is this rank's share of s · B (A x) and rides in the
// module's own all-reduce (no collective of its own, no gathered input).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/communicator.h"
#include "core/status.h"
#include "model/config.h"
#include "model/linear.h"

namespace philora::model {

// How tensor parallelism splits a weight (out, in) (weight_specs says which).
enum class Split {
  replicated,  // whole on every rank
  qkv_heads,   // rows of the rank's q heads, then of its k heads, then of its v heads
  gate_up,     // rows of the rank's share of gate, then the same share of up
  row,         // the rank's share of the columns (the input): row parallel
  vocab,       // the rank's share of the rows (the vocabulary)
};

struct TpShard {
  int64_t rank = 0;
  int64_t world = 1;
};

// Whether `config` splits over `world` ranks: every count that is split must
// divide (query heads, intermediate size, vocabulary) and the kv heads must
// either divide over the ranks or divide the ranks (then they are
// replicated); the error names the counts.
Status check_tensor_parallel(const Phi3Config& config, int64_t world);
// The same check for constructors (a sharded model, its weights, its adapter
// slots): throws std::invalid_argument with check_tensor_parallel's message.
void require_tensor_parallel(const Phi3Config& config, int64_t world);

// A rank's own sizes: H/N heads, its kv heads, I/N, V/N; the rest as given.
// (What its RoPE, KV cache and LoRA tables are built from.)
Phi3Config shard_config(const Phi3Config& config, int64_t world);

struct HeadRange {
  int64_t first = 0;
  int64_t count = 0;
};
HeadRange q_heads_of(const Phi3Config& config, TpShard shard);
HeadRange kv_heads_of(const Phi3Config& config, TpShard shard);

// The part of a matrix a rank holds: `ranges` [begin, end) of rows (dim 0) or
// of columns (dim 1), concatenated in order; whole when `ranges` is empty.
struct TensorSlice {
  int dim = 0;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  bool whole() const { return ranges.empty(); }
};
// The slice of a weight of `shape` (out, in) or [n] that `split` gives `shard`.
TensorSlice weight_slice(Split split, const std::vector<int64_t>& shape, const Phi3Config& config,
                         TpShard shard);
// A host copy of that slice of `host` (any dtype); `host` itself when whole.
Tensor take_slice(const Tensor& host, const TensorSlice& slice);

// How a LoRA target's base weight is split (lm_head: vocab).
Split lora_split(LoraTarget target);
// Rank `shard`'s A (r, in) and B (out, r) of a module of `target`: B's rows
// as the base rows for a column-parallel module, A's columns as the base
// columns for a row-parallel one; host copies (the pair itself with one rank).
std::pair<Tensor, Tensor> shard_lora(LoraTarget target, const Tensor& a, const Tensor& b,
                                     const Phi3Config& config, TpShard shard);

// The rank a forward runs as; world 1 (no communicator) is the plain model.
struct TpContext {
  int64_t rank = 0;
  int64_t world = 1;
  Communicator* comm = nullptr;
};

// acc += linear(x, W, lora) summed over the ranks, for a row-parallel module
// whose x and W's columns are split (o_proj, down_proj):
//   rank 0:   acc = acc + W_0 x_0 + s · B (A_0 x_0)   (linear_add)
//   rank r>0: acc =       W_r x_r + s · B (A_r x_r)   (linear)
//   then all_reduce_sum(acc): every rank holds acc + Σ_r (W_r x_r + s B A_r x_r).
inline void add_row_parallel(Backend& ops, const TpContext& tp, const LinearInput& x, const Tensor& w,
                             const LoraApply& lora, Tensor& acc) {
  if (tp.world == 1) return linear_add(ops, x, w, lora, acc);
  if (tp.rank == 0) {
    linear_add(ops, x, w, lora, acc);
  } else {
    acc = linear(ops, x, w, lora);
  }
  tp.comm->all_reduce_sum(acc);
}

// linear(x, W, lora) for a vocabulary-parallel lm_head: each rank's
// (R, V/N) columns, gathered into (R, V) on rank 0, the one that samples;
// the other ranks return their own (R, V/N) part (which nobody reads).
inline Tensor linear_vocab_parallel(Backend& ops, const TpContext& tp, const Tensor& x,
                                    const Tensor& w, const LoraApply& lora) {
  Tensor part = linear(ops, x, w, lora);
  if (tp.world == 1) return part;
  if (tp.rank != 0) {
    tp.comm->gather_cols(part, nullptr);
    return part;
  }
  Tensor all = ops.alloc(part.dtype, {part.rows(), part.cols() * tp.world});
  tp.comm->gather_cols(part, &all);
  return all;
}

}  // namespace philora::model
