// Multi-LoRA shrink and expand (punica's SGMV / BGMV): every token applies the
// adapter in its slot, or none. Two ways to group tokens, chosen per call:
//   per-token (decode): one unit per token, slot = token_slot[t];
//   segments (prefill): units are tiles of up to kLoraTile tokens of one
//                       segment, slot = seg_slot[g], so an adapter's matrices
//                       are read once per tile rather than once per token.
// Slot -1 and rank 0 are skipped. Adapter matrices are bf16 (A: (r, in),
// B: (out, r), row-major), reached through the table's device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace philora::cuda {

struct LoraLaunch {
  const int64_t* a_ptrs = nullptr;  // [slots] device addresses of A_i
  const int64_t* b_ptrs = nullptr;  // [slots] device addresses of B_i
  const int32_t* ranks = nullptr;   // [slots]
  const float* scales = nullptr;    // [slots]
  int64_t in_features = 0, out_features = 0;
  int64_t max_rank = 0;             // over the table's slots (≤ 128)
  int64_t num_tokens = 0;
  const int32_t* token_slot = nullptr;  // [T]
  const int32_t* seg_indptr = nullptr;  // [G + 1]
  const int32_t* seg_slot = nullptr;    // [G]
  int64_t num_segments = 0;
  bool by_segment = false;
};

constexpr int kLoraMaxRank = 128;

// Whether to group by segments: when many tokens share adapters (prefill).
// Decode-sized batches go per token even when they share one adapter: their
// units would be too few to fill the GPU, and the shared matrices are read
// from L2 anyway.
inline bool lora_use_segments(int64_t num_tokens, int64_t num_segments) {
  return num_tokens >= 256 && num_tokens >= 8 * num_segments;
}

// xa[t, j] = Σ_k x[t, k] A_s[j, k] for j < r_s  (x (T, in) bf16; xa (T, xa_stride) f32).
// Other elements of xa are left unspecified. The input features are split over
// blocks (and summed with atomics) only when the grid would not fill `num_sms`.
void launch_lora_shrink(const LoraLaunch& l, const void* x, float* xa, int64_t xa_stride, int num_sms,
                        cudaStream_t stream);

// y[t, col_offset + j] += scale_s · Σ_k xa[t, k] B_s[j, k]  (y (T, y_stride) bf16).
void launch_lora_expand(const LoraLaunch& l, const float* xa, int64_t xa_stride, void* y,
                        int64_t y_stride, int64_t col_offset, cudaStream_t stream);

// Shrink and expand of a per-token batch in one launch (decode), so that a
// module's LoRA costs one graph node instead of two and the expand's loads of
// B and y start while the shrink runs. The launch's blocks take tickets from
// an atomic counter: the first T · S tickets do the shrink (S blocks per
// token, each a few rank rows), the rest the expand (E blocks per token); an
// expand block waits until its token's S shrink blocks have published xa.
// A waiting block's producers hold smaller tickets, so they have started:
// no deadlock, whatever order blocks are dispatched in. The counters are back
// at zero when a launch ends (the last block of each kind resets them), which
// also holds inside replayed graphs.
struct LoraSync {
  unsigned* counters = nullptr;  // lora_sync_words() words, zeroed once
};
constexpr int64_t kLoraFusedMaxTokens = 1024;
constexpr size_t lora_sync_words() { return 1 + 2 * size_t(kLoraFusedMaxTokens); }

// Whether launch_lora_fused takes this call (per-token batches of at most
// kLoraFusedMaxTokens tokens, 16-byte aligned x with in_features % 8 == 0).
bool lora_fused_supported(const LoraLaunch& l, const void* x);
// y[t, col_offset + j] += scale_s · (B_s (A_s x[t]))[j]; xa (T, xa_stride) f32 is scratch.
void launch_lora_fused(const LoraLaunch& l, const void* x, float* xa, int64_t xa_stride, void* y,
                       int64_t y_stride, int64_t col_offset, const LoraSync& sync, cudaStream_t stream);

}  // namespace philora::cuda
