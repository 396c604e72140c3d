// Simulated tensor-parallel ranks whose tensors live on a device (several
// ranks on one GPU): each collective copies the rank's tensor to the host,
// runs the loopback's collective there (rank order, f32, one rounding: the
// same values on every rank and from run to run) and copies the result back.
// For checking the sharded forward on a device where there are fewer devices
// than ranks (`--simulate-ranks`): every collective synchronizes its rank's
// stream, so it is slow, and no step graph can hold it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/communicator.h"

namespace philora {

// One communicator per backend (rank order), the backends' tensors staged
// through host memory.
std::vector<std::unique_ptr<Communicator>> staged_communicators(const std::vector<Backend*>& backends);

}  // namespace philora
