// NCCL, loaded at run time: dlopen("libnccl.so.2") the first time tensor
// parallelism on CUDA asks for it. The build needs no NCCL headers or package:
// the few types and entry points used are declared here from NCCL's public,
// documented C API (nccl.h's ABI, stable since NCCL 2.0; bfloat16 since 2.10,
// point-to-point send / receive since 2.7).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "core/status.h"

namespace philora::cuda::nccl {

using Comm = struct ncclComm*;  // ncclComm_t: an opaque handle
struct UniqueId {               // ncclUniqueId: NCCL_UNIQUE_ID_BYTES (128) opaque bytes
  char internal[128];
};
enum Result : int {  // ncclResult_t
  kSuccess = 0,
  kInProgress = 7,  // non-blocking communicators only (philora's are blocking)
};
enum DataType : int {  // ncclDataType_t (the values used here)
  kFloat16 = 6,
  kFloat32 = 7,
  kBfloat16 = 9,
};
enum RedOp : int {  // ncclRedOp_t
  kSum = 0,
};

// The entry points, resolved with dlsym.
struct Library {
  Result (*GetVersion)(int* version) = nullptr;
  Result (*GetUniqueId)(UniqueId* id) = nullptr;
  Result (*CommInitAll)(Comm* comms, int ndev, const int* devlist) = nullptr;
  Result (*CommInitRank)(Comm* comm, int nranks, UniqueId id, int rank) = nullptr;
  Result (*CommDestroy)(Comm comm) = nullptr;
  Result (*CommAbort)(Comm comm) = nullptr;
  const char* (*GetErrorString)(Result result) = nullptr;
  Result (*AllReduce)(const void* send, void* recv, size_t count, DataType dtype, RedOp op,
                      Comm comm, cudaStream_t stream) = nullptr;
  Result (*AllGather)(const void* send, void* recv, size_t send_count, DataType dtype, Comm comm,
                      cudaStream_t stream) = nullptr;
  Result (*Send)(const void* send, size_t count, DataType dtype, int peer, Comm comm,
                 cudaStream_t stream) = nullptr;
  Result (*Recv)(void* recv, size_t count, DataType dtype, int peer, Comm comm,
                 cudaStream_t stream) = nullptr;
  Result (*GroupStart)() = nullptr;
  Result (*GroupEnd)() = nullptr;

  int version = 0;  // ncclGetVersion's: major · 10000 + minor · 100 + patch (2.9 on)
  std::string version_string() const;
};

// The soname loaded.
inline constexpr const char* kLibraryName = "libnccl.so.2";

// NCCL from the shared library `soname` (its handle stays open for the
// process): an error naming the library and dlerror's reason when it cannot
// be loaded, lacks an entry point, or is older than 2.10 (no bfloat16).
Expected<Library> open_library(const std::string& soname);
// open_library(kLibraryName), once per process (later calls return the first
// outcome).
Expected<const Library*> load();

// Throws std::runtime_error naming `what` and NCCL's error string unless `r`
// is kSuccess.
void check(const Library& lib, Result r, const char* what);

}  // namespace philora::cuda::nccl
