#include <algorithm>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_lora.cuh"

namespace philora::cuda {

namespace {

constexpr int kTile = 16;          // tokens per unit when grouping by segments
constexpr int kShrinkWarps = 4;    // one rank row per warp
constexpr int kShrinkThreads = 32 * kShrinkWarps;
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

// grid (units, ceil(max_rank / kShrinkWarps), k_splits). Warp w computes rank
// row j = blockIdx.y · 4 + w of A for every token of the unit over the
// block's slice of the input features: A is streamed once, each 16-byte vector
// of it meeting the unit's x rows (from L1/L2). With one K split the sums are
// stored; with several they are added into the zeroed xa.
template <bool kVec>
__global__ void __launch_bounds__(kShrinkThreads) lora_shrink_kernel(LoraLaunch l, const bf16* __restrict__ x,
                                                                     float* __restrict__ xa,
                                                                     int64_t xa_stride, int tiles,
                                                                     int64_t k_chunk, bool atomic) {
  chained_prologue();
  const Unit u = unit_of(l, blockIdx.x, tiles);
  if (u.slot < 0 || u.t0 >= u.t1) return;
  const int r = min(int64_t(l.ranks[u.slot]), xa_stride);
  const int lane = threadIdx.x & 31;
  const int j = blockIdx.y * kShrinkWarps + (threadIdx.x >> 5);
  if (j >= r) return;
  const int64_t in = l.in_features;
  const int64_t k0 = int64_t(blockIdx.z) * k_chunk, k1 = min(in, k0 + k_chunk);
  const bf16* arow = reinterpret_cast<const bf16*>(l.a_ptrs[u.slot]) + int64_t(j) * in;
  const bf16* xu = x + int64_t(u.t0) * in;
  const int n = u.t1 - u.t0;
  float acc[kTile];
#pragma unroll
  for (int m = 0; m < kTile; ++m) acc[m] = 0.0f;
  if constexpr (kVec) {
    // Four 16-byte vectors of A (and of each x row) in flight per lane.
    for (int64_t kb = k0 + lane * 8; kb < k1; kb += 4 * 256) {
      uint4 av[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        av[i] = kb + i * 256 < k1 ? *reinterpret_cast<const uint4*>(arow + kb + i * 256) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int m = 0; m < kTile; ++m) {
        if (m < n) {
          uint4 xv[4];
#pragma unroll
          for (int i = 0; i < 4; ++i)
            xv[i] = kb + i * 256 < k1 ? *reinterpret_cast<const uint4*>(xu + m * in + kb + i * 256)
                                      : make_uint4(0, 0, 0, 0);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float af[8], xf[8];
            bf16x8_to_f32(av[i], af);
            bf16x8_to_f32(xv[i], xf);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[m] += xf[e] * af[e];
          }
        }
      }
    }
  } else {
    for (int64_t k = k0 + lane; k < k1; k += 32) {
      const float a = __bfloat162float(arow[k]);
#pragma unroll
      for (int m = 0; m < kTile; ++m)
        if (m < n) acc[m] += __bfloat162float(xu[m * in + k]) * a;
    }
  }
#pragma unroll
  for (int m = 0; m < kTile; ++m) {
    if (m < n) {
      const float v = warp_sum(acc[m]);
      if (lane == 0) {
        float* dst = xa + int64_t(u.t0 + m) * xa_stride + j;
        if (atomic)
          atomicAdd(dst, v);
        else
          *dst = v;
      }
    }
  }
}

// Per token (decode), 16-byte aligned rows: grid (T, ceil(max_rank / rows)),
// block rows × chunks warps (≤ 1024 threads). Warp (j, c) makes one pass —
// kTokenLoads 16-byte loads of A and of x per lane — over the inputs
// [c · kTokenChunk, (c + 1) · kTokenChunk) of rank row j; the chunks meet in
// shared memory. The warp-per-row kernel above walks K in 3 to 8 passes with
// only ~8 warps per SM (ncu: 83% of cycles with no eligible warp); this one
// has many more warps, each with one pass, and no atomics.
constexpr int kTokenLoads = 4;  // 1 and 2 (more, shorter warps) measured no better
constexpr int kTokenChunk = 256 * kTokenLoads;
constexpr int kTokenMaxWarps = 32;

// Rank rows per block for `chunks` chunks a row: up to 4, within 32 warps.
inline int token_rows(int64_t chunks) { return int(std::clamp<int64_t>(kTokenMaxWarps / chunks, 1, 4)); }

// LoRA columns (kColumns): instead of xa, the row t of X (T, ld) = [x[t] |
// columns]: block y = 0 copies x[t] and zeroes every column but the slot's
// r, which the blocks write as bf16(scale · xa).
struct ColumnsOut {
  bf16* x = nullptr;                 // X (T, ld)
  int64_t ld = 0;                    // in + width
  const int32_t* offsets = nullptr;  // [slots]
  int width = 0;
};

__device__ __forceinline__ void fill_columns_row(const ColumnsOut& c, const bf16* __restrict__ x, int64_t in, int t,
                                                 int off, int r) {
  bf16* row = c.x + int64_t(t) * c.ld;
  const bf16* xr = x + int64_t(t) * in;
  for (int64_t i = int64_t(threadIdx.x) * 8; i < in; i += int64_t(blockDim.x) * 8)
    *reinterpret_cast<uint4*>(row + i) = *reinterpret_cast<const uint4*>(xr + i);
  const bf16 zero = __float2bfloat16_rn(0.0f);
  for (int j = threadIdx.x; j < c.width; j += blockDim.x)
    if (j < off || j >= off + r) row[in + j] = zero;
}

template <bool kColumns>
__global__ void __launch_bounds__(32 * kTokenMaxWarps)
    lora_shrink_token_kernel(LoraLaunch l, const bf16* __restrict__ x, float* __restrict__ xa,
                             int64_t xa_stride, int chunks, int rows, ColumnsOut cols) {
  // A's rows (adapter weights) and the plan are written before the step: they
  // load before waiting on the kernel before; x (its output) after.
  chained_launch();
  __shared__ float part[kTokenMaxWarps];
  const int t = blockIdx.x;
  const int slot = l.token_slot[t];
  const int r = slot < 0 ? 0 : int(min(int64_t(l.ranks[slot]), xa_stride));
  const int off = kColumns && slot >= 0 ? cols.offsets[slot] : 0;
  const int j0 = blockIdx.y * rows;
  if (j0 >= r) {  // the whole block's exit; it still waits, so that this grid
    chained_wait();  // ends after the kernel before it, as the next one assumes
    if constexpr (kColumns)
      if (blockIdx.y == 0) fill_columns_row(cols, x, l.in_features, t, off, r);
    return;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int jl = warp % rows, c = warp / rows, j = j0 + jl;
  const int64_t in = l.in_features;
  const int64_t kb = int64_t(c) * kTokenChunk + lane * 8;
  uint4 av[kTokenLoads];
  if (j < r) {
    const bf16* arow = reinterpret_cast<const bf16*>(l.a_ptrs[slot]) + int64_t(j) * in;
#pragma unroll
    for (int i = 0; i < kTokenLoads; ++i) {
      const int64_t k = kb + i * 256;
      av[i] = k < in ? *reinterpret_cast<const uint4*>(arow + k) : make_uint4(0, 0, 0, 0);
    }
  }
  chained_wait();
  if constexpr (kColumns)
    if (blockIdx.y == 0) fill_columns_row(cols, x, in, t, off, r);
  float acc = 0.0f;
  if (j < r) {
    const bf16* xr = x + int64_t(t) * in;
    uint4 xv[kTokenLoads];
#pragma unroll
    for (int i = 0; i < kTokenLoads; ++i) {
      const int64_t k = kb + i * 256;
      xv[i] = k < in ? *reinterpret_cast<const uint4*>(xr + k) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < kTokenLoads; ++i) {
      float af[8], xf[8];
      bf16x8_to_f32(av[i], af);
      bf16x8_to_f32(xv[i], xf);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc += xf[e] * af[e];
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) part[warp] = acc;
  __syncthreads();
  if (int(threadIdx.x) < rows && j0 + int(threadIdx.x) < r) {
    float v = 0.0f;
    for (int k = 0; k < chunks; ++k) v += part[k * rows + threadIdx.x];
    if constexpr (kColumns)
      cols.x[int64_t(t) * cols.ld + in + off + j0 + threadIdx.x] = __float2bfloat16_rn(l.scales[slot] * v);
    else
      xa[int64_t(t) * xa_stride + j0 + threadIdx.x] = v;
  }
}

// grid (units, ceil(out / kExpandThreads)). Thread j holds row j of B (r ≤ R
// values) in registers and updates column col_offset + j of every token of the
// unit; the unit's xa rows sit in shared memory.
// kWrite: y is written (0 for tokens without an adapter), not added to.
template <int R, bool kWrite>
__global__ void __launch_bounds__(kExpandThreads) lora_expand_kernel(LoraLaunch l, const float* __restrict__ xa,
                                                                     int64_t xa_stride, bf16* __restrict__ y,
                                                                     int64_t y_stride, int64_t col_offset,
                                                                     int tiles) {
  // Before waiting on the kernel before (the shrink, which writes xa): the
  // unit, and this thread's row of B (adapter weights and the plan are written
  // before the step), so B's loads overlap the shrink.
  chained_launch();
  __shared__ __align__(16) float xs[kTile][R];
  const Unit u = unit_of(l, blockIdx.x, tiles);
  if (u.t0 >= u.t1) {
    chained_wait();  // see the shrink: a grid ends after the kernel before it
    return;
  }
  const int r = u.slot < 0 ? 0 : int(min(int64_t(min(l.ranks[u.slot], R)), xa_stride));
  const int n = u.t1 - u.t0;
  const int64_t j = int64_t(blockIdx.y) * kExpandThreads + threadIdx.x;
  if (r <= 0) {
    chained_wait();  // y may be memory the kernel before still reads
    if constexpr (kWrite) {
      if (j < l.out_features)
        for (int m = 0; m < n; ++m) y[int64_t(u.t0 + m) * y_stride + col_offset + j] = __float2bfloat16_rn(0.0f);
    }
    return;
  }
  __nv_bfloat162 b[R / 2];
  if (j < l.out_features) {
    const int64_t ld = l.b_ld ? int64_t(l.b_ld[u.slot]) : int64_t(l.ranks[u.slot]);
    const bf16* brow = reinterpret_cast<const bf16*>(l.b_ptrs[u.slot]) + j * ld;
    if ((r & 7) == 0 && (reinterpret_cast<uintptr_t>(brow) & 15) == 0) {
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
  }
  chained_wait();
  for (int i = threadIdx.x; i < n * R; i += kExpandThreads) {
    const int m = i / R, k = i % R;
    xs[m][k] = k < r ? xa[int64_t(u.t0 + m) * xa_stride + k] : 0.0f;
  }
  __syncthreads();
  if (j >= l.out_features) return;
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
    if constexpr (kWrite)
      *dst = __float2bfloat16_rn(scale * acc);
    else
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

void launch_lora_shrink(const LoraLaunch& l, const void* x, float* xa, int64_t xa_stride, int num_sms,
                        cudaStream_t stream) {
  if (l.num_tokens == 0 || l.max_rank == 0 || l.in_features == 0) return;
  int tiles = 1;
  const int64_t units = num_units(l, &tiles);
  if (units == 0) return;
  const int64_t rank_tiles = ceil_div(std::min<int64_t>(l.max_rank, xa_stride), kShrinkWarps);
  const int64_t chunks = ceil_div(l.in_features, kTokenChunk);
  if (!l.by_segment && chunks <= kTokenMaxWarps && l.in_features % 8 == 0 &&
      aligned16(x)) {
    const int rows = token_rows(chunks);
    const dim3 grid{unsigned(units), unsigned(ceil_div(std::min<int64_t>(l.max_rank, xa_stride), rows))};
    launch_chained(lora_shrink_token_kernel<false>, dim3(grid), dim3(unsigned(32 * rows * chunks)), 0, stream, l,
                   static_cast<const bf16*>(x), xa, xa_stride, int(chunks), rows, ColumnsOut{});
    PHILORA_CUDA_CHECK_LAUNCH();
    return;
  }
  // Split the input features (which costs a memset and atomics) only when the
  // grid would not give every multiprocessor a block.
  const int64_t max_splits = ceil_div(l.in_features, 256);
  const int64_t splits =
      std::clamp<int64_t>(ceil_div(int64_t(num_sms), units * rank_tiles), 1, max_splits);
  const int64_t k_chunk = ceil_div(ceil_div(l.in_features, splits), 256) * 256;
  const int64_t k_splits = ceil_div(l.in_features, k_chunk);
  const bool atomic = k_splits > 1;
  if (atomic)
    PHILORA_CUDA_CHECK(cudaMemsetAsync(xa, 0, size_t(l.num_tokens * xa_stride) * sizeof(float), stream));
  const dim3 grid{unsigned(units), unsigned(rank_tiles), unsigned(k_splits)};
  const auto* xb = static_cast<const bf16*>(x);
  if (l.in_features % 8 == 0 && aligned16(x))
    launch_chained(lora_shrink_kernel<true>, dim3(grid), dim3(kShrinkThreads), 0, stream, l, xb, xa, xa_stride, tiles, k_chunk, atomic);
  else
    launch_chained(lora_shrink_kernel<false>, dim3(grid), dim3(kShrinkThreads), 0, stream, l, xb, xa, xa_stride, tiles, k_chunk, atomic);
  PHILORA_CUDA_CHECK_LAUNCH();
}

bool lora_shrink_columns_supported(int64_t in) {
  return in > 0 && in % 8 == 0 && ceil_div(in, kTokenChunk) <= kTokenMaxWarps;
}

void launch_lora_shrink_columns(const LoraLaunch& l, const void* x, void* out, int64_t ld,
                                const int32_t* col_offsets, int64_t width, cudaStream_t stream) {
  if (l.num_tokens == 0) return;
  const int64_t chunks = ceil_div(l.in_features, kTokenChunk);
  if (l.by_segment || chunks > kTokenMaxWarps || l.in_features % 8 != 0 || ld % 8 != 0 || !aligned16(x) ||
      !aligned16(out) || width <= 0)
    throw_unsupported("lora_shrink_columns: " + std::to_string(l.in_features) + " inputs, row stride " +
                      std::to_string(ld) + " (per-token steps of at most " +
                      std::to_string(kTokenMaxWarps * kTokenChunk) + " inputs, 16-byte aligned rows)");
  const int rows = token_rows(chunks);
  const int64_t rank_blocks = std::max<int64_t>(1, ceil_div(l.max_rank, rows));
  const dim3 grid{unsigned(l.num_tokens), unsigned(rank_blocks)};
  ColumnsOut cols{static_cast<bf16*>(out), ld, col_offsets, int(width)};
  launch_chained(lora_shrink_token_kernel<true>, grid, dim3(unsigned(32 * rows * chunks)), 0, stream, l,
                 static_cast<const bf16*>(x), static_cast<float*>(nullptr), l.max_rank, int(chunks), rows, cols);
  PHILORA_CUDA_CHECK_LAUNCH();
}

void launch_lora_expand(const LoraLaunch& l, const float* xa, int64_t xa_stride, void* y,
                        int64_t y_stride, int64_t col_offset, bool write, cudaStream_t stream) {
  if (l.num_tokens == 0 || l.out_features == 0) return;
  if (l.max_rank > kLoraMaxRank)
    throw_unsupported("lora_expand: rank " + std::to_string(l.max_rank) + " (at most " +
                      std::to_string(kLoraMaxRank) + ")");
  if (l.max_rank == 0) {  // no slot touches this module
    if (write)
      PHILORA_CUDA_CHECK(cudaMemset2DAsync(static_cast<bf16*>(y) + col_offset, size_t(y_stride) * sizeof(bf16), 0,
                                           size_t(l.out_features) * sizeof(bf16), size_t(l.num_tokens), stream));
    return;
  }
  int tiles = 1;
  const int64_t units = num_units(l, &tiles);
  if (units == 0) return;
  const dim3 grid(unsigned(units), unsigned(ceil_div(l.out_features, kExpandThreads)));
  auto* yb = static_cast<bf16*>(y);
  auto go = [&](auto kernel) {
    launch_chained(kernel, grid, dim3(kExpandThreads), 0, stream, l, xa, xa_stride, yb, y_stride, col_offset, tiles);
  };
  const int rank = l.max_rank <= 16 ? 16 : l.max_rank <= 32 ? 32 : l.max_rank <= 64 ? 64 : 128;
  switch (rank * 2 + int(write)) {
    case 32: go(lora_expand_kernel<16, false>); break;
    case 33: go(lora_expand_kernel<16, true>); break;
    case 64: go(lora_expand_kernel<32, false>); break;
    case 65: go(lora_expand_kernel<32, true>); break;
    case 128: go(lora_expand_kernel<64, false>); break;
    case 129: go(lora_expand_kernel<64, true>); break;
    case 256: go(lora_expand_kernel<128, false>); break;
    default: go(lora_expand_kernel<128, true>); break;
  }
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace philora::cuda
