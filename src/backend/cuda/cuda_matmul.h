// Dense GEMMs: y (m, n) = x (m, k) · wᵀ with w (n, k), all row-major bf16, f32
// accumulation, through cuBLASLt or, for decode-sized m (≤ kSkinnyMaxM), our
// skinny kernel (cuda_skinny.cuh). The matmul descriptor, the three layouts and
// the algorithm are built once per (m, n, k, alignments) and cached; the
// algorithm is the fastest of the heuristic's candidates and of the skinny
// kernel's grids, timed on first use.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_skinny.cuh"

namespace philora::cuda {

class LtMatmul {
 public:
  LtMatmul(cudaStream_t stream, std::shared_ptr<DeviceAllocator> allocator);
  ~LtMatmul();
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;

  // y = alpha · x · wᵀ + beta · y ; x (m, k), w (n, k) with rows ldw ≥ k
  // apart (0: k), y (m, n), bf16 row-major.
  void run(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k,
           float alpha = 1.0f, float beta = 0.0f, int64_t ldw = 0);

  // y = x · wᵀ (+ y with accumulate) where x = the prologue applied to src —
  // rms_norm of src (m, k), or silu_mul of src (m, 2k) — made inside our GEMV
  // as it stages x: where the shape's plan takes the GEMV (m ≤ 4 and the
  // first-use timing chose it, or Skinny::always) and the prologue fits it.
  // Returns false, having launched nothing, where not: the caller runs the
  // prologue's op and then `run`.
  bool run_fused(const RowPrologue& prologue, const void* src, const void* w, void* y, int64_t m, int64_t n,
                 int64_t k, bool accumulate, int64_t ldw = 0);

  size_t cached_plans() const { return plans_.size(); }
  // Which kernel skinny shapes take: the faster of cuBLASLt and ours as timed
  // on first use (the default), ours whenever it takes the shape (op cases pin
  // it), or cuBLASLt always. At m ≤ 4 ours (the GEMV) is 1.03-1.66x cuBLASLt at
  // every Phi-3-mini shape on an H100, batch-1 decode 73% -> 79% of the
  // bandwidth ideal; at m ≥ 8 cuBLASLt wins (dev/cuda/NOTES.md, session 9).
  enum class Skinny : uint8_t { timed, always, never };
  void set_skinny(Skinny s) { skinny_ = s; }
  // The skinny kernel on the shape with `per_sm` blocks an SM (0: as many as
  // fit), or a grid of `grid` blocks when grid > 0.
  void run_skinny(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k, bool accumulate,
                  int64_t ldw, int per_sm, int grid = 0);
  // Whether a new shape times the heuristic's candidates and keeps the fastest
  // (on by default; PHILORA_CUBLASLT_AUTOTUNE=0 turns it off).
  void set_autotune(bool on) { tune_ = on; }

 private:
  // (m, n, k, ldw, alignment of x, w, y in bytes)
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int, int, int>;
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    std::vector<cublasLtMatmulAlgo_t> candidates;  // the heuristic's, best first
    bool tuned = false;
    bool skinny_ok = false;  // our skinny kernel takes the shape
    int skinny_grid = 0;     // > 0: it does, with this grid (the timing chose it)
  };
  static constexpr int kCandidates = 16;
  static constexpr int64_t kTuneMaxM = 256;  // autotune only skinny products
  Plan& plan_for(const Key& key);
  void autotune(Plan& p, const void* x, const void* w, int64_t m, int64_t n, int64_t k, int64_t ldw, float alpha);
  // ms of the median of 5 runs, each after an L2 flush.
  template <typename Launch>
  float time_flushed(Launch&& launch, cudaEvent_t start, cudaEvent_t stop);
  void add_split_k_variants(Plan& p);

  cudaStream_t stream_;
  std::shared_ptr<DeviceAllocator> allocator_;
  cublasLtHandle_t handle_ = nullptr;
  std::shared_ptr<void> workspace_;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
  bool tune_ = true;
  Skinny skinny_ = Skinny::timed;
  int device_ = 0;
  int sms_ = 132;
  std::shared_ptr<void> counters_;  // the skinny kernel's split-K counters (kept zero between launches)
  std::shared_ptr<void> flush_;  // written between timed runs to evict L2
  size_t flush_bytes_ = 0;
};

}  // namespace philora::cuda
