#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_elementwise.cuh"

#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>

namespace philora::cuda {

namespace {

constexpr int kThreads = 256;

int grid_for(int64_t n, int threads) {
  return int(std::min<int64_t>(std::max<int64_t>(1, ceil_div(n, threads)), 65535 * 8));
}

// ---- conversion ---------------------------------------------------------------

template <typename S>
__device__ __forceinline__ float load_as_f32(const S* p, int64_t i);
template <>
__device__ __forceinline__ float load_as_f32<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ __forceinline__ float load_as_f32<bf16>(const bf16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <>
__device__ __forceinline__ float load_as_f32<__half>(const __half* p, int64_t i) {
  return __half2float(p[i]);
}
template <>
__device__ __forceinline__ float load_as_f32<int32_t>(const int32_t* p, int64_t i) {
  return float(p[i]);
}
template <>
__device__ __forceinline__ float load_as_f32<int64_t>(const int64_t* p, int64_t i) {
  return float(p[i]);
}

template <typename S, typename D>
__global__ void convert_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = load_as_f32(src, i);
    if constexpr (sizeof(D) == 2)
      dst[i] = __float2bfloat16_rn(v);
    else
      dst[i] = v;
  }
}

template <typename D>
void convert_to(const void* src, DType src_dtype, D* dst, int64_t n, cudaStream_t stream) {
  const int grid = grid_for(n, kThreads);
  switch (src_dtype) {
    case DType::f32:
      convert_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const float*>(src), dst, n);
      break;
    case DType::bf16:
      convert_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const bf16*>(src), dst, n);
      break;
    case DType::f16:
      convert_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const __half*>(src), dst, n);
      break;
    case DType::i32:
      convert_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const int32_t*>(src), dst, n);
      break;
    case DType::i64:
      convert_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const int64_t*>(src), dst, n);
      break;
  }
  PHILORA_CUDA_CHECK_LAUNCH();
}

// ---- random -------------------------------------------------------------------

// random_uniform_value of backend.h, bit for bit.
__device__ __forceinline__ float uniform_value(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return __fmul_rn(float(int64_t(z >> 40) - (int64_t(1) << 23)), 1.0f / float(1 << 23));
}

__global__ void random_uniform_kernel(bf16* __restrict__ out, int64_t n, uint64_t seed, float mean,
                                      float half_width) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    // No fused multiply-add: the CPU computes mean + half_width * v in two roundings.
    out[i] = __float2bfloat16_rn(__fadd_rn(mean, __fmul_rn(half_width, uniform_value(seed, uint64_t(i)))));
  }
}

// ---- RMSNorm ------------------------------------------------------------------

// One block per row. The vector path loads up to kCache 8-wide vectors of the
// row (and of the residual and the weight) per thread before it uses any, and
// keeps them in registers between the sum of squares and the scaling; what a
// row has past kCache · blockDim vectors is streamed, and re-read (from L1/L2)
// in the second pass.
constexpr int kCache = kRmsCache;

// x + r rounded to bf16, as HF's residual stream is.
__device__ __forceinline__ uint4 add_bf16x8(const uint4& x, const uint4& r) {
  float a[8], b[8];
  bf16x8_to_f32(x, a);
  bf16x8_to_f32(r, b);
#pragma unroll
  for (int j = 0; j < 8; ++j) a[j] += b[j];
  return f32_to_bf16x8(a);
}

