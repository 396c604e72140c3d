#include <algorithm>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_lora.cuh"

namespace philora::cuda {

namespace {

constexpr int kTile = 16;          // tokens per unit when grouping by segments
constexpr int kShrinkRanks = 16;   // rank rows per shrink block (4 warps x 4)
constexpr int kShrinkK = 1024;     // input features per shrink block (split-K)
constexpr int kShrinkThreads = 128;
constexpr int kExpandThreads = 256;

struct Unit {
  int t0, t1, slot;
};

// The tokens [t0, t1) of unit u and the slot they share.
__device__ __forceinline__ Unit unit_of(const LoraLaunch& l, int u, int tiles) {
  if (!l.by_segment) return {u, u + 1, l.token_slot[u]};
  const int g = u / tiles, tile = u % tiles;
  const int b = l.seg_indptr[g] + tile * kTile;
  return {b, min(l.seg_indptr[g + 1], b + kTile), l.seg_slot[g]};
}

// grid (units, ceil(max_rank / kShrinkRanks), ceil(in / kShrinkK)). Each warp
// holds a slice of one row of A in registers and dots it with every token of
// the unit; partial sums over K go to xa with atomicAdd.
template <bool kVec>
__global__ void __launch_bounds__(kShrinkThreads) lora_shrink_kernel(LoraLaunch l, const bf16* __restrict__ x,
                                                                     float* __restrict__ xa,
                                                                     int64_t xa_stride, int tiles) {
  const Unit u = unit_of(l, blockIdx.x, tiles);
  if (u.slot < 0 || u.t0 >= u.t1) return;
  const int r = min(int64_t(l.ranks[u.slot]), xa_stride);
  const int j0 = blockIdx.y * kShrinkRanks;
  if (j0 >= r) return;
  const int j1 = min(r, j0 + kShrinkRanks);
  const int64_t in = l.in_features;
  const int64_t k0 = int64_t(blockIdx.z) * kShrinkK, k1 = min(in, k0 + kShrinkK);
  const bf16* A = reinterpret_cast<const bf16*>(l.a_ptrs[u.slot]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int kVecs = kShrinkK / 256;  // 16-byte vectors per lane
  for (int j = j0 + warp; j < j1; j += kShrinkThreads / 32) {
    const bf16* arow = A + int64_t(j) * in;
    if constexpr (kVec) {
      float af[kVecs][8];
#pragma unroll
      for (int v = 0; v < kVecs; ++v) {
        const int64_t k = k0 + (v * 32 + lane) * 8;
        if (k < k1) {
          bf16x8_to_f32(*reinterpret_cast<const uint4*>(arow + k), af[v]);
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e) af[v][e] = 0.0f;
        }
      }
      for (int m = u.t0; m < u.t1; ++m) {
        const bf16* xrow = x + int64_t(m) * in;
        float acc = 0.0f;
#pragma unroll
        for (int v = 0; v < kVecs; ++v) {
          const int64_t k = k0 + (v * 32 + lane) * 8;
          if (k < k1) {
            float xf[8];
            bf16x8_to_f32(*reinterpret_cast<const uint4*>(xrow + k), xf);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc += xf[e] * af[v][e];
          }
        }
        acc = warp_sum(acc);
        if (lane == 0) atomicAdd(xa + int64_t(m) * xa_stride + j, acc);
      }
    } else {
      for (int m = u.t0; m < u.t1; ++m) {
        const bf16* xrow = x + int64_t(m) * in;
        float acc = 0.0f;
        for (int64_t k = k0 + lane; k < k1; k += 32)
          acc += __bfloat162float(xrow[k]) * __bfloat162float(arow[k]);
        acc = warp_sum(acc);
        if (lane == 0) atomicAdd(xa + int64_t(m) * xa_stride + j, acc);
      }
    }
  }
}

// grid (units, ceil(out / kExpandThreads)). Thread j holds row j of B (r ≤ R
// values) in registers and updates column col_offset + j of every token of the
// unit; the unit's xa rows sit in shared memory.
template <int R>
__global__ void __launch_bounds__(kExpandThreads) lora_expand_kernel(LoraLaunch l, const float* __restrict__ xa,
                                                                     int64_t xa_stride, bf16* __restrict__ y,
                                                                     int64_t y_stride, int64_t col_offset,
                                                                     int tiles) {
  __shared__ __align__(16) float xs[kTile][R];
  const Unit u = unit_of(l, blockIdx.x, tiles);
  if (u.slot < 0 || u.t0 >= u.t1) return;
  const int r = min(int64_t(min(l.ranks[u.slot], R)), xa_stride);
  if (r <= 0) return;
  const int n = u.t1 - u.t0;
  for (int i = threadIdx.x; i < n * R; i += kExpandThreads) {
    const int m = i / R, k = i % R;
    xs[m][k] = k < r ? xa[int64_t(u.t0 + m) * xa_stride + k] : 0.0f;
  }
  __syncthreads();
  const int64_t j = int64_t(blockIdx.y) * kExpandThreads + threadIdx.x;
  if (j >= l.out_features) return;
  const bf16* brow = reinterpret_cast<const bf16*>(l.b_ptrs[u.slot]) + j * r;
  __nv_bfloat162 b[R / 2];
  if ((r & 7) == 0) {
#pragma unroll
    for (int v = 0; v < R / 8; ++v) {
      Bf16x8 w;
      w.u = v * 8 < r ? *reinterpret_cast<const uint4*>(brow + v * 8) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int e = 0; e < 4; ++e) b[v * 4 + e] = w.h[e];
    }
  } else {
    const bf16 zero = __float2bfloat16_rn(0.0f);
#pragma unroll
    for (int k = 0; k < R / 2; ++k) {
      b[k].x = 2 * k < r ? brow[2 * k] : zero;
      b[k].y = 2 * k + 1 < r ? brow[2 * k + 1] : zero;
    }
  }
  const float scale = l.scales[u.slot];
  for (int m = 0; m < n; ++m) {
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < R / 2; ++k) {
      const float2 bf = __bfloat1622float2(b[k]);
      const float2 xv = *reinterpret_cast<const float2*>(&xs[m][2 * k]);
      acc += bf.x * xv.x + bf.y * xv.y;
    }
    bf16* dst = y + int64_t(u.t0 + m) * y_stride + col_offset + j;
    *dst = __float2bfloat16_rn(__bfloat162float(*dst) + scale * acc);
  }
}

