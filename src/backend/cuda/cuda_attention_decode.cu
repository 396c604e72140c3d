#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_attention_decode.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace philora::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxChunk = 256;
constexpr int kMaxHeadDim = 256;
constexpr float kLog2e = 1.4426950408889634f;

// The sequence that owns query row t: the largest s with q_indptr[s] ≤ t.
__device__ __forceinline__ int sequence_of(const int32_t* q_indptr, int num_seqs, int t) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (q_indptr[mid] <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ const bf16* kv_row(const bf16* cache, const PagedAttentionArgs& a,
                                              const int32_t* pages, int j, int kvh) {
  const int64_t page = pages[j / a.page_size];
  return cache + ((page * a.n_kv_heads + kvh) * a.page_size + j % a.page_size) * a.head_dim;
}

// The keys query row t attends to in split `split`: [begin, begin + len) of
// its sequence's cache (len ≤ 0: none), and the sequence's page list.
struct DecodeKeys {
  int begin, len;
  const int32_t* pages;
  int first_new;  // the sequence's first position written this step: keys below it are older
};

__device__ __forceinline__ DecodeKeys decode_keys(const PagedAttentionArgs& a, int t, int split, int chunk) {
  const int s = sequence_of(a.q_indptr, a.num_seqs, t);
  const int num_pages = a.kv_indptr[s + 1] - a.kv_indptr[s];
  const int kv_len = num_pages == 0 ? 0 : (num_pages - 1) * a.page_size + a.kv_last_page_len[s];
  const int p = a.positions[t];
  const int hi = min(p, kv_len - 1);
  const int lo = a.window > 0 ? max(0, p - a.window + 1) : 0;
  const int begin = lo + split * chunk;
  return {begin, min(hi + 1, begin + chunk) - begin, a.kv_indices + a.kv_indptr[s], a.positions[a.q_indptr[s]]};
}

// grid (num_splits, Hkv · ceil(group / G), T), kThreads threads.
// Shared memory: q (G, d) f32 | p (G, chunk) f32, later reused for the
// cross-thread reduction (key groups, G, d) f32.
template <int G>
__global__ void __launch_bounds__(kThreads) decode_attention_kernel(PagedAttentionArgs a, int chunk,
                                                                    int num_splits, float* part_o,
                                                                    float* part_lse) {
  chained_prologue();
  extern __shared__ float smem[];
  __shared__ float warp_red[kWarps][G];
  __shared__ float row_max[G], row_sum[G];

  const int d = a.head_dim, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int split = blockIdx.x, t = blockIdx.z;
  const int group = a.n_heads / a.n_kv_heads;
  const int group_chunks = (group + G - 1) / G;
  const int kvh = blockIdx.y / group_chunks, g0 = (blockIdx.y % group_chunks) * G;
  const int ng = min(G, group - g0);
  const int h0 = kvh * group + g0;  // first query head of this block

  const DecodeKeys keys = decode_keys(a, t, split, chunk);
  const int begin = keys.begin, len = keys.len;
  const int32_t* pages = keys.pages;
  const bf16* k_cache = static_cast<const bf16*>(a.k_cache);
  const bf16* v_cache = static_cast<const bf16*>(a.v_cache);
  bf16* out = static_cast<bf16*>(a.out);
  const int64_t part = (int64_t(t) * a.n_heads + h0) * num_splits + split;  // + gi · num_splits

  if (len <= 0) {  // nothing to attend to in this split
    if (num_splits > 1) {
      if (tid < ng) part_lse[part + int64_t(tid) * num_splits] = -INFINITY;
    } else {
      for (int i = tid; i < ng * d; i += kThreads)
        out[int64_t(t) * a.n_heads * d + int64_t(h0) * d + i] = __float2bfloat16_rn(0.0f);
    }
    return;
  }

  float* q_s = smem;          // [G][d]
  float* p_s = smem + G * d;  // [G][chunk]
  const float qscale = a.scale * kLog2e;  // scores in base 2
  const bf16* q = static_cast<const bf16*>(a.qkv) + int64_t(t) * a.qkv_stride + int64_t(h0) * d;
  for (int i = tid; i < G * d; i += kThreads)
    q_s[i] = i < ng * d ? __bfloat162float(q[i]) * qscale : 0.0f;
  __syncthreads();

  // Scores: one key per thread, its row read once for all G heads.
  const int dv = d / 8;
  float mx[G];
#pragma unroll
  for (int g = 0; g < G; ++g) mx[g] = -INFINITY;
  for (int jj = tid; jj < len; jj += kThreads) {
    const uint4* krow = reinterpret_cast<const uint4*>(kv_row(k_cache, a, pages, begin + jj, kvh));
    float acc[G];
#pragma unroll
    for (int g = 0; g < G; ++g) acc[g] = 0.0f;
#pragma unroll 4
    for (int v = 0; v < dv; ++v) {
      float f[8];
      bf16x8_to_f32(krow[v], f);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float4 qa = *reinterpret_cast<const float4*>(q_s + g * d + v * 8);
        const float4 qb = *reinterpret_cast<const float4*>(q_s + g * d + v * 8 + 4);
        acc[g] += f[0] * qa.x + f[1] * qa.y + f[2] * qa.z + f[3] * qa.w + f[4] * qb.x + f[5] * qb.y +
                  f[6] * qb.z + f[7] * qb.w;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      p_s[g * chunk + jj] = acc[g];
      mx[g] = fmaxf(mx[g], acc[g]);
    }
  }
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const float m = warp_max(mx[g]);
    if (lane == 0) warp_red[warp][g] = m;
  }
  __syncthreads();
  if (tid < G) {
    float m = -INFINITY;
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, warp_red[w][tid]);
    row_max[tid] = m;
  }
  __syncthreads();
  float sum[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    sum[g] = 0.0f;
    mx[g] = row_max[g];
  }
  for (int jj = tid; jj < len; jj += kThreads) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float e = exp2f(p_s[g * chunk + jj] - mx[g]);
      p_s[g * chunk + jj] = e;
      sum[g] += e;
    }
  }
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const float v = warp_sum(sum[g]);
    if (lane == 0) warp_red[warp][g] = v;
  }
  __syncthreads();
  if (tid < G) {
    float v = 0.0f;
    for (int w = 0; w < kWarps; ++w) v += warp_red[w][tid];
    row_sum[tid] = v;
  }

  // Values: thread (key group kg, 8-wide slice vi) accumulates its keys.
  const int key_groups = kThreads / dv;
  const int kg = tid / dv, vi = tid % dv;
  float o[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) o[g][e] = 0.0f;
  if (kg < key_groups) {
#pragma unroll 2
    for (int jj = kg; jj < len; jj += key_groups) {
      const uint4* vrow = reinterpret_cast<const uint4*>(kv_row(v_cache, a, pages, begin + jj, kvh));
      float f[8];
      bf16x8_to_f32(vrow[vi], f);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float w = p_s[g * chunk + jj];
#pragma unroll
        for (int e = 0; e < 8; ++e) o[g][e] += w * f[e];
      }
    }
  }
  __syncthreads();  // p_s is reused below
  float* red = smem;  // [key_groups][G][d]
  if (kg < key_groups) {
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int e = 0; e < 8; ++e) red[(kg * G + g) * d + vi * 8 + e] = o[g][e];
  }
  __syncthreads();
  for (int i = tid; i < ng * d; i += kThreads) {
    const int g = i / d, dd = i % d;
    float acc = 0.0f;
    for (int k = 0; k < key_groups; ++k) acc += red[(k * G + g) * d + dd];
    const float l = row_sum[g];
    const float val = l > 0.0f ? acc / l : 0.0f;
    if (num_splits == 1)
      out[int64_t(t) * a.n_heads * d + int64_t(h0 + g) * d + dd] = __float2bfloat16_rn(val);
    else
      part_o[(part + int64_t(g) * num_splits) * d + dd] = val;
  }
  if (num_splits > 1 && tid < ng)
    part_lse[part + int64_t(tid) * num_splits] = row_sum[tid] > 0.0f ? row_max[tid] + log2f(row_sum[tid]) : -INFINITY;
}

