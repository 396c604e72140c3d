// Prefill attention on Hopper's warpgroup MMAs (wgmma, sm_90a).
//
// One block = NWG warpgroups of 128 threads; warpgroup g owns 64 query rows of
// one (sequence, query head), and the block's warpgroups share each tile of BN
// keys, gathered from the paged cache into shared memory by cp.async (two
// stages: one computed on while the next lands), so a cached prefix is read
// like any other key. Per tile:
//   S  = Q Kᵀ      wgmma, Q and K from shared memory          (64 x BN f32 in registers)
//   mask (causal by position, window, cache length), online softmax in base 2
//   O += P V       wgmma, P from registers (S's accumulator layout is the
//                  A-operand layout), V from shared memory read N-major
// Shared-memory tiles use the 64-byte swizzle: a row of D bf16 is D/32 column
// blocks of 64 bytes; block c of a tile of R rows holds rows 0..R-1 at 64 bytes
// each, and the 16-byte piece q of row r sits at piece q ^ ((r >> 1) & 3)
// (what the tensor cores expect of a 512-byte-aligned 64B-swizzled layout).
// K is read K-major (rows of keys, d contiguous) for S, and the same bytes
// N-major (rows of keys, d contiguous = N) for O: one layout serves both.
// Tile shapes and the variants that lost (Q in registers, 128-key tiles, the
// next tile's S issued before this tile's softmax): dev/cuda/NOTES.md.
#include <algorithm>
#include <climits>
#include <cmath>

#include "backend/cuda/cuda_attention_prefill.cuh"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_wgmma.cuh"

namespace philora::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;

// 2^x with the special-function unit alone (denormal results flush to zero,
// which a softmax weight can lose).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Makes this thread's completed cp.async writes to shared memory visible to
// the tensor cores (the async proxy); a barrier must follow before they read.
__device__ __forceinline__ void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Element offset of 16-byte piece q of row r in a 64B-swizzled tile of R rows.
template <int R>
__device__ __forceinline__ int swz(int r, int q) {
  return (q >> 2) * R * 32 + r * 32 + (((q & 3) ^ ((r >> 1) & 3)) << 3);
}

// Shared-memory matrix descriptor, 64-byte swizzle: start address, leading and
// stride byte offsets (16-byte units), layout type 2 in bits 62-63.
__device__ __forceinline__ uint64_t sw64_desc(const void* p, uint32_t lead_bytes, uint32_t stride_bytes) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(lead_bytes >> 4) << 16) |
         (uint64_t(stride_bytes >> 4) << 32) | (uint64_t(2) << 62);
}

template <int D, int BN, int NWG>
struct Tiles {
  static constexpr int kThreads = 128 * NWG;
  static constexpr int kBlockM = 64 * NWG;
  static constexpr int kQElems = kBlockM * D;  // Q tile: [D/32][kBlockM][32]
  static constexpr int kKvElems = BN * D;      // one K or V tile: [D/32][BN][32]
  static constexpr size_t kSmem = size_t(kQElems + 4 * kKvElems) * 2 + 1024;  // + alignment slack
  static_assert(kThreads >= BN, "a thread per key finds the key offsets");
};

// Element offset in the K (or V) cache of key j of kv head kvh, -1 at or past `end`.
__device__ __forceinline__ int64_t key_offset(const PagedAttentionArgs& a, const int32_t* pages, int kvh, int j,
                                              int end) {
  if (j >= end) return -1;
  const int64_t page = pages[j / a.page_size];
  return ((page * a.n_kv_heads + kvh) * a.page_size + j % a.page_size) * a.head_dim;
}

// N tiles (K, V, or both) of BN keys whose cache offsets are `off` ([BN], -1:
// zeros): consecutive threads copy consecutive 16-byte pieces, so a warp reads
// 512 contiguous bytes of a page run (a thread per key, reading its 192 bytes
// alone, measured 1.8x slower: half-used sectors, L1 bypassed).
template <int D, int BN, int NWG, int N>
__device__ __forceinline__ void load_tiles(bf16* const (&dst)[N], const bf16* const (&cache)[N], const int64_t* off) {
  constexpr int kThreads = Tiles<D, BN, NWG>::kThreads, kPieces = D / 8;
  static_assert((BN * kPieces) % kThreads == 0, "pieces per thread");
#pragma unroll
  for (int i = 0; i < BN * kPieces / kThreads; ++i) {
    const int c = int(threadIdx.x) + i * kThreads, r = c / kPieces, q = c % kPieces;
    const int64_t o = off[r];
    const int at = swz<BN>(r, q);
#pragma unroll
    for (int n = 0; n < N; ++n) cp_async16(dst[n] + at, cache[n] + (o < 0 ? 0 : o) + q * 8, o < 0 ? 0 : 16);
  }
}