int64_t num_units(const LoraLaunch& l, int* tiles) {
  if (!l.by_segment) {
    *tiles = 1;
    return l.num_tokens;
  }
  *tiles = int(ceil_div(l.num_tokens, kTile));
  return l.num_segments * *tiles;
}

}  // namespace

void launch_lora_shrink(const LoraLaunch& l, const void* x, float* xa, int64_t xa_stride,
                        cudaStream_t stream) {
  if (l.num_tokens == 0) return;
  PHILORA_CUDA_CHECK(cudaMemsetAsync(xa, 0, size_t(l.num_tokens * xa_stride) * sizeof(float), stream));
  if (l.max_rank == 0 || l.in_features == 0) return;
  int tiles = 1;
  const int64_t units = num_units(l, &tiles);
  if (units == 0) return;
  const dim3 grid(unsigned(units), unsigned(ceil_div(std::min<int64_t>(l.max_rank, xa_stride), kShrinkRanks)),
                  unsigned(ceil_div(l.in_features, kShrinkK)));
  const auto* xb = static_cast<const bf16*>(x);
  if (l.in_features % 8 == 0 && aligned16(x))
    lora_shrink_kernel<true><<<grid, kShrinkThreads, 0, stream>>>(l, xb, xa, xa_stride, tiles);
  else
    lora_shrink_kernel<false><<<grid, kShrinkThreads, 0, stream>>>(l, xb, xa, xa_stride, tiles);
  PHILORA_CUDA_CHECK_LAUNCH();
}

void launch_lora_expand(const LoraLaunch& l, const float* xa, int64_t xa_stride, void* y,
                        int64_t y_stride, int64_t col_offset, cudaStream_t stream) {
  if (l.num_tokens == 0 || l.max_rank == 0 || l.out_features == 0) return;
  if (l.max_rank > kLoraMaxRank)
    throw_unsupported("lora_expand: rank " + std::to_string(l.max_rank) + " (at most " +
                      std::to_string(kLoraMaxRank) + ")");
  int tiles = 1;
  const int64_t units = num_units(l, &tiles);
  if (units == 0) return;
  const dim3 grid(unsigned(units), unsigned(ceil_div(l.out_features, kExpandThreads)));
  auto* yb = static_cast<bf16*>(y);
  if (l.max_rank <= 16)
    lora_expand_kernel<16><<<grid, kExpandThreads, 0, stream>>>(l, xa, xa_stride, yb, y_stride, col_offset, tiles);
  else if (l.max_rank <= 32)
    lora_expand_kernel<32><<<grid, kExpandThreads, 0, stream>>>(l, xa, xa_stride, yb, y_stride, col_offset, tiles);
  else if (l.max_rank <= 64)
    lora_expand_kernel<64><<<grid, kExpandThreads, 0, stream>>>(l, xa, xa_stride, yb, y_stride, col_offset, tiles);
  else
    lora_expand_kernel<128><<<grid, kExpandThreads, 0, stream>>>(l, xa, xa_stride, yb, y_stride, col_offset, tiles);
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace philora::cuda
