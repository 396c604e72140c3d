// "cpu-bf16": the cpu backend seen through bf16 storage. Every tensor it
// stores in its compute dtype (uploads, op results, the KV pages and LoRA y it
// writes in place) is rounded to bf16, as a bf16 device would store it; the
// arithmetic stays the cpu backend's. It stands in for a device backend so the
// harness's cross-backend path (bf16 tolerance, in-place poison, exact keeps,
// "unsupported" reporting) runs on every machine, GPU or not.
//
// Like a device backend with a partial kernel set, it reports attention with
// head_dim < 64 as unsupported, so the skip path is exercised too.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace philora::optest {

std::unique_ptr<Backend> make_bf16_emulator();

}  // namespace philora::optest
