// Kernel lab: how far the cuBLASLt heuristic's choice for skinny (decode)
// matmuls is from the best configuration cuBLASLt itself offers. For each shape
// y (m, n) = x (m, k) · wᵀ (bf16, f32 accumulation, the layouts of
// src/backend/cuda/cuda_matmul.cpp) it times
//   1. the heuristic's 16 candidates and their split-K variants (what
//      LtMatmul's autotune sees), and
//   2. every algorithm id × tile × stages × split-K × cluster shape (× custom
//      option 0, 1) that cublasLtMatmulAlgoCheck accepts, each run once, the
//      fastest 12 then timed again as in 1,
// each run after a write of twice the L2 size (w from memory, as in a decode
// step), as the median of 5; it prints the best of each with its configuration. Not a test and not part of philora: numbers for
// dev/cuda/NOTES.md. Build (here or on the GPU machine) and run there:
//   g++ -std=c++20 -O2 dev/cuda/lt_search.cpp -I/usr/local/cuda/include
//       -L/usr/local/cuda/lib64 -lcudart -lcublasLt -o lt_search
//   ./lt_search [m ...]        (default: m = 1, 8, 32, 64)
//   ./lt_search --ext C [m ...]: only 1, for k, and for a row stride of k + C
//                               with k, k + 16 and k + C columns used
//   ./lt_search --swap 1: m = 1 with the operands swapped (see search())
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

#define CHECK_CUDA(x)                                                           \
  do {                                                                          \
    cudaError_t e_ = (x);                                                       \
    if (e_ != cudaSuccess) {                                                    \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));             \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)
#define CHECK_LT(x)                                                             \
  do {                                                                          \
    cublasStatus_t s_ = (x);                                                    \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                          \
      std::fprintf(stderr, "%s: status %d\n", #x, int(s_));                     \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

struct Config {
  int id = -1;
  uint32_t tile = 0, stages = 0, swizzle = 0, custom = 0;
  int32_t splits = 1;
  uint16_t cluster = 0;
};

Config config_of(const cublasLtMatmulAlgo_t& a) {
  Config c;
  size_t w = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_ID, &c.id, sizeof(c.id), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &c.tile, sizeof(c.tile), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &c.stages, sizeof(c.stages), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &c.splits, sizeof(c.splits), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &c.swizzle, sizeof(c.swizzle), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &c.custom, sizeof(c.custom), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &c.cluster, sizeof(c.cluster), &w);
  return c;
}

std::string describe(const Config& c) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "id %d tile %u stages %u split %d swizzle %u custom %u cluster %u", c.id,
                c.tile, c.stages, c.splits, c.swizzle, c.custom, unsigned(c.cluster));
  return buf;
}

template <typename T>
std::vector<T> cap_array(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoCapAttributes_t attr) {
  size_t bytes = 0;
  if (cublasLtMatmulAlgoCapGetAttribute(&a, attr, nullptr, 0, &bytes) != CUBLAS_STATUS_SUCCESS || bytes == 0)
    return {};
  std::vector<T> v(bytes / sizeof(T));
  cublasLtMatmulAlgoCapGetAttribute(&a, attr, v.data(), bytes, &bytes);
  return v;
}

struct Bench {
  cublasLtHandle_t lt = nullptr;
  cudaStream_t stream = nullptr;
  void* ws = nullptr;
  size_t ws_bytes = size_t(32) << 20;
  void* flush = nullptr;
  size_t flush_bytes = 0;
  cudaEvent_t start = nullptr, stop = nullptr;

  Bench() {
    CHECK_LT(cublasLtCreate(&lt));
    CHECK_CUDA(cudaStreamCreate(&stream));
    CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
    int l2 = 0;
    CHECK_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
    flush_bytes = size_t(2) * size_t(l2);
    CHECK_CUDA(cudaMalloc(&flush, flush_bytes));
    CHECK_CUDA(cudaEventCreate(&start));
    CHECK_CUDA(cudaEventCreate(&stop));
  }

  // Median µs of `reps` flushed runs; negative when the algorithm refuses.
  template <typename F>
  float time(F&& launch, int reps = 5) {
    if (launch() != CUBLAS_STATUS_SUCCESS) {
      (void)cudaGetLastError();
      return -1.0f;
    }
    float t[5];
    for (int i = 0; i < reps; ++i) {
      CHECK_CUDA(cudaMemsetAsync(flush, i, flush_bytes, stream));
      CHECK_CUDA(cudaEventRecord(start, stream));
      if (launch() != CUBLAS_STATUS_SUCCESS) return -1.0f;
      CHECK_CUDA(cudaEventRecord(stop, stream));
      CHECK_CUDA(cudaEventSynchronize(stop));
      CHECK_CUDA(cudaEventElapsedTime(&t[i], start, stop));
    }
    std::sort(t, t + reps);
    return t[reps / 2] * 1e3f;
  }
};

