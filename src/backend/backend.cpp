#include "backend/backend.h"

#include <stdexcept>
#include <string>

#include "backend/cpu/cpu_backend.h"
#ifdef PHILORA_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace philora {

Tensor Backend::pinned_host(DType dtype, int64_t n) { return host_alloc(dtype, {n}); }

void Backend::write_columns_batch(const std::vector<ColumnWrite>& writes) {
  for (ColumnWrite w : writes) {
    const int64_t r = w.src.empty() ? 0 : w.src.cols();
    if (w.width < r)
      throw std::runtime_error("write_columns_batch: " + std::to_string(r) +
                               " columns of B into a range of " + std::to_string(w.width));
    if (r > 0) write_columns(w.dst, w.col, w.src);
    if (w.width > r) write_columns(w.dst, w.col + r, Tensor(), w.width - r);
  }
}

Tensor Backend::apply_prologue(const Tensor& src, const Prologue& p) {
  switch (p.kind) {
    case Prologue::Kind::none: return src;
    case Prologue::Kind::rms_norm: return rms_norm(src, p.norm_weight, p.eps);
    case Prologue::Kind::silu_mul: return silu_mul(src);
  }
  throw std::logic_error("apply_prologue: unknown prologue");
}

Tensor Backend::fused_matmul(const Tensor& src, const Prologue& p, const Tensor& w) {
  return matmul(apply_prologue(src, p), w);
}

void Backend::fused_matmul_add(const Tensor& src, const Prologue& p, const Tensor& w, Tensor& y) {
  matmul_add(apply_prologue(src, p), w, y);
}

std::vector<std::string> available_backends() {
  std::vector<std::string> names = {"cpu"};
#ifdef PHILORA_HAVE_CUDA
  if (cuda_device_count() > 0) names.push_back("cuda");
#endif
  return names;
}

Expected<std::unique_ptr<Backend>> make_backend(const std::string& name) {
  if (name == "auto") {
    const std::vector<std::string> names = available_backends();
    return make_backend(names.back());  // cuda when it is there
  }
  if (name == "cpu") return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
  if (name == "cuda") {
#ifdef PHILORA_HAVE_CUDA
    return make_cuda_backend();
#else
    return Status::error(
        "device 'cuda': this build of philora has no CUDA backend (nvcc was not found at build "
        "time)");
#endif
  }
  return Status::errorf("unknown device '{}' (choices: auto, cpu, cuda)", name);
}

}  // namespace philora
