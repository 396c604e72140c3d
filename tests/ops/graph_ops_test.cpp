// Step graphs (Backend::capture): a replay reruns the recorded ops on the
// inputs' current contents and rewrites the tensors the body kept; memory the
// graph uses is never handed to tensors allocated outside it. Runs on every
// backend that records (cuda on a GPU machine) and on the CPU backend built to
// replay graph bodies.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"

namespace philora {
namespace {

std::vector<std::string> recording_backends() {
  std::vector<std::string> names = {"cpu-replay"};
  for (const std::string& n : available_backends())
    if (n != "cpu") names.push_back(n);
  return names;
}

std::unique_ptr<Backend> make(const std::string& name) {
  if (name == "cpu-replay") return std::make_unique<CpuBackend>(1, /*replay_graphs=*/true);
  auto b = make_backend(name);
  EXPECT_TRUE(b.ok()) << b.status().message();
  return b.ok() ? std::move(b).value() : nullptr;
}

std::vector<float> values(int64_t n, float scale, float offset) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[size_t(i)] = offset + scale * float((i * 37) % 101 - 50) / 64.0f;
  return v;
}

// A host f32 vector as a backend tensor of the compute dtype.
Tensor upload(Backend& b, const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  Tensor host(const_cast<float*>(v.data()), DType::f32, shape, Device::cpu);
  return b.upload(host, b.compute_dtype());
}

class GraphOps : public testing::TestWithParam<std::string> {};

TEST_P(GraphOps, ReplayFollowsInputsAndNeverTouchesOtherMemory) {
  auto backend = make(GetParam());
  ASSERT_NE(backend, nullptr);
  Backend& b = *backend;
  ASSERT_TRUE(b.can_capture());
  const int64_t rows = 8, n = 256, out = 96;
  // Inputs at fixed addresses (f32 staging through upload_into needs an f32
  // tensor: plans and sampling inputs are i32/f32, so the test uses f32 too).
  Tensor x = b.upload_f32(values(rows * n, 1.0f, 0.0f)).reshape({rows, n});
  // (upload may borrow host memory: the host values must outlive the tensors)
  const std::vector<float> norm_host = values(n, 0.5f, 1.0f), w_host = values(out * n, 0.02f, 0.0f);
  const Tensor w_norm = upload(b, norm_host, {n});
  const Tensor w = upload(b, w_host, {out, n});

  // The body: convert x to the compute dtype, rms_norm, matmul (temporaries of
  // several sizes), keeping only the last result.
  auto body_ops = [&]() {
    Tensor xc = b.upload(x, b.compute_dtype());
    Tensor h = b.rms_norm(xc, w_norm, 1e-5f);
    return b.matmul(h, w);
  };
  Tensor kept;
  std::unique_ptr<StepGraph> graph = b.capture([&] { kept = body_ops(); });
  ASSERT_NE(graph, nullptr);

  // Eager tensors allocated after the recording, of the sizes the body's
  // temporaries had, filled with a sentinel: a replay must leave them alone.
  const std::vector<float> sentinel(static_cast<size_t>(rows * n), 7.0f);
  const Tensor seven = b.upload_f32(sentinel);
  std::vector<Tensor> others;
  for (int i = 0; i < 8; ++i) {
    others.push_back(b.upload(seven, b.compute_dtype()));  // converted by an op: a new tensor
    others.push_back(b.upload_f32(sentinel));
  }

  for (int round = 0; round < 3; ++round) {
    const std::vector<float> xv = values(rows * n, 1.0f + float(round), 0.1f * float(round));
    b.upload_into(x, xv.data(), xv.size() * sizeof(float));
    graph->replay();
    const Tensor want = b.to_host_f32(body_ops());  // the same ops, run eagerly
    const Tensor got = b.to_host_f32(kept);
    ASSERT_EQ(got.numel(), want.numel());
    for (int64_t i = 0; i < got.numel(); ++i)
      ASSERT_EQ(got.ptr<float>()[i], want.ptr<float>()[i])
          << GetParam() << ", round " << round << ", element " << i;
    for (const Tensor& o : others) {
      const Tensor h = b.to_host_f32(o);
      for (int64_t i = 0; i < h.numel(); ++i)
        ASSERT_EQ(h.ptr<float>()[i], 7.0f)
            << GetParam() << ": a replay wrote memory it does not own";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(graph, GraphOps, testing::ValuesIn(recording_backends()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

}  // namespace
}  // namespace philora
