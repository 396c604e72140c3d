#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_attention_decode.cuh"
#include "backend/cuda/cuda_attention_prefill.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/cuda_elementwise.cuh"
#include "backend/cuda/cuda_lora.cuh"
#include "backend/cuda/cuda_rope.cuh"

namespace philora {

using cuda::CudaContext;

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: not an error here
    return 0;
  }
  return n;
}

Expected<std::unique_ptr<Backend>> make_cuda_backend(int device) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::errorf("device 'cuda': no usable CUDA GPU ({})", cudaGetErrorString(e));
  }
  if (n == 0) return Status::error("device 'cuda': no CUDA GPU is visible");
  if (device < 0 || device >= n)
    return Status::errorf("device 'cuda': no GPU {} ({} visible)", device, n);
  int previous = 0;  // CudaContext::create makes `device` current: give the caller its own back
  if (cudaGetDevice(&previous) != cudaSuccess) previous = 0;
  auto ctx = CudaContext::create(device);
  (void)cudaSetDevice(previous);
  if (!ctx) return ctx.status();
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(std::move(ctx).value()));
}

namespace {

void require(const Tensor& t, DType dtype, const char* op, const char* what) {
  if (t.device != Device::cuda || t.dtype != dtype || (t.data == nullptr && t.numel() > 0))
    throw std::runtime_error(std::string("cuda backend: ") + op + ": " + what + " must be a " +
                             std::string(dtype_name(dtype)) + " tensor on the GPU (got " +
                             std::string(dtype_name(t.dtype)) + " on " + device_name(t.device) + ")");
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

bool is_float(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

// Lab knock-outs (compiled in only with -DPHILORA_LAB_KNOCKOUT=1, through
// dev/cuda/variant.sh): the ops named in PHILORA_LAB_SKIP (comma-separated:
// rms_norm, rope, attention, silu, shrink, gemm) return their outputs
// unwritten, so that a timed step shows what each costs on its critical path.
// The numbers they compute are garbage; never in a build that serves.
// "fusion" keeps the numbers: the prologues run as ops of their own (the
// unfused step, for A/B timing in one binary).
#if PHILORA_LAB_KNOCKOUT
bool knocked(const char* op) {
  static const std::string skip = [] {
    const char* e = std::getenv("PHILORA_LAB_SKIP");
    return "," + std::string(e ? e : "") + ",";
  }();
  return skip.find("," + std::string(op) + ",") != std::string::npos;
}
#else
constexpr bool knocked(const char*) { return false; }
#endif

// The kernels' form of a prologue.
cuda::RowPrologue row_prologue(const Prologue& p) {
  cuda::RowPrologue r;
  switch (p.kind) {
    case Prologue::Kind::none: break;
    case Prologue::Kind::rms_norm:
      r.kind = cuda::RowPrologue::rms_norm;
      r.norm_w = p.norm_weight.data;
      r.eps = p.eps;
      break;
    case Prologue::Kind::silu_mul: r.kind = cuda::RowPrologue::silu_mul; break;
  }
  return r;
}

// Whether src and the prologue's weight are what a fused kernel reads for x
// of `in` columns (otherwise the plain ops run, and check them).
bool prologue_shape_ok(const Tensor& src, const Prologue& p, int64_t in) {
  if (src.ndim != 2 || src.dtype != DType::bf16) return false;
  switch (p.kind) {
    case Prologue::Kind::none: return true;
    case Prologue::Kind::rms_norm:
      return p.norm_weight.dtype == DType::bf16 && p.norm_weight.numel() == in && src.cols() == in;
    case Prologue::Kind::silu_mul: return src.cols() == 2 * in;
  }
  return false;
}

}  // namespace

CudaBackend::CudaBackend(std::shared_ptr<CudaContext> ctx) : ctx_(std::move(ctx)) {}

CudaBackend::~CudaBackend() = default;

int CudaBackend::gpu() const { return ctx_->device; }

// ---- memory ---------------------------------------------------------------------

Tensor CudaBackend::device_tensor(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t(nullptr, dtype, shape, Device::cuda);
  t.storage = ctx_->allocator->allocate(std::max<size_t>(1, t.nbytes()));
  t.data = t.storage.get();
  return t;
}

Tensor CudaBackend::alloc(DType dtype, std::initializer_list<int64_t> shape) {
  const cuda::DeviceGuard guard(ctx_->device);
  return device_tensor(dtype, shape);
}

static Tensor with_shape_of(Tensor t, const Tensor& like) {
  t.ndim = like.ndim;
  t.shape = like.shape;
  return t;
}

Tensor CudaBackend::upload_raw(const void* src, DType dtype, int64_t n) {
  Tensor t = device_tensor(dtype, {n});
  ctx_->staging->copy_to_device(t.data, src, size_t(n) * dtype_size(dtype));
  return t;
}

// Whether `p` is page-locked host memory (cudaMallocHost or registered).
static bool is_pinned(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeHost;
}

Tensor CudaBackend::pinned_host(DType dtype, int64_t n) {
  const cuda::DeviceGuard guard(ctx_->device);  // a loader thread's first call
  void* p = nullptr;
  const size_t bytes = std::max<size_t>(1, size_t(n) * dtype_size(dtype));
  if (cudaMallocHost(&p, bytes) != cudaSuccess) {  // no page-locked memory left: plain memory
    (void)cudaGetLastError();
    return host_alloc(dtype, {n});
  }
  Tensor t(p, dtype, {n}, Device::cpu);
  t.storage = std::shared_ptr<void>(p, [](void* q) { (void)cudaFreeHost(q); });
  return t;
}

Tensor CudaBackend::upload(const Tensor& host, DType dtype) {
  const cuda::DeviceGuard guard(ctx_->device);
  // Plans and tables keep their integer type; floats become bf16 unless f32 is asked for.
  const DType target = !is_float(host.dtype) ? host.dtype : (dtype == DType::f32 ? DType::f32 : DType::bf16);
  const int64_t n = host.numel();
  if (host.device == Device::cuda) {
    if (host.dtype == target) return host;
    Tensor out = with_shape_of(device_tensor(target, {n}), host);
    cuda::launch_convert(host.data, host.dtype, out.data, target, n, ctx_->stream);
    return out;
  }
  Tensor raw;  // as stored, then widened/narrowed on the GPU
  if (host.storage && is_pinned(host.data)) {  // async: the copy keeps the host memory alive
    raw = device_tensor(host.dtype, {n});
    ctx_->staging->copy_pinned(raw.data, host.data, host.nbytes(), host.storage);
  } else {
    raw = upload_raw(host.data, host.dtype, n);
  }
  if (host.dtype == target) return with_shape_of(raw, host);
  Tensor out = with_shape_of(device_tensor(target, {n}), host);
  cuda::launch_convert(raw.data, host.dtype, out.data, target, n, ctx_->stream);
  return out;
}

Tensor CudaBackend::to_host_f32(const Tensor& t) {
  const cuda::DeviceGuard guard(ctx_->device);
  if (t.device == Device::cpu) {
    if (t.dtype == DType::f32) return t;
    Tensor out = host_alloc(DType::f32, {t.numel()});
    to_f32(t.data, t.dtype, out.ptr<float>(), size_t(t.numel()));
    return with_shape_of(out, t);
  }
  const int64_t n = t.numel();
  Tensor out = with_shape_of(host_alloc(DType::f32, {n}), t);
  if (n == 0) return out;
  const void* src = t.data;
  Tensor wide;
  if (t.dtype != DType::f32) {
    wide = device_tensor(DType::f32, {n});
    cuda::launch_convert(t.data, t.dtype, wide.data, DType::f32, n, ctx_->stream);
    src = wide.data;
  }
  PHILORA_CUDA_CHECK(cudaMemcpyAsync(out.data, src, size_t(n) * 4, cudaMemcpyDeviceToHost, ctx_->stream));
  PHILORA_CUDA_CHECK(cudaStreamSynchronize(ctx_->stream));
  return out;
}

Tensor CudaBackend::upload_i32(const std::vector<int32_t>& v) {
  const cuda::DeviceGuard guard(ctx_->device);
  return upload_raw(v.data(), DType::i32, int64_t(v.size()));
}
Tensor CudaBackend::upload_i64(const std::vector<int64_t>& v) {
  const cuda::DeviceGuard guard(ctx_->device);
  return upload_raw(v.data(), DType::i64, int64_t(v.size()));
}
Tensor CudaBackend::upload_f32(const std::vector<float>& v) {
  const cuda::DeviceGuard guard(ctx_->device);
  return upload_raw(v.data(), DType::f32, int64_t(v.size()));
}

void CudaBackend::upload_into(Tensor& dst, const void* src, size_t bytes) {
  const cuda::DeviceGuard guard(ctx_->device);
  if (dst.device != Device::cuda || bytes > dst.nbytes())
    throw std::runtime_error("cuda backend: upload_into: " + std::to_string(bytes) +
                             " bytes into a " + std::string(device_name(dst.device)) +
                             " tensor of " + std::to_string(dst.nbytes()));
  if (bytes) ctx_->staging->copy_to_device(dst.data, src, bytes);
}

std::vector<int32_t> CudaBackend::download_i32(const Tensor& t) {
  const cuda::DeviceGuard guard(ctx_->device);
  if (t.dtype != DType::i32)
    throw std::runtime_error("cuda backend: download_i32: the tensor holds " +
                             std::string(dtype_name(t.dtype)));
  std::vector<int32_t> out(size_t(t.numel()));
  if (out.empty()) return out;
  if (t.device == Device::cpu) {
    std::memcpy(out.data(), t.data, out.size() * 4);
    return out;
  }
  PHILORA_CUDA_CHECK(cudaMemcpyAsync(out.data(), t.data, out.size() * 4, cudaMemcpyDeviceToHost,
                                     ctx_->stream));
  PHILORA_CUDA_CHECK(cudaStreamSynchronize(ctx_->stream));
  return out;
}

void CudaBackend::synchronize() {
  const cuda::DeviceGuard guard(ctx_->device);
  PHILORA_CUDA_CHECK(cudaStreamSynchronize(ctx_->stream));
}

Tensor CudaBackend::random_uniform(std::initializer_list<int64_t> shape, uint64_t seed, float mean,
                                   float half_width) {
  const cuda::DeviceGuard guard(ctx_->device);
  Tensor t = device_tensor(DType::bf16, shape);
  cuda::launch_random_uniform(t.data, t.numel(), seed, mean, half_width, ctx_->stream);
  return t;
}

// ---- ops --------------------------------------------------------------------------

Tensor CudaBackend::embedding(const Tensor& ids, const Tensor& table) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(ids, DType::i32, "embedding", "ids");
  require(table, DType::bf16, "embedding", "table");
  Tensor out = device_tensor(DType::bf16, {ids.numel(), table.cols()});
  cuda::launch_gather_rows(table.data, ids.ptr<int32_t>(), out.data, ids.numel(), table.cols(), ctx_->stream);
  return out;
}

Tensor CudaBackend::rms_norm(const Tensor& x, const Tensor& w, float eps) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(x, DType::bf16, "rms_norm", "x");
  require(w, DType::bf16, "rms_norm", "w");
  Tensor y = device_tensor(DType::bf16, {x.rows(), x.cols()});
  if (knocked("rms_norm")) return y;
  cuda::launch_rms_norm(x.data, nullptr, w.data, y.data, nullptr, x.rows(), x.cols(), eps, ctx_->stream);
  return y;
}

