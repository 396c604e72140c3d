// The GEMV chain's kernel (see cuda_chain.cuh), a template over its shape so
// that dev/cuda/persist_lab.cu times the variants of this very code:
//   kWarps  warps a block (one block an SM)
//   kDepth  row-chunk slots in each warp's ring (kDepth - 1 chunks in flight)
//   kBulk   each slot filled by one TMA bulk copy (lane 0 issues it; an
//           mbarrier a slot), or by the lanes' own 16-byte cp.async (a commit
//           group an iteration, each lane reading back only what it copied)
#pragma once

#include <cuda_bf16.h>

#include "backend/cuda/cuda_chain.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace philora::cuda::chain {

constexpr int kU = 4;                       // 16-byte pieces a lane a chunk
constexpr int kChunkPieces = 32 * kU;       // a row chunk: 128 pieces, 2 KB
constexpr int kChunkBytes = kChunkPieces * 16;

template <int kWarps, int kDepth>
constexpr size_t smem_bytes() {
  return size_t(kChainMaxK) * sizeof(bf16) + size_t(kWarps) * kDepth * kChunkBytes;
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// One TMA bulk copy of `bytes` (a multiple of 16) global -> shared, completing on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// skip_barrier: timing only (dev/cuda/persist_lab.cu): the stages unordered,
// the results wrong, to see what the barriers cost.
template <int kWarps, int kDepth, bool kBulk>
__global__ void __launch_bounds__(kWarps * 32, 1) gemv_chain_kernel(ChainArgs p, int skip_barrier) {
  constexpr int kThreads = kWarps * 32;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* xs = reinterpret_cast<bf16*>(smem_raw);                                  // [kChainMaxK]
  uint4* ring = reinterpret_cast<uint4*>(smem_raw + kChainMaxK * sizeof(bf16));  // [warp][slot][piece]
  __shared__ float scratch[32];
  __shared__ __align__(8) uint64_t bars[kBulk ? kWarps * kDepth : 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = int(gridDim.x) * kWarps;
  const int gw = int(blockIdx.x) * kWarps + warp;
  uint4* my_ring = ring + size_t(warp) * kDepth * kChunkPieces;
  uint64_t* my_bars = bars + (kBulk ? warp * kDepth : 0);
  if constexpr (kBulk) {
    if (lane == 0)
      for (int i = 0; i < kDepth; ++i) mbar_init(my_bars + i, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the TMA unit sees the inits
    __syncwarp();
  }
  chained_launch();

  // The loads run kDepth - 1 chunks ahead of the products, on into the next
  // stages: the loader's stage (its fields kept in registers), row, chunk.
  int ls = -1, lrow = 0, lc = 0, ln = 0, lkp = 0, lchunks = 0;
  const bf16* lw = nullptr;
  int64_t lldw = 0;
  auto next_stage = [&] {  // the first stage after ls where this warp has a row
    do {
      ++ls;
    } while (ls < p.num_stages && gw >= p.stages[ls].n);
    if (ls < p.num_stages) {
      const ChainStage& st = p.stages[ls];
      lw = static_cast<const bf16*>(st.w), lldw = st.ldw, ln = st.n, lkp = st.k / 8;
      lchunks = (lkp + kChunkPieces - 1) / kChunkPieces;
    }
    lrow = gw, lc = 0;
  };
  next_stage();
  int ld_slot = 0;
  auto issue = [&] {  // chunk (lrow, lc) into ring slot ld_slot
    if (ls < p.num_stages) {
      const bf16* wr = lw + int64_t(lrow) * lldw;
      if constexpr (kBulk) {
        if (lane == 0) {
          const int pieces = min(kChunkPieces, lkp - lc * kChunkPieces);
          bulk_copy(my_ring + ld_slot * kChunkPieces, wr + lc * kChunkPieces * 8, unsigned(pieces) * 16u,
                    my_bars + ld_slot);
        }
      } else {
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int piece = lc * kChunkPieces + u * 32 + lane;
          if (piece < lkp) cp_async16(my_ring + ld_slot * kChunkPieces + u * 32 + lane, wr + piece * 8, 16);
        }
      }
      if (++lc == lchunks) {
        lc = 0;
        lrow += warps;
        if (lrow >= ln) next_stage();
      }
    }
    if constexpr (!kBulk) cp_async_commit();  // one group a chunk, empty or not
    ld_slot = ld_slot + 1 == kDepth ? 0 : ld_slot + 1;
  };
  // Weights: nothing in a step writes them, so they load before the wait for
  // the kernel before (attention).
#pragma unroll 1
  for (int i = 0; i < kDepth - 1; ++i) issue();
  chained_wait();

  int slot = 0;
  unsigned phase = 0;  // the parity of the slots' current fill (flips as the ring wraps)
  for (int s = 0; s < p.num_stages; ++s) {
    const ChainStage& st = p.stages[s];
    if (s > 0) {  // stage s - 1 is written everywhere: arrive, then wait for every block
      __syncthreads();
      if (threadIdx.x == 0 && !skip_barrier) {
        __threadfence();
        atomicAdd(p.barrier, 1u);
        const unsigned target = unsigned(s) * gridDim.x;
        while (ld_acquire(p.barrier) < target) {
        }
        __threadfence();
      }
      __syncthreads();
    }
    // x into shared memory through the prologue, as the GEMV stages it (L2
    // reads: other blocks wrote it during this launch).
    const int kp = st.k / 8;
    const uint4* src = static_cast<const uint4*>(st.src);
    const bool silu_mul = st.prologue.kind == RowPrologue::silu_mul;
    for (int q = int(threadIdx.x); q < kp; q += kThreads) {
      const uint4 v = __ldcg(src + q);
      reinterpret_cast<uint4*>(xs)[q] = silu_mul ? silu_mul_bf16x8(v, __ldcg(src + kp + q)) : v;
    }
    __syncthreads();
    if (st.prologue.kind == RowPrologue::rms_norm) {
      const float inv = row_inv_rms(xs, st.k, st.prologue.eps, scratch);
      const uint4* nw = static_cast<const uint4*>(st.prologue.norm_w);
      for (int q = int(threadIdx.x); q < kp; q += kThreads)
        reinterpret_cast<uint4*>(xs)[q] = scale_bf16x8(reinterpret_cast<uint4*>(xs)[q], nw[q], inv);
      __syncthreads();
    }

    const int chunks = (kp + kChunkPieces - 1) / kChunkPieces;
    bf16* y = static_cast<bf16*>(st.y);
    for (int row = gw; row < st.n; row += warps) {
      float acc = 0.0f;
      for (int c = 0; c < chunks; ++c) {
        if constexpr (kBulk) {
          mbar_wait(my_bars + slot, phase);
          __syncwarp();  // every lane is done with the slot the next copy refills
        } else {
          cp_async_wait<kDepth - 2>();  // this chunk's group has landed
        }
        issue();
        const uint4* w = my_ring + slot * kChunkPieces;
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int piece = c * kChunkPieces + u * 32 + lane;
          if (piece >= kp) break;
          acc = dot8(w[u * 32 + lane], reinterpret_cast<const uint4*>(xs)[piece], acc);
        }
        if (++slot == kDepth) slot = 0, phase ^= 1u;
      }
      float out = warp_sum(acc);
      if (lane == 0) {
        if (st.accumulate) out += __bfloat162float(__ldcg(y + row));
        y[row] = __float2bfloat16(out);
      }
    }
  }
  if constexpr (!kBulk) cp_async_wait<0>();  // (only empty groups are left)
  // The last to arrive leaves the counter zero for the next launch.
  __syncthreads();
  if (threadIdx.x == 0 && !skip_barrier) {
    const unsigned total = unsigned(p.num_stages) * gridDim.x;
    if (atomicAdd(p.barrier, 1u) == total - 1) atomicExch(p.barrier, 0u);
  }
  if (skip_barrier && blockIdx.x == 0 && threadIdx.x == 0) atomicExch(p.barrier, 0u);
}

}  // namespace philora::cuda::chain
