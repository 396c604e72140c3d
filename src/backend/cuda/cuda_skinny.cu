// Skinny GEMM (see cuda_skinny.cuh for the design).
//
// The mma.sync m16n8k16 fragments are filled from 16-byte shared-memory reads
// by permuting k: lane (g = lane / 4, t = lane % 4) reads the 8 consecutive k
// at 8t of a 32-k chunk, for its w rows g and g + 8 and its x row g; the first
// MMA takes k 8t..8t+3 as its fragment slots {2t, 2t+1, 2t+8, 2t+9}, the
// second 8t+4..8t+7. A and B see the same permutation, so the dot products are
// those of the unpermuted k, in another order of summation.
#include <cuda_bf16.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_skinny.cuh"

namespace philora::cuda {

namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = kThreads / 32;
// Pipeline depth: 4 stages (3 in flight), 3 at m > 32 (4 would not fit 227 KB).
template <int MT>
constexpr int kStagesOf = MT == 8 ? 3 : 4;
constexpr int kPadK = kSkinnyStepK + 32;       // shared row stride in bf16: 576 B, so that
                                               // lanes g and g + 1 of a 16-byte read sit 64 B
                                               // apart mod 128 (no bank conflicts)
constexpr int kWarpK = kSkinnyStepK / kWarps;  // 64: two 32-k chunks a warp a stage

static_assert(kSkinnyRows * (kSkinnyStepK / 8) % kThreads == 0,
              "w stage copies divide among threads");

constexpr size_t stage_elems(int64_t m) { return size_t(kSkinnyRows + m) * kPadK; }

struct Params {
  const bf16* x;
  const bf16* w;
  bf16* y;
  float* ws;      // [grid][2][m][kSkinnyRows] f32: a block's partial first and last rows
  int* counters;  // [row blocks]
  int m, n, k;
  int64_t ldw;
  int steps;      // T = ceil(k / kSkinnyStepK) units a row block
  int64_t units;  // row blocks × T
  int accumulate;
};

__device__ __forceinline__ uint4 lds128(const bf16* p) {
  return *reinterpret_cast<const uint4*>(p);
}

__device__ __forceinline__ void mma_bf16(float* c, uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Stream-K: the units (row block, k step) in row-major order are dealt out in
// equal contiguous ranges, one per block: [start(c), start(c + 1)).
__device__ __forceinline__ int64_t unit_start(int64_t c, int64_t units, int64_t grid) {
  return c * units / grid;
}
__device__ __forceinline__ int64_t unit_owner(int64_t u, int64_t units, int64_t grid) {
  return ((u + 1) * grid - 1) / units;
}

// MT: tiles of 8 rows of x (m ≤ 8 MT).
template <int MT>
__global__ void __launch_bounds__(kThreads) skinny_gemm_kernel(Params p) {
  constexpr int kStages = kStagesOf<MT>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int is_last;
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  constexpr int kRs = 8 * MT + 1;  // f32 row stride of the warps' sums (odd: fewer bank conflicts)
  const int m = p.m, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2,
            t = lane & 3;
  const int stage = (kSkinnyRows + m) * kPadK;
  float* red = reinterpret_cast<float*>(smem + kStages * stage);  // [kWarps][kSkinnyRows][kRs]
  const int64_t grid = gridDim.x, c = blockIdx.x;
  const int64_t u0 = unit_start(c, p.units, grid), u1 = unit_start(c + 1, p.units, grid);
  const int nunits = int(u1 - u0);
  const int T = p.steps;

  // One unit's w: 32 rows × 32 pieces of 16 bytes, 8 per thread; and its x:
  // m rows × 32 pieces. Pieces past k or rows past n are zero-filled.
  auto load_w = [&](int i, int slot) {
    const int64_t u = u0 + i;
    const int n0 = int(u / T) * kSkinnyRows, kbase = int(u % T) * kSkinnyStepK;
    bf16* dst = smem + slot * stage;
#pragma unroll
    for (int j = 0; j < kSkinnyRows * (kSkinnyStepK / 8) / kThreads; ++j) {
      const int q = tid + j * kThreads, r = q >> 5, piece = q & 31;
      const int kk = kbase + piece * 8, row = n0 + r;
      const bool ok = row < p.n && kk < p.k;
      cp_async16(dst + r * kPadK + piece * 8, ok ? p.w + int64_t(row) * p.ldw + kk : p.w,
                 ok ? 16 : 0);
    }
  };
  auto load_x = [&](int i, int slot) {
    const int kbase = int((u0 + i) % T) * kSkinnyStepK;
    bf16* dst = smem + slot * stage + kSkinnyRows * kPadK;
    for (int q = tid; q < m * (kSkinnyStepK / 8); q += kThreads) {
      const int r = q >> 5, piece = q & 31, kk = kbase + piece * 8;
      const bool ok = kk < p.k;
      cp_async16(dst + r * kPadK + piece * 8, ok ? p.x + int64_t(r) * p.k + kk : p.x, ok ? 16 : 0);
    }
  };

  chained_launch();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nunits) load_w(s, s);
    cp_async_commit();
  }
  chained_wait();  // x (and y, the workspace) may be what the kernel before writes
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nunits) load_x(s, s);
    cp_async_commit();
  }

  float acc[2][MT][4];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[nt][mt][j] = 0.0f;

  for (int i = 0; i < nunits; ++i) {
    cp_async_wait<kStages - 2>();  // unit i's w and x have landed (this thread's copies)
    __syncthreads();               // ... everyone's; and unit i - 1's slot is free
    const int next = i + kStages - 1;
    if (next < nunits) {
      load_w(next, next % kStages);
      load_x(next, next % kStages);
    }
    cp_async_commit();

    const bf16* ws = smem + (i % kStages) * stage;
    const bf16* xs = ws + kSkinnyRows * kPadK;
#pragma unroll
    for (int cc = 0; cc < kWarpK / 32; ++cc) {
      const int kc = warp * kWarpK + cc * 32 + t * 8;
      const uint4 a00 = lds128(ws + g * kPadK + kc);         // tile 0, row g
      const uint4 a01 = lds128(ws + (g + 8) * kPadK + kc);   // tile 0, row g + 8
      const uint4 a10 = lds128(ws + (g + 16) * kPadK + kc);  // tile 1
      const uint4 a11 = lds128(ws + (g + 24) * kPadK + kc);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (mt * 8 >= m) break;  // warp-uniform
        const int row = mt * 8 + g;
        const uint4 b = row < m ? lds128(xs + row * kPadK + kc) : make_uint4(0, 0, 0, 0);
        mma_bf16(acc[0][mt], a00.x, a01.x, a00.y, a01.y, b.x, b.y);
        mma_bf16(acc[0][mt], a00.z, a01.z, a00.w, a01.w, b.z, b.w);
        mma_bf16(acc[1][mt], a10.x, a11.x, a10.y, a11.y, b.x, b.y);
        mma_bf16(acc[1][mt], a10.z, a11.z, a10.w, a11.w, b.z, b.w);
      }
    }

    // The end of a row block's segment: this block's sums of it.
    const int64_t u = u0 + i;
    const int s = int(u % T);
    if (s != T - 1 && i != nunits - 1) continue;
    const int r_blk = int(u / T), n0 = r_blk * kSkinnyRows;
    const bool first_seg = u - s <= u0;           // this block's first segment (began at u0)
    const bool full = u - s >= u0 && s == T - 1;  // the row block's whole k range
    // C fragment: c0, c1 at (row g, cols 2t, 2t + 1), c2, c3 at row g + 8;
    // rows are w's (n), cols x's (m).
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        float* base = red + (warp * kSkinnyRows + nt * 16 + g) * kRs + mt * 8 + 2 * t;
        base[0] = acc[nt][mt][0];
        base[1] = acc[nt][mt][1];
        base[8 * kRs] = acc[nt][mt][2];
        base[8 * kRs + 1] = acc[nt][mt][3];
        acc[nt][mt][0] = acc[nt][mt][1] = acc[nt][mt][2] = acc[nt][mt][3] = 0.0f;
      }
    __syncthreads();
    const int outputs = kSkinnyRows * m;
    if (full) {  // the whole k range of the row block: y directly
      for (int o = tid; o < outputs; o += kThreads) {
        const int mm = o / kSkinnyRows, r = o % kSkinnyRows, col = n0 + r;
        if (col >= p.n) continue;
        float v = 0.0f;
#pragma unroll
        for (int wi = 0; wi < kWarps; ++wi) v += red[(wi * kSkinnyRows + r) * kRs + mm];
        bf16* out = p.y + int64_t(mm) * p.n + col;
        if (p.accumulate) v += __bfloat162float(*out);
        *out = __float2bfloat16(v);
      }
      continue;  // red is read before it is written again: a unit's barrier lies between
    }
    // A part of the row block's k range: partials, the last contributor sums.
    const int slot = first_seg ? 0 : 1;
    float* mine = p.ws + ((c * 2 + slot) * int64_t(m)) * kSkinnyRows;
    for (int o = tid; o < outputs; o += kThreads) {
      const int mm = o / kSkinnyRows, r = o % kSkinnyRows;
      float v = 0.0f;
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) v += red[(wi * kSkinnyRows + r) * kRs + mm];
      __stcg(mine + o, v);
    }
    const int64_t c_first = unit_owner(int64_t(r_blk) * T, p.units, grid);
    const int64_t c_last = unit_owner(int64_t(r_blk) * T + T - 1, p.units, grid);
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(p.counters + r_blk, 1) == int(c_last - c_first);
    __syncthreads();
    if (!is_last) continue;
    __threadfence();
    for (int o = tid; o < outputs; o += kThreads) {
      const int mm = o / kSkinnyRows, r = o % kSkinnyRows, col = n0 + r;
      if (col >= p.n) continue;
      float v = 0.0f;
      for (int64_t cb = c_first; cb <= c_last; ++cb) {  // in k order: the same bits every run
        const int sl = unit_start(cb, p.units, grid) / T == r_blk ? 0 : 1;
        v += __ldcg(p.ws + ((cb * 2 + sl) * int64_t(m)) * kSkinnyRows + o);
      }
      bf16* out = p.y + int64_t(mm) * p.n + col;
      if (p.accumulate) v += __bfloat162float(*out);
      *out = __float2bfloat16(v);
    }
    if (tid == 0) p.counters[r_blk] = 0;  // ready for the next launch (graph replays too)
  }
}

