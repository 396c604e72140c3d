// A matmul with its LoRA: y = W x + scale·B·A x for each token's adapter.
#pragma once

#include "backend/backend.h"

namespace philora::model {

// linear() below, given the shrink xa = A x already computed (by the op that
// made x: rms_norm_shrink). The adapters' part first, then the matmul adds W x
// to it: on CUDA the delta follows the op that produced x and loads B while
// that op drains.
inline Tensor linear_shrunk(Backend& ops, const Tensor& x, const Tensor& w, const LoraPart& lora,
                            const Tensor& xa) {
  if (!lora.active()) return ops.matmul(x, w);
  Tensor y = ops.lora_delta(xa, *lora.table, *lora.batch);
  ops.matmul_add(x, w, y);
  return y;
}

// Semantics, per token t with adapter slot s = slot(t):
//   y[t] = W x[t]                                   (s = -1 or rank_s = 0 here)
//   y[t] = W x[t] + scale_s · B_s (A_s x[t])        otherwise
// A batch in which no token uses an adapter does no LoRA work at all.
inline Tensor linear(Backend& ops, const Tensor& x, const Tensor& w, const LoraPart& lora) {
  if (!lora.active()) return ops.matmul(x, w);
  return linear_shrunk(ops, x, w, lora, ops.lora_shrink(x, *lora.table, *lora.batch));
}

// acc += linear(x, W, lora), in place: the residual stream's update, given the
// shrink xa (computed here when empty). The matmul adds into acc (beta = 1), so
// the norm that follows reads one tensor, not two.
inline void linear_add(Backend& ops, const Tensor& x, const Tensor& w, const LoraPart& lora, Tensor& acc,
                       const Tensor& xa = Tensor()) {
  if (lora.active())
    ops.lora_expand(xa.empty() ? ops.lora_shrink(x, *lora.table, *lora.batch) : xa, *lora.table, *lora.batch,
                    acc, 0);
  ops.matmul_add(x, w, acc);
}

}  // namespace philora::model
