#include "backend/cuda/nccl_communicator.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/nccl_library.h"

namespace philora {

namespace nccl = cuda::nccl;

namespace {

nccl::DataType nccl_type(DType t, const char* op) {
  switch (t) {
    case DType::f32:
      return nccl::kFloat32;
    case DType::bf16:
      return nccl::kBfloat16;
    case DType::f16:
      return nccl::kFloat16;
    default:
      throw std::invalid_argument(std::string(op) + ": dtype " + std::string(dtype_name(t)) +
                                  " (f32, bf16 or f16 only)");
  }
}

// The ranks' NCCL communicators, made together (ncclCommInitAll: one process,
// one GPU per rank) and remade together after a failure.
class NcclGroup {
 public:
  NcclGroup(const nccl::Library& lib, std::vector<CudaBackend*> backends)
      : lib_(lib), backends_(std::move(backends)), comms_(backends_.size(), nullptr) {
    for (CudaBackend* b : backends_) devices_.push_back(b->context().device);
    init();
  }
  ~NcclGroup() {
    // Nothing may still run on a stream when its communicator goes; ncclCommAbort
    // is local to each communicator (ncclCommDestroy may wait on its peers).
    int current = 0;
    const bool restore = cudaGetDevice(&current) == cudaSuccess;
    for (size_t r = 0; r < comms_.size(); ++r) {
      if (!comms_[r]) continue;
      (void)cudaSetDevice(devices_[r]);
      (void)cudaStreamSynchronize(backends_[r]->context().stream);
      (void)lib_.CommAbort(comms_[r]);
    }
    if (restore) (void)cudaSetDevice(current);
  }

  const nccl::Library& lib() const { return lib_; }
  int64_t world() const { return int64_t(backends_.size()); }
  CudaBackend& backend(int64_t rank) const { return *backends_[size_t(rank)]; }
  int device(int64_t rank) const { return devices_[size_t(rank)]; }
  cudaStream_t stream(int64_t rank) const { return backends_[size_t(rank)]->context().stream; }
  nccl::Comm comm(int64_t rank) const { return comms_[size_t(rank)]; }

  // A rank failed: the others' later collectives throw instead of queueing
  // work the GPU would wait on forever.
  void abort() { aborted_ = true; }
  void throw_if_aborted() const {
    if (!aborted_) return;
    std::lock_guard<std::mutex> lock(mu_);
    throw std::runtime_error(broken_.empty() ? "tensor parallelism: another rank failed" : broken_);
  }
  // Every rank has left the step: end whatever still waits on a GPU for a
  // failed rank (ncclCommAbort), then make the communicators anew. Never
  // throws (it runs while a step's error propagates): when they cannot be
  // remade (a GPU in a sticky error state), every later collective says so.
  void reset() {
    std::lock_guard<std::mutex> lock(mu_);
    int current = 0;
    const bool restore = cudaGetDevice(&current) == cudaSuccess;
    for (size_t r = 0; r < comms_.size(); ++r) {
      if (!comms_[r]) continue;
      (void)cudaSetDevice(devices_[r]);
      (void)lib_.CommAbort(comms_[r]);
      comms_[r] = nullptr;
    }
    if (restore) (void)cudaSetDevice(current);
    try {
      init();
      broken_.clear();
      aborted_ = false;
    } catch (const std::exception& e) {
      broken_ = std::string(
                    "tensor parallelism: the NCCL group could not be remade after a "
                    "failed step: ") +
                e.what();
    }
  }

 private:
  void init() {
    int current = 0;  // ncclCommInitAll visits every device: give the caller its own back
    PHILORA_CUDA_CHECK(cudaGetDevice(&current));
    const nccl::Result r = lib_.CommInitAll(comms_.data(), int(comms_.size()), devices_.data());
    (void)cudaSetDevice(current);
    nccl::check(lib_, r, "ncclCommInitAll");
  }