template <int MT>
const void* kernel_of() {
  return reinterpret_cast<const void*>(&skinny_gemm_kernel<MT>);
}

constexpr size_t red_bytes(int mt) { return size_t(kWarps) * kSkinnyRows * (8 * mt + 1) * sizeof(float); }
constexpr int mt_of(int64_t m) { return m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8; }
constexpr size_t total_smem(int64_t m) {
  const int mt = mt_of(m), stages = mt == 8 ? kStagesOf<8> : kStagesOf<1>;
  return stages * stage_elems(m) * sizeof(bf16) + red_bytes(mt);
}
// Hopper's opt-in limit for one block: 227 KB (the largest m is the largest
// total; an m of 55..64 at 4 stages was over it).
static_assert(total_smem(kSkinnyMaxM) <= 227 * 1024, "the skinny kernel's shared memory at m = 64");

template <int MT>
void launch_mt(const Params& p, int grid, cudaStream_t stream) {
  const size_t smem = total_smem(p.m);
  allow_dynamic_smem(kernel_of<MT>(), smem);
  launch_chained(skinny_gemm_kernel<MT>, dim3(unsigned(grid)), dim3(kThreads), smem, stream, p);
}


// ---- m ≤ kSkinnyGemvMaxM: register-direct GEMV ----------------------------------
//
// Each warp owns groups of kGemvR rows of w and streams them straight into
// registers (16-byte loads, lane-consecutive: 512 contiguous bytes a warp
// load), kGemvU pieces a lane a row per iteration, the next iteration's loads
// issued before this one's products (kGemvR · kGemvU · 2 loads a lane in
// flight); x (m, k) sits in shared memory, read by the same lane-consecutive
// 16-byte pattern (no bank conflicts). No barrier in the loop, no split-K: a
// warp sums a whole row, then a butterfly gives every lane every (row, x row)
// sum and lane j writes the j-th. The grid holds as many blocks as fit; warps
// loop over row groups (groups gw, gw + warps, …). The first iteration's w is
// loaded before the wait for the kernel before (weights: nothing in a step
// writes them).
constexpr int kGemvThreads = 256;
constexpr int kGemvWarps = kGemvThreads / 32;
constexpr int kGemvR = 2;  // rows of w a warp's group
constexpr int kGemvU = 4;  // 16-byte pieces a lane a row an iteration