// ld: the row stride of w and x (≥ k); exhaustive: also the search of 2.
// swap (m = 1 only): the operands the other way round, A = x (1, k) and B = wᵀ
// (k, n), C (1, n): the same bytes in and out, another problem for cuBLASLt
// (M = 1, N = n instead of M = n, N = 1).
bool g_swap = false;
void search(Bench& b, int64_t m, int64_t n, int64_t k, const char* name, int64_t ld = 0, bool exhaustive = true) {
  const bool swap = g_swap && m == 1;
  if (ld < k) ld = k;
  void *w = nullptr, *x = nullptr, *y = nullptr;
  CHECK_CUDA(cudaMalloc(&w, size_t(n * ld) * 2));
  CHECK_CUDA(cudaMalloc(&x, size_t(m * ld) * 2));
  CHECK_CUDA(cudaMalloc(&y, size_t(m * n) * 2));
  CHECK_CUDA(cudaMemset(w, 0x3c, size_t(n * ld) * 2));
  CHECK_CUDA(cudaMemset(x, 0x3c, size_t(m * ld) * 2));

  cublasLtMatmulDesc_t op = nullptr;
  CHECK_LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  CHECK_LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CHECK_LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  cublasLtMatrixLayout_t la, lb, lc;
  if (swap) {
    CHECK_LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, uint64_t(k), 1, ld));
    CHECK_LT(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, uint64_t(k), uint64_t(n), ld));
    CHECK_LT(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, 1, uint64_t(n), 1));
  } else {
    CHECK_LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, uint64_t(k), uint64_t(n), ld));
    CHECK_LT(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, uint64_t(k), uint64_t(m), ld));
    CHECK_LT(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, uint64_t(n), uint64_t(m), n));
  }
  const float alpha = 1.0f, beta = 0.0f;
  void* a_ptr = swap ? x : w;
  void* b_ptr = swap ? w : x;
  auto launch = [&](const cublasLtMatmulAlgo_t& a) {
    return [&, a] {
      return cublasLtMatmul(b.lt, op, &alpha, a_ptr, la, b_ptr, lb, &beta, y, lc, y, lc, &a, b.ws, b.ws_bytes,
                            b.stream);
    };
  };
  auto fits = [&](const cublasLtMatmulAlgo_t& a) {
    cublasLtMatmulHeuristicResult_t r{};
    return cublasLtMatmulAlgoCheck(b.lt, op, la, lb, lc, lc, &a, &r) == CUBLAS_STATUS_SUCCESS &&
           r.workspaceSize <= b.ws_bytes;
  };

  // 1. The heuristic's candidates and their split-K variants.
  cublasLtMatmulPreference_t pref = nullptr;
  CHECK_LT(cublasLtMatmulPreferenceCreate(&pref));
  CHECK_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &b.ws_bytes,
                                                sizeof(b.ws_bytes)));
  cublasLtMatmulHeuristicResult_t res[16] = {};
  int found = 0;
  CHECK_LT(cublasLtMatmulAlgoGetHeuristic(b.lt, op, la, lb, lc, lc, pref, 16, res, &found));
  float heur_first = -1, heur_best = -1;
  Config heur_cfg;
  int heur_timed = 0;
  for (int i = 0; i < found; ++i) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    std::vector<cublasLtMatmulAlgo_t> vs{res[i].algo};
    for (int32_t s : {2, 4, 8, 16}) {
      cublasLtMatmulAlgo_t v = res[i].algo;
      const uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
      if (cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &s, sizeof(s)) ==
              CUBLAS_STATUS_SUCCESS &&
          cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                               sizeof(scheme)) == CUBLAS_STATUS_SUCCESS &&
          fits(v))
        vs.push_back(v);
    }
    for (const auto& v : vs) {
      const float t = b.time(launch(v));
      if (t < 0) continue;
      ++heur_timed;
      if (heur_first < 0) heur_first = t;
      if (heur_best < 0 || t < heur_best) {
        heur_best = t;
        heur_cfg = config_of(v);
      }
    }
  }

  // 2. Everything cuBLASLt accepts.
  int ids[256];
  int nids = 0, nids_limit = 256;
  if (!exhaustive) nids_limit = 0;
  CHECK_LT(cublasLtMatmulAlgoGetIds(b.lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                                    CUDA_R_16BF, 256, ids, &nids));
  float best = -1;
  Config best_cfg;
  int timed = 0;
  std::vector<std::pair<float, cublasLtMatmulAlgo_t>> all;
  for (int ii = 0; ii < std::min(nids, nids_limit); ++ii) {
    cublasLtMatmulAlgo_t base;
    if (cublasLtMatmulAlgoInit(b.lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                               CUDA_R_16BF, ids[ii], &base) != CUBLAS_STATUS_SUCCESS)
      continue;
    std::vector<uint32_t> tiles = cap_array<uint32_t>(base, CUBLASLT_ALGO_CAP_TILE_IDS);
    std::vector<uint32_t> stages = cap_array<uint32_t>(base, CUBLASLT_ALGO_CAP_STAGES_IDS);
    if (tiles.empty()) tiles.push_back(CUBLASLT_MATMUL_TILE_UNDEFINED);
    if (stages.empty()) stages.push_back(CUBLASLT_MATMUL_STAGES_UNDEFINED);
    int32_t splitk_support = 0, custom_max = 0;
    size_t wr = 0;
    cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splitk_support,
                                      sizeof(splitk_support), &wr);
    cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX, &custom_max, sizeof(custom_max),
                                      &wr);
    std::vector<int32_t> splits{1};
    if (splitk_support) splits.insert(splits.end(), {2, 3, 4, 6, 8, 12, 16});
    const uint16_t clusters[] = {CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1,
                                 CUBLASLT_CLUSTER_SHAPE_2x1x1};
    for (uint32_t tile : tiles)
      for (uint32_t st : stages)
        for (int32_t s : splits)
          for (uint16_t cl : clusters)
            for (int32_t custom = 0; custom <= std::min(custom_max, 1); ++custom) {
              cublasLtMatmulAlgo_t a = base;
              const uint32_t scheme = s > 1 ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE : CUBLASLT_REDUCTION_SCHEME_NONE;
              const uint32_t cu = uint32_t(custom);
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile));
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &st, sizeof(st));
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &s, sizeof(s));
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                                   sizeof(scheme));
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &cu, sizeof(cu));
              if (cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cl, sizeof(cl)) !=
                      CUBLAS_STATUS_SUCCESS &&
                  cl != CUBLASLT_CLUSTER_SHAPE_AUTO)
                continue;
              if (timed >= 30000 || !fits(a)) continue;
              const float t = b.time(launch(a), 1);
              if (t < 0) continue;
              ++timed;
              all.push_back({t, a});
            }
  }
  // The fastest single runs, timed again as the heuristic's were.
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& c) { return a.first < c.first; });
  if (all.size() > 12) all.resize(12);
  for (auto& [t, a] : all) t = b.time(launch(a));
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& c) { return a.first < c.first; });
  if (!all.empty()) {
    best = all[0].first;
    best_cfg = config_of(all[0].second);
  }
  const double bytes = double(n * k + m * k + m * n) * 2.0;
  std::printf("%-8s %sm=%-3lld n=%-5lld k=%-5lld ld=%-5lld heuristic first %7.1f us, best of %3d %7.1f us (%4.0f GB/s) [%s]\n",
              name, swap ? "swapped " : "", (long long)m, (long long)n, (long long)k, (long long)ld, heur_first, heur_timed, heur_best,
              bytes / heur_best * 1e-3, describe(heur_cfg).c_str());
  auto release = [&] {
    std::fflush(stdout);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
    cudaFree(w);
    cudaFree(x);
    cudaFree(y);
  };
  if (!exhaustive) return release();
  std::printf("%-8s %33s search best of %5d %7.1f us (%4.0f GB/s) [%s]\n", name, "", timed, best,
              bytes / best * 1e-3, describe(best_cfg).c_str());
  for (size_t i = 1; i < std::min<size_t>(all.size(), 4); ++i)
    std::printf("%-8s %33s   next %7.1f us [%s]\n", name, "", all[i].first, describe(config_of(all[i].second)).c_str());
  release();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> ms;
  int64_t ext = 0;  // --ext C: the heuristic's best only, for k, then with C more columns of row stride
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--ext" && i + 1 < argc)
      ext = std::atoll(argv[++i]);
    else if (std::string(argv[i]) == "--swap")
      g_swap = true;
    else
      ms.push_back(std::atoll(argv[i]));
  }
  if (ms.empty()) ms = {1, 8, 32, 64};
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s\n", prop.name);
  Bench b;
  struct Shape {
    const char* name;
    int64_t n, k;
  };
  const Shape shapes[] = {{"qkv", 9216, 3072}, {"o", 3072, 3072}, {"gate_up", 16384, 3072},
                          {"down", 3072, 8192}, {"lm_head", 32064, 3072}};
  for (int64_t m : ms)
    for (const Shape& s : shapes) {
      if (ext == 0) {
        search(b, m, s.n, s.k, s.name);
        continue;
      }
      // The weight with ext spare columns a row: unused, 16 of them, all of them.
      search(b, m, s.n, s.k, s.name, s.k, false);
      search(b, m, s.n, s.k, s.name, s.k + ext, false);
      search(b, m, s.n, s.k + 16, s.name, s.k + ext, false);
      search(b, m, s.n, s.k + ext, s.name, s.k + ext, false);
    }
  return 0;
}
