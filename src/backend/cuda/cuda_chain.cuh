// GEMV chain (issue 19): several m = 1 matmuls that read each other's outputs
// — a decode layer's o, gate_up, down and the next layer's qkv — in one
// persistent launch instead of one launch each.
//
// Why: a GEMV of 6-20 µs loses 2-3 µs to its ramp (the first loads' DRAM
// latency) and its drain (the last warps' tails), and programmatic dependent
// launch cannot overlap them where two GEMV blocks fill an SM (dev/cuda/NOTES.md,
// sessions 9-12). Here one block an SM runs the stages in turn with a
// grid-wide barrier between them (each stage reads a whole vector the stage
// before wrote), and the weights, which no stage writes, stream on into the
// next stage's rows while a block waits at the barrier: each warp keeps a ring
// of shared-memory slots, one 2 KB row chunk a slot, filled kDepth - 1
// iterations ahead of its products.
//
// The same function as the GEMV, bit for bit: a row of w is summed by one warp,
// lane j adding pieces j, j + 32, j + 64, … of the row in turn, then a
// butterfly; the prologues (RMSNorm, SiLU·mul) are cuda_common.cuh's.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/cuda_elementwise.cuh"

namespace philora::cuda {

inline constexpr int kChainMaxStages = 8;
inline constexpr int kChainMaxK = 8192;  // x of a stage sits in shared memory

// One stage: y (1, n) = x · w[:, :k]ᵀ (+ y with accumulate), x = the prologue
// applied to src (rms_norm of src (1, k), silu_mul of src (1, 2k), or src).
struct ChainStage {
  const void* w = nullptr;  // (n, ldw) bf16
  const void* src = nullptr;
  void* y = nullptr;
  int32_t n = 0, k = 0;
  int64_t ldw = 0;
  int32_t accumulate = 0;
  RowPrologue prologue;
};

struct ChainArgs {
  ChainStage stages[kChainMaxStages];
  int32_t num_stages = 0;
  unsigned* barrier = nullptr;  // zero before a launch; every launch leaves it zero
};

// Whether a stage fits the kernel: k ≤ kChainMaxK, k and ldw multiples of 8,
// w, src and the norm weight 16-byte aligned.
bool chain_stage_supported(const ChainStage& s);
// Launches the chain (1 ≤ num_stages ≤ kChainMaxStages), one block on each
// of `sms` SMs, chained to the kernel before it (programmatic dependent launch:
// its first weight loads go out before it waits).
void launch_gemv_chain(const ChainArgs& a, int sms, cudaStream_t stream);

}  // namespace philora::cuda
