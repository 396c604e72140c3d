// LoRA shrink/expand over segments of tokens that share an adapter slot.
#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/cpu_backend.h"

namespace philora {

Tensor CpuBackend::lora_shrink(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) {
  const int64_t n = x.rows(), in = x.cols(), width = std::max<int64_t>(1, batch.max_rank);
  Tensor xa = host_alloc(DType::f32, {n, width});
  const auto* indptr = batch.seg_indptr.ptr<int32_t>();
  for (int64_t g = 0; g < batch.num_segments; ++g) {
    const int32_t slot = batch.seg_slot.ptr<int32_t>()[g];
    if (slot < 0) continue;
    const int64_t r = m.ranks.ptr<int32_t>()[slot];
    const int64_t rows = indptr[g + 1] - indptr[g];
    if (r == 0 || rows == 0) continue;
    const auto* a = reinterpret_cast<const float*>(m.a_ptrs.ptr<int64_t>()[slot]);
    // xa[seg, :r] = x[seg] · Aᵀ ;  A (r, in)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(r), int(in), 1.0f,
                x.ptr<float>() + int64_t(indptr[g]) * in, int(in), a, int(in), 0.0f,
                xa.ptr<float>() + int64_t(indptr[g]) * width, int(width));
  }
  return xa;
}

void CpuBackend::lora_expand(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch,
                             Tensor& y, int64_t col_offset) {
  const int64_t width = xa.cols(), ldy = y.cols(), out = m.out_features;
  const auto* indptr = batch.seg_indptr.ptr<int32_t>();
  for (int64_t g = 0; g < batch.num_segments; ++g) {
    const int32_t slot = batch.seg_slot.ptr<int32_t>()[g];
    if (slot < 0) continue;
    const int64_t r = m.ranks.ptr<int32_t>()[slot];
    const int64_t rows = indptr[g + 1] - indptr[g];
    if (r == 0 || rows == 0) continue;
    const auto* b = reinterpret_cast<const float*>(m.b_ptrs.ptr<int64_t>()[slot]);
    const float scale = m.scales.ptr<float>()[slot];
    // y[seg, off:off+out] += scale · xa[seg, :r] · Bᵀ ;  B (out, r)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(out), int(r), scale,
                xa.ptr<float>() + int64_t(indptr[g]) * width, int(width), b, int(r), 1.0f,
                y.ptr<float>() + int64_t(indptr[g]) * ldy + col_offset, int(ldy));
  }
}

Tensor CpuBackend::lora_delta(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch) {
  Tensor y = host_alloc(DType::f32, {xa.rows(), m.out_features});
  std::memset(y.data, 0, y.nbytes());
  lora_expand(xa, m, batch, y, 0);
  return y;
}

}  // namespace philora
