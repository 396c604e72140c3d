// The one entry point for every matmul of the model; LoRA lives here.
#pragma once

#include <utility>

#include "backend/backend.h"

namespace philora::model {

// Which LoRA (if any) applies to one linear module this step.
struct LoraApply {
  const LoraModuleTable* table = nullptr;  // slots seen from this module; null = none resident
  const LoraBatch* batch = nullptr;        // each token's slot
};

// Whether this module applies LoRA through its weight's LoRA columns this step:
// X = [x | scale · A x in the token's slot columns], then one matmul.
inline bool lora_columns(const LoraApply& lora) {
  return lora.batch->lora_columns > 0 && !lora.table->col_offsets.empty();
}

// A linear module's input: x itself, or the tensor an elementwise prologue
// (the norm before qkv and gate_up, SiLU·mul before down) makes x from, so
// that the backend may fuse the prologue into the matmul or the shrink.
struct LinearInput {
  Tensor src;
  Prologue prologue;
  LinearInput(Tensor x) : src(std::move(x)) {}  // NOLINT: a plain x converts
  LinearInput(Tensor s, Prologue p) : src(std::move(s)), prologue(std::move(p)) {}
};

// Semantics, per token t with adapter slot s = slot(t):
//   y[t] = W x[t]                                   (s = -1 or rank_s = 0 here)
//   y[t] = W x[t] + scale_s · B_s (A_s x[t])        otherwise
// A batch in which no token uses an adapter does no LoRA work at all. W may
// be a weight with LoRA columns (out, in + C); its leading `in` are W.

inline Tensor linear(Backend& ops, const LinearInput& in, const Tensor& w, const LoraApply& lora) {
  if (!lora.table || !lora.batch || !lora.batch->active) return ops.fused_matmul(in.src, in.prologue, w);
  if (lora_columns(lora))
    return ops.matmul(ops.lora_shrink_columns(ops.apply_prologue(in.src, in.prologue), *lora.table, *lora.batch), w);
  // The adapters' part first, then the matmul adds W x to it. On CUDA the
  // shrink and the delta follow the op that produced x, each starting (and
  // loading its adapter matrices) while the op before it drains.
  const Tensor x = ops.apply_prologue(in.src, in.prologue);
  const Tensor xa = ops.lora_shrink(x, *lora.table, *lora.batch);
  Tensor y = ops.lora_delta(xa, *lora.table, *lora.batch);
  ops.matmul_add(x, w, y);
  return y;
}

// acc += linear(x, W, lora), in place: the residual stream's update. The matmul
// adds into acc (beta = 1), so the norm that follows reads one tensor, not two.
inline void linear_add(Backend& ops, const LinearInput& in, const Tensor& w, const LoraApply& lora, Tensor& acc) {
  if (lora.table && lora.batch && lora.batch->active) {
    if (lora_columns(lora)) {
      ops.matmul_add(ops.lora_shrink_columns(ops.apply_prologue(in.src, in.prologue), *lora.table, *lora.batch), w,
                     acc);
      return;
    }
    const Tensor x = ops.apply_prologue(in.src, in.prologue);
    const Tensor xa = ops.lora_shrink(x, *lora.table, *lora.batch);
    ops.lora_expand(xa, *lora.table, *lora.batch, acc, 0);
    ops.matmul_add(x, w, acc);
    return;
  }
  ops.fused_matmul_add(in.src, in.prologue, w, acc);
}

}  // namespace philora::model