std::pair<Tensor, Tensor> CudaBackend::add_rms_norm(const Tensor& h, const Tensor& residual,
                                                    const Tensor& w, float eps) {
  const cuda::DeviceGuard guard(ctx_->device);
  if (residual.empty()) return {rms_norm(h, w, eps), h};
  require(h, DType::bf16, "add_rms_norm", "h");
  require(residual, DType::bf16, "add_rms_norm", "residual");
  require(w, DType::bf16, "add_rms_norm", "w");
  Tensor y = device_tensor(DType::bf16, {h.rows(), h.cols()});
  Tensor sum = device_tensor(DType::bf16, {h.rows(), h.cols()});
  cuda::launch_rms_norm(h.data, residual.data, w.data, y.data, sum.data, h.rows(), h.cols(), eps,
                        ctx_->stream);
  return {y, sum};
}

Tensor CudaBackend::matmul(const Tensor& x, const Tensor& w) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(x, DType::bf16, "matmul", "x");
  require(w, DType::bf16, "matmul", "w");
  const int64_t m = x.rows(), k = x.cols(), n = w.dim(0);
  if (w.cols() < k)
    throw std::runtime_error("cuda backend: matmul: x " + x.shape_str() + " and w " + w.shape_str() +
                             " disagree on the inner dimension");
  Tensor y = device_tensor(DType::bf16, {m, n});
  if (m == 0 || n == 0 || knocked("gemm")) return y;
  if (k == 0) {
    PHILORA_CUDA_CHECK(cudaMemsetAsync(y.data, 0, y.nbytes(), ctx_->stream));
    return y;
  }
  ctx_->matmul->run(x.data, w.data, y.data, m, n, k, 1.0f, 0.0f, w.cols());
  return y;
}

