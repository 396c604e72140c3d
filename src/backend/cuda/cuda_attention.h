// The descriptor both attention kernels take: the q part of qkv, the paged
// cache of one layer and the plan's arrays (FlashInfer's layout, backend.h).
// Query row t of sequence s (q_indptr[s] ≤ t < q_indptr[s+1]) at position p
// attends to the cached keys j with max(0, p - window + 1) ≤ j ≤ min(p, kv_len - 1).
#pragma once

#include <cstdint>

namespace philora::cuda {

struct PagedAttentionArgs {
  const void* qkv = nullptr;         // (T, qkv_stride) bf16; q of head h at column h · d
  int64_t qkv_stride = 0;
  const void* k_cache = nullptr;     // (num_pages, Hkv, page_size, d) bf16
  const void* v_cache = nullptr;     // (num_pages, Hkv, page_size, d) bf16
  void* out = nullptr;               // (T, H · d) bf16
  const int32_t* q_indptr = nullptr;          // [S + 1]
  const int32_t* kv_indptr = nullptr;         // [S + 1]
  const int32_t* kv_indices = nullptr;        // [total pages]
  const int32_t* kv_last_page_len = nullptr;  // [S]
  const int32_t* positions = nullptr;         // [T]
  int num_seqs = 0;
  int num_rows = 0;  // T
  int n_heads = 0, n_kv_heads = 0, head_dim = 0, page_size = 0;
  int window = 0;    // 0 = unlimited
  float scale = 1.0f;
};

}  // namespace philora::cuda
