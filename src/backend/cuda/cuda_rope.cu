#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_rope.cuh"

namespace philora::cuda {

namespace {

constexpr int kMaxHalf = 256;  // rotary_dim ≤ 512

// One block per token: cos/sin of its position once into shared memory, then
// every (head, i < rotary_dim/2) pair of q and k rotated; k and v also go to the
// cache at the token's slot. Angles as HF: f32(position) · inv_freq[i] in f32;
// cos and sin of that f32 angle in double (as the CPU spec), times the factor.
__global__ void rope_and_cache_kernel(RopeCacheArgs a) {
  __shared__ float cos_s[kMaxHalf], sin_s[kMaxHalf];
  const int64_t t = blockIdx.x;
  const int64_t half = a.rotary_dim / 2, d = a.head_dim;
  const int64_t q_size = a.n_heads * d, kv_size = a.n_kv_heads * d;
  const float pos = float(a.positions[t]);
  const float* inv = a.rope_long[t] != 0 ? a.inv_freq_long : a.inv_freq_short;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = __fmul_rn(pos, inv[i]);
    double s, c;
    sincos(double(angle), &s, &c);
    cos_s[i] = __fmul_rn(float(c), a.attention_factor);
    sin_s[i] = __fmul_rn(float(s), a.attention_factor);
  }
  __syncthreads();

  bf16* row = static_cast<bf16*>(a.qkv) + t * a.width;
  const int64_t slot = a.slots[t];
  bf16* k_dst = slot >= 0 ? static_cast<bf16*>(a.k_cache) + slot * kv_size : nullptr;
  bf16* v_dst = slot >= 0 ? static_cast<bf16*>(a.v_cache) + slot * kv_size : nullptr;

  const int64_t pairs = (a.n_heads + a.n_kv_heads) * half;
  for (int64_t idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
    const int64_t h = idx / half, i = idx % half;
    bf16* x = row + h * d;
    const float x1 = __bfloat162float(x[i]), x2 = __bfloat162float(x[i + half]);
    const float c = cos_s[i], s = sin_s[i];
    const bf16 y1 = __float2bfloat16_rn(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    const bf16 y2 = __float2bfloat16_rn(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    x[i] = y1;
    x[i + half] = y2;
    if (h >= a.n_heads && k_dst) {
      bf16* k = k_dst + (h - a.n_heads) * d;
      k[i] = y1;
      k[i + half] = y2;
    }
  }
  if (!k_dst) return;
  // The dims past rotary_dim of k pass through, and all of v.
  const bf16* k_src = row + q_size;
  const bf16* v_src = row + q_size + kv_size;
  for (int64_t idx = threadIdx.x; idx < kv_size; idx += blockDim.x) {
    if (idx % d >= a.rotary_dim) k_dst[idx] = k_src[idx];
    v_dst[idx] = v_src[idx];
  }
}

}  // namespace

void launch_rope_and_cache(const RopeCacheArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return;
  if (a.rotary_dim / 2 > kMaxHalf || a.rotary_dim > a.head_dim || a.rotary_dim % 2 != 0)
    throw_unsupported("rope_and_cache: rotary_dim " + std::to_string(a.rotary_dim) + " with head_dim " +
                      std::to_string(a.head_dim));
  rope_and_cache_kernel<<<unsigned(a.num_tokens), 128, 0, stream>>>(a);
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace philora::cuda
