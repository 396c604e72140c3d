// Tensor parallelism's collectives on CUDA: one NCCL communicator per GPU of
// one process (ncclCommInitAll over the ranks' devices; rank r on backend r's
// GPU), each collective queued on the rank's own stream and returning at once
// (the GPU waits, the host does not). NCCL is loaded at run time
// (nccl_library.h); NCCL_NVLS_ENABLE=0 is set before the communicators are
// made (NVLink multicast off, as the GPU machines require).
//
// Sums are NCCL's: in the tensor's dtype (bf16 on CUDA), in an order NCCL
// picks, not the loopback's f32 rank-order sum rounded once, so results match
// one GPU within bf16 tolerance, not bit for bit. (NCCL's ring and tree
// all-reduces reduce each element once and send that result to every rank,
// so the ranks' residuals should stay equal; not checked on a GPU yet.)
//
// Failure: abort() marks the group failed, so that a rank's later collectives
// throw instead of queueing work that waits on the GPU for a rank that is
// gone; reset() (every rank has left the step) aborts every NCCL communicator
// (ncclCommAbort ends kernels still waiting on the GPU) and makes new ones.
//
// None of this has run on a GPU yet (no multi-GPU machine was lent when it
// was written): it is compiled and read, not tested.
#pragma once

#include <memory>
#include <vector>

#include "backend/communicator.h"
#include "core/status.h"

namespace philora {

class CudaBackend;

// Whether NCCL can be loaded here: OK, or an error naming libnccl.so.2.
Status nccl_available();

// One communicator per backend (rank order, each a CudaBackend on its own
// GPU, distinct): the ranks' peer access to rank 0's GPU enabled (the peers
// read the step's inputs where rank 0 staged them), NCCL's communicators made.
Expected<std::vector<std::unique_ptr<Communicator>>> nccl_communicators(
    const std::vector<CudaBackend*>& backends);

}  // namespace philora
