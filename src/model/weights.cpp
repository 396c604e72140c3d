#include "model/weights.h"

#include <map>
#include <set>

#include "backend/cpu/cpu_backend.h"

namespace philora::model {

std::vector<WeightSpec> weight_specs(const Phi3Config& c) {
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  std::vector<WeightSpec> specs;
  // The embedding stays whole on every rank (a lookup, no all-reduce); a tied
  // lm_head takes its vocabulary rows from it.
  specs.push_back({"model.embed_tokens.weight",
                   {c.vocab_size, h},
                   Split::replicated,
                   &Phi3Weights::embed_tokens});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto add = [&](std::string name, std::vector<int64_t> shape, Split split,
                   Tensor Phi3LayerWeights::*field) {
      specs.push_back({p + name, std::move(shape), split, nullptr, field, l});
    };
    add("input_layernorm.weight", {h}, Split::replicated, &Phi3LayerWeights::input_layernorm);
    add("self_attn.qkv_proj.weight", {c.qkv_size(), h}, Split::qkv_heads,
        &Phi3LayerWeights::qkv_proj);
    add("self_attn.o_proj.weight", {h, c.q_size()}, Split::row, &Phi3LayerWeights::o_proj);
    add("post_attention_layernorm.weight", {h}, Split::replicated,
        &Phi3LayerWeights::post_attention_layernorm);
    add("mlp.gate_up_proj.weight", {2 * inter, h}, Split::gate_up, &Phi3LayerWeights::gate_up_proj);
    add("mlp.down_proj.weight", {h, inter}, Split::row, &Phi3LayerWeights::down_proj);
  }
  specs.push_back({"model.norm.weight", {h}, Split::replicated, &Phi3Weights::norm});
  if (!c.tie_word_embeddings)
    specs.push_back({"lm_head.weight", {c.vocab_size, h}, Split::vocab, &Phi3Weights::lm_head});
  return specs;
}

static Tensor& slot(Phi3Weights& w, const WeightSpec& spec) {
  return spec.top ? w.*spec.top : w.layers[size_t(spec.layer)].*spec.field;
}

static bool ignorable(const std::string& name, const Phi3Config& c) {
  // Older exports carry the rotary buffer; a tied checkpoint may carry lm_head too.
  if (name.size() > 20 && name.ends_with("rotary_emb.inv_freq")) return true;
  return c.tie_word_embeddings && name == "lm_head.weight";
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

// Rank shard.rank's part of a tensor of the checkpoint (or of a random one).
static Tensor part(const Tensor& host, const WeightSpec& spec, const Phi3Config& config,
                   TpShard shard) {
  return take_slice(host, weight_slice(spec.split, spec.shape, config, shard));
}

// A tied lm_head: the rank's vocabulary rows of the whole embedding (a view).
static Tensor tied_lm_head(const Tensor& embed, const Phi3Config& config, TpShard shard) {
  const TensorSlice s =
      weight_slice(Split::vocab, {config.vocab_size, config.hidden_size}, config, shard);
  return s.whole() ? embed : embed.row_slice(s.ranges[0].first, s.ranges[0].second);
}

Expected<Phi3Weights> load_weights(const io::TensorSet& tensors, const Phi3Config& config,
                                   Backend& backend,
                                   const std::function<void(int64_t, int64_t)>& progress,
                                   TpShard shard) {
  PHILORA_RETURN_IF_ERROR(check_tensor_parallel(config, shard.world));
  Phi3Weights w;
  w.layers.resize(size_t(config.num_hidden_layers));
  std::set<std::string> expected;
  int64_t total = 0, done = 0;
  const std::vector<WeightSpec> specs = weight_specs(config);
  for (const WeightSpec& spec : specs)
    if (const io::TensorEntry* e = tensors.find(spec.name)) total += e->view.nbytes();
  for (const WeightSpec& spec : specs) {
    expected.insert(spec.name);
    const io::TensorEntry* e = tensors.find(spec.name);
    if (!e)
      return Status::errorf("checkpoint is missing tensor '{}' (expected shape {})", spec.name,
                            shape_str(spec.shape));
    const Tensor& v = e->view;
    if (v.dtype != DType::f32 && v.dtype != DType::f16 && v.dtype != DType::bf16)
      return Status::errorf("{}: tensor '{}' has dtype {}, expected F32, F16 or BF16", e->file,
                            spec.name, dtype_name(v.dtype));
    bool same = v.ndim == int(spec.shape.size());
    for (int i = 0; same && i < v.ndim; ++i) same = v.shape[size_t(i)] == spec.shape[size_t(i)];
    if (!same)
      return Status::errorf("{}: tensor '{}' has shape {}, expected {} (from config.json)", e->file,
                            spec.name, v.shape_str(), shape_str(spec.shape));
    slot(w, spec) = backend.upload(part(v, spec, config, shard), backend.compute_dtype());
    done += v.nbytes();
    if (progress) progress(done, total);
  }
  for (const std::string& name : tensors.names()) {
    if (!expected.count(name) && !ignorable(name, config))
      return Status::errorf(
          "checkpoint has unexpected tensor '{}' (in {}): not part of Phi3ForCausalLM with this "
          "config",
          name, tensors.find(name)->file);
  }
  if (config.tie_word_embeddings) w.lm_head = tied_lm_head(w.embed_tokens, config, shard);
  return w;
}

Phi3Weights random_weights(const Phi3Config& config, Backend& backend, uint64_t seed, float std,
                           TpShard shard) {
  require_tensor_parallel(config, shard.world);
  Phi3Weights w;
  w.layers.resize(size_t(config.num_hidden_layers));
  const float half_width = std * 1.7320508f;  // uniform with this std
  uint64_t index = 0;
  for (const WeightSpec& spec : weight_specs(config)) {
    Tensor t = spec.shape.size() == 1
                   ? backend.random_uniform({spec.shape[0]}, seed + index, 1.0f, 0.1f)
                   : backend.random_uniform({spec.shape[0], spec.shape[1]}, seed + index, 0.0f,
                                            half_width);
    if (shard.world > 1)
      t = backend.upload(part(backend.to_host_f32(t), spec, config, shard),
                         backend.compute_dtype());
    slot(w, spec) = t;
    index += 0x1000;
  }
  if (config.tie_word_embeddings) w.lm_head = tied_lm_head(w.embed_tokens, config, shard);
  return w;
}

}  // namespace philora::model
