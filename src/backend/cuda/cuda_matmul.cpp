#include "backend/cuda/cuda_matmul.h"

#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.h"

namespace philora::cuda {

namespace {

// The largest power of two (≤ 256) that divides the address.
int alignment_of(const void* p) {
  const auto u = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && (u % uintptr_t(a)) != 0) a >>= 1;
  return a;
}

}  // namespace

LtMatmul::LtMatmul(cudaStream_t stream, std::shared_ptr<DeviceAllocator> allocator)
    : stream_(stream), allocator_(std::move(allocator)) {
  PHILORA_CUBLAS_CHECK(cublasLtCreate(&handle_));
  PHILORA_CUDA_CHECK(cudaGetDevice(&device_));
  PHILORA_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device_));
  workspace_bytes_ = size_t(32) << 20;  // what cuBLAS itself uses on Hopper
  workspace_ = allocator_->allocate(workspace_bytes_);
  counters_ = allocator_->allocate(size_t(kSkinnyCounters) * sizeof(int));
  PHILORA_CUDA_CHECK(cudaMemsetAsync(counters_.get(), 0, size_t(kSkinnyCounters) * sizeof(int), stream_));
  PHILORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

LtMatmul::~LtMatmul() {
  for (auto& [key, p] : plans_) {
    (void)cublasLtMatrixLayoutDestroy(p.a);
    (void)cublasLtMatrixLayoutDestroy(p.b);
    (void)cublasLtMatrixLayoutDestroy(p.c);
    (void)cublasLtMatmulDescDestroy(p.op);
  }
  if (handle_) (void)cublasLtDestroy(handle_);
}

// Row-major y (m, n) = x (m, k) · wᵀ is, in cuBLAS's column-major terms,
// yᵀ (n × m, ld n) = op(W) · X with W the column-major (k × n, ld ldw) view of
// w transposed (op = T) and X the column-major (k × m, ld k) view of x.
LtMatmul::Plan& LtMatmul::plan_for(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [m, n, k, ldw, align_x, align_w, align_y] = key;
  Plan p;
  PHILORA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  PHILORA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                                      sizeof(trans_a)));
  PHILORA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                                      sizeof(trans_b)));
  PHILORA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, uint64_t(k), uint64_t(n), ldw));
  PHILORA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, uint64_t(k), uint64_t(m), k));
  PHILORA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16BF, uint64_t(n), uint64_t(m), n));

  cublasLtMatmulPreference_t pref = nullptr;
  PHILORA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_bytes_;
  const uint32_t aa = uint32_t(align_w), ab = uint32_t(align_x), ac = uint32_t(align_y);
  PHILORA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  PHILORA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
  PHILORA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
  PHILORA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac)));
  PHILORA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac)));
  cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c, pref,
                                                          kCandidates, results, &found);
  (void)cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS || found == 0) {
    (void)cublasLtMatrixLayoutDestroy(p.a);
    (void)cublasLtMatrixLayoutDestroy(p.b);
    (void)cublasLtMatrixLayoutDestroy(p.c);
    (void)cublasLtMatmulDescDestroy(p.op);
    throw_unsupported("cuBLASLt has no bf16 algorithm for matmul m=" + std::to_string(m) +
                      " n=" + std::to_string(n) + " k=" + std::to_string(k) + " (status " +
                      std::to_string(int(s)) + ")");
  }
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) p.candidates.push_back(results[i].algo);
  p.algo = p.candidates.empty() ? results[0].algo : p.candidates.front();
  if (m <= kTuneMaxM) add_split_k_variants(p);
  // Where our skinny kernel takes the shape (alignments as the key says), the
  // timing on first use decides between it and cuBLASLt (with Skinny::timed);
  // an untimed plan keeps cuBLASLt (faster alone at every Phi-3-mini decode
  // shape so far, NOTES.md).
  p.skinny_ok = align_x >= 16 && align_w >= 16 && skinny_gemm_shape_ok(m, n, k, ldw);
  return plans_.emplace(key, p).first->second;
}

