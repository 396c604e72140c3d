#include <algorithm>
#include <climits>
#include <cmath>

#include "backend/cuda/cuda_attention_prefill.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace philora::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;

#ifndef PHILORA_PREFILL_BN96
#define PHILORA_PREFILL_BN96 64
#endif

// 2^x with the special-function unit alone (denormal results flush to zero,
// which a softmax weight can lose).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Query rows per block: MF fragments of 16 rows per warp.
template <int MF>
__host__ __device__ constexpr int block_m() {
  return kWarps * 16 * MF;
}

// Gathers keys n0 .. n0 + BN of one kv head from the paged cache into a K and a
// V tile in shared memory (row stride SD); keys at or past `end` are
// zero-filled. kThreads / BN threads per key: one page lookup serves K and V.
template <int D, int BN>
__device__ __forceinline__ void load_kv_tile(bf16* k_dst, bf16* v_dst, const bf16* k_cache, const bf16* v_cache,
                                             const PagedAttentionArgs& a, const int32_t* pages, int kvh,
                                             int n0, int end) {
  constexpr int kPerKey = kThreads / BN, SD = D + 8, kPieces = D / 8 / kPerKey;  // 16-byte pieces per thread
  static_assert(kThreads % BN == 0 && (D / 8) % kPerKey == 0, "threads per key");
  const int r = threadIdx.x / kPerKey, first = (threadIdx.x % kPerKey) * kPieces, j = n0 + r;
  int64_t offset = 0;
  int bytes = 0;
  if (j < end) {
    const int64_t page = pages[j / a.page_size];
    offset = ((page * a.n_kv_heads + kvh) * a.page_size + j % a.page_size) * D;
    bytes = 16;
  }
#pragma unroll
  for (int i = 0; i < kPieces; ++i) {
    const int piece = first + i;
    cp_async16(k_dst + r * SD + piece * 8, k_cache + offset + piece * 8, bytes);
    cp_async16(v_dst + r * SD + piece * 8, v_cache + offset + piece * 8, bytes);
  }
}

// grid (H · num_seqs · tiles); block = 4 warps, each owning MF fragments of 16
// query rows. Shared memory: two stages of (K, V) tiles; while one is computed
// on, the next is in flight (cp.async), so each tile has a whole iteration to
// land. Every K and V fragment a warp loads (ldmatrix) serves its MF row
// fragments: shared-memory reads per FLOP fall by MF (with MF = 1 the four
// warps' ldmatrix traffic, 96 KB per 64 x 64 tile at d = 96, outweighed the
// tensor-core time of the tile).
template <int D, int MF, int kBlockN>
__global__ void __launch_bounds__(kThreads) prefill_attention_kernel(PagedAttentionArgs a, int tiles) {
  chained_prologue();
  constexpr int SD = D + 8;        // padded shared row: ldmatrix without bank conflicts
  constexpr int kSteps = D / 16;   // k-steps of Q·Kᵀ
  constexpr int kDTiles = D / 8;   // n-tiles of the output
  constexpr int kNTiles = kBlockN / 8;
  constexpr int kBlockM = block_m<MF>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* stage_base = reinterpret_cast<bf16*>(smem_raw);  // [2 stages][K, V][kBlockN][SD]
  auto sK = [&](int stage) { return stage_base + (stage * 2) * kBlockN * SD; };
  auto sV = [&](int stage) { return stage_base + (stage * 2 + 1) * kBlockN * SD; };
  bf16* sQ = sK(1);  // Q passes through stage 1 (and past it when BN < block_m / 2) on its way to registers
  __shared__ int s_min_pos, s_max_pos;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Blocks start in index order: heads vary fastest, then sequences, then the
  // query tile from the last (most keys under the causal mask) to the first, so
  // that the whole grid runs longest first and the last wave is short work.
  const int64_t b = blockIdx.x;
  const int h = int(b % a.n_heads);
  const int s = int((b / a.n_heads) % a.num_seqs);
  const int tile = tiles - 1 - int(b / (int64_t(a.n_heads) * a.num_seqs));
  const int q_begin = a.q_indptr[s], q_len = a.q_indptr[s + 1] - q_begin;
  const int m0 = tile * kBlockM;
  if (m0 >= q_len) return;
  const int rows = min(kBlockM, q_len - m0);
  const int kvh = h / (a.n_heads / a.n_kv_heads);
  const int num_pages = a.kv_indptr[s + 1] - a.kv_indptr[s];
  const int kv_len = num_pages == 0 ? 0 : (num_pages - 1) * a.page_size + a.kv_last_page_len[s];
  const int32_t* pages = a.kv_indices + a.kv_indptr[s];
  const bf16* qkv = static_cast<const bf16*>(a.qkv);
  const bf16* k_cache = static_cast<const bf16*>(a.k_cache);
  const bf16* v_cache = static_cast<const bf16*>(a.v_cache);

  // Q tile -> shared (zeros past the last row), and the tile's position range.
  if (tid == 0) {
    s_min_pos = INT_MAX;
    s_max_pos = INT_MIN;
  }
  for (int c = tid; c < kBlockM * kDTiles; c += kThreads) {
    const int r = c / kDTiles, part = c % kDTiles;
    const bool valid = r < rows;
    const bf16* src = valid ? qkv + int64_t(q_begin + m0 + r) * a.qkv_stride + h * D + part * 8 : qkv;
    cp_async16(sQ + r * SD + part * 8, src, valid ? 16 : 0);
  }
  cp_async_commit();
  __syncthreads();
  for (int r = tid; r < rows; r += kThreads) {
    const int p = a.positions[q_begin + m0 + r];
    atomicMin(&s_min_pos, p);
    atomicMax(&s_max_pos, p);
  }
  // This thread's rows: fragment f holds rows warp·16·MF + 16f + lane/4 (+ 8).
  int pos[MF][2];
#pragma unroll
  for (int f = 0; f < MF; ++f)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = warp * 16 * MF + f * 16 + (lane >> 2) + hr * 8;
      pos[f][hr] = r < rows ? a.positions[q_begin + m0 + r] : -1;
    }
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[MF][kSteps][4];
#pragma unroll
  for (int f = 0; f < MF; ++f)
