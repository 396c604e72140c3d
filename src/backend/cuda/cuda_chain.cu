// GEMV chain (see cuda_chain.cuh; the kernel is in cuda_chain_kernel.cuh).
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_chain.cuh"
#include "backend/cuda/cuda_chain_kernel.cuh"

namespace philora::cuda {

namespace {

// The variant the lab measured fastest (dev/cuda/NOTES.md, session 12); the
// lab builds others with -D (dev/cuda/variant.sh).
#ifndef PHILORA_CHAIN_WARPS
#define PHILORA_CHAIN_WARPS 16
#define PHILORA_CHAIN_DEPTH 6
#define PHILORA_CHAIN_BULK true
#endif
constexpr int kWarps = PHILORA_CHAIN_WARPS;
constexpr int kDepth = PHILORA_CHAIN_DEPTH;
constexpr bool kBulk = PHILORA_CHAIN_BULK;

}  // namespace

bool chain_stage_supported(const ChainStage& s) {
  return s.n >= 1 && s.k >= 8 && s.k <= kChainMaxK && s.k % 8 == 0 && s.ldw >= s.k && s.ldw % 8 == 0 &&
         aligned16(s.w) && aligned16(s.src) && s.y != nullptr &&
         row_prologue_fits(s.prologue, s.k, kWarps * 32);
}

void launch_gemv_chain(const ChainArgs& a, int sms, cudaStream_t stream) {
  if (a.num_stages < 1 || a.num_stages > kChainMaxStages || a.barrier == nullptr || sms < 1)
    throw std::invalid_argument("gemv_chain: " + std::to_string(a.num_stages) + " stages");
  for (int s = 0; s < a.num_stages; ++s)
    if (!chain_stage_supported(a.stages[s]))
      throw std::logic_error("unsupported: gemv_chain: stage " + std::to_string(s) + "'s shape or alignment");
  auto* kernel = chain::gemv_chain_kernel<kWarps, kDepth, kBulk>;
  constexpr size_t smem = chain::smem_bytes<kWarps, kDepth>();
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  launch_chained(kernel, dim3(unsigned(sms)), dim3(unsigned(kWarps * 32)), smem, stream, a, 0);
}

}  // namespace philora::cuda
