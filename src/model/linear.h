// The one entry point for every matmul of the model; LoRA lives here.
#pragma once

#include "backend/backend.h"

namespace philora::model {

// Which LoRA (if any) applies to one linear module this step.
struct LoraApply {
  const LoraModuleTable* table = nullptr;  // slots seen from this module; null = none resident
  const LoraBatch* batch = nullptr;        // each token's slot
};

// Semantics, per token t with adapter slot s = slot(t):
//   y[t] = W x[t]                                   (s = -1 or rank_s = 0 here)
//   y[t] = W x[t] + scale_s · B_s (A_s x[t])        otherwise
// A batch in which no token uses an adapter does no LoRA work at all.
inline Tensor linear(Backend& ops, const Tensor& x, const Tensor& w, const LoraApply& lora) {
  if (!lora.table || !lora.batch || !lora.batch->active) return ops.matmul(x, w);
  // The adapters' part first, then the matmul adds W x to it. On CUDA the
  // shrink and the delta follow the op that produced x, each starting (and
  // loading its adapter matrices) while the op before it drains.
  const Tensor xa = ops.lora_shrink(x, *lora.table, *lora.batch);
  Tensor y = ops.lora_delta(xa, *lora.table, *lora.batch);
  ops.matmul_add(x, w, y);
  return y;
}

// A module's LoRA delta, scale·B·A x, computed on the backend's side queue
// (Backend::side_begin) while the caller runs the base matmul on x; `delta` is
// empty when no token's adapter touches the module. The tensors stay here
// until the caller joins the side and uses the delta.
struct SideDelta {
  Tensor x, xa, delta;
};

inline SideDelta side_delta(Backend& ops, const Tensor& x, const LoraApply& lora) {
  SideDelta side;
  if (!lora.table || !lora.batch || !lora.batch->active) return side;
  ops.side_begin();
  side.x = x;
  side.xa = ops.lora_shrink(x, *lora.table, *lora.batch);
  side.delta = ops.lora_delta(side.xa, *lora.table, *lora.batch);
  ops.side_end();
  return side;
}

}  // namespace philora::model