// Mask (causal by position, window, cache length) and the online softmax of
// one tile of scores (sc: the 64 x BN accumulator of Q Kᵀ, raw): updates the
// running max and sum of this thread's two rows, writes P in bf16 as the A
// fragments of P V (chunk nc of S is columns 8(nc%2).. of k-step nc/2) and
// the factor alpha by which O must be rescaled. `whole`: no key of the tile is
// masked for any row of the block.
template <int BN>
__device__ __forceinline__ void softmax_tile(float (&sc)[BN / 2], uint32_t (&pa)[BN / 16][4], float (&m_run)[2],
                                             float (&l_run)[2], float (&alpha)[2], bool whole, const int (&pos)[2],
                                             int n0, int kv_len, int window, int lane, float scale) {
  float mx[2] = {-INFINITY, -INFINITY};
  if (whole) {
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], sc[i]);
  } else {
#pragma unroll
    for (int nc = 0; nc < BN / 8; ++nc) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int p = pos[e >> 1];
        const int j = n0 + nc * 8 + 2 * (lane & 3) + (e & 1);
        const bool valid = j <= p && j < kv_len && (window == 0 || j > p - window);
        float& v = sc[nc * 4 + e];
        if (!valid) v = -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    }
  }
  float base[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    // maxima of the raw scores (scale > 0); the scale goes inside the exponent
    const float m_new = fmaxf(m_run[r], mx[r] * scale);
    base[r] = m_new == -INFINITY ? 0.0f : m_new;
    alpha[r] = fast_exp2(m_run[r] - base[r]);  // 0 when nothing was seen before
    m_run[r] = m_new;
    l_run[r] *= alpha[r];
  }
#pragma unroll
  for (int nc = 0; nc < BN / 8; ++nc) {
    float p[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      p[e] = fast_exp2(fmaf(sc[nc * 4 + e], scale, -base[e >> 1]));
      l_run[e >> 1] += p[e];
    }
    pa[nc >> 1][(nc & 1) * 2 + 0] = pack_bf16x2(p[0], p[1]);
    pa[nc >> 1][(nc & 1) * 2 + 1] = pack_bf16x2(p[2], p[3]);
  }
}

// O *= alpha per row, unless no row of the warp saw a new maximum (alpha = 1).
template <int D>
__device__ __forceinline__ void rescale(float (&o)[D / 2], const float (&alpha)[2]) {
  if (__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) return;
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
    o[4 * i + 0] *= alpha[0];
    o[4 * i + 1] *= alpha[0];
    o[4 * i + 2] *= alpha[1];
    o[4 * i + 3] *= alpha[1];
  }
}