// One block per (row, head): out = Σ_c 2^(lse_c - M) o_c / Σ_c 2^(lse_c - M).
__global__ void merge_splits_kernel(const float* __restrict__ part_o, const float* __restrict__ part_lse,
                                    bf16* __restrict__ out, int num_splits, int d) {
  chained_prologue();
  const int64_t row_head = blockIdx.x;  // t · H + h
  const float* lse = part_lse + row_head * num_splits;
  float m = -INFINITY;
  for (int c = 0; c < num_splits; ++c) m = fmaxf(m, lse[c]);
  for (int dd = threadIdx.x; dd < d; dd += blockDim.x) {
    float acc = 0.0f, wsum = 0.0f;
    if (m != -INFINITY) {
      for (int c = 0; c < num_splits; ++c) {
        if (lse[c] == -INFINITY) continue;
        const float w = exp2f(lse[c] - m);
        wsum += w;
        acc += w * part_o[(row_head * num_splits + c) * d + dd];
      }
    }
    out[row_head * d + dd] = __float2bfloat16_rn(wsum > 0.0f ? acc / wsum : 0.0f);
  }
}

// ---- single pass: keys spread over lane groups, online softmax per lane -------
//
// A warp reads 32 / L keys at a time, L lanes per key, each lane E = D / L
// elements of the key's K and V rows (E / 8 16-byte loads each, lane `sub`
// taking the words sub, sub + L, ...: every load instruction of the warp covers
// whole 32-byte sectors). K and V of U steps are loaded before any is used, so a
// lane keeps 2 · U · E · 2 bytes in flight. Each lane group keeps its own running
// max, sum and output slice (no reduction per key beyond the L-lane dot product);
// groups, then warps, merge at the end. Same split and output contract as the
// kernel above.
template <int D, int L, int G, int U>
__global__ void __launch_bounds__(kThreads) decode_attention_lanes_kernel(PagedAttentionArgs a, int chunk,
                                                                          int num_splits, float* part_o,
                                                                          float* part_lse) {
  // The plan and the cache's older keys are in memory before this kernel's
  // predecessor (rope) runs: the block finds its keys and loads its first step
  // of them before waiting; q (rotated by rope) and anything written come after.
  chained_launch();
  constexpr int E = D / L;         // elements per lane
  constexpr int W = E / 8;         // 16-byte words per lane and row
  constexpr int KPW = 32 / L;      // keys per warp step
  constexpr int KPB = KPW * kWarps;
  static_assert(D % L == 0 && E % 8 == 0 && 32 % L == 0, "lane split");
  __shared__ __align__(16) float q_s[G][D];
  __shared__ float m_s[kWarps][G], l_s[kWarps][G];
  __shared__ float o_s[kWarps][G][D];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int sub = lane % L, kg = lane / L;
  const int split = blockIdx.x, t = blockIdx.z, kvh = blockIdx.y;
  const int h0 = kvh * G;  // the block serves the whole group: G = n_heads / n_kv_heads

  const auto [begin, len, pages, first_new] = decode_keys(a, t, split, chunk);
  const bf16* k_cache = static_cast<const bf16*>(a.k_cache);
  const bf16* v_cache = static_cast<const bf16*>(a.v_cache);
  bf16* out = static_cast<bf16*>(a.out);
  const int64_t part = (int64_t(t) * a.n_heads + h0) * num_splits + split;  // + g · num_splits
  const int64_t head_stride = int64_t(a.page_size) * D;
  const int64_t page_stride = int64_t(a.n_kv_heads) * head_stride;

  // K and V of U steps of this lane group's keys from j0 (zeros past len).
  // pass 0: every key; 1: only keys older than this step (zeros for the rest);
  // 2: the rest, over what pass 1 left.
  // The page of each step's key comes from pg, which load_pages fills one
  // iteration ahead: the K/V loads never wait on a page-table load (H200:
  // op_bench batch 8 21.8 vs 23.0 us, batch 1 11.8 vs 12.3; steps within noise).
  uint4 kr[U][W], vr[U][W];
  int pg[U];
  auto load_pages = [&](int j0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * KPB;
      pg[u] = j < len ? pages[(begin + j) / a.page_size] : 0;
    }
  };
  auto load_steps = [&](int j0, int pass) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * KPB;
      const int key = begin + j;
      if (j < len && (pass == 0 || (pass == 1) == (key < first_new))) {
        const int64_t off = int64_t(pg[u]) * page_stride + kvh * head_stride + int64_t(key % a.page_size) * D;
        const uint4* krow = reinterpret_cast<const uint4*>(k_cache + off);
        const uint4* vrow = reinterpret_cast<const uint4*>(v_cache + off);
#pragma unroll
        for (int w = 0; w < W; ++w) kr[u][w] = krow[sub + w * L];
#pragma unroll
        for (int w = 0; w < W; ++w) vr[u][w] = vrow[sub + w * L];
      } else if (pass != 2) {
#pragma unroll
        for (int w = 0; w < W; ++w) kr[u][w] = vr[u][w] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  // The first steps' older keys load before the wait (rope writes the new
  // ones): at batch 1 the split holding the newest key then waits on memory
  // for that key alone.
  const int j_first = warp * KPW + kg;
  load_pages(j_first);
  load_steps(j_first, 1);
  chained_wait();

  if (len <= 0) {
    if (num_splits > 1) {
      if (tid < G) part_lse[part + int64_t(tid) * num_splits] = -INFINITY;
    } else {
      for (int i = tid; i < G * D; i += kThreads)
        out[int64_t(t) * a.n_heads * D + int64_t(h0) * D + i] = __float2bfloat16_rn(0.0f);
    }
    return;
  }

  const float qscale = a.scale * kLog2e;  // scores in base 2
  const bf16* q = static_cast<const bf16*>(a.qkv) + int64_t(t) * a.qkv_stride + int64_t(h0) * D;
  for (int i = tid; i < G * D; i += kThreads) q_s[i / D][i % D] = __bfloat162float(q[i]) * qscale;
  __syncthreads();

  float m[G], l[G], o[G][E];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) o[g][e] = 0.0f;
  }
  for (int j0 = j_first; j0 - kg < len; j0 += KPB * U) {
    load_steps(j0, j0 == j_first ? 2 : 0);
    load_pages(j0 + KPB * U);
    float sc[U][G];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int g = 0; g < G; ++g) sc[u][g] = 0.0f;
