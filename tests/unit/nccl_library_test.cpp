// NCCL, loaded at run time (backend/cuda/nccl_library.h), asked on the host
// (no GPU needed): a library that is not there is named in the error that
// tensor parallelism on cuda gives; where libnccl.so.2 is installed, it loads,
// is new enough, and its entry points answer without a GPU.
#include <gtest/gtest.h>

#include "test_util.h"

#if PHILORA_HAVE_CUDA
#include "backend/cuda/nccl_communicator.h"
#include "backend/cuda/nccl_library.h"
#include "backend/tensor_parallel_group.h"

namespace philora {
namespace {

TEST(NcclLibrary, ALibraryThatIsNotThereIsNamed) {
  auto lib = cuda::nccl::open_library("libnccl-philora-absent.so.2");
  ASSERT_FALSE(lib.ok());
  EXPECT_HAS(lib.status().message(), "tensor parallelism on cuda needs NCCL");
  EXPECT_HAS(lib.status().message(), "libnccl-philora-absent.so.2 could not be loaded");
}

TEST(NcclLibrary, LoadsWhereInstalled) {
  auto lib = cuda::nccl::load();
  if (!lib.ok()) {
    EXPECT_HAS(lib.status().message(), "libnccl.so.2 could not be loaded");
    EXPECT_EQ(nccl_available().message(), lib.status().message());
    EXPECT_HAS(tensor_parallel_available("cuda", 2).message(), "libnccl.so.2");
    GTEST_SKIP() << lib.status().message();
  }
  EXPECT_TRUE(nccl_available().ok());
  EXPECT_GE((*lib)->version, 21000) << (*lib)->version_string();
  EXPECT_STRNE((*lib)->GetErrorString(cuda::nccl::Result(4)), "");  // ncclInvalidArgument
  EXPECT_NO_THROW(cuda::nccl::check(**lib, cuda::nccl::kSuccess, "nothing"));
  EXPECT_THROW(cuda::nccl::check(**lib, cuda::nccl::Result(4), "ncclAllReduce"),
               std::runtime_error);
}

}  // namespace
}  // namespace philora
#endif