struct GemvParams {
  const bf16* x;  // the source of x: x itself, or what the prologue makes it from
  const bf16* w;
  bf16* y;
  int m, n, k;
  int64_t ldw;
  int accumulate;
  RowPrologue prologue;
};

__device__ __forceinline__ uint4 ld_stream128(const bf16* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

template <int M>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(GemvParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* xs = reinterpret_cast<bf16*>(smem_raw);  // [m][k]
  const int lane = threadIdx.x & 31;
  const int warps = int(gridDim.x) * kGemvWarps;
  const int gw = int(blockIdx.x) * kGemvWarps + int(threadIdx.x >> 5);
  const int kp = p.k / 8;  // 16-byte pieces a row
  constexpr int kChunk = 32 * kGemvU;
  const int chunks = (kp + kChunk - 1) / kChunk;
  const int groups = (p.n + kGemvR - 1) / kGemvR;
  const int mine = gw < groups ? (groups - 1 - gw) / warps + 1 : 0;
  const int64_t iters = int64_t(mine) * chunks;

  // The loads run one iteration ahead: (lg, lc) is the next iteration's group and chunk.
  int lg = gw, lc = 0;
  auto load = [&](uint4 (&v)[kGemvR][kGemvU]) {
#pragma unroll
    for (int r = 0; r < kGemvR; ++r) {
      const int row = lg * kGemvR + r;
      const bf16* wr = p.w + int64_t(row < p.n ? row : 0) * p.ldw;
#pragma unroll
      for (int u = 0; u < kGemvU; ++u) {
        const int piece = lc * kChunk + u * 32 + lane;
        v[r][u] = row < p.n && piece < kp ? ld_stream128(wr + piece * 8) : make_uint4(0, 0, 0, 0);
      }
    }
    if (++lc == chunks) {
      lc = 0;
      lg += warps;
    }
  };

  uint4 cur[kGemvR][kGemvU], nxt[kGemvR][kGemvU];
  chained_launch();
  if (iters > 0) load(cur);
  chained_wait();  // x and y may be what the kernel before writes
  // x into shared memory, made by the prologue: SiLU·mul on the way in; the
  // norm's scale once the row's sum of squares is known (a block barrier a row).
  const bool silu_mul = p.prologue.kind == RowPrologue::silu_mul;
  const int64_t ldx = silu_mul ? 2 * int64_t(p.k) : p.k;
  for (int q = int(threadIdx.x); q < p.m * kp; q += kGemvThreads) {
    const int r = q / kp, piece = q % kp;
    const bf16* row = p.x + int64_t(r) * ldx;
    const uint4 v = *reinterpret_cast<const uint4*>(row + piece * 8);
    reinterpret_cast<uint4*>(xs)[q] =
        silu_mul ? silu_mul_bf16x8(v, *reinterpret_cast<const uint4*>(row + p.k + piece * 8)) : v;
  }
  __syncthreads();
  if (p.prologue.kind == RowPrologue::rms_norm) {
    __shared__ float scratch[32];
    const uint4* nw = static_cast<const uint4*>(p.prologue.norm_w);
    for (int r = 0; r < p.m; ++r) {  // row r's reads end (in block_sum) before its writes
      const float inv = row_inv_rms(xs + int64_t(r) * p.k, p.k, p.prologue.eps, scratch);
      uint4* xr = reinterpret_cast<uint4*>(xs) + r * kp;
      for (int piece = int(threadIdx.x); piece < kp; piece += kGemvThreads)
        xr[piece] = scale_bf16x8(xr[piece], nw[piece], inv);
    }
    __syncthreads();
  }

  float acc[kGemvR][M];
#pragma unroll
  for (int r = 0; r < kGemvR; ++r)
#pragma unroll
    for (int mm = 0; mm < M; ++mm) acc[r][mm] = 0.0f;
  int g = gw, c = 0;  // this iteration's group and chunk
  for (int64_t it = 0; it < iters; ++it) {
    if (it + 1 < iters) load(nxt);
#pragma unroll
    for (int u = 0; u < kGemvU; ++u) {
      const int piece = c * kChunk + u * 32 + lane;
      if (piece >= kp) break;
#pragma unroll
      for (int mm = 0; mm < M; ++mm) {
        if (mm >= p.m) break;
        const uint4 xv = reinterpret_cast<const uint4*>(xs)[mm * kp + piece];
#pragma unroll
        for (int r = 0; r < kGemvR; ++r) acc[r][mm] = dot8(cur[r][u], xv, acc[r][mm]);
      }
    }
    if (++c == chunks) {  // the group's rows are summed: reduce and write
      float out = 0.0f;
#pragma unroll
      for (int r = 0; r < kGemvR; ++r)
#pragma unroll
        for (int mm = 0; mm < M; ++mm) {
          const float v = warp_sum(acc[r][mm]);
          if (lane == r * M + mm) out = v;
          acc[r][mm] = 0.0f;
        }
      const int r = lane / M, mm = lane % M, row = g * kGemvR + r;
      if (lane < kGemvR * M && mm < p.m && row < p.n) {
        bf16* o = p.y + int64_t(mm) * p.n + row;
        if (p.accumulate) out += __bfloat162float(*o);
        *o = __float2bfloat16(out);
      }
      c = 0;
      g += warps;
    }
#pragma unroll
    for (int r = 0; r < kGemvR; ++r)
#pragma unroll
      for (int u = 0; u < kGemvU; ++u) cur[r][u] = nxt[r][u];
  }
}

template <int M>
const void* gemv_of() {
  return reinterpret_cast<const void*>(&gemv_kernel<M>);
}

constexpr int gemv_m_of(int64_t m) { return m <= 1 ? 1 : m <= 2 ? 2 : 4; }

const void* gemv_for(int64_t m) {
  switch (gemv_m_of(m)) {
    case 1: return gemv_of<1>();
    case 2: return gemv_of<2>();
    default: return gemv_of<4>();
  }
}

size_t gemv_smem(int64_t m, int64_t k) { return size_t(m * k) * sizeof(bf16); }

int gemv_groups(int64_t n) { return int(ceil_div(n, kGemvR)); }

void launch_gemv(const GemvParams& p, int grid, cudaStream_t stream) {
  const size_t smem = gemv_smem(p.m, p.k);
  allow_dynamic_smem(gemv_for(p.m), smem);
  const dim3 g{unsigned(grid)}, b{unsigned(kGemvThreads)};
  switch (gemv_m_of(p.m)) {
    case 1: launch_chained(gemv_kernel<1>, g, b, smem, stream, p); break;
    case 2: launch_chained(gemv_kernel<2>, g, b, smem, stream, p); break;
    default: launch_chained(gemv_kernel<4>, g, b, smem, stream, p); break;
  }
}

}  // namespace