  const nccl::Library& lib_;
  std::vector<CudaBackend*> backends_;  // [world]
  std::vector<int> devices_;            // [world]
  std::vector<nccl::Comm> comms_;       // [world]
  std::atomic<bool> aborted_{false};
  mutable std::mutex mu_;
  std::string broken_;  // why reset() could not remake the communicators (under mu_)
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<NcclGroup> group, int64_t rank)
      : group_(std::move(group)), rank_(rank) {}

  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return group_->world(); }

  void all_reduce_sum(Tensor& x) override {
    check(x, "all_reduce_sum");
    group_->throw_if_aborted();
    const cuda::DeviceGuard guard(group_->device(rank_));
    const nccl::Library& lib = group_->lib();
    nccl::check(
        lib,
        lib.AllReduce(x.data, x.data, size_t(x.numel()), nccl_type(x.dtype, "all_reduce_sum"),
                      nccl::kSum, group_->comm(rank_), group_->stream(rank_)),
        "ncclAllReduce");
  }

  // NCCL gathers (N, rows, c) rank-major: a staging buffer, then each rank's
  // block copied into its columns of out (rows, N · c).
  void all_gather_cols(const Tensor& x, Tensor& out) override {
    check(x, "all_gather_cols");
    check_out(x, out, "all_gather_cols");
    group_->throw_if_aborted();
    const cuda::DeviceGuard guard(group_->device(rank_));
    const nccl::Library& lib = group_->lib();
    const int64_t n = group_->world(), rows = x.rows(), c = x.cols();
    if (rows * c == 0) return;
    Tensor staging = group_->backend(rank_).alloc(x.dtype, {n * rows, c});
    nccl::check(
        lib,
        lib.AllGather(x.data, staging.data, size_t(rows * c), nccl_type(x.dtype, "all_gather_cols"),
                      group_->comm(rank_), group_->stream(rank_)),
        "ncclAllGather");
    for (int64_t r = 0; r < n; ++r) place(staging, r * rows, r, out);
  }

  // Rank 0 receives each peer's (rows, c) in a staging buffer (ncclRecv from
  // every peer in one group), the peers send theirs (ncclSend to rank 0).
  void gather_cols(const Tensor& x, Tensor* out) override {
    check(x, "gather_cols");
    if ((rank_ == 0) != (out != nullptr))
      throw std::invalid_argument(
          "gather_cols: rank " + std::to_string(rank_) +
          (out ? " passed an out (only rank 0 receives)" : " passed no out (rank 0 receives)"));
    if (out) check_out(x, *out, "gather_cols");
    group_->throw_if_aborted();
    const cuda::DeviceGuard guard(group_->device(rank_));
    const nccl::Library& lib = group_->lib();
    const int64_t n = group_->world(), rows = x.rows(), c = x.cols();
    if (rows * c == 0) return;
    const nccl::DataType type = nccl_type(x.dtype, "gather_cols");
    const auto count = size_t(rows * c);
    if (rank_ != 0) {
      nccl::check(lib, lib.Send(x.data, count, type, 0, group_->comm(rank_), group_->stream(rank_)),
                  "ncclSend");
      return;
    }
    Tensor staging = group_->backend(0).alloc(x.dtype, {(n - 1) * rows, c});  // ranks 1 .. N-1
    const size_t block = count * dtype_size(x.dtype);
    nccl::check(lib, lib.GroupStart(), "ncclGroupStart");
    for (int64_t r = 1; r < n; ++r)
      nccl::check(lib,
                  lib.Recv(static_cast<char*>(staging.data) + size_t(r - 1) * block, count, type,
                           int(r), group_->comm(0), group_->stream(0)),
                  "ncclRecv");
    nccl::check(lib, lib.GroupEnd(), "ncclGroupEnd");
    place(x, 0, 0, *out);
    for (int64_t r = 1; r < n; ++r) place(staging, (r - 1) * rows, r, *out);
  }

  void abort() override { group_->abort(); }
  void reset() override { group_->reset(); }
  // Not inside a step graph: each rank's stream would need its own capture
  // (not built); the runner keeps tensor-parallel CUDA steps eager.
  bool capturable() const override { return false; }