#pragma unroll
    for (int kt = 0; kt < kSteps; ++kt)
      ldmatrix_x4(qf[f][kt], sQ + (warp * 16 * MF + f * 16 + (lane & 15)) * SD + kt * 16 + (lane >> 4) * 8);
  const int kv_lo = a.window > 0 ? max(0, s_min_pos - a.window + 1) : 0;
  const int kv_hi = min(s_max_pos, kv_len - 1) + 1;  // exclusive
  __syncthreads();  // Q is in registers; stage 1 is free

  float o[MF][kDTiles][4];
#pragma unroll
  for (int f = 0; f < MF; ++f)
#pragma unroll
    for (int i = 0; i < kDTiles; ++i) o[f][i][0] = o[f][i][1] = o[f][i][2] = o[f][i][3] = 0.0f;
  float m_run[MF][2], l_run[MF][2];
#pragma unroll
  for (int f = 0; f < MF; ++f) {
    m_run[f][0] = m_run[f][1] = -INFINITY;
    l_run[f][0] = l_run[f][1] = 0.0f;
  }
  const float scale = a.scale * kLog2e;  // scores in base 2

  const int num_tiles = kv_lo < kv_hi ? (kv_hi - kv_lo + kBlockN - 1) / kBlockN : 0;
  for (int i = 0; i < 2 && i < num_tiles; ++i) {
    load_kv_tile<D, kBlockN>(sK(i), sV(i), k_cache, v_cache, a, pages, kvh, kv_lo + i * kBlockN, kv_hi);
    cp_async_commit();
  }
  for (int tile = 0; tile < num_tiles; ++tile) {
    const int n0 = kv_lo + tile * kBlockN, stage = tile & 1;
    const bf16* tK = sK(stage);
    const bf16* tV = sV(stage);
    if (tile + 1 < num_tiles)
      cp_async_wait<1>();  // this tile has landed; the next may still be in flight
    else
      cp_async_wait<0>();
    __syncthreads();

    // S = Q Kᵀ for this warp's 16·MF rows x 64 keys.
    float sc[MF][kNTiles][4];
#pragma unroll
    for (int f = 0; f < MF; ++f)
#pragma unroll
      for (int i = 0; i < kNTiles; ++i) sc[f][i][0] = sc[f][i][1] = sc[f][i][2] = sc[f][i][3] = 0.0f;
#pragma unroll
    for (int kt = 0; kt < kSteps; ++kt) {
#pragma unroll
      for (int np = 0; np < kNTiles / 2; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, tK + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * SD + kt * 16 +
                           ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int f = 0; f < MF; ++f) {
          mma_bf16_16816(sc[f][2 * np], qf[f][kt], b[0], b[1]);
          mma_bf16_16816(sc[f][2 * np + 1], qf[f][kt], b[2], b[3]);
        }
      }
    }

    // Mask (causal by position, window, cache length) and online softmax. Tiles
    // that every row of the block sees whole (below the diagonal, inside the
    // window, inside the cache) skip the mask; the block's rows being valid
    // rows there too (a missing row has position -1 and must be masked).
    const bool whole = n0 + kBlockN - 1 <= s_min_pos && n0 + kBlockN <= kv_len &&
                       (a.window == 0 || n0 > s_max_pos - a.window) && rows == kBlockM;
