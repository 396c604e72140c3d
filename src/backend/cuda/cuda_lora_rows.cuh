// Device pieces of the folded LoRA (cuda_lora.cuh, LoraFold) for kernels that
// own a token's row, split over the blocks of a cluster: a token's adapter on
// one module, staging a block's share of A and B in shared memory, the delta of
// the block's columns, and the block's part of a shrink.
#pragma once

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_lora.cuh"

namespace philora::cuda {

// One token's adapter on one module; r = 0: none (no slot, or rank 0 here).
struct LoraRow {
  const bf16* a = nullptr;  // (r, in)
  const bf16* b = nullptr;  // (out, r)
  int r = 0;
  float scale = 0.0f;
};

__device__ __forceinline__ LoraRow lora_row(const LoraLaunch& l, bool on, int slot, int64_t xa_stride) {
  LoraRow row;
  if (!on || slot < 0) return row;
  const int r = int(min(int64_t(min(l.ranks[slot], kLoraMaxRank)), xa_stride));
  if (r <= 0) return row;
  row.r = r;
  row.a = reinterpret_cast<const bf16*>(l.a_ptrs[slot]);
  row.b = reinterpret_cast<const bf16*>(l.b_ptrs[slot]);
  row.scale = l.scales[slot];
  return row;
}

// Rounds eight f32 to bf16 and back (what storing them keeps); returns the bf16.
__device__ __forceinline__ uint4 round8(float* v) {
  const uint4 packed = f32_to_bf16x8(v);
  bf16x8_to_f32(packed, v);
  return packed;
}

// cp.async of `pieces` 16-byte pieces by the whole block (the caller commits and waits).
__device__ __forceinline__ void copy16_async(void* smem, const void* gmem, int64_t pieces) {
  for (int64_t p = threadIdx.x; p < pieces; p += blockDim.x)
    cp_async16(static_cast<uint4*>(smem) + p, static_cast<const uint4*>(gmem) + p, 16);
}

// Rows [col0, col0 + ncols) of B, r values each, are one contiguous run of
// ncols · r values (16-byte aligned when col0 % 8 == 0): staged whole. Rows
// [0, r) of A's columns [col0, col0 + ncols) are r runs of ncols values: staged
// as an (r, ncols) matrix.
__device__ __forceinline__ void stage_b(bf16* bs, const LoraRow& lr, int64_t col0, int ncols) {
  copy16_async(bs, lr.b + col0 * lr.r, int64_t(ncols) * lr.r / 8);
}
__device__ __forceinline__ void stage_a(bf16* as, const LoraRow& lr, int64_t in, int64_t col0, int ncols) {
  const int per_row = ncols / 8;
  for (int p = threadIdx.x; p < lr.r * per_row; p += blockDim.x) {
    const int j = p / per_row, q = p % per_row;
    cp_async16(as + int64_t(j) * ncols + q * 8, lr.a + int64_t(j) * in + col0 + q * 8, 16);
  }
}

// d[col] = scale · Σ_j run[col · r + j] · xs[j] for col < ncols, one column per
// thread in turn (consecutive threads, consecutive rows of B: coalesced).
__device__ __forceinline__ void lora_delta_cols(const LoraRow& lr, const bf16* run, int ncols, const float* xs,
                                                float* d) {
  for (int col = threadIdx.x; col < ncols; col += blockDim.x) {
    const bf16* row = run + int64_t(col) * lr.r;
    float acc = 0.0f;
    if ((lr.r & 7) == 0) {
      for (int q = 0; q < lr.r / 8; ++q) {
        float bf[8];
        bf16x8_to_f32(reinterpret_cast<const uint4*>(row)[q], bf);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc += bf[i] * xs[q * 8 + i];
      }
    } else {
      for (int j = 0; j < lr.r; ++j) acc += __bfloat162float(row[j]) * xs[j];
    }
    d[col] = lr.scale * acc;
  }
}

constexpr int kFoldMaxWarps = 32;

// The block's part of a shrink, with the block's threads in G groups of P
// (P a multiple of 32): thread i of group g takes vector i of the block's share
// (its eight inputs v, zeros when not `valid`) for the rank rows j ≡ g (mod G).
//   part[j] = Σ_i a[j · a_stride + 8i .. + 8) · v_i,  j < r
// Ends with the block synchronised and part[] written.
__device__ __forceinline__ void lora_shrink_part(int r, const bf16* a, int64_t a_stride, bool valid, const float* v,
                                                 int groups, int group_threads, float (*warp_part)[kLoraMaxRank],
                                                 float* part) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = threadIdx.x / group_threads, i = threadIdx.x % group_threads;
  const bf16* mine = a + 8 * int64_t(i);
  for (int j0 = g; j0 < r; j0 += 4 * groups) {
    uint4 av[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int j = j0 + k * groups;
      av[k] = valid && j < r ? *reinterpret_cast<const uint4*>(mine + int64_t(j) * a_stride) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int j = j0 + k * groups;
      if (j < r) {  // uniform over the warp (one group per warp)
        float af[8];
        bf16x8_to_f32(av[k], af);
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot += af[e] * v[e];
        dot = warp_sum(dot);
        if (lane == 0) warp_part[warp][j] = dot;
      }
    }
  }
  __syncthreads();
  const int group_warps = group_threads / 32;
  for (int j = threadIdx.x; j < r; j += blockDim.x) {
    const int w0 = (j % groups) * group_warps;
    float s = 0.0f;
    for (int w = w0; w < w0 + group_warps; ++w) s += warp_part[w][j];
    part[j] = s;
  }
  __syncthreads();
}

}  // namespace philora::cuda