#pragma unroll
      for (int w = 0; w < W; ++w) {
        float f[8];
        bf16x8_to_f32(kr[u][w], f);
        const int e0 = (sub + w * L) * 8;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float4 qa = *reinterpret_cast<const float4*>(&q_s[g][e0]);
          const float4 qb = *reinterpret_cast<const float4*>(&q_s[g][e0 + 4]);
          sc[u][g] += f[0] * qa.x + f[1] * qa.y + f[2] * qa.z + f[3] * qa.w + f[4] * qb.x + f[5] * qb.y +
                      f[6] * qb.z + f[7] * qb.w;
        }
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int x = 1; x < L; x <<= 1) sc[u][g] += __shfl_xor_sync(0xffffffffu, sc[u][g], x);
        if (j0 + u * KPB >= len) sc[u][g] = -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mn = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) mn = fmaxf(mn, sc[u][g]);
      if (mn == -INFINITY) continue;  // nothing valid seen yet by this lane group
      const float r = exp2f(m[g] - mn);
      m[g] = mn;
      l[g] *= r;
#pragma unroll
      for (int e = 0; e < E; ++e) o[g][e] *= r;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pu = exp2f(sc[u][g] - mn);
        l[g] += pu;
#pragma unroll
        for (int w = 0; w < W; ++w) {
          float f[8];
          bf16x8_to_f32(vr[u][w], f);
#pragma unroll
          for (int e = 0; e < 8; ++e) o[g][w * 8 + e] += pu * f[e];
        }
      }
    }
  }

  // Merge the warp's lane groups (lanes with the same `sub`), then the warps.
