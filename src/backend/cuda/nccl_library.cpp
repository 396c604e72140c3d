#include "backend/cuda/nccl_library.h"

#include <dlfcn.h>

#include <stdexcept>
#include <type_traits>

namespace philora::cuda::nccl {

std::string Library::version_string() const {
  return std::to_string(version / 10000) + "." + std::to_string(version / 100 % 100) + "." +
         std::to_string(version % 100);
}

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
  const char* missing = nullptr;  // the first entry point the library lacks
  auto need = [&](const char* name, auto& fn) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(handle, name));
    if (!fn && !missing) missing = name;
  };
  need("ncclGetVersion", lib.GetVersion);
  need("ncclGetUniqueId", lib.GetUniqueId);
  need("ncclCommInitAll", lib.CommInitAll);
  need("ncclCommInitRank", lib.CommInitRank);
  need("ncclCommDestroy", lib.CommDestroy);
  need("ncclCommAbort", lib.CommAbort);
  need("ncclGetErrorString", lib.GetErrorString);
  need("ncclAllReduce", lib.AllReduce);
  need("ncclAllGather", lib.AllGather);
  need("ncclSend", lib.Send);
  need("ncclRecv", lib.Recv);
  need("ncclGroupStart", lib.GroupStart);
  need("ncclGroupEnd", lib.GroupEnd);
  if (missing) {
    dlclose(handle);
    return Status::errorf("tensor parallelism on cuda: {} has no {} (NCCL 2.10 or later needed)",
                          soname, missing);
  }
  if (lib.GetVersion(&lib.version) != kSuccess || lib.version < 21000) {
    dlclose(handle);
    return Status::errorf(
        "tensor parallelism on cuda: {} is NCCL {} (code {}); 2.10 or later is needed (bfloat16 "
        "all-reduce)",
        soname, lib.version_string(), lib.version);
  }
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
