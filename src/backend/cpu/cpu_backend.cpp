#include "backend/cpu/cpu_backend.h"

#include "backend/cpu/cpu_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace philora {

Tensor host_alloc(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t(nullptr, dtype, shape, Device::cpu);
  const size_t bytes = std::max<size_t>(64, (t.nbytes() + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  t.storage = std::shared_ptr<void>(p, std::free);
  t.data = p;
  return t;
}

CpuBackend::CpuBackend(int num_threads, bool replay_graphs)
    : pool_(num_threads), replay_graphs_(replay_graphs) {}

std::string CpuBackend::description() const {
  return name() + " (" + std::to_string(pool_.size()) + " threads)";
}

Expected<Backend::MemoryInfo> CpuBackend::memory_info() const {
  std::ifstream in("/proc/meminfo");
  MemoryInfo m;
  std::string key, unit;
  int64_t kib = 0;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == "MemAvailable:") m.free_bytes = kib * 1024;
    if (key == "MemTotal:") m.total_bytes = kib * 1024;
  }
  if (m.total_bytes == 0) return Status::error("cannot read MemTotal from /proc/meminfo");
  return m;
}

namespace {
class ReplayGraph final : public StepGraph {
 public:
  explicit ReplayGraph(std::function<void()> body) : body_(std::move(body)) {}
  void replay() override { body_(); }

 private:
  std::function<void()> body_;
};
}  // namespace

std::unique_ptr<StepGraph> CpuBackend::capture(const std::function<void()>& body) {
  if (!replay_graphs_) return nullptr;
  body();
  return std::make_unique<ReplayGraph>(body);
}

Tensor CpuBackend::alloc(DType dtype, std::initializer_list<int64_t> shape) {
  return host_alloc(dtype, shape);
}

Tensor CpuBackend::upload(const Tensor& host, DType dtype) {
  (void)dtype;  // the CPU computes in f32 whatever the storage asked for
  if (host.dtype == DType::f32) return host;  // borrow (e.g. the mmap) as stored
  Tensor out = host_alloc(DType::f32, {host.numel()});
  to_f32(host.data, host.dtype, out.ptr<float>(), size_t(host.numel()));
  out.ndim = host.ndim;
  out.shape = host.shape;
  return out;
}

Tensor CpuBackend::to_host_f32(const Tensor& t) {
  if (t.dtype == DType::f32) return t;
  Tensor out = host_alloc(DType::f32, {t.numel()});
  to_f32(t.data, t.dtype, out.ptr<float>(), size_t(t.numel()));
  out.ndim = t.ndim;
  out.shape = t.shape;
  return out;
}

template <typename T>
static Tensor from_vector(const std::vector<T>& values, DType dtype) {
  Tensor t = host_alloc(dtype, {int64_t(values.size())});
  if (!values.empty()) std::memcpy(t.data, values.data(), values.size() * sizeof(T));
  return t;
}
Tensor CpuBackend::upload_i32(const std::vector<int32_t>& v) { return from_vector(v, DType::i32); }
Tensor CpuBackend::upload_i64(const std::vector<int64_t>& v) { return from_vector(v, DType::i64); }
Tensor CpuBackend::upload_f32(const std::vector<float>& v) { return from_vector(v, DType::f32); }

void CpuBackend::upload_into(Tensor& dst, const void* src, size_t bytes) {
  if (bytes > dst.nbytes())
    throw std::runtime_error("cpu backend: upload_into: " + std::to_string(bytes) +
                             " bytes into a tensor of " + std::to_string(dst.nbytes()));
  if (bytes) std::memcpy(dst.data, src, bytes);
}

std::vector<int32_t> CpuBackend::download_i32(const Tensor& t) {
  if (t.dtype != DType::i32)
    throw std::runtime_error("cpu backend: download_i32: the tensor holds " +
                             std::string(dtype_name(t.dtype)));
  const int32_t* p = t.ptr<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

Tensor CpuBackend::random_uniform(std::initializer_list<int64_t> shape, uint64_t seed, float mean,
                                  float half_width) {
  Tensor t = host_alloc(DType::f32, shape);
  float* p = t.ptr<float>();
  pool_.parallel_for(t.numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      p[i] = mean + half_width * random_uniform_value(seed, uint64_t(i));
  });
  return t;
}

Tensor CpuBackend::embedding(const Tensor& ids, const Tensor& table) {
  const int64_t n = ids.numel(), hidden = table.cols();
  Tensor out = host_alloc(DType::f32, {n, hidden});
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = ids.ptr<int32_t>()[t];
    const char* row =
        static_cast<const char*>(table.data) + size_t(id * hidden) * dtype_size(table.dtype);
    to_f32(row, table.dtype, out.ptr<float>() + t * hidden, size_t(hidden));
  }
  return out;
}

// y = w * x / sqrt(mean(x²) + eps), the mean accumulated in f64.
static void rms_norm_row(const float* x, const float* w, float eps, int64_t n, float* y) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * inv);
}

Tensor CpuBackend::rms_norm(const Tensor& x, const Tensor& w, float eps) {
  const int64_t rows = x.rows(), n = x.cols();
  Tensor y = host_alloc(DType::f32, {rows, n});
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      rms_norm_row(x.ptr<float>() + r * n, w.ptr<float>(), eps, n, y.ptr<float>() + r * n);
  });
  return y;
}

