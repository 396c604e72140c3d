// A tensor is a view: pointer, dtype, shape and the device that holds it.
// Storage is row-major and contiguous. A tensor may share ownership of its
// storage (op results, uploaded weights) or borrow it (mmap'd checkpoints).
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"

namespace philora {

enum class Device : uint8_t { cpu, cuda };

inline const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

struct Tensor {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::shared_ptr<void> storage;  // keeps `data` alive when owned; null when borrowed

  Tensor() = default;
  Tensor(void* p, DType t, std::initializer_list<int64_t> dims, Device dev = Device::cpu)
      : data(p), dtype(t), device(dev) {
    for (int64_t d : dims) shape[size_t(ndim++)] = d;
  }

  bool empty() const { return data == nullptr; }
  int64_t dim(int i) const { return shape[size_t(i < 0 ? ndim + i : i)]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[size_t(i)];
    return n;
  }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  // Rows and columns of the tensor seen as a matrix (last dim = columns).
  int64_t rows() const { return ndim == 0 ? 1 : numel() / shape[size_t(ndim - 1)]; }
  int64_t cols() const { return ndim == 0 ? 1 : shape[size_t(ndim - 1)]; }

  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }

  // A view of rows [begin, end) of the tensor seen as a matrix; shares storage.
  Tensor row_slice(int64_t begin, int64_t end) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + size_t(begin * cols()) * dtype_size(dtype);
    t.ndim = 2;
    t.shape = {end - begin, cols(), 0, 0};
    return t;
  }
  // The same storage seen with another shape of equal element count.
  Tensor reshape(std::initializer_list<int64_t> dims) const {
    Tensor t = *this;
    t.ndim = 0;
    for (int64_t d : dims) t.shape[size_t(t.ndim++)] = d;
    return t;
  }

  std::string shape_str() const {
    std::string s = "(";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[size_t(i)]);
    return s + ")";
  }
};

}  // namespace philora
