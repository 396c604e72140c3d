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
  const int32_t* b_ld = nullptr;    // [slots] elements between B_i's rows; null: its rank
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

// Whether launch_lora_shrink_columns takes `in` inputs (multiples of 8 up to 32768).
bool lora_shrink_columns_supported(int64_t in);

// LoRA columns, per token: X (T, ld) row t = [x[t] | bf16(scale_s · A_s x[t]) at
// columns in + col_offsets[s] .. + r_s, 0 in the rest of the `width` columns].
void launch_lora_shrink_columns(const LoraLaunch& l, const void* x, void* out, int64_t ld,
                                const int32_t* col_offsets, int64_t width, cudaStream_t stream);

// y[t, col_offset + j] += scale_s · Σ_k xa[t, k] B_s[j, k]  (y (T, y_stride) bf16); with
// `write`, y[t, col_offset + j] = that term, and 0 for tokens without an adapter.
void launch_lora_expand(const LoraLaunch& l, const float* xa, int64_t xa_stride, void* y,
                        int64_t y_stride, int64_t col_offset, bool write, cudaStream_t stream);

}  // namespace philora::cuda