int skinny_gemm_steps(int64_t k) { return int(ceil_div(k, kSkinnyStepK)); }

bool skinny_gemm_shape_ok(int64_t m, int64_t n, int64_t k, int64_t ldw) {
  if (m >= 1 && m <= kSkinnyGemvMaxM)  // x in shared memory
    return n >= 1 && n < (int64_t(1) << 30) && k >= 8 && k % 8 == 0 && ldw >= k && ldw % 8 == 0 &&
           gemv_smem(m, k) <= 200 * 1024;
  return m >= 1 && m <= kSkinnyMaxM && n >= 1 && k >= 8 && k % 8 == 0 && ldw >= k && ldw % 8 == 0 &&
         ceil_div(n, kSkinnyRows) <= kSkinnyCounters && k < (int64_t(1) << 30);
}

bool skinny_gemm_supported(const SkinnyGemmArgs& a) {
  const bool prologue_ok = a.prologue.kind == RowPrologue::none ||
                           (a.m <= kSkinnyGemvMaxM && row_prologue_fits(a.prologue, a.k, kGemvThreads));
  return skinny_gemm_shape_ok(a.m, a.n, a.k, a.ldw) && aligned16(a.x) && aligned16(a.w) &&
         a.y != nullptr && prologue_ok;
}

int skinny_gemm_max_per_sm(int64_t m, int64_t k) {
  if (m <= kSkinnyGemvMaxM) {
    const size_t smem = gemv_smem(m, k);
    allow_dynamic_smem(gemv_for(m), smem);
    int blocks = 0;
    PHILORA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, gemv_for(m), kGemvThreads, smem));
    return std::max(blocks, 1);
  }
  const int mt = mt_of(m);
  const void* kernel = mt == 1   ? kernel_of<1>()
                       : mt == 2 ? kernel_of<2>()
                       : mt == 4 ? kernel_of<4>()
                                 : kernel_of<8>();
  const size_t smem = total_smem(m);
  allow_dynamic_smem(kernel, smem);
  int blocks = 0;
  PHILORA_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, smem));
  return std::max(blocks, 1);
}