template <int D, int BN, int NWG, int MINB>
__global__ void __launch_bounds__(128 * NWG, MINB) prefill_attention_kernel(PagedAttentionArgs a, int tiles) {
  chained_prologue();
  using T = Tiles<D, BN, NWG>;
  constexpr int kThreads = T::kThreads, kBlockM = T::kBlockM;
  constexpr int kSteps = D / 16;    // k-steps of Q Kᵀ
  constexpr int kPSteps = BN / 16;  // k-steps of P V
  constexpr int kDChunks = D / 8;   // 8-column chunks of O
  extern __shared__ unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  bf16* sKV = sQ + T::kQElems;  // [2 stages][K, V][D/32][BN][32]
  auto sK = [&](int stage) { return sKV + (2 * stage) * T::kKvElems; };
  auto sV = [&](int stage) { return sKV + (2 * stage + 1) * T::kKvElems; };
  __shared__ int s_min_pos, s_max_pos;
  __shared__ int64_t s_off[2][BN];  // per stage: the cache offsets of its tile's keys

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2;  // warpgroup
  // Blocks in index order: heads fastest, then sequences, then query tiles from
  // the last (most keys under the causal mask): the whole grid longest first.
  const int64_t b = blockIdx.x;
  const int h = int(b % a.n_heads);
  const int s = int((b / a.n_heads) % a.num_seqs);
  const int tile_m = tiles - 1 - int(b / (int64_t(a.n_heads) * a.num_seqs));
  const int q_begin = a.q_indptr[s], q_len = a.q_indptr[s + 1] - q_begin;
  const int m0 = tile_m * kBlockM;
  if (m0 >= q_len) return;
  const int rows = min(kBlockM, q_len - m0);
  const int kvh = h / (a.n_heads / a.n_kv_heads);
  const int num_pages = a.kv_indptr[s + 1] - a.kv_indptr[s];
  const int kv_len = num_pages == 0 ? 0 : (num_pages - 1) * a.page_size + a.kv_last_page_len[s];
  const int32_t* pages = a.kv_indices + a.kv_indptr[s];
  const bf16* qkv = static_cast<const bf16*>(a.qkv);
  const bf16* k_cache = static_cast<const bf16*>(a.k_cache);
  const bf16* v_cache = static_cast<const bf16*>(a.v_cache);

  if (tid == 0) {
    s_min_pos = INT_MAX;
    s_max_pos = INT_MIN;
  }
  // Q tile -> shared (zeros past the last row).
  for (int c = tid; c < kBlockM * kDChunks; c += kThreads) {
    const int r = c / kDChunks, q = c % kDChunks;
    const bool valid = r < rows;
    const bf16* src = valid ? qkv + int64_t(q_begin + m0 + r) * a.qkv_stride + h * D + q * 8 : qkv;
    cp_async16(sQ + swz<kBlockM>(r, q), src, valid ? 16 : 0);
  }
  cp_async_commit();
  __syncthreads();
  for (int r = tid; r < rows; r += kThreads) {
    const int p = a.positions[q_begin + m0 + r];
    atomicMin(&s_min_pos, p);
    atomicMax(&s_max_pos, p);
  }
  // This thread's two rows: 16·(warp in block) + lane/4 (+ 8).
  int pos[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = warp * 16 + (lane >> 2) + hr * 8;
    pos[hr] = r < rows ? a.positions[q_begin + m0 + r] : -1;
  }
  __syncthreads();
  const int kv_lo = a.window > 0 ? max(0, s_min_pos - a.window + 1) : 0;
  const int kv_hi = min(s_max_pos, kv_len - 1) + 1;  // exclusive
  const int num_tiles = kv_lo < kv_hi ? (kv_hi - kv_lo + BN - 1) / BN : 0;
  // Threads < BN find the cache offsets of their key in a tile; the tile's
  // loads read them after a barrier.
  auto find_keys = [&](int tile) {
    if (tid < BN)
      s_off[tile & 1][tid] =
          tile < num_tiles ? key_offset(a, pages, kvh, kv_lo + tile * BN + tid, kv_hi) : int64_t(-1);
  };
  find_keys(0);
  find_keys(1);
  __syncthreads();
  auto load_kv = [&](int stage) {  // the tile whose keys are in s_off[stage]
    load_tiles<D, BN, NWG, 2>({sK(stage), sV(stage)}, {k_cache, v_cache}, s_off[stage]);
  };

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float sc[BN / 2];  // the first k-step of S overwrites it; zeroed so it is never read unset
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) sc[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}, alpha[2];
  const float scale = a.scale * kLog2e;  // scores in base 2
  // Descriptors of this warpgroup's 64 rows of Q and of each stage's K and V;
  // a k-step adds its byte offset (in 16-byte units) to the start address.
  // K-major (Q, K): k-step kt is in column block kt/2, 32 bytes in for odd kt,
  // 8-row groups 512 bytes apart. V N-major: k-step kk is keys 16kk.. (1024
  // bytes in), column blocks (32 of d) BN·64 bytes apart.
  const uint64_t dq = sw64_desc(sQ + wg * 64 * 32, 16, 512);
  const uint64_t dk0 = sw64_desc(sK(0), 16, 512), dk1 = sw64_desc(sK(1), 16, 512);
  const uint64_t dv0 = sw64_desc(sV(0), BN * 64, 512), dv1 = sw64_desc(sV(1), BN * 64, 512);
  auto fence_s = [&] {
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) wgmma_reg_fence(sc[i]);
  };
  auto fence_o = [&] {
#pragma unroll
    for (int i = 0; i < D / 2; ++i) wgmma_reg_fence(o[i]);
  };
  // Each issue fences its registers first, so that no ordinary write of them
  // (the softmax's, the rescale's) is moved past wgmma_fence.
  auto issue_s = [&](int stage) {  // S = Q Kᵀ (64 x BN per warpgroup), committed
    const uint64_t dk = stage ? dk1 : dk0;
    fence_s();
    wgmma_fence();
#pragma unroll
    for (int kt = 0; kt < kSteps; ++kt)
      wgmma_ss<BN>(sc, dq + (((kt >> 1) * kBlockM * 64 + (kt & 1) * 32) >> 4),
                   dk + (((kt >> 1) * BN * 64 + (kt & 1) * 32) >> 4), kt > 0);
    wgmma_commit();
  };
  auto issue_pv = [&](int stage, uint32_t (&pa)[kPSteps][4]) {  // O += P V, committed
    const uint64_t dv = stage ? dv1 : dv0;
    fence_o();
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i) wgmma_reg_fence(pa[kk][i]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk) wgmma_rs_tb<D>(o, pa[kk], dv + ((kk * 1024) >> 4));
    wgmma_commit();
  };
  // Every row of the block sees every key of the tile. Rows past `rows` (a
  // sequence's last block) have zero Q and are never stored: they need no mask.
  auto whole = [&](int n0) {
    return n0 + BN - 1 <= s_min_pos && n0 + BN <= kv_len && (a.window == 0 || n0 > s_max_pos - a.window);
  };
  auto softmax = [&](int tile, uint32_t (&pa)[kPSteps][4]) {
    const int n0 = kv_lo + tile * BN;
    softmax_tile<BN>(sc, pa, m_run, l_run, alpha, whole(n0), pos, n0, kv_len, a.window, lane, scale);
  };

  // Stage t & 1 holds K and V of tile t; refilled two tiles ahead.
  for (int i = 0; i < 2; ++i) {
    load_kv(i);
    cp_async_commit();
  }
  for (int t = 0; t < num_tiles; ++t) {
    const int stage = t & 1;
    cp_async_wait<1>();  // this tile (and Q) has landed; the next may be in flight
    fence_async_shared();
    __syncthreads();
    find_keys(t + 2);  // read by this iteration's refill, after the barrier below
    issue_s(stage);
    wgmma_wait<0>();
    fence_s();
    uint32_t pa[kPSteps][4];
    softmax(t, pa);
    rescale<D>(o, alpha);
    issue_pv(stage, pa);
    wgmma_wait<0>();
    fence_o();
    __syncthreads();  // every warp is done with this stage: refill it two tiles ahead
    if (t + 2 < num_tiles) load_kv(stage);
    cp_async_commit();
  }
  cp_async_wait<0>();  // no copy may land after the block ends

  // Normalise and store.
  bf16* out = static_cast<bf16*>(a.out);
  const int64_t out_stride = int64_t(a.n_heads) * D;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float l = l_run[half];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int r = warp * 16 + (lane >> 2) + half * 8;
    if (r >= rows) continue;
    bf16* dst = out + int64_t(q_begin + m0 + r) * out_stride + h * D + 2 * (lane & 3);