__global__ void rms_norm_vec_kernel(const bf16* __restrict__ x, const bf16* __restrict__ residual,
                                    const bf16* __restrict__ w, bf16* __restrict__ y,
                                    bf16* __restrict__ sum, int64_t n, float eps) {
  chained_prologue();
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t nv = n / 8;
  const uint4* xv = reinterpret_cast<const uint4*>(x + row * n);
  const uint4* rv = residual ? reinterpret_cast<const uint4*>(residual + row * n) : nullptr;
  uint4* sv = sum ? reinterpret_cast<uint4*>(sum + row * n) : nullptr;
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  uint4* yv = reinterpret_cast<uint4*>(y + row * n);
  const int64_t cached = int64_t(kCache) * blockDim.x;

  uint4 xc[kCache], rc[kCache], wc[kCache];
#pragma unroll
  for (int c = 0; c < kCache; ++c) {
    const int64_t i = threadIdx.x + int64_t(c) * blockDim.x;
    if (i < nv) {
      xc[c] = xv[i];
      if (rv) rc[c] = rv[i];
      wc[c] = wv[i];
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int c = 0; c < kCache; ++c) {
    const int64_t i = threadIdx.x + int64_t(c) * blockDim.x;
    if (i < nv) {
      if (rv) {
        xc[c] = add_bf16x8(xc[c], rc[c]);
        if (sv) sv[i] = xc[c];
      }
      ss += sum_of_squares(xc[c]);
    }
  }
  for (int64_t i = cached + threadIdx.x; i < nv; i += blockDim.x) {
    uint4 v = xv[i];
    if (rv) {
      v = add_bf16x8(v, rv[i]);
      if (sv) sv[i] = v;
    }
    ss += sum_of_squares(v);
  }
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / float(n) + eps);
#pragma unroll
  for (int c = 0; c < kCache; ++c) {
    const int64_t i = threadIdx.x + int64_t(c) * blockDim.x;
    if (i < nv) yv[i] = scale_bf16x8(xc[c], wc[c], inv);
  }
  const uint4* back = sv ? sv : xv;
  for (int64_t i = cached + threadIdx.x; i < nv; i += blockDim.x) yv[i] = scale_bf16x8(back[i], wv[i], inv);
}

__global__ void rms_norm_scalar_kernel(const bf16* __restrict__ x, const bf16* __restrict__ residual,
                                       const bf16* __restrict__ w, bf16* __restrict__ y,
                                       bf16* __restrict__ sum, int64_t n, float eps) {
  chained_prologue();
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    bf16 v = x[row * n + i];
    if (residual) {
      v = __float2bfloat16_rn(__bfloat162float(v) + __bfloat162float(residual[row * n + i]));
      if (sum) sum[row * n + i] = v;
    }
    const float f = __bfloat162float(v);
    ss += f * f;
  }
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / float(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    bf16 v = x[row * n + i];
    if (residual) v = __float2bfloat16_rn(__bfloat162float(v) + __bfloat162float(residual[row * n + i]));
    y[row * n + i] = __float2bfloat16_rn(__bfloat162float(w[i]) * (__bfloat162float(v) * inv));
  }
}

// ---- SiLU·mul -----------------------------------------------------------------

// grid (column blocks, rows ≤ 65535; more rows loop): two 8-wide pieces per
// thread, all four loads issued before any is used.
__global__ void silu_mul_vec_kernel(const bf16* __restrict__ gate_up, bf16* __restrict__ out,
                                    int64_t rows, int64_t n) {
  chained_prologue();
  const int64_t nv = n / 8;
  const int64_t c0 = (int64_t(blockIdx.x) * blockDim.x) * 2 + threadIdx.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const uint4* g = reinterpret_cast<const uint4*>(gate_up + r * 2 * n);
    uint4* o = reinterpret_cast<uint4*>(out + r * n);
    uint4 gv[2], uv[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int64_t c = c0 + int64_t(k) * blockDim.x;
      if (c < nv) {
        gv[k] = g[c];
        uv[k] = g[nv + c];
      }
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int64_t c = c0 + int64_t(k) * blockDim.x;
      if (c < nv) {
        o[c] = silu_mul_bf16x8(gv[k], uv[k]);
      }
    }
  }
}

__global__ void silu_mul_scalar_kernel(const bf16* __restrict__ gate_up, bf16* __restrict__ out,
                                       int64_t rows, int64_t n) {
  chained_prologue();
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, c = i % n;
    const float g = __bfloat162float(gate_up[r * 2 * n + c]);
    const float u = __bfloat162float(gate_up[r * 2 * n + n + c]);
    out[i] = __float2bfloat16_rn(silu(g) * u);
  }
}

// ---- row gather ---------------------------------------------------------------

__global__ void gather_rows_vec_kernel(const uint4* __restrict__ x, const int32_t* __restrict__ rows,
                                       uint4* __restrict__ out, int64_t cols_v) {
  chained_prologue();
  const int64_t i = blockIdx.x;
  const int64_t src = rows[i];
  for (int64_t c = threadIdx.x; c < cols_v; c += blockDim.x) out[i * cols_v + c] = x[src * cols_v + c];
}

