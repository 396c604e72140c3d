// Step graphs: CUDA graphs recorded from the backend's one stream.
//
// capture() runs the body twice with the allocator serving from its graph
// pool: once eagerly (cuBLASLt tunes its algorithms, kernels set their shared
// memory limits, the pool fills with the blocks the step needs), then under
// stream capture, where the same sequence of requests finds every block cached
// and no cudaMalloc happens. The graph keeps the addresses it was recorded
// with; the tensors the body keeps (its outputs) keep those blocks alive.
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"

namespace philora {

namespace {

class CudaStepGraph final : public StepGraph {
 public:
  CudaStepGraph(cudaGraphExec_t exec, cudaStream_t stream) : exec_(exec), stream_(stream) {}
  ~CudaStepGraph() override { (void)cudaGraphExecDestroy(exec_); }
  void replay() override { PHILORA_CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
};

// Switches the allocator to the graph pool for its lifetime.
class GraphPoolScope {
 public:
  explicit GraphPoolScope(cuda::DeviceAllocator& a) : a_(a) { a_.set_graph_pool(true); }
  ~GraphPoolScope() { a_.set_graph_pool(false); }

 private:
  cuda::DeviceAllocator& a_;
};

}  // namespace

std::unique_ptr<StepGraph> CudaBackend::capture(const std::function<void()>& body) {
  const cuda::DeviceGuard guard(ctx_->device);
  GraphPoolScope pool(*ctx_->allocator);
  body();  // warm-up
  cudaStream_t s = ctx_->stream;
  // Relaxed: the body may call cudaFuncSetAttribute and friends, which the
  // stricter modes refuse while a capture is open.
  PHILORA_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  cudaGraph_t graph = nullptr;
  try {
    body();
  } catch (...) {
    (void)cudaStreamEndCapture(s, &graph);
    if (graph) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    throw;
  }
  PHILORA_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error(std::string("CUDA error: cudaGraphInstantiate failed (") +
                             cudaGetErrorString(e) + ")");
  }
  return std::make_unique<CudaStepGraph>(exec, s);
}

}  // namespace philora
