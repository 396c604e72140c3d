// The CPU backend's products give each row the same bits whatever the other
// rows of the call: a token's logits do not depend on what shares its step
// (batch invariance of seeded sampling rests on it).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_gemm.h"

namespace philora {
namespace {

std::vector<float> random_values(size_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(gen);
  return v;
}

// Every row of every call of 1 .. 300 rows equals the same row of a call of
// 301 rows, bit for bit, for the shapes of the test models and of Phi-3, with
// beta 0 and 1 (matmul and matmul_add) and a scale (lora_expand).
TEST(CpuGemm, EachRowIsIndependentOfTheOtherRows) {
  const int64_t max_rows = 301;
  for (const int64_t k : {4, 16, 120, 128, 3072}) {
    for (const int64_t n : {1, 4, 16, 200, 256, 1152, 9216}) {
      const std::vector<float> x = random_values(size_t(max_rows * k), uint64_t(k * 7 + n));
      const std::vector<float> w = random_values(size_t(n * k), uint64_t(k * 11 + n));
      const std::vector<float> y0 = random_values(size_t(max_rows * n), uint64_t(k * 13 + n));
      for (const float beta : {0.0f, 1.0f}) {
        const float alpha = beta == 0.0f ? 1.0f : 0.375f;
        std::vector<float> all = y0;
        sgemm_nt(max_rows, n, k, alpha, x.data(), k, w.data(), k, beta, all.data(), n);
        for (const int64_t m : {1, 2, 3, 4, 5, 7, 8, 19, 33, 64, 128, 300}) {
          for (const int64_t first : {int64_t(0), max_rows - m}) {  // rows from the start and the end
            std::vector<float> y(y0.begin() + first * n, y0.begin() + (first + m) * n);
            sgemm_nt(m, n, k, alpha, x.data() + first * k, k, w.data(), k, beta, y.data(), n);
            ASSERT_EQ(std::memcmp(y.data(), all.data() + first * n, y.size() * sizeof(float)), 0)
                << "k " << k << ", n " << n << ", beta " << beta << ": rows " << first << ".."
                << first + m << " computed alone differ from the same rows among " << max_rows;
          }
        }
      }
    }
  }
}

TEST(CpuGemm, PaddedRowsLeaveTheOutputsStrideAlone) {
  // y with a wider stride (lora_expand writes a slice of y): the columns
  // outside the product keep their values.
  const int64_t m = 3, n = 4, k = 8, ldy = 10;
  const std::vector<float> x = random_values(size_t(m * k), 1), w = random_values(size_t(n * k), 2);
  std::vector<float> y(size_t(m * ldy), 5.0f);
  sgemm_nt(m, n, k, 1.0f, x.data(), k, w.data(), k, 1.0f, y.data() + 3, ldy);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < ldy; ++c) {
      const float got = y[size_t(r * ldy + c)];
      if (c < 3 || c >= 3 + n) {
        EXPECT_EQ(got, 5.0f) << r << "," << c;
        continue;
      }
      double want = 5.0;
      for (int64_t i = 0; i < k; ++i) want += double(x[size_t(r * k + i)]) * w[size_t((c - 3) * k + i)];
      EXPECT_NEAR(got, want, 1e-5) << r << "," << c;
    }
}

}  // namespace
}  // namespace philora