int skinny_gemm_grid(const SkinnyGemmArgs& a, int sms, int per_sm) {
  if (a.m <= kSkinnyGemvMaxM)  // blocks of kGemvWarps warps, a row group each at least
    return int(std::min<int64_t>(ceil_div(gemv_groups(a.n), kGemvWarps), int64_t(sms) * per_sm));
  const int64_t units = ceil_div(a.n, kSkinnyRows) * skinny_gemm_steps(a.k);
  return int(std::min<int64_t>(units, int64_t(sms) * per_sm));
}

size_t skinny_gemm_workspace_bytes(const SkinnyGemmArgs& a, int grid) {
  if (a.m <= kSkinnyGemvMaxM) return 0;
  return size_t(grid) * 2 * size_t(a.m) * kSkinnyRows * sizeof(float);
}

void launch_skinny_gemm(const SkinnyGemmArgs& a, int grid, float* workspace, int* counters,
                        cudaStream_t stream) {
  if (!skinny_gemm_supported(a))
    throw std::logic_error("unsupported: skinny_gemm: shape or alignment");
  if (a.m <= kSkinnyGemvMaxM) {
    if (grid < 1 || grid > ceil_div(gemv_groups(a.n), kGemvWarps))
      throw std::invalid_argument("skinny_gemm: a grid of " + std::to_string(grid) + " blocks for " +
                                  std::to_string(gemv_groups(a.n)) + " row groups");
    GemvParams p;
    p.x = static_cast<const bf16*>(a.x);
    p.w = static_cast<const bf16*>(a.w);
    p.y = static_cast<bf16*>(a.y);
    p.m = int(a.m);
    p.n = int(a.n);
    p.k = int(a.k);
    p.ldw = a.ldw;
    p.accumulate = a.accumulate ? 1 : 0;
    p.prologue = a.prologue;
    launch_gemv(p, grid, stream);
    return;
  }
  const int steps = skinny_gemm_steps(a.k);
  const int64_t units = ceil_div(a.n, kSkinnyRows) * steps;
  if (grid < 1 || grid > units || workspace == nullptr || counters == nullptr)
    throw std::invalid_argument("skinny_gemm: a grid of " + std::to_string(grid) + " blocks for " +
                                std::to_string(units) + " units, or no workspace");
  Params p;
  p.x = static_cast<const bf16*>(a.x);
  p.w = static_cast<const bf16*>(a.w);
  p.y = static_cast<bf16*>(a.y);
  p.ws = workspace;
  p.counters = counters;
  p.m = int(a.m);
  p.n = int(a.n);
  p.k = int(a.k);
  p.ldw = a.ldw;
  p.steps = steps;
  p.units = units;
  p.accumulate = a.accumulate ? 1 : 0;
  switch (mt_of(a.m)) {
    case 1:
      launch_mt<1>(p, grid, stream);
      break;
    case 2:
      launch_mt<2>(p, grid, stream);
      break;
    case 4:
      launch_mt<4>(p, grid, stream);
      break;
    default:
      launch_mt<8>(p, grid, stream);
      break;
  }
}

}  // namespace philora::cuda
