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

// y[t, col_offset + j] += scale_s · Σ_k xa[t, k] B_s[j, k]  (y (T, y_stride) bf16); with
// `write`, y[t, col_offset + j] = that term, and 0 for tokens without an adapter.
void launch_lora_expand(const LoraLaunch& l, const float* xa, int64_t xa_stride, void* y,
                        int64_t y_stride, int64_t col_offset, bool write, cudaStream_t stream);

// ---- LoRA folded into the row ops of a decode-sized step ----------------------
// (backend.h, "LoRA folded into the ops next to a matmul"; per-token slots.)
// A token's row is split over a cluster of blocks; each block adds the `add`
// module's delta to its share of the row and computes its part of the `shrink`
// module's A·row; the parts meet in block 0's shared memory (distributed shared
// memory), which writes xa_out. No kernel of its own, no atomics.
struct LoraFold {
  LoraLaunch add;                // the module whose delta the op adds (B, ranks, scales)
  bool has_add = false;
  const float* xa_in = nullptr;  // (T, xa_in_stride): add's shrink
  int64_t xa_in_stride = 0;
  LoraLaunch shrink;             // the module whose shrink the op computes (A, ranks)
  bool has_shrink = false;
  float* xa_out = nullptr;       // (T, xa_out_stride)
  int64_t xa_out_stride = 0;
  const int32_t* token_slot = nullptr;  // [T]
};

// Whether a row of n features fits the folded row kernels.
bool rms_norm_lora_fits(int64_t n);
bool silu_mul_lora_fits(int64_t n);

// residual += delta (rounded to bf16, in place); y = rms_norm(residual) · w;
// xa_out = A·y. residual, w, y bf16, 16-byte aligned; rows of n.
void launch_rms_norm_lora(const LoraFold& f, void* residual, const void* w, void* y, int64_t rows,
                          int64_t n, float eps, cudaStream_t stream);

// out = silu(gate) · up of gate_up (rows, 2n) = [gate | up]; xa_out = A·out (no `add`).
void launch_silu_mul_lora(const LoraFold& f, const void* gate_up, void* out, int64_t rows, int64_t n,
                          cudaStream_t stream);

}  // namespace philora::cuda