#pragma unroll
    for (int dc = 0; dc < kDChunks; ++dc)
      *reinterpret_cast<__nv_bfloat162*>(dst + dc * 8) =
          __floats2bfloat162_rn(o[4 * dc + 2 * half] * inv, o[4 * dc + 2 * half + 1] * inv);
  }
}

template <int D, int BN, int NWG, int MINB>
void launch(const PagedAttentionArgs& a, int max_q_len, cudaStream_t stream) {
  using T = Tiles<D, BN, NWG>;
  const int tiles = int(ceil_div(max_q_len, T::kBlockM));
  const dim3 grid(unsigned(int64_t(a.num_seqs) * tiles * a.n_heads));
  allow_dynamic_smem(reinterpret_cast<const void*>(prefill_attention_kernel<D, BN, NWG, MINB>), T::kSmem);
  launch_chained(prefill_attention_kernel<D, BN, NWG, MINB>, grid, dim3(T::kThreads), T::kSmem, stream, a, tiles);
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool prefill_attention_supported(int head_dim) {
  return head_dim == 64 || head_dim == 96 || head_dim == 128;
}

void launch_prefill_attention(const PagedAttentionArgs& a, int max_q_len, cudaStream_t stream) {
  if (a.num_rows == 0 || a.num_seqs == 0 || max_q_len == 0) return;
  if (!(a.scale > 0.0f)) throw_unsupported("prefill attention: a scale that is not positive");
  // 64-key tiles shared by the two warpgroups of a block. At d = 64 and 96 two
  // blocks fit an SM (registers capped at 128 a thread); at d = 128 the
  // accumulators need more, so one block an SM (measured 4% faster than one
  // warpgroup a block, two blocks an SM: dev/cuda/NOTES.md).
  switch (a.head_dim) {
    case 64: launch<64, 64, 2, 2>(a, max_q_len, stream); break;
    case 96: launch<96, 64, 2, 2>(a, max_q_len, stream); break;
    case 128: launch<128, 64, 2, 1>(a, max_q_len, stream); break;
    default: throw_unsupported("prefill attention: head_dim " + std::to_string(a.head_dim));
  }
}

}  // namespace philora::cuda