__global__ void gather_rows_scalar_kernel(const bf16* __restrict__ x, const int32_t* __restrict__ rows,
                                          bf16* __restrict__ out, int64_t cols) {
  chained_prologue();
  const int64_t i = blockIdx.x;
  const int64_t src = rows[i];
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[i * cols + c] = x[src * cols + c];
}

// ---- Medusa blocks and row argmax ------------------------------------------------

// out = x + silu(h + bias), one element per thread (grid-stride).
__global__ void bias_silu_residual_kernel(const bf16* __restrict__ h, const bf16* __restrict__ bias,
                                          const bf16* __restrict__ x, bf16* __restrict__ out,
                                          int64_t rows, int64_t n) {
  chained_prologue();
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = __bfloat162float(h[i]) + __bfloat162float(bias[i % n]);
    out[i] = __float2bfloat16_rn(__bfloat162float(x[i]) + silu(g));
  }
}

// One block per row: each thread keeps its best (value, column), the first
// column on ties; then a shared-memory tree of the same rule.
__global__ void argmax_rows_kernel(const bf16* __restrict__ x, int32_t* __restrict__ out, int64_t n) {
  chained_prologue();
  __shared__ float best_v[kThreads];
  __shared__ int32_t best_i[kThreads];
  const bf16* row = x + int64_t(blockIdx.x) * n;
  float v = -INFINITY;
  int32_t idx = 0x7fffffff;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    const float f = __bfloat162float(row[c]);
    if (f > v || (f == v && int32_t(c) < idx)) {
      v = f;
      idx = int32_t(c);
    }
  }
  best_v[threadIdx.x] = v;
  best_i[threadIdx.x] = idx;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride) {
      const float ov = best_v[threadIdx.x + stride];
      const int32_t oi = best_i[threadIdx.x + stride];
      if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = best_i[0] == 0x7fffffff ? 0 : best_i[0];
}

}  // namespace

void launch_convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n,
                    cudaStream_t stream) {
  if (n == 0) return;
  if (dst_dtype == DType::bf16)
    convert_to(src, src_dtype, static_cast<bf16*>(dst), n, stream);
  else if (dst_dtype == DType::f32)
    convert_to(src, src_dtype, static_cast<float*>(dst), n, stream);
  else
    throw_unsupported("conversion to " + std::string(dtype_name(dst_dtype)));
}

void launch_random_uniform(void* out, int64_t n, uint64_t seed, float mean, float half_width,
                           cudaStream_t stream) {
  if (n == 0) return;
  random_uniform_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<bf16*>(out), n,
                                                                         seed, mean, half_width);
  PHILORA_CUDA_CHECK_LAUNCH();
}

void launch_rms_norm(const void* x, const void* residual, const void* w, void* y, void* sum,
                     int64_t rows, int64_t n, float eps, cudaStream_t stream) {
  if (rows == 0 || n == 0) return;
  const auto* xb = static_cast<const bf16*>(x);
  const auto* rb = static_cast<const bf16*>(residual);
  const auto* wb = static_cast<const bf16*>(w);
  auto* yb = static_cast<bf16*>(y);
  auto* sb = static_cast<bf16*>(sum);
  const bool vec = n % 8 == 0 && aligned16(x) && aligned16(w) && aligned16(y) &&
                   (!residual || (sum && aligned16(residual))) && (!sum || aligned16(sum));
  if (vec) {
    const int threads = rms_norm_threads(n);
    launch_chained(rms_norm_vec_kernel, dim3(unsigned(rows)), dim3(threads), 0, stream, xb, rb, wb, yb, sb, n, eps);
  } else {
    launch_chained(rms_norm_scalar_kernel, dim3(unsigned(rows)), dim3(kThreads), 0, stream, xb, rb, wb, yb, sb, n, eps);
  }
  PHILORA_CUDA_CHECK_LAUNCH();
}

