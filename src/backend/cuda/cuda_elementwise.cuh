// Row-wise and element-wise kernels: dtype conversion, random fill, RMSNorm
// (plain and fused with the residual add), SiLU·mul and row gathers (embedding
// lookup, selecting the logit rows). Pointers to bf16 data are passed as void*
// so that plain C++ files can call these launchers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace philora::cuda {

// dst[i] = src[i] converted; dst_dtype is bf16 or f32.
void launch_convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n,
                    cudaStream_t stream);

// out[i] = bf16(mean + half_width * random_uniform_value(seed, i))
void launch_random_uniform(void* out, int64_t n, uint64_t seed, float mean, float half_width,
                           cudaStream_t stream);

// r = x + residual (rounded to bf16; r = x when residual is null), stored in
// `sum` when non-null; y = bf16(w * r / sqrt(mean(r²) + eps)), in f32.
// x, residual, w, y, sum: bf16; x, residual, y, sum (rows, n); w (n).
void launch_rms_norm(const void* x, const void* residual, const void* w, void* y, void* sum,
                     int64_t rows, int64_t n, float eps, cudaStream_t stream);

// gate_up (rows, 2n) = [gate | up]  ->  out (rows, n) = silu(gate) * up
void launch_silu_mul(const void* gate_up, void* out, int64_t rows, int64_t n, cudaStream_t stream);

// rms_norm (no residual) or silu_mul run as the prologue of a kernel that
// reads its output — the GEMV (cuda_skinny.cuh): the kernel makes each row of
// its x from its source (x itself for rms_norm, gate_up (rows, 2n) for
// silu_mul) with the same arithmetic as the op alone, so the same bits.
struct RowPrologue {
  enum Kind : int { none = 0, rms_norm = 1, silu_mul = 2 };
  Kind kind = none;
  const void* norm_w = nullptr;  // rms_norm's weight [n], bf16, 16-byte aligned
  float eps = 0.0f;
};

// Whether a kernel of `threads` threads a block can run `p` on rows of n
// (n % 8 == 0; rms_norm needs at least its own block size, rms_norm_threads).
bool row_prologue_fits(const RowPrologue& p, int64_t n, int threads);

// out[i, :] = x[rows[i], :] ; x (·, cols) bf16, rows [count] i32, out (count, cols)
void launch_gather_rows(const void* x, const int32_t* rows, void* out, int64_t count, int64_t cols,
                        cudaStream_t stream);

// One piece of a batched column write (Backend::write_columns_batch): rows
// of dst (leading dimension ld, already offset to the first column) get
// src's r columns (src row-major (rows, r); null: none), then zeros up to width.
struct ColumnWriteDesc {
  void* dst = nullptr;
  const void* src = nullptr;
  int64_t ld = 0;
  int64_t rows = 0;
  int32_t rank = 0;
  int32_t width = 0;
};

// Every piece of `descs` (a device array of n), bf16; `most` bounds rows · width.
void launch_write_columns_batch(const ColumnWriteDesc* descs, int n, int64_t most,
                                cudaStream_t stream);

// out = x + silu(h + bias); h, x, out (rows, n), bias [n]; all bf16
void launch_bias_silu_residual(const void* h, const void* bias, const void* x, void* out,
                               int64_t rows, int64_t n, cudaStream_t stream);

// out[r] = the first column of row r's largest value; x (rows, n) bf16
void launch_argmax_rows(const void* x, int32_t* out, int64_t rows, int64_t n, cudaStream_t stream);

}  // namespace philora::cuda