void CudaBackend::rope_and_cache(Tensor& qkv, const TokenPlan& tokens, const RopeParams& rope,
                                 KvLayer& kv) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(qkv, DType::bf16, "rope_and_cache", "qkv");
  require(kv.k, DType::bf16, "rope_and_cache", "the K cache");
  require(kv.v, DType::bf16, "rope_and_cache", "the V cache");
  require(tokens.positions, DType::i32, "rope_and_cache", "positions");
  require(tokens.kv_locs, DType::i32, "rope_and_cache", "kv_locs");
  require(tokens.rope_long, DType::i32, "rope_and_cache", "rope_long");
  require(rope.inv_freq_short, DType::f32, "rope_and_cache", "inv_freq_short");
  require(rope.inv_freq_long, DType::f32, "rope_and_cache", "inv_freq_long");
  cuda::RopeCacheArgs a;
  a.qkv = qkv.data;
  a.width = qkv.cols();
  a.num_tokens = qkv.rows();
  a.positions = tokens.positions.ptr<int32_t>();
  a.kv_locs = tokens.kv_locs.ptr<int32_t>();
  a.rope_long = tokens.rope_long.ptr<int32_t>();
  a.inv_freq_short = rope.inv_freq_short.ptr<float>();
  a.inv_freq_long = rope.inv_freq_long.ptr<float>();
  a.attention_factor = rope.attention_factor;
  a.rotary_dim = rope.rotary_dim;
  a.n_heads = rope.n_heads;
  a.n_kv_heads = rope.n_kv_heads;
  a.head_dim = rope.head_dim;
  a.k_cache = kv.k.data;
  a.v_cache = kv.v.data;
  a.page_size = kv.page_size();
  if (knocked("rope")) return;
  cuda::launch_rope_and_cache(a, ctx_->stream);
}

