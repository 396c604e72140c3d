#include "backend/cuda/cuda_matmul.h"

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
  workspace_bytes_ = size_t(32) << 20;  // what cuBLAS itself uses on Hopper
  workspace_ = allocator_->allocate(workspace_bytes_);
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
// yᵀ (n × m, ld n) = op(W) · X with W the column-major (k × n, ld k) view of
// w transposed (op = T) and X the column-major (k × m, ld k) view of x.
LtMatmul::Plan& LtMatmul::plan_for(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [m, n, k, align_x, align_w, align_y] = key;
  Plan p;
  PHILORA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  PHILORA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                                      sizeof(trans_a)));
  PHILORA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                                      sizeof(trans_b)));
  PHILORA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, uint64_t(k), uint64_t(n), k));
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
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c, pref, 1,
                                                          &result, &found);
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
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

void LtMatmul::run(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k,
                   float alpha, float beta) {
  if (m == 0 || n == 0) return;
  const Key key{m, n, k, alignment_of(x), alignment_of(w), alignment_of(y)};
  Plan& p = plan_for(key);
  PHILORA_CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c,
                                      &p.algo, workspace_.get(), workspace_bytes_, stream_));
}

}  // namespace philora::cuda