// For skinny products (decode) the heuristic's algorithms leave most of the GPU
// idle: the output has too few tiles. Split-K variants of them (the K range
// shared among 2..16 CTAs, partial sums reduced in f32) join the candidates.
void LtMatmul::add_split_k_variants(Plan& p) {
  const size_t base = p.candidates.size();
  for (size_t i = 0; i < base; ++i) {
    const cublasLtMatmulAlgo_t algo = p.candidates[i];
    int32_t support = 0, current = 1;
    uint32_t schemes = 0;
    size_t written = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &support, sizeof(support),
                                          &written) != CUBLAS_STATUS_SUCCESS ||
        support == 0)
      continue;
    if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &current, sizeof(current),
                                             &written) != CUBLAS_STATUS_SUCCESS ||
        current > 1)
      continue;
    (void)cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &schemes,
                                            sizeof(schemes), &written);
    const uint32_t scheme = (schemes & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                            : (schemes & CUBLASLT_REDUCTION_SCHEME_INPLACE)    ? CUBLASLT_REDUCTION_SCHEME_INPLACE
                                                                               : CUBLASLT_REDUCTION_SCHEME_NONE;
    if (scheme == CUBLASLT_REDUCTION_SCHEME_NONE) continue;
    for (int32_t splits : {2, 4, 8, 16}) {
      cublasLtMatmulAlgo_t v = algo;
      if (cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof(splits)) !=
              CUBLAS_STATUS_SUCCESS ||
          cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                               sizeof(scheme)) != CUBLAS_STATUS_SUCCESS)
        continue;
      cublasLtMatmulHeuristicResult_t check{};
      if (cublasLtMatmulAlgoCheck(handle_, p.op, p.a, p.b, p.c, p.c, &v, &check) == CUBLAS_STATUS_SUCCESS &&
          check.workspaceSize <= workspace_bytes_)
        p.candidates.push_back(v);
    }
  }
}

// The heuristic's first choice is often not the fastest for skinny shapes
// (decode: m of 1..64 tokens is a matrix-vector product bound by reading w).
// On the first call of a shape with m ≤ kTuneMaxM, every candidate runs a few
// times on the real inputs into a scratch output (with beta = 0; y is left
// alone, so calls with beta ≠ 0 tune too; not while the stream is being
// captured into a graph), each run after a write of twice
// the L2 size so that w comes from memory as it does in a real step; the
// fastest median is kept. Where our skinny kernel takes the shape, its grids
// (1, 2, … blocks an SM) run the same way, and it keeps the shape unless cuBLASLt's best is
// more than 3% faster alone (ours overlaps its start with the kernel before
// in a step, which a lone timing does not show). Larger m (prefill) keeps the
// heuristic's choice, which is near the peak there, so that new prompt lengths
// cost no tuning.
template <typename Launch>
float LtMatmul::time_flushed(Launch&& launch, cudaEvent_t start, cudaEvent_t stop) {
  constexpr int kReps = 5;
  float times[kReps];
  for (int i = 0; i < kReps; ++i) {
    PHILORA_CUDA_CHECK(cudaMemsetAsync(flush_.get(), i, flush_bytes_, stream_));
    PHILORA_CUDA_CHECK(cudaEventRecord(start, stream_));
    launch();
    PHILORA_CUDA_CHECK(cudaEventRecord(stop, stream_));
    PHILORA_CUDA_CHECK(cudaEventSynchronize(stop));
    PHILORA_CUDA_CHECK(cudaEventElapsedTime(&times[i], start, stop));
  }
  std::sort(times, times + kReps);
  return times[kReps / 2];
}

void LtMatmul::autotune(Plan& p, const void* x, const void* w, int64_t m, int64_t n, int64_t k, int64_t ldw,
                        float alpha) {
  p.tuned = true;
  const bool skinny = p.skinny_ok && alpha == 1.0f && skinny_ == Skinny::timed;
  if (p.candidates.size() < 2 && !skinny) return;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  PHILORA_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
  if (capture != cudaStreamCaptureStatusNone) return;
  cudaEvent_t start = nullptr, stop = nullptr;
  PHILORA_CUDA_CHECK(cudaEventCreate(&start));
  PHILORA_CUDA_CHECK(cudaEventCreate(&stop));
  if (!flush_) {
    int l2 = 0;
    PHILORA_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device_));
    flush_bytes_ = std::max<size_t>(size_t(2) * size_t(l2), size_t(1) << 20);
    flush_ = allocator_->allocate(flush_bytes_);
  }
  std::shared_ptr<void> scratch = allocator_->allocate(size_t(m) * size_t(n) * 2);  // bf16 (m, n)
  void* y = scratch.get();
  const float beta = 0.0f;
  float best = -1.0f;
  for (const cublasLtMatmulAlgo_t& algo : p.candidates) {
    auto launch = [&] {
      return cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &algo,
                            workspace_.get(), workspace_bytes_, stream_);
    };
    if (launch() != CUBLAS_STATUS_SUCCESS) continue;  // this algorithm refuses: skip it
    const float t = time_flushed([&] { PHILORA_CUBLAS_CHECK(launch()); }, start, stop);
    if (best < 0 || t < best) {
      best = t;
      p.algo = algo;
    }
  }
  if (skinny) {
    SkinnyGemmArgs sa;
    sa.x = x, sa.w = w, sa.y = y, sa.m = m, sa.n = n, sa.k = k, sa.ldw = ldw;
    float best_skinny = -1.0f;
    int best_grid = 0;
    for (int per_sm = 1; per_sm <= skinny_gemm_max_per_sm(m, k); ++per_sm) {
      const int grid = skinny_gemm_grid(sa, sms_, per_sm);
      std::shared_ptr<void> ws = allocator_->allocate(skinny_gemm_workspace_bytes(sa, grid));
      auto launch = [&] {
        launch_skinny_gemm(sa, grid, static_cast<float*>(ws.get()), static_cast<int*>(counters_.get()), stream_);
      };
      launch();
      const float t = time_flushed(launch, start, stop);
      if (best_skinny < 0 || t < best_skinny) {
        best_skinny = t;
        best_grid = grid;
      }
    }
    const bool lt_wins = skinny_ == Skinny::timed && best >= 0 && best * 1.03f < best_skinny;
    p.skinny_grid = lt_wins ? 0 : best_grid;
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
}

