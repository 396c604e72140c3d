#include "backend/cpu/cpu_gemm.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace philora {

namespace {
// OpenBLAS's small-matrix kernel applies up to this many output elements.
constexpr int64_t kSmallProduct = 1200;
}  // namespace

int64_t sgemm_padded_rows(int64_t m, int64_t n) {
  if (m == 0 || n == 0) return m;
  return std::max({m, int64_t(2), kSmallProduct / n + 1});
}

void sgemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float* x, int64_t ldx,
              const float* w, int64_t ldw, float beta, float* y, int64_t ldy) {
  if (m == 0 || n == 0) return;
  const int64_t rows = sgemm_padded_rows(m, n);
  if (rows == m) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), alpha, x, int(ldx),
                w, int(ldw), beta, y, int(ldy));
    return;
  }
  // Padded copies: x's rows then zeros; y's rows (beta reads them) then zeros.
  std::vector<float> xp(size_t(rows * k), 0.0f), yp(size_t(rows * n), 0.0f);
  for (int64_t r = 0; r < m; ++r) {
    std::memcpy(xp.data() + r * k, x + r * ldx, size_t(k) * sizeof(float));
    if (beta != 0.0f) std::memcpy(yp.data() + r * n, y + r * ldy, size_t(n) * sizeof(float));
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(n), int(k), alpha, xp.data(),
              int(std::max<int64_t>(k, 1)), w, int(ldw), beta, yp.data(), int(n));
  for (int64_t r = 0; r < m; ++r)
    std::memcpy(y + r * ldy, yp.data() + r * n, size_t(n) * sizeof(float));
}

}  // namespace philora
