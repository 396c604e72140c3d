// The CPU backend's one dense product, with each row's result independent of
// the other rows of the call (batch invariance: a token's logits do not depend
// on what else shares its step).
#pragma once

#include <cstdint>

namespace philora {

// y (m, n) = alpha · x (m, k) · w (n, k)ᵀ + beta · y, row-major with leading
// dimensions ldx, ldw, ldy, through BLAS (sgemm, x not transposed, w transposed).
//
// Row invariance: OpenBLAS chooses its kernel by the size of the product
// (0.3.21 on AVX-512 CPUs takes a "small matrix" kernel when m · n ≤ 1200;
// releases from 0.3.27 on forward m = 1 to gemv), and its kernels round
// differently. Products that small are computed over rows padded with zeros
// up to where its one general kernel always applies, which computes every
// row with the same accumulation order whatever m is (tests/unit/cpu_gemm_test.cpp).
void sgemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float* x, int64_t ldx,
              const float* w, int64_t ldw, float beta, float* y, int64_t ldy);

// The rows sgemm_nt computes for a product of m rows and n columns (m or more).
int64_t sgemm_padded_rows(int64_t m, int64_t n);

}  // namespace philora
