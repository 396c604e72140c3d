// The ranks of a tensor-parallel group on one kind of device, beside rank 0's
// backend (the one the engine uses): their backends and their communicators.
//   cpu:  simulated ranks: CPU backends of one thread each, threads of this
//         process, collectives through a LoopbackGroup (host memory)
//   cuda: rank r on GPU r (rank 0's backend is GPU 0's), collectives through
//         NCCL (libnccl.so.2, loaded at run time: backend/cuda/nccl_communicator.h);
//         or, simulated (`simulate`, --simulate-ranks), every rank a backend of
//         its own on rank 0's GPU, collectives staged through host memory
//         (backend/staged_communicator.h): the sharded forward checked on one
//         GPU, slowly. (On the cpu, `simulate` sends the collectives through
//         the same staged path, so that CI runs it.)
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/communicator.h"
#include "core/status.h"

namespace philora {

// Whether `device` ("cpu", "cuda") can run `ranks` ranks here, before anything
// is built: cuda needs NCCL (an error naming libnccl.so.2) and that many GPUs.
// Simulated ranks (cpu always) need no library and one device.
Status tensor_parallel_available(const std::string& device, int64_t ranks, bool simulate = false);

// Rank 1 .. n-1's backends beside rank 0's `main`, of its device.
Expected<std::vector<std::unique_ptr<Backend>>> make_rank_backends(const Backend& main, int64_t n,
                                                                   bool simulate = false);

// One communicator per backend (rank order; all of one device).
Expected<std::vector<std::unique_ptr<Communicator>>> make_rank_communicators(
    const std::vector<Backend*>& backends, bool simulate = false);

}  // namespace philora