std::pair<Tensor, Tensor> CpuBackend::add_rms_norm(const Tensor& h, const Tensor& residual,
                                                   const Tensor& w, float eps) {
  const int64_t rows = h.rows(), n = h.cols();
  Tensor sum = host_alloc(DType::f32, {rows, n});
  Tensor y = host_alloc(DType::f32, {rows, n});
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* s = sum.ptr<float>() + r * n;
      const float* a = h.ptr<float>() + r * n;
      if (residual.empty()) {
        std::memcpy(s, a, size_t(n) * 4);
      } else {
        const float* c = residual.ptr<float>() + r * n;
        for (int64_t i = 0; i < n; ++i) s[i] = a[i] + c[i];
      }
      rms_norm_row(s, w.ptr<float>(), eps, n, y.ptr<float>() + r * n);
    }
  });
  return {y, sum};
}

static void check_inner(const char* op, const Tensor& x, const Tensor& w) {
  if (w.cols() < x.cols())
    throw std::runtime_error(std::string("cpu backend: ") + op + ": x " + x.shape_str() + " and w " +
                             w.shape_str() + " disagree on the inner dimension");
}

Tensor CpuBackend::matmul(const Tensor& x, const Tensor& w) {
  check_inner("matmul", x, w);
  const int64_t m = x.rows(), k = x.cols(), n = w.dim(0);
  Tensor y = host_alloc(DType::f32, {m, n});
  if (m == 0) return y;
  if (k == 0) {
    std::memset(y.data, 0, y.nbytes());
    return y;
  }
  sgemm_nt(m, n, k, 1.0f, x.ptr<float>(), k, w.ptr<float>(), w.cols(), 0.0f, y.ptr<float>(), n);
  return y;
}

void CpuBackend::matmul_add(const Tensor& x, const Tensor& w, Tensor& y) {
  check_inner("matmul_add", x, w);
  const int64_t m = x.rows(), k = x.cols(), n = w.dim(0);
  if (y.rows() != m || y.cols() != n)
    throw std::runtime_error("cpu backend: matmul_add: y " + y.shape_str() + " for x " + x.shape_str() +
                             " and w " + w.shape_str());
  if (m == 0 || k == 0) return;
  sgemm_nt(m, n, k, 1.0f, x.ptr<float>(), k, w.ptr<float>(), w.cols(), 1.0f, y.ptr<float>(), n);
}

void CpuBackend::write_columns(Tensor& dst, int64_t col, const Tensor& src, int64_t count) {
  const int64_t n = src.empty() ? count : src.cols();
  if (col < 0 || col + n > dst.cols() || (!src.empty() && src.rows() != dst.rows()))
    throw std::runtime_error("cpu backend: write_columns: " + std::to_string(n) + " columns at " +
                             std::to_string(col) + " of " + dst.shape_str() +
                             (src.empty() ? std::string() : " from " + src.shape_str()));
  for (int64_t r = 0; r < dst.rows(); ++r) {
    float* d = dst.ptr<float>() + r * dst.cols() + col;
    if (src.empty())
      std::memset(d, 0, size_t(n) * sizeof(float));
    else
      std::memcpy(d, src.ptr<float>() + r * n, size_t(n) * sizeof(float));
  }
}

Tensor CpuBackend::silu_mul(const Tensor& gate_up) {
  const int64_t rows = gate_up.rows(), n = gate_up.cols() / 2;
  Tensor y = host_alloc(DType::f32, {rows, n});
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* g = gate_up.ptr<float>() + r * 2 * n;
      const float* u = g + n;
      float* o = y.ptr<float>() + r * n;
      for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
  return y;
}

Tensor CpuBackend::gather_rows(const Tensor& x, const Tensor& rows) {
  const int64_t r = rows.numel(), n = x.cols();
  Tensor y = host_alloc(DType::f32, {r, n});
  for (int64_t i = 0; i < r; ++i)
    std::memcpy(y.ptr<float>() + i * n, x.ptr<float>() + int64_t(rows.ptr<int32_t>()[i]) * n,
                size_t(n) * 4);
  return y;
}

Tensor CpuBackend::bias_silu_residual(const Tensor& h, const Tensor& bias, const Tensor& x) {
  const int64_t rows = h.rows(), n = h.cols();
  Tensor y = host_alloc(DType::f32, {rows, n});
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* hr = h.ptr<float>() + r * n;
      const float* xr = x.ptr<float>() + r * n;
      float* o = y.ptr<float>() + r * n;
      for (int64_t i = 0; i < n; ++i) {
        const float g = hr[i] + bias.ptr<float>()[i];
        o[i] = xr[i] + g / (1.0f + std::exp(-g));
      }
    }
  });
  return y;
}

Tensor CpuBackend::argmax_rows(const Tensor& x) {
  const int64_t rows = x.rows(), n = x.cols();
  Tensor y = host_alloc(DType::i32, {rows});
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.ptr<float>() + r * n;
    y.ptr<int32_t>()[r] = int32_t(std::max_element(xr, xr + n) - xr);  // the first maximum
  }
  return y;
}

}  // namespace philora