#pragma unroll
  for (int x = L; x < 32; x <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], x);
      const float lo_ = __shfl_xor_sync(0xffffffffu, l[g], x);
      const float mn = fmaxf(m[g], mo);
      const float ra = mn == -INFINITY ? 0.0f : exp2f(m[g] - mn);
      const float rb = mn == -INFINITY ? 0.0f : exp2f(mo - mn);
      l[g] = l[g] * ra + lo_ * rb;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float oo = __shfl_xor_sync(0xffffffffu, o[g][e], x);
        o[g][e] = o[g][e] * ra + oo * rb;
      }
      m[g] = mn;
    }
  }
  if (kg == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (sub == 0) {
        m_s[warp][g] = m[g];
        l_s[warp][g] = l[g];
      }
#pragma unroll
      for (int w = 0; w < W; ++w)
#pragma unroll
        for (int e = 0; e < 8; ++e) o_s[warp][g][(sub + w * L) * 8 + e] = o[g][w * 8 + e];
    }
  }
  __syncthreads();
  for (int i = tid; i < G * D; i += kThreads) {
    const int g = i / D, dd = i % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, m_s[w][g]);
    float acc = 0.0f, sum = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float r = exp2f(m_s[w][g] - mx);
        acc += r * o_s[w][g][dd];
        sum += r * l_s[w][g];
      }
    }
    const float val = sum > 0.0f ? acc / sum : 0.0f;
    if (num_splits == 1)
      out[int64_t(t) * a.n_heads * D + int64_t(h0 + g) * D + dd] = __float2bfloat16_rn(val);
    else {
      part_o[(part + int64_t(g) * num_splits) * D + dd] = val;
      if (dd == 0) part_lse[part + int64_t(g) * num_splits] = sum > 0.0f ? mx + log2f(sum) : -INFINITY;
    }
  }
}