#pragma unroll
    for (int f = 0; f < MF; ++f) {
      // Maxima of the raw scores (scale > 0, checked at launch); the scale is
      // applied inside the exponent, one FFMA per score.
      float mx[2] = {-INFINITY, -INFINITY};
      if (whole) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], sc[f][nt][e]);
      } else {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int p = pos[f][e >> 1];
            const int j = n0 + nt * 8 + 2 * (lane & 3) + (e & 1);
            const bool valid = j <= p && j < kv_len && (a.window == 0 || j > p - a.window);
            if (!valid) sc[f][nt][e] = -INFINITY;
            mx[e >> 1] = fmaxf(mx[e >> 1], sc[f][nt][e]);
          }
        }
      }
      float alpha[2], base[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m_run[f][r], mx[r] * scale);
        base[r] = m_new == -INFINITY ? 0.0f : m_new;
        alpha[r] = fast_exp2(m_run[f][r] - base[r]);  // 0 when nothing was seen before
        m_run[f][r] = m_new;
        l_run[f][r] *= alpha[r];
      }
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sc[f][nt][e] = fast_exp2(fmaf(sc[f][nt][e], scale, -base[e >> 1]));
          l_run[f][e >> 1] += sc[f][nt][e];
        }
      }
#pragma unroll
      for (int i = 0; i < kDTiles; ++i) {
        o[f][i][0] *= alpha[0];
        o[f][i][1] *= alpha[0];
        o[f][i][2] *= alpha[1];
        o[f][i][3] *= alpha[1];
      }
    }

    // O += P V ; P's accumulator layout is the A-operand layout (FA2).
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pa[MF][4];
#pragma unroll
      for (int f = 0; f < MF; ++f) {
        pa[f][0] = pack_bf16x2(sc[f][2 * kk][0], sc[f][2 * kk][1]);
        pa[f][1] = pack_bf16x2(sc[f][2 * kk][2], sc[f][2 * kk][3]);
        pa[f][2] = pack_bf16x2(sc[f][2 * kk + 1][0], sc[f][2 * kk + 1][1]);
        pa[f][3] = pack_bf16x2(sc[f][2 * kk + 1][2], sc[f][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kDTiles / 2; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, tV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + dp * 16 +
                                 (lane >> 4) * 8);
#pragma unroll
        for (int f = 0; f < MF; ++f) {
          mma_bf16_16816(o[f][2 * dp], pa[f], b[0], b[1]);
          mma_bf16_16816(o[f][2 * dp + 1], pa[f], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage: refill it two tiles ahead
    if (tile + 2 < num_tiles) {
      load_kv_tile<D, kBlockN>(sK(stage), sV(stage), k_cache, v_cache, a, pages, kvh, n0 + 2 * kBlockN, kv_hi);
      cp_async_commit();
    }
  }

  // Normalise and store.
  bf16* out = static_cast<bf16*>(a.out);
  const int64_t out_stride = int64_t(a.n_heads) * D;
#pragma unroll
  for (int f = 0; f < MF; ++f) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float l = l_run[f][half];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const int r = warp * 16 * MF + f * 16 + (lane >> 2) + half * 8;
      if (r >= rows) continue;
      bf16* dst = out + int64_t(q_begin + m0 + r) * out_stride + h * D + 2 * (lane & 3);
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        *reinterpret_cast<__nv_bfloat162*>(dst + dt * 8) =
            __floats2bfloat162_rn(o[f][dt][2 * half] * inv, o[f][dt][2 * half + 1] * inv);
      }
    }
  }
}

template <int D, int MF, int BN>
void launch(const PagedAttentionArgs& a, int max_q_len, cudaStream_t stream) {
  const int tiles = int(ceil_div(max_q_len, block_m<MF>()));
  const dim3 grid(unsigned(int64_t(a.num_seqs) * tiles * a.n_heads));
  // Two stages of K and V tiles; Q (block_m rows) passes through one stage.
  const size_t smem = size_t(std::max(4 * BN, 2 * BN + block_m<MF>())) * (D + 8) * sizeof(bf16);
  if (smem > 48 * 1024)
    PHILORA_CUDA_CHECK(cudaFuncSetAttribute(prefill_attention_kernel<D, MF, BN>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  launch_chained(prefill_attention_kernel<D, MF, BN>, dim3(grid), dim3(kThreads), smem, stream, a, tiles);
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool prefill_attention_supported(int head_dim) {
  return head_dim == 64 || head_dim == 96 || head_dim == 128;
}

void launch_prefill_attention(const PagedAttentionArgs& a, int max_q_len, cudaStream_t stream) {
  if (a.num_rows == 0 || a.num_seqs == 0 || max_q_len == 0) return;
  if (!(a.scale > 0.0f)) throw_unsupported("prefill attention: a scale that is not positive");
  switch (a.head_dim) {
    // Two row fragments per warp where the registers allow (see the kernel;
    // at d = 128 two would spill 588 bytes a thread).
    case 64: launch<64, 2, 64>(a, max_q_len, stream); break;
    case 96: launch<96, 2, PHILORA_PREFILL_BN96>(a, max_q_len, stream); break;
    case 128: launch<128, 1, 64>(a, max_q_len, stream); break;
    default:
      throw_unsupported("prefill attention: head_dim " + std::to_string(a.head_dim));
  }
}

}  // namespace philora::cuda