constexpr int64_t kDecodeAttentionRows = 16;

Tensor CudaBackend::attention(const Tensor& qkv, const KvLayer& kv, const AttentionPlan& plan,
                              const RopeParams& shape) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(qkv, DType::bf16, "attention", "qkv");
  require(kv.k, DType::bf16, "attention", "the K cache");
  require(kv.v, DType::bf16, "attention", "the V cache");
  const int64_t rows = qkv.rows(), H = shape.n_heads, d = shape.head_dim;
  Tensor out = device_tensor(DType::bf16, {rows, H * d});
  if (rows == 0 || plan.num_seqs == 0 || knocked("attention")) return out;
  cuda::PagedAttentionArgs a;
  a.qkv = qkv.data;
  a.qkv_stride = qkv.cols();
  a.k_cache = kv.k.data;
  a.v_cache = kv.v.data;
  a.out = out.data;
  a.q_indptr = plan.q_indptr.ptr<int32_t>();
  a.kv_indptr = plan.kv_indptr.ptr<int32_t>();
  a.kv_indices = plan.kv_indices.ptr<int32_t>();
  a.kv_last_page_len = plan.kv_last_page_len.ptr<int32_t>();
  a.positions = plan.positions.ptr<int32_t>();
  a.num_seqs = int(plan.num_seqs);
  a.num_rows = int(rows);
  a.n_heads = int(H);
  a.n_kv_heads = int(shape.n_kv_heads);
  a.head_dim = int(d);
  a.page_size = int(kv.page_size());
  a.window = int(plan.window);
  a.scale = plan.scale;
  // Steps of a few rows per sequence (decode; verification of up to 15
  // drafts) take the decode kernels: split over the keys, one block per row
  // and KV head, the rows of one sequence reading its keys from L2. The
  // prefill kernel's 64-row tiles would compute mostly padding for them.
  const bool prefill = plan.max_q_len > kDecodeAttentionRows && cuda::prefill_attention_supported(int(d)) &&
                       a.qkv_stride % 8 == 0 && aligned16(qkv.data);
  if (prefill) {
    cuda::launch_prefill_attention(a, int(plan.max_q_len), ctx_->stream);
    return out;
  }
  const cuda::DecodeSplit split =
      cuda::plan_decode_attention(a, plan.max_kv_len, ctx_->props.multiProcessorCount);
  const size_t ws_bytes = cuda::decode_workspace_bytes(a, split);
  std::shared_ptr<void> ws = ws_bytes ? ctx_->allocator->allocate(ws_bytes) : nullptr;
  cuda::launch_decode_attention(a, split, ws.get(), ctx_->stream);
  return out;
}

