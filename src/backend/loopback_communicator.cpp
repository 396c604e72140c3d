#include "backend/loopback_communicator.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace philora {

namespace {

class LoopbackCommunicator : public Communicator {
 public:
  LoopbackCommunicator(std::shared_ptr<LoopbackGroup> group, int64_t rank)
      : group_(std::move(group)), rank_(rank) {}
  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return group_->world_size(); }

  void all_reduce_sum(Tensor& x) override {
    check_host(x, "all_reduce_sum");
    const auto n = size_t(x.numel());
    const std::vector<const Tensor*>& parts = group_->post_and_wait(rank_, &x);
    for (size_t r = 1; r < parts.size(); ++r)
      if (parts[r]->numel() != parts[0]->numel() || parts[r]->dtype != parts[0]->dtype)
        mismatch("all_reduce_sum", r, *parts[r], *parts[0]);
    std::vector<float> sum(n), part(n);
    for (size_t r = 0; r < parts.size(); ++r) {  // rank order: the same bits on every rank
      const Tensor& p = *parts[r];
      to_f32(p.data, p.dtype, r == 0 ? sum.data() : part.data(), n);
      if (r > 0)
        for (size_t i = 0; i < n; ++i) sum[i] += part[i];
    }
    group_->wait();  // every rank has read every x: now each may be overwritten
    store(sum, x);
  }

  void abort() override { group_->abort(); }
  void reset() override { group_->reset(); }

  void all_gather_cols(const Tensor& x, Tensor& out) override {
    gather("all_gather_cols", x, &out);
  }
  void gather_cols(const Tensor& x, Tensor* out) override {
    if ((rank_ == 0) != (out != nullptr))
      throw std::invalid_argument(
          "gather_cols: rank " + std::to_string(rank_) +
          (out ? " passed an out (only rank 0 receives)" : " passed no out (rank 0 receives)"));
    gather("gather_cols", x, out);
  }

 private:
  // Every rank finds the same mismatch (each compares every post with rank
  // 0's): all leave through the second barrier, so that no rank still reads
  // a tensor that another frees while unwinding, then all throw the same.
  [[noreturn]] void mismatch(const char* op, size_t r, const Tensor& p, const Tensor& first) {
    // The message first: after the barrier the other ranks' tensors may be gone.
    const std::string message = std::string(op) + ": rank " + std::to_string(r) + " has " +
                                p.shape_str() + " " + std::string(dtype_name(p.dtype)) +
                                ", rank 0 " + first.shape_str() + " " +
                                std::string(dtype_name(first.dtype));
    group_->wait();
    throw std::invalid_argument(message);
  }
  // out (rows, N · c) = every rank's x side by side; out null: this rank
  // only posts its x.
  void gather(const char* op, const Tensor& x, Tensor* out) {
    check_host(x, op);
    const int64_t rows = x.rows(), c = x.cols(), world = world_size();
    if (out) {
      check_host(*out, op);
      if (out->rows() != rows || out->cols() != world * c || out->dtype != x.dtype)
        throw std::invalid_argument(std::string(op) + ": out " + out->shape_str() + " for parts " +
                                    x.shape_str() + " of " + std::to_string(world) + " ranks");
    }
    const std::vector<const Tensor*>& parts = group_->post_and_wait(rank_, &x);
    for (size_t r = 1; r < parts.size(); ++r)
      if (parts[r]->rows() != parts[0]->rows() || parts[r]->cols() != parts[0]->cols() ||
          parts[r]->dtype != parts[0]->dtype)
        mismatch(op, r, *parts[r], *parts[0]);
    const size_t es = dtype_size(x.dtype), row_bytes = size_t(c) * es;
    for (size_t r = 0; out && r < parts.size(); ++r) {
      const Tensor& p = *parts[r];
      for (int64_t i = 0; i < rows; ++i)
        std::memcpy(static_cast<char*>(out->data) + size_t(i * world * c) * es + r * row_bytes,
                    static_cast<const char*>(p.data) + size_t(i) * row_bytes, row_bytes);
    }
    group_->wait();  // every receiving rank has copied every part
  }
  static void check_host(const Tensor& t, const char* op) {
    if (t.device != Device::cpu)
      throw std::invalid_argument(std::string(op) +
                                  ": the loopback communicator takes host tensors only");
  }
  static void store(const std::vector<float>& v, Tensor& x) {
    switch (x.dtype) {
      case DType::f32:
        std::memcpy(x.data, v.data(), v.size() * 4);
        return;
      case DType::bf16:
        for (size_t i = 0; i < v.size(); ++i) x.ptr<uint16_t>()[i] = f32_to_bf16(v[i]);
        return;
      case DType::f16:
        for (size_t i = 0; i < v.size(); ++i) x.ptr<uint16_t>()[i] = f32_to_f16(v[i]);
        return;
      default:
        throw std::invalid_argument("all_reduce_sum: dtype " + std::string(dtype_name(x.dtype)) +
                                    " (f32, bf16 or f16 only)");
    }
  }

  std::shared_ptr<LoopbackGroup> group_;
  int64_t rank_;
};

}  // namespace

LoopbackGroup::LoopbackGroup(int64_t world_size)
    : world_(world_size), posts_(size_t(world_size), nullptr) {}

std::shared_ptr<LoopbackGroup> LoopbackGroup::make(int64_t world_size) {
  if (world_size < 1)
    throw std::invalid_argument("LoopbackGroup: " + std::to_string(world_size) + " ranks");
  return std::shared_ptr<LoopbackGroup>(new LoopbackGroup(world_size));
}

std::unique_ptr<Communicator> LoopbackGroup::communicator(int64_t rank) {
  if (rank < 0 || rank >= world_)
    throw std::invalid_argument("LoopbackGroup: rank " + std::to_string(rank) + " of " +
                                std::to_string(world_));
  return std::make_unique<LoopbackCommunicator>(shared_from_this(), rank);
}

std::vector<std::unique_ptr<Communicator>> LoopbackGroup::communicators(int64_t world_size) {
  const std::shared_ptr<LoopbackGroup> group = make(world_size);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int64_t r = 0; r < world_size; ++r) out.push_back(group->communicator(r));
  return out;
}

void LoopbackGroup::abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

void LoopbackGroup::reset() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = false;
  arrived_ = 0;  // ranks that arrived at a barrier and then left through the abort
  ++generation_;
  std::fill(posts_.begin(), posts_.end(), nullptr);
}

void LoopbackGroup::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  if (aborted_) throw std::runtime_error("tensor parallelism: another rank failed");
  const uint64_t generation = generation_;
  if (++arrived_ == world_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait(lock, [&] { return generation_ != generation || aborted_; });
  if (generation_ == generation)
    throw std::runtime_error("tensor parallelism: another rank failed");
}

const std::vector<const Tensor*>& LoopbackGroup::post_and_wait(int64_t rank, const Tensor* x) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    posts_[size_t(rank)] = x;
  }
  wait();
  return posts_;
}

}  // namespace philora
