#include "model/medusa.h"

#include <set>

#include <nlohmann/json.hpp>

#include "io/file.h"
#include "io/safetensors.h"

namespace philora::model {

namespace {

using json = nlohmann::json;

// A positive integer field of config.json.
Expected<int64_t> positive(const json& j, const char* key, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end()) return Status::errorf("{}: missing required field '{}'", origin, key);
  if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > 64)
    return Status::errorf("{}: field '{}' must be an integer from 1 to 64, found {}", origin, key,
                          it->dump());
  return it->get<int64_t>();
}

}  // namespace

Expected<MedusaHeads> MedusaHeads::load(const std::string& dir, const Phi3Config& config,
                                        Backend& backend) {
  const std::string config_path = io::join_path(dir, "config.json");
  auto text = io::read_text_file(config_path);
  if (!text.ok()) return text.status();
  json j;
  try {
    j = json::parse(*text);
  } catch (const json::exception& e) {
    return Status::errorf("{}: not valid JSON: {}", config_path, e.what());
  }
  if (!j.is_object()) return Status::errorf("{}: expected a JSON object", config_path);
  auto k = positive(j, "medusa_num_heads", config_path);
  if (!k.ok()) return k.status();
  auto l = positive(j, "medusa_num_layers", config_path);
  if (!l.ok()) return l.status();

  const std::string weights_path = io::join_path(dir, "medusa_lm_head.safetensors");
  if (!io::is_regular_file(weights_path)) {
    if (io::is_regular_file(io::join_path(dir, "medusa_lm_head.pt")))
      return Status::errorf(
          "{}: only medusa_lm_head.pt (a pickle) is there; convert it to "
          "medusa_lm_head.safetensors",
          dir);
    return Status::errorf("{}: file not found", weights_path);
  }
  auto file = io::TensorSet::open_file(weights_path);
  if (!file.ok()) return file.status();
  const std::string prefix =
      file->find("0.0.linear.weight") == nullptr && file->find("medusa_head.0.0.linear.weight")
          ? "medusa_head."
          : "";
  std::set<std::string> used;
  const int64_t hidden = config.hidden_size, vocab = config.vocab_size;
  auto take = [&](const std::string& name, std::vector<int64_t> shape,
                  bool required) -> Expected<Tensor> {
    const io::TensorEntry* e = file->find(prefix + name);
    if (!e) {
      if (!required) return Tensor();
      return Status::errorf("{}: missing tensor '{}'", weights_path, prefix + name);
    }
    const Tensor& v = e->view;
    if (v.dtype != DType::f32 && v.dtype != DType::f16 && v.dtype != DType::bf16)
      return Status::errorf("{}: tensor '{}' has dtype {}, expected F32, F16 or BF16",
                            weights_path, e->name, dtype_name(v.dtype));
    bool same = v.ndim == int(shape.size());
    for (int d = 0; same && d < v.ndim; ++d) same = v.dim(d) == shape[size_t(d)];
    if (!same) {
      std::string want = "(";
      for (size_t d = 0; d < shape.size(); ++d) want += (d ? ", " : "") + std::to_string(shape[d]);
      want += ")";
      return Status::errorf("{}: tensor '{}' has shape {}, expected {} for this model",
                            weights_path, e->name, v.shape_str(), want);
    }
    used.insert(e->name);
    return backend.upload(v, backend.compute_dtype());
  };

  MedusaHeads m;
  for (int64_t i = 0; i < *k; ++i) {
    MedusaHead h;
    const std::string p = std::to_string(i) + ".";
    for (int64_t b = 0; b < *l; ++b) {
      const std::string q = p + std::to_string(b) + ".linear.";
      auto w = take(q + "weight", {hidden, hidden}, true);
      if (!w.ok()) return w.status();
      auto bias = take(q + "bias", {hidden}, true);
      if (!bias.ok()) return bias.status();
      h.weight.push_back(*w);
      h.bias.push_back(*bias);
    }
    auto out = take(p + std::to_string(*l) + ".weight", {vocab, hidden}, false);
    if (!out.ok()) return out.status();
    h.out = *out;
    if (i > 0 && h.out.empty() != m.heads_[0].out.empty())
      return Status::errorf(
          "{}: head 0 {} an output matrix but head {} {} (every head has one, or none)",
          weights_path, m.heads_[0].out.empty() ? "has no" : "has", i,
          h.out.empty() ? "has none" : "has one");
    m.heads_.push_back(std::move(h));
  }
  if (m.heads_[0].out.empty() && *l != 1)
    return Status::errorf(
        "{}: heads without their own output matrix (which use the model's lm_head) "
        "must have one block (medusa_num_layers = 1), found {}",
        weights_path, *l);
  for (const std::string& name : file->names())
    if (!used.count(name))
      return Status::errorf(
          "{}: unexpected tensor '{}' for {} heads of {} blocks (medusa_num_heads, "
          "medusa_num_layers in config.json)",
          weights_path, name, *k, *l);
  return m;
}