void CudaBackend::matmul_add(const Tensor& x, const Tensor& w, Tensor& y) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(x, DType::bf16, "matmul_add", "x");
  require(w, DType::bf16, "matmul_add", "w");
  require(y, DType::bf16, "matmul_add", "y");
  const int64_t m = x.rows(), k = x.cols(), n = w.dim(0);
  if (w.cols() < k || y.rows() != m || y.cols() != n)
    throw std::runtime_error("cuda backend: matmul_add: x " + x.shape_str() + ", w " + w.shape_str() + ", y " +
                             y.shape_str() + " do not fit y += x · wᵀ");
  if (m == 0 || n == 0 || k == 0 || knocked("gemm")) return;
  ctx_->matmul->run(x.data, w.data, y.data, m, n, k, 1.0f, 1.0f, w.cols());
}

bool CudaBackend::gemv_with_prologue(const Tensor& src, const Prologue& p, const Tensor& w, Tensor& y,
                                     bool accumulate) {
  const int64_t m = src.rows(), n = w.dim(0);
  const int64_t in = p.kind == Prologue::Kind::silu_mul ? src.cols() / 2 : src.cols();
  if (w.cols() < in || y.rows() != m || y.cols() != n)
    throw std::runtime_error("cuda backend: matmul: x (" + std::to_string(m) + ", " + std::to_string(in) +
                             "), w " + w.shape_str() + ", y " + y.shape_str() + " do not fit y = x · wᵀ");
  if (!prologue_shape_ok(src, p, in) || knocked("fusion")) return false;
  if (m == 0 || n == 0 || knocked("gemm")) return true;
  return ctx_->matmul->run_fused(row_prologue(p), src.data, w.data, y.data, m, n, in, accumulate, w.cols());
}

Tensor CudaBackend::fused_matmul(const Tensor& src, const Prologue& p, const Tensor& w) {
  const cuda::DeviceGuard guard(ctx_->device);
  if (p.kind == Prologue::Kind::none) return matmul(src, w);
  if (src.rows() > cuda::kSkinnyGemvMaxM) return matmul(apply_prologue(src, p), w);  // cuBLASLt's
  require(src, DType::bf16, "matmul", "its source");
  require(w, DType::bf16, "matmul", "w");
  Tensor y = device_tensor(DType::bf16, {src.rows(), w.dim(0)});
  if (gemv_with_prologue(src, p, w, y, false)) return y;
  return matmul(apply_prologue(src, p), w);
}