#ifndef PHILORA_DECODE_UNROLL
#define PHILORA_DECODE_UNROLL 2
#endif

// Lanes per key for (D, G): the fewest that keep a lane's output slice (G · D / L
// floats) at most 48 registers with whole 16-byte words; 0 = not instantiated.
constexpr int lanes_per_key(int d, int g) {
  for (int l = 4; l <= 16; l *= 2)
    if (d % l == 0 && (d / l) % 8 == 0 && g * (d / l) <= 48) return l;
  return 0;
}

template <int D, int G>
bool launch_lanes(const PagedAttentionArgs& a, const DecodeSplit& split, float* part_o, float* part_lse,
                  cudaStream_t stream) {
  constexpr int L = lanes_per_key(D, G);
  if constexpr (L == 0) {
    return false;
  } else {
    const dim3 grid(unsigned(split.num_splits), unsigned(a.n_kv_heads), unsigned(a.num_rows));
    launch_chained(decode_attention_lanes_kernel<D, L, G, PHILORA_DECODE_UNROLL>, grid, dim3(kThreads), 0,
                   stream, a, split.chunk, split.num_splits, part_o, part_lse);
    PHILORA_CUDA_CHECK_LAUNCH();
    return true;
  }
}

template <int D>
bool launch_lanes_group(const PagedAttentionArgs& a, const DecodeSplit& split, float* part_o,
                        float* part_lse, cudaStream_t stream) {
  switch (a.n_heads / a.n_kv_heads) {
    case 1: return launch_lanes<D, 1>(a, split, part_o, part_lse, stream);
    case 2: return launch_lanes<D, 2>(a, split, part_o, part_lse, stream);
    case 3: return launch_lanes<D, 3>(a, split, part_o, part_lse, stream);
    case 4: return launch_lanes<D, 4>(a, split, part_o, part_lse, stream);
    default: return false;
  }
}

// The single-pass kernel where it is instantiated (head dims 64, 96, 128; GQA
// groups up to 4), else false.
bool launch_lanes_any(const PagedAttentionArgs& a, const DecodeSplit& split, float* part_o, float* part_lse,
                      cudaStream_t stream) {
  switch (a.head_dim) {
    case 64: return launch_lanes_group<64>(a, split, part_o, part_lse, stream);
    case 96: return launch_lanes_group<96>(a, split, part_o, part_lse, stream);
    case 128: return launch_lanes_group<128>(a, split, part_o, part_lse, stream);
    default: return false;
  }
}

// Whether launch_lanes_any takes (head_dim, group).
bool lanes_kernel_for(int head_dim, int group) {
  if (group < 1 || group > 4) return false;
  switch (head_dim) {
    case 64: return lanes_per_key(64, group) != 0;
    case 96: return lanes_per_key(96, group) != 0;
    case 128: return lanes_per_key(128, group) != 0;
    default: return false;
  }
}

int group_tile(int group) {
  if (group >= 8) return 8;
  if (group >= 4) return 4;
  if (group >= 2) return 2;
  return 1;
}

size_t shared_bytes(int g, int d, int chunk) {
  const size_t first = size_t(g) * size_t(d + chunk) * 4;
  const size_t red = size_t(kThreads / (d / 8)) * size_t(g) * size_t(d) * 4;
  return std::max(first, red);
}

