#include "backend/staged_communicator.h"

#include <stdexcept>
#include <string>
#include <utility>

#include "backend/cpu/cpu_backend.h"
#include "backend/loopback_communicator.h"
#include "core/dtype.h"

namespace philora {

namespace {

class StagedCommunicator : public Communicator {
 public:
  StagedCommunicator(std::shared_ptr<LoopbackGroup> group, int64_t rank, Backend& backend)
      : group_(std::move(group)), host_(group_->communicator(rank)), backend_(backend) {}
  int64_t rank() const override { return host_->rank(); }
  int64_t world_size() const override { return host_->world_size(); }

  void all_reduce_sum(Tensor& x) override {
    Tensor h = backend_.to_host_f32(x);  // waits for the rank's stream
    host_->all_reduce_sum(h);
    store(h, x);
  }
  void all_gather_cols(const Tensor& x, Tensor& out) override {
    const Tensor h = backend_.to_host_f32(x);
    Tensor all = host_alloc(DType::f32, {out.rows(), out.cols()});
    host_->all_gather_cols(h, all);
    store(all, out);
  }
  void gather_cols(const Tensor& x, Tensor* out) override {
    const Tensor h = backend_.to_host_f32(x);
    if (!out) return host_->gather_cols(h, nullptr);
    Tensor all = host_alloc(DType::f32, {out->rows(), out->cols()});
    host_->gather_cols(h, &all);
    store(all, *out);
  }
  void abort() override { host_->abort(); }
  void reset() override { host_->reset(); }
  // Rank 0 stages the step's inputs on its stream, which the other ranks'
  // streams know nothing of: it waits for them before any rank goes on.
  void begin_step() override {
    if (rank() == 0) backend_.synchronize();
    group_->wait();
  }
  bool capturable() const override { return false; }

 private:
  // host (f32) -> x, in x's dtype on the backend (one rounding).
  void store(const Tensor& host, Tensor& x) {
    if (host.numel() != x.numel())
      throw std::logic_error("staged communicator: " + host.shape_str() + " into " + x.shape_str());
    if (host.data == x.data) return;  // the CPU's to_host_f32 of an f32 tensor is the tensor
    const int64_t n = host.numel();
    const float* v = host.ptr<float>();
    switch (x.dtype) {
      case DType::f32: return backend_.upload_into(x, v, size_t(n) * 4);
      case DType::bf16:
      case DType::f16: {
        std::vector<uint16_t> bits(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
          bits[size_t(i)] = x.dtype == DType::bf16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
        return backend_.upload_into(x, bits.data(), bits.size() * 2);
      }
      default:
        throw std::invalid_argument("staged communicator: dtype " + std::string(dtype_name(x.dtype)) +
                                    " (f32, bf16 or f16 only)");
    }
  }

  std::shared_ptr<LoopbackGroup> group_;
  std::unique_ptr<Communicator> host_;
  Backend& backend_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> staged_communicators(const std::vector<Backend*>& backends) {
  const std::shared_ptr<LoopbackGroup> group = LoopbackGroup::make(int64_t(backends.size()));
  std::vector<std::unique_ptr<Communicator>> out;
  for (size_t r = 0; r < backends.size(); ++r)
    out.push_back(std::make_unique<StagedCommunicator>(group, int64_t(r), *backends[r]));
  return out;
}

}  // namespace philora