void CudaBackend::fused_matmul_add(const Tensor& src, const Prologue& p, const Tensor& w, Tensor& y) {
  const cuda::DeviceGuard guard(ctx_->device);
  if (p.kind == Prologue::Kind::none) return matmul_add(src, w, y);
  require(src, DType::bf16, "matmul_add", "its source");
  require(w, DType::bf16, "matmul_add", "w");
  require(y, DType::bf16, "matmul_add", "y");
  if (gemv_with_prologue(src, p, w, y, true)) return;
  matmul_add(apply_prologue(src, p), w, y);
}

void CudaBackend::release_cached_memory() {
  const cuda::DeviceGuard guard(ctx_->device);
  PHILORA_CUDA_CHECK(cudaStreamSynchronize(ctx_->stream));  // queued ops may still use freed blocks
  ctx_->allocator->release_cached();
}

std::string CudaBackend::description() const {
  const cuda::DeviceGuard guard(ctx_->device);
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
    return name();
  return name() + " (" + prop.name + ")";
}

Expected<Backend::MemoryInfo> CudaBackend::memory_info() const {
  const cuda::DeviceGuard guard(ctx_->device);
  size_t free_b = 0, total_b = 0;
  const cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
  if (e != cudaSuccess) return Status::errorf("cudaMemGetInfo failed: {}", cudaGetErrorString(e));
  return MemoryInfo{int64_t(free_b), int64_t(total_b)};
}

void CudaBackend::write_columns(Tensor& dst, int64_t col, const Tensor& src, int64_t count) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(dst, DType::bf16, "write_columns", "dst");
  const int64_t n = src.empty() ? count : src.cols();
  if (!src.empty()) require(src, DType::bf16, "write_columns", "src");
  if (col < 0 || n < 0 || col + n > dst.cols() || (!src.empty() && src.rows() != dst.rows()))
    throw std::runtime_error("cuda backend: write_columns: " + std::to_string(n) + " columns at " +
                             std::to_string(col) + " of " + dst.shape_str() +
                             (src.empty() ? std::string() : " from " + src.shape_str()));
  if (n == 0 || dst.rows() == 0) return;
  const size_t pitch = size_t(dst.cols()) * 2, width = size_t(n) * 2;
  void* d = static_cast<char*>(dst.data) + size_t(col) * 2;
  if (src.empty())
    PHILORA_CUDA_CHECK(cudaMemset2DAsync(d, pitch, 0, width, size_t(dst.rows()), ctx_->stream));
  else
    PHILORA_CUDA_CHECK(cudaMemcpy2DAsync(d, pitch, src.data, width, width, size_t(dst.rows()),
                                         cudaMemcpyDeviceToDevice, ctx_->stream));
}

void CudaBackend::write_columns_batch(const std::vector<ColumnWrite>& writes) {
  const cuda::DeviceGuard guard(ctx_->device);
  std::vector<cuda::ColumnWriteDesc> descs;
  int64_t most = 0;
  for (const ColumnWrite& w : writes) {
    require(w.dst, DType::bf16, "write_columns_batch", "dst");
    const int64_t r = w.src.empty() ? 0 : w.src.cols();
    if (!w.src.empty()) require(w.src, DType::bf16, "write_columns_batch", "src");
    if (w.col < 0 || w.width < r || w.col + w.width > w.dst.cols() ||
        (!w.src.empty() && w.src.rows() != w.dst.rows()))
      throw std::runtime_error("cuda backend: write_columns_batch: " + std::to_string(w.width) +
                               " columns at " + std::to_string(w.col) + " of " +
                               w.dst.shape_str() +
                               (w.src.empty() ? std::string() : " from " + w.src.shape_str()));
    if (w.width == 0 || w.dst.rows() == 0) continue;
    cuda::ColumnWriteDesc d;
    d.dst = static_cast<char*>(w.dst.data) + size_t(w.col) * 2;
    d.src = r > 0 ? w.src.data : nullptr;
    d.ld = w.dst.cols();
    d.rows = w.dst.rows();
    d.rank = int32_t(r);
    d.width = int32_t(w.width);
    descs.push_back(d);
    most = std::max(most, d.rows * w.width);
  }
  if (descs.empty()) return;
  const size_t bytes = descs.size() * sizeof(cuda::ColumnWriteDesc);
  Tensor table = device_tensor(DType::i64, {int64_t((bytes + 7) / 8)});
  upload_into(table, descs.data(), bytes);
  cuda::launch_write_columns_batch(static_cast<const cuda::ColumnWriteDesc*>(table.data),
                                   int(descs.size()), most, ctx_->stream);
}

