#include "model/shard.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "backend/cpu/cpu_backend.h"

namespace philora::model {

Status check_tensor_parallel(const Phi3Config& c, int64_t n) {
  if (n < 1) return Status::errorf("tensor parallelism over {} ranks: at least 1", n);
  if (n == 1) return Status();
  const auto refuse = [&](const char* what, int64_t count, const char* rule) {
    return Status::errorf(
        "tensor parallelism over {} ranks: the model's {} is {}, which {} (config.json)", n, what,
        count, rule);
  };
  if (c.num_attention_heads % n != 0)
    return refuse("num_attention_heads", c.num_attention_heads,
                  "does not divide into that many ranks");
  const int64_t kv = c.num_key_value_heads;
  if (kv >= n ? kv % n != 0 : n % kv != 0)
    return Status::errorf(
        "tensor parallelism over {} ranks: the model's num_key_value_heads is {}, which neither "
        "divides into {} ranks nor divides {} (each rank holds whole kv heads; with fewer kv "
        "heads than ranks, each is replicated over an equal number of ranks) — num_attention_heads "
        "{}: take a rank count that divides both",
        n, kv, n, n, c.num_attention_heads);
  if (c.intermediate_size % n != 0)
    return refuse("intermediate_size", c.intermediate_size, "does not divide into that many ranks");
  if (c.vocab_size % n != 0)
    return refuse("vocab_size", c.vocab_size, "does not divide into that many ranks");
  return Status();
}

void require_tensor_parallel(const Phi3Config& c, int64_t n) {
  if (Status s = check_tensor_parallel(c, n); !s.ok()) throw std::invalid_argument(s.message());
}

Phi3Config shard_config(const Phi3Config& c, int64_t n) {
  Phi3Config s = c;
  s.num_attention_heads = c.num_attention_heads / n;
  s.num_key_value_heads = c.num_key_value_heads >= n ? c.num_key_value_heads / n : 1;
  s.intermediate_size = c.intermediate_size / n;
  s.vocab_size = c.vocab_size / n;
  return s;
}

HeadRange q_heads_of(const Phi3Config& c, TpShard s) {
  const int64_t per = c.num_attention_heads / s.world;
  return {s.rank * per, per};
}

HeadRange kv_heads_of(const Phi3Config& c, TpShard s) {
  const int64_t kv = c.num_key_value_heads;
  if (kv >= s.world) return {s.rank * (kv / s.world), kv / s.world};
  return {s.rank / (s.world / kv), 1};  // replicated over world / kv ranks
}

TensorSlice weight_slice(Split split, const std::vector<int64_t>& shape, const Phi3Config& c,
                         TpShard s) {
  TensorSlice t;
  if (s.world == 1 || split == Split::replicated || shape.size() != 2) return t;
  const int64_t n = s.world, r = s.rank;
  switch (split) {
    case Split::qkv_heads: {
      const int64_t d = c.head_dim, q = c.q_size(), kv = c.kv_size();
      const HeadRange qh = q_heads_of(c, s), kh = kv_heads_of(c, s);
      t.ranges = {{qh.first * d, (qh.first + qh.count) * d},
                  {q + kh.first * d, q + (kh.first + kh.count) * d},
                  {q + kv + kh.first * d, q + kv + (kh.first + kh.count) * d}};
      break;
    }
    case Split::gate_up: {
      const int64_t inter = shape[0] / 2, per = inter / n;
      t.ranges = {{r * per, (r + 1) * per}, {inter + r * per, inter + (r + 1) * per}};
      break;
    }
    case Split::row: {
      const int64_t per = shape[1] / n;
      t.dim = 1;
      t.ranges = {{r * per, (r + 1) * per}};
      break;
    }
    case Split::vocab: {
      const int64_t per = shape[0] / n;
      t.ranges = {{r * per, (r + 1) * per}};
      break;
    }
    case Split::replicated:
      break;
  }
  return t;
}

Tensor take_slice(const Tensor& host, const TensorSlice& s) {
  if (s.whole()) return host;
  if (host.ndim != 2 || host.device != Device::cpu)
    throw std::invalid_argument("take_slice: a host matrix, not " + host.shape_str());
  int64_t n = 0;
  for (const auto& [b, e] : s.ranges) {
    if (b < 0 || e < b || e > host.dim(s.dim))
      throw std::invalid_argument("take_slice: range [" + std::to_string(b) + ", " +
                                  std::to_string(e) + ") of " + host.shape_str());
    n += e - b;
  }
  const size_t es = dtype_size(host.dtype);
  const int64_t rows = host.dim(0), cols = host.dim(1);
  const auto* src = static_cast<const char*>(host.data);
  if (s.dim == 0) {
    Tensor out = host_alloc(host.dtype, {n, cols});
    char* dst = static_cast<char*>(out.data);
    for (const auto& [b, e] : s.ranges) {
      std::memcpy(dst, src + size_t(b * cols) * es, size_t((e - b) * cols) * es);
      dst += size_t((e - b) * cols) * es;
    }
    return out;
  }
  Tensor out = host_alloc(host.dtype, {rows, n});
  char* dst = static_cast<char*>(out.data);
  for (int64_t i = 0; i < rows; ++i)
    for (const auto& [b, e] : s.ranges) {
      std::memcpy(dst, src + size_t(i * cols + b) * es, size_t(e - b) * es);
      dst += size_t(e - b) * es;
    }
  return out;
}

Split lora_split(LoraTarget target) {
  switch (target) {
    case LoraTarget::qkv:
      return Split::qkv_heads;
    case LoraTarget::o:
    case LoraTarget::down:
      return Split::row;
    case LoraTarget::gate_up:
      return Split::gate_up;
    case LoraTarget::lm_head:
      return Split::vocab;
  }
  return Split::replicated;
}

std::pair<Tensor, Tensor> shard_lora(LoraTarget target, const Tensor& a, const Tensor& b,
                                     const Phi3Config& c, TpShard s) {
  if (s.world == 1) return {a, b};
  const Split split = lora_split(target);
  if (split == Split::row)  // A (r, in): the base weight's columns; B whole
    return {take_slice(a, weight_slice(split, {a.dim(0), a.dim(1)}, c, s)), b};
  // B (out, r): the base weight's rows; A whole
  return {a, take_slice(b, weight_slice(split, {b.dim(0), b.dim(1)}, c, s))};
}

}  // namespace philora::model
