// PEFT LoRA adapters as PEFT saves them: adapter_config.json +
// adapter_model.safetensors. Semantics (PEFT LoraLayer, nn.Linear base):
//   y = W x + scale · B (A x),   A: (r, in),  B: (out, r)
//   scale = alpha / r, or alpha / sqrt(r) with use_rslora,
// where r and alpha come from rank_pattern / alpha_pattern when a pattern
// matches the module's name, else from `r` / `lora_alpha`.
#pragma once

#include <array>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "backend/backend.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace philora::lora {

// The modules LoRA can target (backend.h's LoraTarget: the forward's order).
using Target = LoraTarget;
inline constexpr int kLayerTargets = kLoraLayerTargets;
const char* target_module_name(Target t);  // "qkv_proj", ... "lm_head"

struct AdapterConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  bool fan_in_fan_out = false;  // PEFT forces it off for nn.Linear; we do too
  // Either a list of module names (matched as a name suffix) or one regex
  // (matched against the full module name), exactly as PEFT does.
  // "all-linear" becomes the list {qkv_proj, o_proj, gate_up_proj, down_proj}.
  std::vector<std::string> target_modules;
  std::optional<std::string> target_modules_regex;
  std::map<std::string, int64_t> rank_pattern;  // regex key -> r
  std::map<std::string, double> alpha_pattern;  // regex key -> alpha
  std::string base_model_name_or_path;
  // PEFT takes the FIRST pattern key (in file order) that matches, so the order
  // of the keys of rank_pattern / alpha_pattern in adapter_config.json is kept.
  std::vector<std::string> rank_pattern_order;   // [rank_pattern.size()]
  std::vector<std::string> alpha_pattern_order;  // [alpha_pattern.size()]
  // Only these layer indices (list form of target_modules only); empty = all.
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> layers_pattern;  // regexes naming the layer list; empty = any
  // Modules never adapted: a list (exact name or suffix) or one regex (full match).
  std::vector<std::string> exclude_modules;
  std::optional<std::string> exclude_modules_regex;
};

// One LoRA pair on one module, as host tensors (f32 or bf16: load_adapter's host_dtype).
struct LoraModule {
  Tensor a;  // (rank, in_features) host
  Tensor b;  // (out_features, rank) host
  int64_t rank = 0;
  float scale = 0;  // alpha / rank, or alpha / sqrt(rank) with use_rslora
};

struct Adapter {
  std::string name;
  std::string dir;
  AdapterConfig config;
  std::vector<std::array<std::optional<LoraModule>, kLayerTargets>> layers;  // [num_layers]
  std::optional<LoraModule> lm_head;
  int64_t max_rank = 0;
  // A hash of everything that decides its deltas (each module's layer,
  // target, rank, scale, A and B), set by load_adapter: the prefix cache keys
  // pages by it, so that another adapter loaded under the same name never
  // finds the old one's pages.
  uint64_t content_hash = 0;
  // A packed adapter (pack()): every module's A lies in packed_a and every B
  // in packed_b (1-d, the modules' dtype), the modules' tensors views of them,
  // so that a backend uploads the adapter in two copies. Empty otherwise.
  Tensor packed_a, packed_b;

  std::optional<LoraModule>& module(int64_t layer, Target t) {
    return t == Target::lm_head ? lm_head : layers[size_t(layer)][size_t(t)];
  }
  const std::optional<LoraModule>& module(int64_t layer, Target t) const {
    return t == Target::lm_head ? lm_head : layers[size_t(layer)][size_t(t)];
  }
};

// The shapes LoRA takes on a module of the base model: A is (rank, in), B is (out, rank).
struct ModuleDims {
  int64_t in = 0;   // columns of A
  int64_t out = 0;  // rows of B
};
ModuleDims module_dims(const model::Phi3Config& c, Target t);

// Parses adapter_config.json text (`origin` names the file in errors). Refuses
// what changes the math beyond plain LoRA: DoRA, modules_to_save, bias != "none",
// lora_bias, layer_replication, trainable tokens, a peft_type other than LORA.
// Every regex (target_modules string, exclude_modules string, pattern keys,
// layers_pattern) is compiled here, so a bad one fails at parse time.
Expected<AdapterConfig> parse_adapter_config(const std::string& json_text,
                                             const std::string& origin);

// The module's full name in Phi3ForCausalLM, as PEFT matches it:
// "model.layers.3.self_attn.qkv_proj", "model.layers.3.mlp.down_proj", "lm_head".
std::string module_full_name(int64_t layer, Target t);
// Whether PEFT would put LoRA on the module `full_name` (of layer `layer`, -1
// for lm_head): exclude_modules, then target_modules, then layers_to_transform,
// as peft.tuners.tuners_utils.check_target_module_exists does.
bool targets_module(const AdapterConfig& config, const std::string& full_name);
// r and alpha of the module `full_name`: the value of the first key K of
// rank_pattern / alpha_pattern for which full_name matches `(.*\.)?(K)$`,
// else r / lora_alpha (PEFT get_pattern_key).
int64_t module_rank(const AdapterConfig& config, const std::string& full_name);
double module_alpha(const AdapterConfig& config, const std::string& full_name);

// Loads DIR/adapter_config.json + DIR/adapter_model.safetensors and checks
// every tensor against the base model's shapes. A and B are kept on the host
// in `host_dtype`: f32 (the CPU backend's compute dtype), or bf16 (CUDA's:
// half the host memory, and an upload that is a plain copy); F16 / BF16 / F32
// files convert to it (through f32, where non-finite values are refused).
//
// PEFT also saves the base weight of a targeted embedding layer (lm_head)
// into the adapter file by default (`base_model.model.lm_head.base_layer.weight`)
// and loads it back over the model's. philora applies every adapter over one
// shared base, so such a copy is accepted when it equals `base_checkpoint`'s
// tensor of that name and refused with a message when it differs (when
// `base_checkpoint` is null, it is not checked).
Expected<Adapter> load_adapter(const std::string& name, const std::string& dir,
                               const model::Phi3Config& base,
                               const io::TensorSet* base_checkpoint = nullptr,
                               DType host_dtype = DType::f32);

// The adapter with every module's A and B in `dtype` (f32 or bf16; bf16
// rounds to nearest even); content_hash recomputed; not packed.
Adapter with_host_dtype(const Adapter& adapter, DType dtype);

// The dtype every module's A and B share; nullopt when they differ (or there
// are no modules).
std::optional<DType> modules_dtype(const Adapter& adapter);

// Host memory of `n` elements of a dtype (e.g. Backend::pinned_host).
using HostAllocator = std::function<Tensor(DType dtype, int64_t n)>;

// The adapter packed (Adapter::packed_a / packed_b) into two blocks from
// `alloc`: modules in order (layer by layer in Target order, then lm_head),
// each tensor at a multiple of kPackAlignment bytes. The values, the modules
// and content_hash are the adapter's. Fails when A and B do not share one dtype.
inline constexpr size_t kPackAlignment = 256;
Expected<Adapter> pack(const Adapter& adapter, const HostAllocator& alloc);

}  // namespace philora::lora
