// Device-side helpers shared by the kernels: bf16 <-> f32, 16-byte vectors of
// eight bf16, warp and block reductions, launch sizes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "backend/cuda/cuda_check.h"

namespace philora::cuda {

using bf16 = __nv_bfloat16;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Eight bf16 in one 16-byte word.
union Bf16x8 {
  uint4 u;
  __nv_bfloat162 h[4];
};

__device__ __forceinline__ void bf16x8_to_f32(const uint4& v, float* f) {
  Bf16x8 b;
  b.u = v;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(b.h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

__device__ __forceinline__ uint4 f32_to_bf16x8(const float* f) {
  Bf16x8 b;
#pragma unroll
  for (int i = 0; i < 4; ++i) b.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return b.u;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v, float* scratch /* [32] shared */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  v = warp_sum(v);
  __syncthreads();  // scratch may be reused by the caller
  return v;
}

// ---- row ops that run alone (cuda_elementwise.cu) and as prologues of the
// matmul or LoRA shrink that reads their output (cuda_skinny.cu, cuda_lora.cu):
// defined once, so that the fused form gives the same bits.

// rms_norm's block size for rows of n (n % 8 == 0): enough threads that a row
// fits kRmsCache 8-wide vectors a thread when it can (at most 1024).
inline constexpr int kRmsCache = 4;
__host__ __device__ constexpr int rms_norm_threads(int64_t n) {
  int threads = 128;
  while (threads < 1024 && n / 8 > int64_t(threads) * kRmsCache) threads *= 2;
  return threads;
}

__device__ __forceinline__ float sum_of_squares(const uint4& v) {
  float f[8];
  bf16x8_to_f32(v, f);
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < 8; ++j) ss += f[j] * f[j];
  return ss;
}

// bf16(w · (v · inv)), eight at a time: rms_norm's output.
__device__ __forceinline__ uint4 scale_bf16x8(const uint4& v, const uint4& w, float inv) {
  float f[8], g[8];
  bf16x8_to_f32(v, f);
  bf16x8_to_f32(w, g);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = g[j] * (f[j] * inv);
  return f32_to_bf16x8(f);
}

// 1 / sqrt(mean(row²) + eps) of a row of n bf16 (n % 8 == 0, 16-byte
// aligned; global or shared memory), summed as rms_norm sums it — thread t of
// rms_norm_threads(n) adds the squares of vectors t, t + T, t + 2T, … in turn,
// then block_sum — by a block of blockDim.x ≥ rms_norm_threads(n) threads, all
// of which call it (the threads past T add nothing, the same bits).
__device__ __forceinline__ float row_inv_rms(const bf16* row, int64_t n, float eps, float* scratch /* [32] */) {
  const int T = rms_norm_threads(n);
  const int64_t nv = n / 8;
  const uint4* v = reinterpret_cast<const uint4*>(row);
  float ss = 0.0f;
  if (int(threadIdx.x) < T)
    for (int64_t i = threadIdx.x; i < nv; i += T) ss += sum_of_squares(v[i]);
  ss = block_sum(ss, scratch);
  return rsqrtf(ss / float(n) + eps);
}

// Σ over the 8 products of two 16-byte pieces of bf16 (a piece of w and one of x),
// added to acc in order: the GEMV's product (and the parked GEMV chain's,
// dev/cuda/parked/gemv_chain.patch, which must give the same bits).
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  const uint32_t wv[4] = {w.x, w.y, w.z, w.w}, xv[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // bf16 → f32 is a shift: low half << 16, high half masked
    acc = fmaf(__uint_as_float(wv[i] << 16), __uint_as_float(xv[i] << 16), acc);
    acc = fmaf(__uint_as_float(wv[i] & 0xffff0000u), __uint_as_float(xv[i] & 0xffff0000u), acc);
  }
  return acc;
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// bf16(silu(g) · u), eight at a time: silu_mul's output.
__device__ __forceinline__ uint4 silu_mul_bf16x8(const uint4& g, const uint4& u) {
  float a[8], b[8];
  bf16x8_to_f32(g, a);
  bf16x8_to_f32(u, b);
#pragma unroll
  for (int j = 0; j < 8; ++j) a[j] = silu(a[j]) * b[j];
  return f32_to_bf16x8(a);
}

}  // namespace philora::cuda

// ---- async-copy and packing primitives (sm_80+) ------------------------------

namespace philora::cuda {

// 16 bytes global -> shared, bypassing L1; src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Programmatic dependent launch (Hopper). A kernel launched by launch_chained
// may be scheduled while the kernel before it on the stream is still running;
// it must call chained_prologue() before anything else: it lets the next
// chained kernel be scheduled in turn, then waits until the previous kernel
// has finished and its writes are visible. What overlaps is a kernel's launch
// and block scheduling with its predecessor's last wave — the fixed cost a
// graph pays per node (~1.8 µs measured on an H200), ~400 nodes a step.
__device__ __forceinline__ void chained_launch() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
__device__ __forceinline__ void chained_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void chained_prologue() {
  chained_launch();
  chained_wait();
}
// A kernel may split the two to load, between them, what no kernel of the
// step writes (weights, adapter matrices, the step's host-uploaded plan),
// overlapping those loads with the previous kernel's tail.

// A kernel's opt-in to `bytes` of dynamic shared memory (needed above 48 KB),
// asked of the driver once per (kernel, device, larger size), not every launch.
inline void allow_dynamic_smem(const void* kernel, size_t bytes) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> granted;
  int device = 0;
  PHILORA_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mu);
  size_t& have = granted[{kernel, device}];
  if (bytes <= have) return;
  PHILORA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  have = bytes;
}

template <typename... KernelArgs, typename... Args>
void launch_chained(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                    cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  PHILORA_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace philora::cuda
