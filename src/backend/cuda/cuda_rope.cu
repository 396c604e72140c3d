#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_rope.cuh"

#include <algorithm>

namespace philora::cuda {

namespace {

// Element offset of (loc, kv head) in a K or V pool (HND pages, backend.h).
__device__ __forceinline__ int64_t cache_offset(const RopeCacheArgs& a, int64_t loc, int head) {
  return ((loc / a.page_size * a.n_kv_heads + head) * a.page_size + loc % a.page_size) * a.head_dim;
}

constexpr int kMaxHalf = 256;       // rotary_dim ≤ 512
#ifndef PHILORA_ROPE_SPLIT
#define PHILORA_ROPE_SPLIT 1  // lab switch (-DPHILORA_ROPE_SPLIT=0: one block a token) for A/B builds
#endif
constexpr int kHeadsPerBlock = 4;   // of the H + 2 Hkv heads of a token
constexpr int kThreads = 128;

// grid (T, ceil((H + 2 Hkv) / kHeadsPerBlock)). Each block takes a few heads of
// one token: cos/sin of the token's position into shared memory, then q heads
// are rotated in place, k heads rotated in place and written to the cache at
// the token's KV location, v heads copied to the cache. Angles as HF: f32(position) ·
// inv_freq[i] in f32; cos and sin of that angle (full-precision sincosf), times
// the attention factor; the rotation in f32, rounded once to bf16.
__global__ void __launch_bounds__(kThreads) rope_and_cache_kernel(RopeCacheArgs a) {
  chained_prologue();
  __shared__ float cos_s[kMaxHalf], sin_s[kMaxHalf];
  const int t = blockIdx.x;
  const int half = int(a.rotary_dim / 2), d = int(a.head_dim);
  const int H = int(a.n_heads), Hkv = int(a.n_kv_heads);
  const float pos = float(a.positions[t]);
  const float* inv = a.rope_long[t] != 0 ? a.inv_freq_long : a.inv_freq_short;
  for (int i = threadIdx.x; i < half; i += kThreads) {
    float s, c;
    sincosf(__fmul_rn(pos, inv[i]), &s, &c);
    cos_s[i] = __fmul_rn(c, a.attention_factor);
    sin_s[i] = __fmul_rn(s, a.attention_factor);
  }
  __syncthreads();

  bf16* row = static_cast<bf16*>(a.qkv) + int64_t(t) * a.width;
  const int64_t loc = a.kv_locs[t];
  const int h0 = blockIdx.y * kHeadsPerBlock;
  const int h1 = min(H + 2 * Hkv, h0 + kHeadsPerBlock);
  for (int h = h0; h < h1; ++h) {
    bf16* x = row + int64_t(h) * d;
    if (h < H + Hkv) {  // q or k: rotate the first rotary_dim dims
      bf16* k = h >= H && loc >= 0 ? static_cast<bf16*>(a.k_cache) + cache_offset(a, loc, h - H)
                                   : nullptr;
      for (int i = threadIdx.x; i < half; i += kThreads) {
        const float x1 = __bfloat162float(x[i]), x2 = __bfloat162float(x[i + half]);
        const float c = cos_s[i], s = sin_s[i];
        const bf16 y1 = __float2bfloat16_rn(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
        const bf16 y2 = __float2bfloat16_rn(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
        x[i] = y1;
        x[i + half] = y2;
        if (k) {
          k[i] = y1;
          k[i + half] = y2;
        }
      }
      if (k)  // the dims past rotary_dim pass through
        for (int i = 2 * half + threadIdx.x; i < d; i += kThreads) k[i] = x[i];
    } else if (loc >= 0) {  // v: to the cache as it is
      bf16* v = static_cast<bf16*>(a.v_cache) + cache_offset(a, loc, h - H - Hkv);
      for (int i = threadIdx.x; i < d; i += kThreads) v[i] = x[i];
    }
  }
}

// The fast path when rotary_dim / 2, head_dim and the pass-through width are
// multiples of 8: grid (T, P), P blocks per token. Each block computes the
// token's cos/sin (rotary_dim / 2 of each) into shared memory; then the P
// blocks walk the token's 16-byte pieces between them: each q/k head's rotary
// pairs in pieces of 8 pairs, then each k head's pass-through dims and each v
// head's dims, copied to the cache. P > 1 only for steps of few tokens (decode
// at small batch), where one block would walk ~3 pieces a thread one after
// another (Phi-3-mini: 768 pieces a token).
__global__ void __launch_bounds__(256) rope_and_cache_vec_kernel(RopeCacheArgs a) {
  chained_prologue();
  __shared__ float cos_s[kMaxHalf], sin_s[kMaxHalf];
  const int t = blockIdx.x;
  const int half = int(a.rotary_dim / 2), d = int(a.head_dim);
  const int H = int(a.n_heads), Hkv = int(a.n_kv_heads);
  const float pos = float(a.positions[t]);
  const float* inv = a.rope_long[t] != 0 ? a.inv_freq_long : a.inv_freq_short;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float sn, cs;
    sincosf(__fmul_rn(pos, inv[i]), &sn, &cs);
    cos_s[i] = __fmul_rn(cs, a.attention_factor);
    sin_s[i] = __fmul_rn(sn, a.attention_factor);
  }
  __syncthreads();
  const int rot_items = (H + Hkv) * (half / 8);
  const int pass_items = Hkv * ((d - 2 * half) / 8);  // k dims past rotary_dim
  const int v_items = Hkv * (d / 8);
  bf16* row = static_cast<bf16*>(a.qkv) + int64_t(t) * a.width;
  const int64_t loc = a.kv_locs[t];
  const int items = rot_items + (loc >= 0 ? pass_items + v_items : 0);
  for (int item = blockIdx.y * blockDim.x + threadIdx.x; item < items; item += gridDim.y * blockDim.x) {
    if (item < rot_items) {
      const int h = item / (half / 8), i0 = (item % (half / 8)) * 8;
      bf16* x = row + int64_t(h) * d;
      float x1[8], x2[8], y1[8], y2[8];
      bf16x8_to_f32(*reinterpret_cast<const uint4*>(x + i0), x1);
      bf16x8_to_f32(*reinterpret_cast<const uint4*>(x + i0 + half), x2);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float cs = cos_s[i0 + e], sn = sin_s[i0 + e];
        y1[e] = __fsub_rn(__fmul_rn(x1[e], cs), __fmul_rn(x2[e], sn));
        y2[e] = __fadd_rn(__fmul_rn(x2[e], cs), __fmul_rn(x1[e], sn));
      }
      const uint4 v1 = f32_to_bf16x8(y1), v2 = f32_to_bf16x8(y2);
      *reinterpret_cast<uint4*>(x + i0) = v1;
      *reinterpret_cast<uint4*>(x + i0 + half) = v2;
      if (h >= H && loc >= 0) {
        bf16* k = static_cast<bf16*>(a.k_cache) + cache_offset(a, loc, h - H);
        *reinterpret_cast<uint4*>(k + i0) = v1;
        *reinterpret_cast<uint4*>(k + i0 + half) = v2;
      }
    } else if (item < rot_items + pass_items) {
      const int per_head = (d - 2 * half) / 8, p = item - rot_items;
      const int h = p / per_head, i = 2 * half + (p % per_head) * 8;
      *reinterpret_cast<uint4*>(static_cast<bf16*>(a.k_cache) + cache_offset(a, loc, h) + i) =
          *reinterpret_cast<const uint4*>(row + int64_t(H + h) * d + i);
    } else {
      const int v = item - rot_items - pass_items;
      *reinterpret_cast<uint4*>(static_cast<bf16*>(a.v_cache) + cache_offset(a, loc, v / (d / 8)) +
                                (v % (d / 8)) * 8) =
          *reinterpret_cast<const uint4*>(row + int64_t(H + Hkv) * d + int64_t(v) * 8);
    }
  }
}

}  // namespace

void launch_rope_and_cache(const RopeCacheArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return;
  if (a.rotary_dim / 2 > kMaxHalf || a.rotary_dim > a.head_dim || a.rotary_dim % 2 != 0)
    throw_unsupported("rope_and_cache: rotary_dim " + std::to_string(a.rotary_dim) + " with head_dim " +
                      std::to_string(a.head_dim));
  const int64_t half = a.rotary_dim / 2;
  const bool vec = half % 8 == 0 && a.head_dim % 8 == 0 && a.width % 8 == 0 && aligned16(a.qkv) &&
                   aligned16(a.k_cache) && aligned16(a.v_cache);
  if (vec) {
    constexpr int kVecThreads = 256;
    const int64_t pieces = (a.n_heads + a.n_kv_heads) * (half / 8) + a.n_kv_heads * (a.head_dim / 8) +
                           a.n_kv_heads * ((a.head_dim - 2 * half) / 8);
    // A piece a thread when the step has few tokens, one block a token otherwise.
    const int64_t per_token = PHILORA_ROPE_SPLIT && a.num_tokens < 32
                                  ? std::clamp<int64_t>(ceil_div(pieces, kVecThreads), 1, 8)
                                  : 1;
    launch_chained(rope_and_cache_vec_kernel, dim3(unsigned(a.num_tokens), unsigned(per_token)),
                   dim3(kVecThreads), 0, stream, a);
  } else {
    const dim3 grid{unsigned(a.num_tokens), unsigned(ceil_div(a.n_heads + 2 * a.n_kv_heads, kHeadsPerBlock))};
    launch_chained(rope_and_cache_kernel, dim3(grid), dim3(kThreads), 0, stream, a);
  }
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace philora::cuda
