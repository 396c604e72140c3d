#include "model/tensor_parallel.h"

#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "backend/cpu/cpu_backend.h"

namespace philora::model {

TensorParallelPhi3::TensorParallelPhi3(Phi3Config config, std::vector<Rank> ranks)
    : Phi3ForCausalLM(config, std::move(ranks.at(0).weights), *ranks[0].backend,
                      TpContext{0, int64_t(ranks.size()), ranks[0].comm.get()}),
      comm_(std::move(ranks[0].comm)) {
  const auto n = int64_t(ranks.size());
  for (int64_t r = 1; r < n; ++r) {
    Rank& k = ranks[size_t(r)];
    peers_.push_back(std::make_unique<Phi3ForCausalLM>(config, std::move(k.weights), *k.backend,
                                                       TpContext{r, n, k.comm.get()}));
    peer_comms_.push_back(std::move(k.comm));
  }
}

Tensor TensorParallelPhi3::forward(const StepInputs& in, kv::KvCache& kv, const LoraTables* lora,
                                   Tensor* hidden) {
  if (kv.peer_layers.size() != peers_.size())
    throw std::logic_error("tensor parallelism: the KV cache holds " +
                           std::to_string(kv.peer_layers.size() + 1) + " ranks' pools, the model " +
                           std::to_string(peers_.size() + 1) +
                           " ranks (make it with make_kv_cache)");
  if (lora && lora->peers.size() != peers_.size())
    throw std::logic_error("tensor parallelism: the adapter tables are split for " +
                           std::to_string(lora->peers.size() + 1) + " ranks, the model has " +
                           std::to_string(peers_.size() + 1));
  // The first failure in time is the cause; the ranks it aborts fail after it.
  std::mutex mu;
  std::exception_ptr first;
  const auto failed = [&](Communicator& comm) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!first) first = std::current_exception();
    }
    comm.abort();
  };
  std::vector<std::thread> threads;
  Tensor out;
  try {
    for (size_t p = 0; p < peers_.size(); ++p)
      threads.emplace_back([&, p] {
        try {
          peer_comms_[p]->begin_step();
          (void)peers_[p]->forward_rank(in, kv.peer_layers[p], lora ? lora->peers[p] : nullptr,
                                        nullptr);
        } catch (...) {
          failed(*peer_comms_[p]);
        }
      });
  } catch (...) {  // a thread did not start: the started ones must not wait for it
    failed(*comm_);
  }
  if (!first) {
    try {
      comm_->begin_step();
      out = forward_rank(in, kv.layers, lora, hidden);
    } catch (...) {
      failed(*comm_);
    }
  }
  for (std::thread& t : threads) t.join();
  if (first) {
    comm_->reset();  // every rank has left: the next step may use the group again
    std::rethrow_exception(first);
  }
  return out;
}

kv::KvCache TensorParallelPhi3::make_kv_cache(int64_t num_pages, int64_t page_size) {
  kv::KvCache kv = Phi3ForCausalLM::make_kv_cache(num_pages, page_size);
  for (const auto& peer : peers_)  // its pools, on its backend (its page manager unused)
    kv.peer_layers.push_back(peer->make_kv_cache(num_pages, page_size).layers);
  return kv;
}

void TensorParallelPhi3::copy_kv_pages(kv::KvCache& kv,
                                       const std::vector<std::pair<int32_t, int32_t>>& pages) {
  copy_rank_pages(kv.layers, pages);
  for (size_t p = 0; p < peers_.size(); ++p)  // each rank's pools on its own backend
    peers_[p]->copy_rank_pages(kv.peer_layers[p], pages);
}

std::vector<Tensor> TensorParallelPhi3::widen_for_lora(int64_t columns) {
  std::vector<Tensor> all = Phi3ForCausalLM::widen_for_lora(columns);
  for (const auto& peer : peers_) {
    std::vector<Tensor> w = peer->widen_for_lora(columns);
    all.insert(all.end(), w.begin(), w.end());
  }
  return all;
}

bool TensorParallelPhi3::lora_columns_supported() {
  if (!Phi3ForCausalLM::lora_columns_supported()) return false;
  for (const auto& peer : peers_)
    if (!peer->lora_columns_supported()) return false;
  return true;
}

const Tensor& TensorParallelPhi3::lm_head() const {
  if (!whole_lm_head_.empty()) return whole_lm_head_;
  const Tensor& mine = w_.lm_head;
  const int64_t rows = mine.dim(0), cols = mine.dim(1), n = int64_t(peers_.size()) + 1;
  Tensor whole = host_alloc(DType::f32, {rows * n, cols});
  for (int64_t r = 0; r < n; ++r) {  // rank r holds rows r · V/N .. (r + 1) · V/N
    const Phi3ForCausalLM& rank =
        r == 0 ? static_cast<const Phi3ForCausalLM&>(*this) : *peers_[size_t(r - 1)];
    const Tensor part = rank.backend_.to_host_f32(rank.w_.lm_head);
    if (part.numel() != rows * cols)
      throw std::logic_error("tensor parallelism: rank " + std::to_string(r) + "'s lm_head is " +
                             rank.w_.lm_head.shape_str() + ", rank 0's " + mine.shape_str());
    std::memcpy(whole.ptr<float>() + r * rows * cols, part.ptr<float>(),
                size_t(rows * cols) * sizeof(float));
  }
  whole_lm_head_ = backend_.upload(whole, mine.dtype);
  return whole_lm_head_;
}

bool TensorParallelPhi3::step_graphs_supported() {
  if (!Phi3ForCausalLM::step_graphs_supported() || !comm_->capturable()) return false;
  for (const auto& comm : peer_comms_)
    if (!comm->capturable()) return false;
  return true;
}

Expected<std::unique_ptr<Phi3ForCausalLM>> load_tensor_parallel(
    const io::TensorSet& tensors, const Phi3Config& config, const std::vector<Backend*>& backends,
    std::vector<std::unique_ptr<Communicator>> comms,
    const std::function<void(int64_t, int64_t)>& progress) {
  const auto n = int64_t(backends.size());
  PHILORA_RETURN_IF_ERROR(check_tensor_parallel(config, n));
  if (int64_t(comms.size()) != n)
    return Status::errorf("tensor parallelism: {} backends, {} communicators", n, comms.size());
  std::vector<TensorParallelPhi3::Rank> ranks;
  for (int64_t r = 0; r < n; ++r) {
    auto w = load_weights(
        tensors, config, *backends[size_t(r)],
        [&](int64_t done, int64_t total) {
          if (progress) progress(r * total + done, n * total);
        },
        TpShard{r, n});
    if (!w) return w.status();
    ranks.push_back({backends[size_t(r)], std::move(*w), std::move(comms[size_t(r)])});
  }
  return std::unique_ptr<Phi3ForCausalLM>(
      std::make_unique<TensorParallelPhi3>(config, std::move(ranks)));
}

}  // namespace philora::model
