#include "backend/cuda/nccl_library.h"

#include <dlfcn.h>

#include <stdexcept>
#include <utility>

namespace philora::cuda::nccl {

std::string Library::version_string() const {
  return std::to_string(version / 10000) + "." + std::to_string(version / 100 % 100) + "." +
         std::to_string(version % 100);
}

namespace {

template <typename F>
bool resolve(void* handle, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(handle, name));
  return fn != nullptr;
}

}  // namespace

Expected<Library> open_library(const std::string& soname) {
  void* handle = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    return Status::errorf(
        "tensor parallelism on cuda needs NCCL: {} could not be loaded ({}); install NCCL 2.10 "
        "or later (e.g. the libnccl2 package of NVIDIA's CUDA repository) or put its directory "
        "on LD_LIBRARY_PATH",
        soname, why ? why : "no reason given");
  }
  Library lib;
  const std::pair<const char*, bool> entries[] = {
      {"ncclGetVersion", resolve(handle, "ncclGetVersion", lib.GetVersion)},
      {"ncclGetUniqueId", resolve(handle, "ncclGetUniqueId", lib.GetUniqueId)},
      {"ncclCommInitAll", resolve(handle, "ncclCommInitAll", lib.CommInitAll)},
      {"ncclCommInitRank", resolve(handle, "ncclCommInitRank", lib.CommInitRank)},
      {"ncclCommDestroy", resolve(handle, "ncclCommDestroy", lib.CommDestroy)},
      {"ncclCommAbort", resolve(handle, "ncclCommAbort", lib.CommAbort)},
      {"ncclGetErrorString", resolve(handle, "ncclGetErrorString", lib.GetErrorString)},
      {"ncclAllReduce", resolve(handle, "ncclAllReduce", lib.AllReduce)},
      {"ncclAllGather", resolve(handle, "ncclAllGather", lib.AllGather)},
      {"ncclSend", resolve(handle, "ncclSend", lib.Send)},
      {"ncclRecv", resolve(handle, "ncclRecv", lib.Recv)},
      {"ncclGroupStart", resolve(handle, "ncclGroupStart", lib.GroupStart)},
      {"ncclGroupEnd", resolve(handle, "ncclGroupEnd", lib.GroupEnd)},
  };
  for (const auto& [name, found] : entries)
    if (!found)
      return Status::errorf("tensor parallelism on cuda: {} has no {} (NCCL 2.10 or later needed)",
                            soname, name);
  if (lib.GetVersion(&lib.version) != kSuccess || lib.version < 21000)
    return Status::errorf(
        "tensor parallelism on cuda: {} is NCCL {} (code {}); 2.10 or later is needed (bfloat16 "
        "all-reduce)",
        soname, lib.version_string(), lib.version);
  return lib;
}

Expected<const Library*> load() {
  static const Expected<Library> lib = open_library(kLibraryName);  // once, thread-safe
  if (!lib.ok()) return lib.status();
  return &*lib;
}

void check(const Library& lib, Result r, const char* what) {
  if (r != kSuccess)
    throw std::runtime_error(std::string("NCCL error: ") + what + ": " + lib.GetErrorString(r) +
                             " (code " + std::to_string(int(r)) + ")");
}

}  // namespace philora::cuda::nccl
