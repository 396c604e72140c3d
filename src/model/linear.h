// The one entry point for every matmul of the model; LoRA lives here.
#pragma once

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

// Semantics, per token t with adapter slot s = slot(t):
//   y[t] = W x[t]                                   (s = -1 or rank_s = 0 here)
//   y[t] = W x[t] + scale_s · B_s (A_s x[t])        otherwise
// A batch in which no token uses an adapter does no LoRA work at all. W may
// be a weight with LoRA columns (out, in + C); its leading `in` are W.

inline Tensor linear(Backend& ops, const Tensor& x, const Tensor& w, const LoraApply& lora) {
  if (!lora.table || !lora.batch || !lora.batch->active) return ops.matmul(x, w);
  if (lora_columns(lora)) return ops.matmul(ops.lora_shrink_columns(x, *lora.table, *lora.batch), w);
  // The adapters' part first, then the matmul adds W x to it. On CUDA the
  // shrink and the delta follow the op that produced x, each starting (and
  // loading its adapter matrices) while the op before it drains.
  const Tensor xa = ops.lora_shrink(x, *lora.table, *lora.batch);
  Tensor y = ops.lora_delta(xa, *lora.table, *lora.batch);
  ops.matmul_add(x, w, y);
  return y;
}

// acc += linear(x, W, lora), in place: the residual stream's update. The matmul
// adds into acc (beta = 1), so the norm that follows reads one tensor, not two.
inline void linear_add(Backend& ops, const Tensor& x, const Tensor& w, const LoraApply& lora, Tensor& acc) {
  if (lora.table && lora.batch && lora.batch->active) {
    if (lora_columns(lora)) {
      ops.matmul_add(ops.lora_shrink_columns(x, *lora.table, *lora.batch), w, acc);
      return;
    }
    const Tensor xa = ops.lora_shrink(x, *lora.table, *lora.batch);
    ops.lora_expand(xa, *lora.table, *lora.batch, acc, 0);
  }
  ops.matmul_add(x, w, acc);
}

}  // namespace philora::model
