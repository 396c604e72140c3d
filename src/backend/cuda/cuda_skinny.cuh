// Skinny GEMM for decode-sized products (issue 19): y (m, n) = x (m, k) · w[:, :k]ᵀ,
// or y += x · w[:, :k]ᵀ, for m ≤ kSkinnyMaxM rows; w row-major (n, ldw ≥ k), bf16
// in and out, f32 accumulation.
//
// The work is units of (32 rows of w, 256 k): two 16-row tiles of mma.sync
// m16n8k16 (w as the A operand, the m rows of x as B in tiles of 8). Stream-K:
// the grid is as many blocks as the SMs hold at once, and each block takes an
// equal contiguous range of the units in row-major order, so no block waits in
// a second wave; w and x stream through shared memory one unit a stage
// (cp.async, 4 stages, 3 in flight: 48 KB of w a block (3 stages at m > 32), across row blocks
// without a pause), the block's four warps take 64 k of each unit and meet in
// shared memory at the end of a row block's segment. Every byte of w is read
// once; x is read once per unit. A row block whose k range two or more blocks
// share gets f32 partials from each, and the last to finish (a counter it
// resets) sums them in k order, so the result is the same bits on every run
// for a given grid.
//
// At m ≤ kSkinnyGemvMaxM the same entry points run a register-direct GEMV
// instead (cuda_skinny.cu: warps own whole rows of w and stream them into
// registers, x in shared memory; no split-K, no workspace).
//
// Programmatic dependent launch: the kernel lets its successor launch at once,
// and loads its first stages of w (weights: nothing in a step writes them)
// before it waits for the kernel before it; x, y and the workspace after.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/cuda_elementwise.cuh"

namespace philora::cuda {

inline constexpr int kSkinnyMaxM = 64;
inline constexpr int kSkinnyGemvMaxM = 4;
inline constexpr int kSkinnyRows = 32;           // rows of w a block
inline constexpr int kSkinnyStepK = 256;         // k a pipeline stage
inline constexpr int kSkinnyCounters = 1 << 16;  // row blocks at most (n ≤ 2M)

struct SkinnyGemmArgs {
  const void* x = nullptr;  // (m, k) bf16, rows k apart; with a prologue its source
  const void* w = nullptr;  // (n, ldw) bf16
  void* y = nullptr;        // (m, n) bf16
  int64_t m = 0, n = 0, k = 0, ldw = 0;
  bool accumulate = false;  // y += x · wᵀ instead of y =
  // The GEMV (m ≤ kSkinnyGemvMaxM) only: x = the prologue applied to the
  // source at `x` — rms_norm of (m, k), or silu_mul of gate_up (m, 2k) — made
  // as it is staged into shared memory.
  RowPrologue prologue;
};

// Shapes and alignments the kernel takes: 1 ≤ m ≤ 64, k and ldw multiples of 8,
// x and w 16-byte aligned, n within the counters; a prologue at m ≤ 4 only.
bool skinny_gemm_supported(const SkinnyGemmArgs& a);
bool skinny_gemm_shape_ok(int64_t m, int64_t n, int64_t k,
                          int64_t ldw);  // the same, less the pointers
// The k steps of 256 (a row block's units).
int skinny_gemm_steps(int64_t k);
// Blocks of the kernel one SM holds at m rows of k (its shared memory decides).
int skinny_gemm_max_per_sm(int64_t m, int64_t k);
// The grid for `per_sm` blocks on each of `sms` SMs (at most one a unit).
int skinny_gemm_grid(const SkinnyGemmArgs& a, int sms, int per_sm);
// f32 partials of a grid (two row blocks' sums a block at most; none for the GEMV).
size_t skinny_gemm_workspace_bytes(const SkinnyGemmArgs& a, int grid);
// counters: kSkinnyCounters ints, zero before the first launch (each launch
// leaves them zero); workspace: skinny_gemm_workspace_bytes (may be null when 0).
void launch_skinny_gemm(const SkinnyGemmArgs& a, int grid, float* workspace, int* counters,
                        cudaStream_t stream);

}  // namespace philora::cuda