void LtMatmul::run_skinny(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k, bool accumulate,
                          int64_t ldw, int per_sm, int grid) {
  SkinnyGemmArgs sa;
  sa.x = x, sa.w = w, sa.y = y, sa.m = m, sa.n = n, sa.k = k, sa.ldw = std::max(ldw, k);
  sa.accumulate = accumulate;
  if (grid <= 0) grid = skinny_gemm_grid(sa, sms_, per_sm > 0 ? per_sm : skinny_gemm_max_per_sm(m, k));
  std::shared_ptr<void> ws = allocator_->allocate(skinny_gemm_workspace_bytes(sa, grid));
  launch_skinny_gemm(sa, grid, static_cast<float*>(ws.get()), static_cast<int*>(counters_.get()), stream_);
}

bool LtMatmul::run_fused(const RowPrologue& prologue, const void* src, const void* w, void* y, int64_t m,
                         int64_t n, int64_t k, bool accumulate, int64_t ldw) {
  if (m == 0 || n == 0 || m > kSkinnyGemvMaxM || skinny_ == Skinny::never) return false;
  SkinnyGemmArgs sa;
  sa.x = src, sa.w = w, sa.y = y, sa.m = m, sa.n = n, sa.k = k, sa.ldw = std::max(ldw, k);
  sa.accumulate = accumulate;
  sa.prologue = prologue;
  if (!skinny_gemm_supported(sa)) return false;
  // The plan of the plain product of this shape (src's first m · k elements
  // stand in for x in its first-use timing: the kernels' times do not depend
  // on the values).
  const Key key{m, n, k, sa.ldw, alignment_of(src), alignment_of(w), alignment_of(y)};
  Plan& p = plan_for(key);
  if (!p.tuned && tune_ && m <= kTuneMaxM) autotune(p, src, w, m, n, k, sa.ldw, 1.0f);
  int grid = p.skinny_grid;
  if (skinny_ == Skinny::always && grid == 0 && p.skinny_ok) grid = skinny_gemm_grid(sa, sms_, skinny_gemm_max_per_sm(m, k));
  if (grid <= 0) return false;
  launch_skinny_gemm(sa, grid, nullptr, static_cast<int*>(counters_.get()), stream_);
  return true;
}

void LtMatmul::run(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k,
                   float alpha, float beta, int64_t ldw) {
  if (m == 0 || n == 0) return;
  const Key key{m, n, k, std::max(ldw, k), alignment_of(x), alignment_of(w), alignment_of(y)};
  Plan& p = plan_for(key);
  if (!p.tuned && tune_ && m <= kTuneMaxM) autotune(p, x, w, m, n, k, std::max(ldw, k), alpha);
  // An untimed plan (autotune off, or first seen while a graph was captured)
  // keeps cuBLASLt unless ours is pinned.
  int grid = p.skinny_grid;
  if (skinny_ == Skinny::always && grid == 0 && p.skinny_ok) {  // as many blocks as fit
    SkinnyGemmArgs sa;
    sa.m = m, sa.n = n, sa.k = k, sa.ldw = std::max(ldw, k);
    grid = skinny_gemm_grid(sa, sms_, skinny_gemm_max_per_sm(m, k));
  }
  if (grid > 0 && skinny_ != Skinny::never && alpha == 1.0f && (beta == 0.0f || beta == 1.0f)) {
    run_skinny(x, w, y, m, n, k, beta == 1.0f, ldw, 0, grid);
    return;
  }
  PHILORA_CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c,
                                      &p.algo, workspace_.get(), workspace_bytes_, stream_));
}

}  // namespace philora::cuda