template <int G>
void launch(const PagedAttentionArgs& a, const DecodeSplit& split, float* part_o, float* part_lse,
            cudaStream_t stream) {
  const int group = a.n_heads / a.n_kv_heads;
  const dim3 grid(unsigned(split.num_splits), unsigned(a.n_kv_heads * ((group + G - 1) / G)),
                  unsigned(a.num_rows));
  const size_t smem = shared_bytes(G, a.head_dim, split.chunk);
  if (smem > 48 * 1024) allow_dynamic_smem(reinterpret_cast<const void*>(decode_attention_kernel<G>), smem);
  launch_chained(decode_attention_kernel<G>, dim3(grid), dim3(kThreads), smem, stream, a, split.chunk, split.num_splits, part_o,
                                                               part_lse);
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool decode_attention_supported(int head_dim) {
  return head_dim > 0 && head_dim % 8 == 0 && head_dim <= kMaxHeadDim;
}

DecodeSplit plan_decode_attention(const PagedAttentionArgs& a, int64_t max_kv_len, int num_sms) {
  DecodeSplit s;
  int64_t keys = std::max<int64_t>(1, max_kv_len);
  if (a.window > 0) keys = std::min<int64_t>(keys, a.window);
  const int group = a.n_heads / a.n_kv_heads;
  const bool lanes = lanes_kernel_for(a.head_dim, group);
  const int g = lanes ? group : group_tile(group);
  const int64_t blocks = int64_t(a.num_rows) * a.n_kv_heads * ((group + g - 1) / g);
  // Split only a grid of fewer blocks than multiprocessors, into two waves of
  // blocks of at least 64 keys. The single-pass kernel takes any chunk (no
  // split: no merge pass); the two-pass one at most kMaxChunk (its scores sit
  // in shared memory). H200, batch 8 at ctx 512 (256 blocks): unsplit 68.7–69.4%
  // of the ideal against 65.0–65.5% with 2 splits, 64.6–65.3% with 4; batch 1
  // (32 blocks): 8 splits 65.3–65.7%, 4 splits 64.2–65.1%.
  const int64_t want =
      blocks >= num_sms ? 1 : std::max<int64_t>(1, ceil_div(2 * int64_t(num_sms), std::max<int64_t>(1, blocks)));
  int64_t chunk = ceil_div(keys, want);
  chunk = std::clamp<int64_t>(ceil_div(chunk, 32) * 32, 64, lanes ? std::max<int64_t>(64, keys) : kMaxChunk);
  s.chunk = int(chunk);
  s.num_splits = int(ceil_div(keys, chunk));
  return s;
}

size_t decode_workspace_bytes(const PagedAttentionArgs& a, const DecodeSplit& split) {
  if (split.num_splits <= 1) return 0;
  const size_t n = size_t(a.num_rows) * size_t(a.n_heads) * size_t(split.num_splits);
  return n * size_t(a.head_dim) * 4 + n * 4;
}

void launch_decode_attention(const PagedAttentionArgs& a, const DecodeSplit& split, void* workspace,
                             cudaStream_t stream) {
  if (a.num_rows == 0) return;
  if (!decode_attention_supported(a.head_dim))
    throw_unsupported("attention: head_dim " + std::to_string(a.head_dim) +
                      " (needs a multiple of 8, at most 256)");
  float* part_o = static_cast<float*>(workspace);
  float* part_lse = part_o ? part_o + size_t(a.num_rows) * size_t(a.n_heads) * size_t(split.num_splits) *
                                          size_t(a.head_dim)
                           : nullptr;
  if (!launch_lanes_any(a, split, part_o, part_lse, stream)) {
    switch (group_tile(a.n_heads / a.n_kv_heads)) {
      case 8: launch<8>(a, split, part_o, part_lse, stream); break;
      case 4: launch<4>(a, split, part_o, part_lse, stream); break;
      case 2: launch<2>(a, split, part_o, part_lse, stream); break;
      default: launch<1>(a, split, part_o, part_lse, stream); break;
    }
  }
  if (split.num_splits > 1) {
    const int threads = std::min(256, int(ceil_div(a.head_dim, 32) * 32));
    launch_chained(merge_splits_kernel, dim3(unsigned(int64_t(a.num_rows) * a.n_heads)), dim3(threads), 0, stream, part_o, part_lse, static_cast<bf16*>(a.out), split.num_splits, a.head_dim);
    PHILORA_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace philora::cuda
