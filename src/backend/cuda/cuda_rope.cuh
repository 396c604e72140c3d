// RoPE fused with the paged KV write (HF Phi-3 semantics, see backend.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace philora::cuda {

struct RopeCacheArgs {
  void* qkv;                   // (T, width) bf16, rotated in place: [q: H·d | k: Hkv·d | v: Hkv·d]
  int64_t width = 0;           // row stride of qkv, ≥ (H + 2 Hkv) · d
  int64_t num_tokens = 0;      // T
  const int32_t* positions;    // [T]
  const int32_t* kv_locs;      // [T] KV location (page · page_size + offset); < 0 = don't write
  const int32_t* rope_long;    // [T] 1 = use inv_freq_long
  const float* inv_freq_short; // [rotary_dim / 2]
  const float* inv_freq_long;  // [rotary_dim / 2]
  float attention_factor = 1.0f;
  int64_t rotary_dim = 0;
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  void* k_cache;               // (num_pages, Hkv, page_size, d) bf16
  void* v_cache;               // (num_pages, Hkv, page_size, d) bf16
  int64_t page_size = 0;
};

void launch_rope_and_cache(const RopeCacheArgs& a, cudaStream_t stream);

}  // namespace philora::cuda
