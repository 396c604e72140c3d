// LoRA shrink/expand over segments of tokens that share an adapter slot.
#include <algorithm>
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_gemm.h"

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
    sgemm_nt(rows, r, in, 1.0f, x.ptr<float>() + int64_t(indptr[g]) * in, in, a, in, 0.0f,
             xa.ptr<float>() + int64_t(indptr[g]) * width, width);
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
    const int64_t ldb = m.b_ld.empty() ? r : m.b_ld.ptr<int32_t>()[slot];
    const float scale = m.scales.ptr<float>()[slot];
    // y[seg, off:off+out] += scale · xa[seg, :r] · Bᵀ ;  B (out, r), rows ldb apart
    sgemm_nt(rows, out, r, scale, xa.ptr<float>() + int64_t(indptr[g]) * width, width, b, ldb, 1.0f,
             y.ptr<float>() + int64_t(indptr[g]) * ldy + col_offset, ldy);
  }
}

Tensor CpuBackend::lora_delta(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch) {
  Tensor y = host_alloc(DType::f32, {xa.rows(), m.out_features});
  std::memset(y.data, 0, y.nbytes());
  lora_expand(xa, m, batch, y, 0);
  return y;
}

Tensor CpuBackend::lora_shrink_columns(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) {
  const int64_t n = x.rows(), in = x.cols(), width = batch.lora_columns, ld = in + width;
  if (in != m.in_features || width <= 0 || width > m.columns || m.col_offsets.empty())
    throw std::runtime_error("cpu backend: lora_shrink_columns: x " + x.shape_str() + ", " +
                             std::to_string(width) + " columns, for a module of " + std::to_string(m.in_features) +
                             " inputs and " + std::to_string(m.columns) + " LoRA columns");
  Tensor out = host_alloc(DType::f32, {n, ld});
  std::memset(out.data, 0, out.nbytes());
  const auto* offsets = m.col_offsets.ptr<int32_t>();
  for (int64_t t = 0; t < n; ++t) {
    float* row = out.ptr<float>() + t * ld;
    const float* xt = x.ptr<float>() + t * in;
    std::memcpy(row, xt, size_t(in) * sizeof(float));
    const int32_t slot = batch.token_slot.ptr<int32_t>()[t];
    if (slot < 0) continue;
    const int64_t r = m.ranks.ptr<int32_t>()[slot], off = offsets[slot];
    if (r == 0) continue;
    if (off < 0 || off + r > width)
      throw std::runtime_error("cpu backend: lora_shrink_columns: slot " + std::to_string(slot) +
                               " has no columns within the step's " + std::to_string(width));
    const auto* a = reinterpret_cast<const float*>(m.a_ptrs.ptr<int64_t>()[slot]);
    const float scale = m.scales.ptr<float>()[slot];
    for (int64_t j = 0; j < r; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += double(xt[k]) * double(a[j * in + k]);
      row[in + off + j] = float(double(scale) * acc);
    }
  }
  return out;
}

}  // namespace philora
