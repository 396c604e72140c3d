// Collectives among the ranks of one tensor-parallel group (the model's
// shards, one per device). Every rank calls the same collectives in the same
// order with tensors of the same shape and dtype (SPMD); a call returns once
// its result is in place on that rank.
//
// Implementations: LoopbackGroup (backend/loopback_communicator.h: N ranks
// as N threads of one process, host memory; the CPU backend's simulated
// ranks, what CI runs) and the CUDA backend's NcclGroup
// (backend/cuda/nccl_communicator.h: libnccl.so.2 loaded at run time, one
// NCCL communicator per GPU, collectives queued on the rank's stream).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace philora {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;

  // x = x_0 + x_1 + ... + x_{N-1} in place on every rank (x_r: rank r's x).
  // The loopback adds in rank order in f32 and rounds once to x's dtype, so
  // that every rank holds the same values and a run repeats bit for bit;
  // NCCL adds in x's dtype (bf16 on CUDA) in an order of its own choosing.
  virtual void all_reduce_sum(Tensor& x) = 0;
  // out (rows, N · c) = [x_0 | x_1 | ... | x_{N-1}]: every rank's x (rows, c)
  // side by side, rank order; out has x's dtype.
  virtual void all_gather_cols(const Tensor& x, Tensor& out) = 0;
  // The same columns on rank 0 only (what sampling reads): rank 0 passes
  // `out` (rows, N · c), the other ranks null and receive nothing.
  virtual void gather_cols(const Tensor& x, Tensor* out) = 0;
  // This rank failed between collectives: the other ranks' pending and later
  // collectives throw instead of waiting for it.
  virtual void abort() = 0;
  // After a failure, once no rank is inside a collective (every rank's step
  // has returned or thrown): the group works again (a server goes on serving
  // after a failed step). Resets the whole group; one rank calls it. NCCL's
  // would be ncclCommAbort and a new communicator.
  virtual void reset() = 0;

  // Called by every rank at the start of a step, before its forward: after
  // it, this rank's device work runs after the work rank 0 queued before it
  // (the step's inputs, which rank 0 staged and every rank reads). Host
  // memory (the loopback) needs nothing; NCCL queues a one-element all-reduce.
  virtual void begin_step() {}
  // Whether a step graph recorded on rank 0's backend may hold this
  // communicator's collectives (the CPU's graphs rerun the whole group; a
  // CUDA graph would need one capture per rank's stream: not built).
  virtual bool capturable() const { return true; }
};

}  // namespace philora