  // The peers' kernels read the step's inputs where rank 0 staged them (its
  // GPU, through peer access): a one-element all-reduce orders every rank's
  // later work after rank 0's work so far (no rank's collective completes
  // before every rank has reached it), uploads of the inputs included.
  void begin_step() override {
    if (scratch_.data == nullptr) scratch_ = group_->backend(rank_).alloc(DType::f32, {1});
    all_reduce_sum(scratch_);
  }

 private:
  static void check(const Tensor& t, const char* op) {
    if (t.device != Device::cuda || (t.data == nullptr && t.numel() > 0))
      throw std::invalid_argument(std::string(op) +
                                  ": the NCCL communicator takes tensors on the GPU only");
  }
  void check_out(const Tensor& x, const Tensor& out, const char* op) const {
    check(out, op);
    if (out.rows() != x.rows() || out.cols() != world_size() * x.cols() || out.dtype != x.dtype)
      throw std::invalid_argument(std::string(op) + ": out " + out.shape_str() + " for parts " +
                                  x.shape_str() + " of " + std::to_string(world_size()) + " ranks");
  }
  // Rows [first, first + out.rows()) of `from` (c columns) into rank r's
  // columns of out (N · c columns), on this rank's stream.
  void place(const Tensor& from, int64_t first, int64_t r, Tensor& out) const {
    const size_t es = dtype_size(out.dtype), width = size_t(out.cols() / world_size()) * es;
    PHILORA_CUDA_CHECK(
        cudaMemcpy2DAsync(static_cast<char*>(out.data) + size_t(r) * width, size_t(out.cols()) * es,
                          static_cast<const char*>(from.data) + size_t(first) * width, width, width,
                          size_t(out.rows()), cudaMemcpyDeviceToDevice, group_->stream(rank_)));
  }

  std::shared_ptr<NcclGroup> group_;
  int64_t rank_;
  Tensor scratch_;  // [1] f32: begin_step's all-reduce
};

}  // namespace

Status nccl_available() {
  auto lib = nccl::load();
  return lib.ok() ? Status() : lib.status();
}

Expected<std::vector<std::unique_ptr<Communicator>>> nccl_communicators(
    const std::vector<CudaBackend*>& backends) {
  auto lib = nccl::load();
  if (!lib.ok()) return lib.status();
  if (backends.empty()) return Status::error("tensor parallelism on cuda: no ranks");
  std::vector<int> devices;
  for (CudaBackend* b : backends) {
    const int d = b->context().device;
    for (const int seen : devices)
      if (seen == d)
        return Status::errorf("tensor parallelism on cuda: two ranks on GPU {} (one GPU a rank)",
                              d);
    devices.push_back(d);
  }
  try {
    // Peer access to rank 0's GPU from every other rank's: their kernels read
    // the step's inputs there.
    for (size_t r = 1; r < devices.size(); ++r) {
      int can = 0;
      PHILORA_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, devices[r], devices[0]));
      if (!can)
        return Status::errorf(
            "tensor parallelism on cuda: GPU {} cannot access GPU {}'s memory (no peer access: "
            "the ranks read the step's inputs on rank 0's GPU)",
            devices[r], devices[0]);
      const cuda::DeviceGuard guard(devices[r]);
      const cudaError_t e = cudaDeviceEnablePeerAccess(devices[0], 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) {
        (void)cudaGetLastError();  // enabled before: fine
      } else {
        PHILORA_CUDA_CHECK(e);
      }
    }
    // NVLink multicast (NVLS) off, before NCCL first reads its environment
    // (at its first communicator): the GPU machines philora runs on require it.
    ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/1);
    auto group = std::make_shared<NcclGroup>(**lib, backends);
    std::vector<std::unique_ptr<Communicator>> out;
    for (int64_t r = 0; r < int64_t(backends.size()); ++r)
      out.push_back(std::make_unique<NcclCommunicator>(group, r));
    return out;
  } catch (const std::exception& e) {
    return Status::errorf("tensor parallelism on cuda: {} (NCCL {})", e.what(),
                          (*lib)->version_string());
  }
}

}  // namespace philora
