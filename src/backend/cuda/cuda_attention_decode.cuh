// Attention one query row at a time ("decode"): for each (row, kv head) the
// block loads the kv head's keys and values once and serves every query head of
// its GQA group with them. Long contexts are split over blocks of `chunk` keys
// (split-K); a second kernel merges the splits by their log-sum-exp. Correct for
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
void launch_decode_attention(const PagedAttentionArgs& a, const DecodeSplit& split, void* workspace,
                             cudaStream_t stream);

}  // namespace philora::cuda
