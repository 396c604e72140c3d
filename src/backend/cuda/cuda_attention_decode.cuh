// Attention one query row at a time ("decode"): for each (row, kv head) the
// block loads the kv head's keys and values once and serves every query head of
// its GQA group with them. Long contexts are split over blocks of `chunk` keys
// (split-K), merged by their log-sum-exp in the last block of each (row, kv
// head), or by a second kernel. Correct for
// any plan (it is also the fallback for head dims the prefill kernel lacks), and
// fast for query length 1.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "backend/cuda/cuda_attention.h"

namespace philora::cuda {

struct DecodeSplit {
  int chunk = 256;     // keys per block
  int num_splits = 1;  // blocks per (row, kv head); 1 = no merge pass
};

bool decode_attention_supported(int head_dim);
// Chooses the split so that the grid fills `num_sms` multiprocessors.
DecodeSplit plan_decode_attention(const PagedAttentionArgs& a, int64_t max_kv_len, int num_sms);
// f32 workspace the split needs (0 when num_splits == 1).
size_t decode_workspace_bytes(const PagedAttentionArgs& a, const DecodeSplit& split);
// counters: num_counters ints, all 0, that the kernel leaves 0 (CudaContext's
// split_counters): with one per (row, kv head), the single-pass kernel merges
// its splits itself; null, or too few, and a second kernel does.
void launch_decode_attention(const PagedAttentionArgs& a, const DecodeSplit& split, void* workspace,
                             int* counters, int64_t num_counters, cudaStream_t stream);

}  // namespace philora::cuda
