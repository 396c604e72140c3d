// Prefill attention on Hopper's warpgroup MMAs (wgmma, sm_90a), FlashAttention
// style: one block per (query tile of one sequence, query head), 64 rows per
// warpgroup; keys and values stream through shared memory 64 at a time,
// gathered from the paged cache (so a cached prefix is read like any other
// key), with an online softmax in f32. Variable-length sequences in one
// launch, causal by positions, sliding window.
#pragma once

#include <cuda_runtime_api.h>

#include "backend/cuda/cuda_attention.h"

namespace philora::cuda {

bool prefill_attention_supported(int head_dim);  // 64, 96, 128
void launch_prefill_attention(const PagedAttentionArgs& a, int max_q_len, cudaStream_t stream);

}  // namespace philora::cuda