Tensor CudaBackend::silu_mul(const Tensor& gate_up) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(gate_up, DType::bf16, "silu_mul", "gate_up");
  const int64_t rows = gate_up.rows(), n = gate_up.cols() / 2;
  Tensor y = device_tensor(DType::bf16, {rows, n});
  if (knocked("silu")) return y;
  cuda::launch_silu_mul(gate_up.data, y.data, rows, n, ctx_->stream);
  return y;
}

Tensor CudaBackend::gather_rows(const Tensor& x, const Tensor& rows) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(x, DType::bf16, "gather_rows", "x");
  require(rows, DType::i32, "gather_rows", "rows");
  Tensor y = device_tensor(DType::bf16, {rows.numel(), x.cols()});
  cuda::launch_gather_rows(x.data, rows.ptr<int32_t>(), y.data, rows.numel(), x.cols(), ctx_->stream);
  return y;
}

Tensor CudaBackend::bias_silu_residual(const Tensor& h, const Tensor& bias, const Tensor& x) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(h, DType::bf16, "bias_silu_residual", "h");
  require(bias, DType::bf16, "bias_silu_residual", "bias");
  require(x, DType::bf16, "bias_silu_residual", "x");
  Tensor y = device_tensor(DType::bf16, {h.rows(), h.cols()});
  cuda::launch_bias_silu_residual(h.data, bias.data, x.data, y.data, h.rows(), h.cols(), ctx_->stream);
  return y;
}

Tensor CudaBackend::argmax_rows(const Tensor& x) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(x, DType::bf16, "argmax_rows", "x");
  Tensor y = device_tensor(DType::i32, {x.rows()});
  cuda::launch_argmax_rows(x.data, y.ptr<int32_t>(), x.rows(), x.cols(), ctx_->stream);
  return y;
}

// ---- LoRA ---------------------------------------------------------------------------

static cuda::LoraLaunch lora_launch(const LoraModuleTable& m, const LoraBatch& batch, int64_t tokens) {
  if (m.dtype != DType::bf16)
    throw std::runtime_error("cuda backend: LoRA tables must hold bf16 matrices (got " +
                             std::string(dtype_name(m.dtype)) + ")");
  require(m.a_ptrs, DType::i64, "lora", "a_ptrs");
  require(m.b_ptrs, DType::i64, "lora", "b_ptrs");
  require(m.ranks, DType::i32, "lora", "ranks");
  require(m.scales, DType::f32, "lora", "scales");
  cuda::LoraLaunch l;
  l.a_ptrs = m.a_ptrs.ptr<int64_t>();
  l.b_ptrs = m.b_ptrs.ptr<int64_t>();
  if (!m.b_ld.empty()) {
    require(m.b_ld, DType::i32, "lora", "b_ld");
    l.b_ld = m.b_ld.ptr<int32_t>();
  }
  l.ranks = m.ranks.ptr<int32_t>();
  l.scales = m.scales.ptr<float>();
  l.in_features = m.in_features;
  l.out_features = m.out_features;
  l.max_rank = m.max_rank;
  l.num_tokens = tokens;
  l.by_segment = cuda::lora_use_segments(tokens, batch.num_segments);
  if (l.by_segment) {
    require(batch.seg_indptr, DType::i32, "lora", "seg_indptr");
    require(batch.seg_slot, DType::i32, "lora", "seg_slot");
    l.seg_indptr = batch.seg_indptr.ptr<int32_t>();
    l.seg_slot = batch.seg_slot.ptr<int32_t>();
    l.num_segments = batch.num_segments;
  } else {
    require(batch.token_slot, DType::i32, "lora", "token_slot");
    l.token_slot = batch.token_slot.ptr<int32_t>();
  }
  return l;
}