// blockIdx.y: the piece; the x blocks stride its rows · width elements.
__global__ void write_columns_batch_kernel(const ColumnWriteDesc* descs) {
  const ColumnWriteDesc d = descs[blockIdx.y];
  bf16* dst = static_cast<bf16*>(d.dst);
  const bf16* src = static_cast<const bf16*>(d.src);
  const int64_t total = d.rows * d.width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / d.width;
    const int c = int(i % d.width);
    dst[r * d.ld + c] = src && c < d.rank ? src[r * d.rank + c] : __float2bfloat16_rn(0.0f);
  }
}

void launch_write_columns_batch(const ColumnWriteDesc* descs, int n, int64_t most,
                                cudaStream_t stream) {
  if (n == 0 || most == 0) return;
  if (n > 65535) throw std::runtime_error("write_columns_batch: more than 65535 pieces");
  const dim3 grid(unsigned(std::min<int64_t>(ceil_div(most, kThreads), 1024)), unsigned(n));
  write_columns_batch_kernel<<<grid, kThreads, 0, stream>>>(descs);
  PHILORA_CUDA_CHECK_LAUNCH();
}

bool row_prologue_fits(const RowPrologue& p, int64_t n, int threads) {
  if (n % 8 != 0) return false;
  switch (p.kind) {
    case RowPrologue::none:
    case RowPrologue::silu_mul: return true;
    case RowPrologue::rms_norm: return aligned16(p.norm_w) && rms_norm_threads(n) <= threads;
  }
  return false;
}

void launch_silu_mul(const void* gate_up, void* out, int64_t rows, int64_t n, cudaStream_t stream) {
  if (rows == 0 || n == 0) return;
  const auto* g = static_cast<const bf16*>(gate_up);
  auto* o = static_cast<bf16*>(out);
  if (n % 8 == 0 && aligned16(gate_up) && aligned16(out)) {
    const dim3 grid(unsigned(ceil_div(n / 8, 2 * kThreads)), unsigned(std::min<int64_t>(rows, 65535)));
    launch_chained(silu_mul_vec_kernel, grid, dim3(kThreads), 0, stream, g, o, rows, n);
  } else {
    launch_chained(silu_mul_scalar_kernel, dim3(grid_for(rows * n, kThreads)), dim3(kThreads), 0, stream, g, o, rows, n);
  }
  PHILORA_CUDA_CHECK_LAUNCH();
}

void launch_gather_rows(const void* x, const int32_t* rows, void* out, int64_t count, int64_t cols,
                        cudaStream_t stream) {
  if (count == 0 || cols == 0) return;
  if (cols % 8 == 0 && aligned16(x) && aligned16(out)) {
    const int threads = int(std::min<int64_t>(kThreads, std::max<int64_t>(32, cols / 8)));
    launch_chained(gather_rows_vec_kernel, dim3(unsigned(count)), dim3(threads), 0, stream, static_cast<const uint4*>(x), rows, static_cast<uint4*>(out), cols / 8);
  } else {
    launch_chained(gather_rows_scalar_kernel, dim3(unsigned(count)), dim3(kThreads), 0, stream, static_cast<const bf16*>(x), rows, static_cast<bf16*>(out), cols);
  }
  PHILORA_CUDA_CHECK_LAUNCH();
}

void launch_bias_silu_residual(const void* h, const void* bias, const void* x, void* out,
                               int64_t rows, int64_t n, cudaStream_t stream) {
  if (rows == 0 || n == 0) return;
  launch_chained(bias_silu_residual_kernel, dim3(unsigned(grid_for(rows * n, kThreads))), dim3(kThreads), 0,
                 stream, static_cast<const bf16*>(h), static_cast<const bf16*>(bias),
                 static_cast<const bf16*>(x), static_cast<bf16*>(out), rows, n);
  PHILORA_CUDA_CHECK_LAUNCH();
}

void launch_argmax_rows(const void* x, int32_t* out, int64_t rows, int64_t n, cudaStream_t stream) {
  if (rows == 0) return;
  launch_chained(argmax_rows_kernel, dim3(unsigned(rows)), dim3(kThreads), 0, stream,
                 static_cast<const bf16*>(x), out, n);
  PHILORA_CUDA_CHECK_LAUNCH();
}

}  // namespace philora::cuda
