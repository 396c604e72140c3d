#include <climits>
#include <cmath>

#include "backend/cuda/cuda_attention_prefill.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace philora::cuda {

namespace {

constexpr int kBlockM = 64;  // query rows per block: 4 warps x 16
constexpr int kBlockN = 64;  // keys per shared-memory tile
constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

// Gathers keys n0 .. n0 + kBlockN of one kv head from the paged cache into a
// K and a V tile in shared memory (row stride SD); keys at or past `end` are
// zero-filled. Two threads per key: one page lookup serves K and V.
template <int D>
__device__ __forceinline__ void load_kv_tile(bf16* k_dst, bf16* v_dst, const bf16* k_cache, const bf16* v_cache,
                                             const PagedAttentionArgs& a, const int32_t* pages, int kvh,
                                             int n0, int end) {
  constexpr int SD = D + 8, kHalf = D / 16;  // 16-byte pieces per thread
  static_assert(kBlockN * 2 == kThreads, "two threads per key");
  const int r = threadIdx.x >> 1, first = (threadIdx.x & 1) * kHalf, j = n0 + r;
  int64_t offset = 0;
  int bytes = 0;
  if (j < end) {
    const int64_t page = pages[j / a.page_size];
    offset = ((page * a.n_kv_heads + kvh) * a.page_size + j % a.page_size) * D;
    bytes = 16;
  }
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const int piece = first + i;
    cp_async16(k_dst + r * SD + piece * 8, k_cache + offset + piece * 8, bytes);
    cp_async16(v_dst + r * SD + piece * 8, v_cache + offset + piece * 8, bytes);
  }
}

// grid (num_seqs · tiles, H); block = 4 warps, each owning 16 query rows.
// Shared memory: two stages of (K, V) tiles; while one is computed on, the
// next is in flight (cp.async), so each tile has a whole iteration to land.
template <int D>
__global__ void __launch_bounds__(kThreads) prefill_attention_kernel(PagedAttentionArgs a, int tiles) {
  constexpr int SD = D + 8;        // padded shared row: ldmatrix without bank conflicts
  constexpr int kSteps = D / 16;   // k-steps of Q·Kᵀ
  constexpr int kDTiles = D / 8;   // n-tiles of the output
  constexpr int kNTiles = kBlockN / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* stage_base = reinterpret_cast<bf16*>(smem_raw);  // [2 stages][K, V][kBlockN][SD]
  auto sK = [&](int stage) { return stage_base + (stage * 2) * kBlockN * SD; };
  auto sV = [&](int stage) { return stage_base + (stage * 2 + 1) * kBlockN * SD; };
  bf16* sQ = sK(1);  // Q passes through stage 1's K tile on its way to registers
  __shared__ int s_min_pos, s_max_pos;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int s = blockIdx.x / tiles;
  const int tile = tiles - 1 - int(blockIdx.x % tiles);  // longest tiles first
  const int h = blockIdx.y;
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
  if (tid < rows) {
    const int p = a.positions[q_begin + m0 + tid];
    atomicMin(&s_min_pos, p);
    atomicMax(&s_max_pos, p);
  }
  const int r0 = warp * 16 + (lane >> 2), r1 = r0 + 8;  // this thread's two rows
  const int p0 = r0 < rows ? a.positions[q_begin + m0 + r0] : -1;
  const int p1 = r1 < rows ? a.positions[q_begin + m0 + r1] : -1;
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[kSteps][4];
#pragma unroll
  for (int kt = 0; kt < kSteps; ++kt)
    ldmatrix_x4(qf[kt], sQ + (warp * 16 + (lane & 15)) * SD + kt * 16 + (lane >> 4) * 8);
  const int kv_lo = a.window > 0 ? max(0, s_min_pos - a.window + 1) : 0;
  const int kv_hi = min(s_max_pos, kv_len - 1) + 1;  // exclusive
  __syncthreads();  // Q is in registers; stage 1 is free

  float o[kDTiles][4];
#pragma unroll
  for (int i = 0; i < kDTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const float scale = a.scale * kLog2e;  // scores in base 2

  const int num_tiles = kv_lo < kv_hi ? (kv_hi - kv_lo + kBlockN - 1) / kBlockN : 0;
  for (int i = 0; i < 2 && i < num_tiles; ++i) {
    load_kv_tile<D>(sK(i), sV(i), k_cache, v_cache, a, pages, kvh, kv_lo + i * kBlockN, kv_hi);
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

    // S = Q Kᵀ for this warp's 16 rows x 64 keys.
    float sc[kNTiles][4];
#pragma unroll
    for (int i = 0; i < kNTiles; ++i) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.0f;
#pragma unroll
    for (int kt = 0; kt < kSteps; ++kt) {
#pragma unroll
      for (int np = 0; np < kNTiles / 2; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, tK + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * SD + kt * 16 +
                           ((lane >> 3) & 1) * 8);
        mma_bf16_16816(sc[2 * np], qf[kt], b[0], b[1]);
        mma_bf16_16816(sc[2 * np + 1], qf[kt], b[2], b[3]);
      }
    }

    // Mask (causal by position, window, cache length) and online softmax. Tiles
    // that every row of the block sees whole (below the diagonal, inside the
    // window, inside the cache) skip the mask; the block's rows being valid
    // rows there too (a missing row has position -1 and must be masked).
    float mx[2] = {-INFINITY, -INFINITY};
    const bool whole = n0 + kBlockN - 1 <= s_min_pos && n0 + kBlockN <= kv_len &&
                       (a.window == 0 || n0 > s_max_pos - a.window) && rows == kBlockM;
    if (whole) {
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sc[nt][e] *= scale;
          mx[e >> 1] = fmaxf(mx[e >> 1], sc[nt][e]);
        }
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int p = e < 2 ? p0 : p1;
          const int j = n0 + nt * 8 + 2 * (lane & 3) + (e & 1);
          const bool valid = j <= p && j < kv_len && (a.window == 0 || j > p - a.window);
          sc[nt][e] = valid ? sc[nt][e] * scale : -INFINITY;
          mx[e >> 1] = fmaxf(mx[e >> 1], sc[nt][e]);
        }
      }
    }
    float alpha[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      base[r] = m_new == -INFINITY ? 0.0f : m_new;
      alpha[r] = exp2f(m_run[r] - base[r]);  // 0 when nothing was seen before
      m_run[r] = m_new;
      l_run[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sc[nt][e] = exp2f(sc[nt][e] - base[e >> 1]);
        l_run[e >> 1] += sc[nt][e];
      }
    }