Tensor MedusaHeads::blocks(Backend& ops, const Tensor& hidden, int64_t i) const {
  const MedusaHead& h = heads_[size_t(i)];
  Tensor x = hidden;
  for (size_t b = 0; b < h.weight.size(); ++b)
    x = ops.bias_silu_residual(ops.matmul(x, h.weight[b]), h.bias[b], x);
  return x;
}

Tensor MedusaHeads::logits(Backend& ops, const Tensor& hidden, const Tensor& lm_head,
                           int64_t i) const {
  const MedusaHead& h = heads_[size_t(i)];
  return ops.matmul(blocks(ops, hidden, i), h.out.empty() ? lm_head : h.out);
}

std::vector<int32_t> MedusaHeads::draft(Backend& ops, const Tensor& hidden,
                                        const Tensor& lm_head) const {
  const int64_t rows = hidden.rows(), n = hidden.cols(), k = num_heads();
  std::vector<int32_t> out(size_t(rows * k));
  if (rows == 0) return out;
  if (!own_output()) {
    // Every head's x side by side, (R, K · hidden) = (R · K, hidden) row-major:
    // one product with the shared lm_head, one argmax, one download.
    Tensor stacked = ops.alloc(ops.compute_dtype(), {rows, k * n});
    for (int64_t i = 0; i < k; ++i) ops.write_columns(stacked, i * n, blocks(ops, hidden, i));
    return ops.download_i32(ops.argmax_rows(ops.matmul(stacked.reshape({rows * k, n}), lm_head)));
  }
  for (int64_t i = 0; i < k; ++i) {
    const std::vector<int32_t> t = ops.download_i32(ops.argmax_rows(logits(ops, hidden, lm_head, i)));
    for (int64_t r = 0; r < rows; ++r) out[size_t(r * k + i)] = t[size_t(r)];
  }
  return out;
}

Tensor MedusaHeads::step_logits(Backend& ops, const Tensor& hidden, const Tensor& lm_head) const {
  const int64_t rows = hidden.rows(), n = hidden.cols(), k = num_heads();
  if (!own_output()) {  // (R, K · hidden) = (R · K, hidden), then the shared lm_head once
    Tensor stacked = ops.alloc(ops.compute_dtype(), {rows, k * n});
    for (int64_t i = 0; i < k; ++i) ops.write_columns(stacked, i * n, blocks(ops, hidden, i));
    return ops.matmul(stacked.reshape({rows * k, n}), lm_head);
  }
  const int64_t vocab = heads_[0].out.rows();
  Tensor out = ops.alloc(ops.compute_dtype(), {rows, k * vocab});  // (R, K · vocab)
  for (int64_t i = 0; i < k; ++i) ops.write_columns(out, i * vocab, logits(ops, hidden, lm_head, i));
  return out.reshape({rows * k, vocab});
}

}  // namespace philora::model