Tensor CudaBackend::lora_shrink(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(x, DType::bf16, "lora_shrink", "x");
  const int64_t n = x.rows(), width = std::max<int64_t>(1, batch.max_rank);
  Tensor xa = device_tensor(DType::f32, {n, width});
  if (!batch.active || n == 0) {
    if (n) PHILORA_CUDA_CHECK(cudaMemsetAsync(xa.data, 0, xa.nbytes(), ctx_->stream));
    return xa;
  }
  if (x.cols() != m.in_features)
    throw std::runtime_error("cuda backend: lora_shrink: x " + x.shape_str() + " but the module takes " +
                             std::to_string(m.in_features) + " inputs");
  cuda::launch_lora_shrink(lora_launch(m, batch, n), x.data, xa.ptr<float>(), width,
                           ctx_->props.multiProcessorCount, ctx_->stream);
  return xa;
}

bool CudaBackend::lora_columns_supported(int64_t in_features) const {
  return cuda::lora_shrink_columns_supported(in_features);
}

Tensor CudaBackend::lora_shrink_columns(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(x, DType::bf16, "lora_shrink_columns", "x");
  const int64_t n = x.rows(), in = x.cols(), width = batch.lora_columns;
  if (in != m.in_features || width <= 0 || width > m.columns || m.col_offsets.empty())
    throw std::runtime_error("cuda backend: lora_shrink_columns: x " + x.shape_str() + ", " +
                             std::to_string(width) + " columns, for a module of " + std::to_string(m.in_features) +
                             " inputs and " + std::to_string(m.columns) + " LoRA columns");
  require(m.col_offsets, DType::i32, "lora_shrink_columns", "col_offsets");
  Tensor out = device_tensor(DType::bf16, {n, in + width});
  if (n == 0 || knocked("shrink")) return out;
  cuda::LoraLaunch l = lora_launch(m, batch, n);
  l.by_segment = false;  // per token, whatever the segments
  require(batch.token_slot, DType::i32, "lora", "token_slot");
  l.token_slot = batch.token_slot.ptr<int32_t>();
  cuda::launch_lora_shrink_columns(l, x.data, out.data, in + width, m.col_offsets.ptr<int32_t>(), width,
                                   ctx_->stream);
  return out;
}

void CudaBackend::lora_expand(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch,
                              Tensor& y, int64_t col_offset) {
  const cuda::DeviceGuard guard(ctx_->device);
  if (!batch.active || xa.rows() == 0) return;
  require(xa, DType::f32, "lora_expand", "xa");
  require(y, DType::bf16, "lora_expand", "y");
  if (col_offset + m.out_features > y.cols() || xa.rows() != y.rows())
    throw std::runtime_error("cuda backend: lora_expand: y " + y.shape_str() + " cannot take " +
                             std::to_string(m.out_features) + " columns at offset " +
                             std::to_string(col_offset) + " for xa " + xa.shape_str());
  cuda::launch_lora_expand(lora_launch(m, batch, xa.rows()), xa.ptr<float>(), xa.cols(), y.data, y.cols(),
                           col_offset, /*write=*/false, ctx_->stream);
}

Tensor CudaBackend::lora_delta(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch) {
  const cuda::DeviceGuard guard(ctx_->device);
  require(xa, DType::f32, "lora_delta", "xa");
  Tensor y = device_tensor(DType::bf16, {xa.rows(), m.out_features});
  if (y.numel() == 0) return y;
  if (!batch.active) {
    PHILORA_CUDA_CHECK(cudaMemsetAsync(y.data, 0, y.nbytes(), ctx_->stream));
    return y;
  }
  cuda::launch_lora_expand(lora_launch(m, batch, xa.rows()), xa.ptr<float>(), xa.cols(), y.data, y.cols(), 0,
                           /*write=*/true, ctx_->stream);
  return y;
}

}  // namespace philora