#pragma unroll
    for (int i = 0; i < kDTiles; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[0];
      o[i][2] *= alpha[1];
      o[i][3] *= alpha[1];
    }

    // O += P V ; P's accumulator layout is the A-operand layout (FA2).
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = pack_bf16x2(sc[2 * kk][0], sc[2 * kk][1]);
      pa[1] = pack_bf16x2(sc[2 * kk][2], sc[2 * kk][3]);
      pa[2] = pack_bf16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      pa[3] = pack_bf16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < kDTiles / 2; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, tV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + dp * 16 +
                                 (lane >> 4) * 8);
        mma_bf16_16816(o[2 * dp], pa, b[0], b[1]);
        mma_bf16_16816(o[2 * dp + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with this stage: refill it two tiles ahead
    if (tile + 2 < num_tiles) {
      load_kv_tile<D>(sK(stage), sV(stage), k_cache, v_cache, a, pages, kvh, n0 + 2 * kBlockN, kv_hi);
      cp_async_commit();
    }
  }

  // Normalise and store.
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    inv[r] = l > 0.0f ? 1.0f / l : 0.0f;
  }
  bf16* out = static_cast<bf16*>(a.out);
  const int64_t out_stride = int64_t(a.n_heads) * D;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = half == 0 ? r0 : r1;
    if (r >= rows) continue;
    bf16* dst = out + int64_t(q_begin + m0 + r) * out_stride + h * D + 2 * (lane & 3);
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(dst + dt * 8) =
          __floats2bfloat162_rn(o[dt][2 * half] * inv[half], o[dt][2 * half + 1] * inv[half]);
    }
  }
}

template <int D>
void launch(const PagedAttentionArgs& a, int max_q_len, cudaStream_t stream) {
  const int tiles = int(ceil_div(max_q_len, kBlockM));
  const dim3 grid(unsigned(int64_t(a.num_seqs) * tiles), unsigned(a.n_heads));
  const size_t smem = size_t(4) * kBlockN * (D + 8) * sizeof(bf16);
  if (smem > 48 * 1024)
    PHILORA_CUDA_CHECK(cudaFuncSetAttribute(prefill_attention_kernel<D>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  prefill_attention_kernel<D><<<grid, kThreads, smem, stream>>>(a, tiles);
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool prefill_attention_supported(int head_dim) {
  return head_dim == 64 || head_dim == 96 || head_dim == 128;
}

void launch_prefill_attention(const PagedAttentionArgs& a, int max_q_len, cudaStream_t stream) {
  if (a.num_rows == 0 || a.num_seqs == 0 || max_q_len == 0) return;
  switch (a.head_dim) {
    case 64: launch<64>(a, max_q_len, stream); break;
    case 96: launch<96>(a, max_q_len, stream); break;
    case 128: launch<128>(a, max_q_len, stream); break;
    default:
      throw_unsupported("prefill attention: head_dim " + std::to_string(a.head_dim));
  }
}

}  // namespace philora::cuda
