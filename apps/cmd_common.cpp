#include <algorithm>
#include <charconv>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "backend/tensor_parallel_group.h"
#include "common.h"
#include "io/file.h"
#include "lora/adapter.h"
#include "model/config.h"
#include "model/medusa.h"
#include "model/tensor_parallel.h"
#include "model/weights.h"

namespace philora::app {

void add_model_options(CLI::App& cmd, ModelOptions& o, bool model_required) {
  auto* model = cmd.add_option("--model", o.model_dir,
                               model_required ? "HF model directory (config.json + safetensors)"
                                              : "HF model directory (default: the embedded model)");
  if (model_required) model->required();
  cmd.add_option("--adapter", o.adapters, "PEFT adapter as NAME=DIR (repeatable)");
  cmd.add_option("--device", o.device, "cpu, cuda, or auto (cuda when there is a GPU)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd.add_option("--page-size", o.page_size, "KV cache page size in tokens")
      ->check(CLI::Range(1, 1024));
  cmd.add_flag("--enforce-eager", o.enforce_eager, "run every step op by op (no CUDA step graphs)");
  cmd.add_flag("!--no-prefix-cache", o.prefix_cache,
               "compute every prompt in full (default: a request reuses the KV pages of a prefix "
               "that an earlier request with the same adapter computed)");
  add_lora_columns_option(cmd, o.lora_columns);
  cmd.add_option("--tensor-parallel", o.tensor_parallel,
                 "split the model over N ranks (q, k, v heads and gate / up split per rank, "
                 "o_proj and down_proj row parallel, lm_head by vocabulary); on the cpu the "
                 "ranks are simulated in this process; on cuda one GPU a rank (GPUs 0 .. N-1), "
                 "collectives through NCCL (libnccl.so.2, loaded at run time)")
      ->check(CLI::Range(1, 64));
  add_simulate_ranks_option(cmd, o.simulate_ranks);
  cmd.add_option_function<std::string>(
         "--speculate",
         [&o](const std::string& spec) {
           const Speculation sp = *parse_speculate(spec);
           o.speculate_ngram = sp.ngram ? sp.k : 0;
           o.speculate_medusa = sp.medusa ? sp.k : 0;
         },
         "speculative decoding: ngram[:K] drafts up to K tokens (default 4) per step from the "
         "sequence's own prompt and output (prompt lookup); medusa[:K] drafts up to K (default 4, "
         "at most the heads' number) with Medusa heads (--medusa, the model directory's, or an "
         "adapter's own); ngram+medusa[:K] the lookup's drafts where its last tokens recur, the "
         "heads' elsewhere; verified in the step: greedy output is unchanged, sampled output "
         "keeps its distribution; not for requests with penalties")
      ->check([](const std::string& spec) {
        const Expected<Speculation> k = parse_speculate(spec);
        return k.ok() ? std::string() : k.status().message();
      });
  cmd.add_option(
         "--speculate-paths", o.speculate_paths,
         "tree speculation: verify up to N candidate chains a sequence per step (with "
         "ngram, the continuations of other earlier occurrences of its last tokens), each "
         "sharing the sequence's KV pages, while the extra chains' acceptance pays for their "
         "rows (default 1: one chain)")
      ->check(CLI::Range(1, 16));
  cmd.add_option("--speculate-row-cost", o.speculate_row_cost,
                 "what one more verified row costs relative to a decode step, which sets how "
                 "many drafts and alternative chains a sequence verifies (default: the "
                 "backend's measured figure, 0.03 on cuda, 0.3 on the cpu; 0: always the most)")
      ->check(CLI::Range(0.0, 100.0));
  cmd.add_option("--medusa", o.medusa_dir,
                 "Medusa heads of the base model for --speculate medusa: a directory in LoRAX's "
                 "layout (config.json with medusa_num_heads / medusa_num_layers, "
                 "medusa_lm_head.safetensors); default: the model directory's, if it has them");
}

Expected<Speculation> parse_speculate(const std::string& spec) {
  const struct {
    const char* name;
    Speculation sp;
  } methods[] = {{"ngram", {true, false, kDefaultNgramDrafts}},
                 {"medusa", {false, true, kDefaultMedusaDrafts}},
                 {"ngram+medusa", {true, true, kDefaultMedusaDrafts}},
                 {"medusa+ngram", {true, true, kDefaultMedusaDrafts}}};
  for (const auto& [name_c, sp] : methods) {
    const std::string name = name_c;
    if (spec == name) return sp;
    if (spec.rfind(name + ":", 0) == 0) {
      const std::string k = spec.substr(name.size() + 1);
      int64_t v = 0;
      const auto [end, ec] = std::from_chars(k.data(), k.data() + k.size(), v);
      if (ec == std::errc() && end == k.data() + k.size() && v >= 1 && v <= kMaxNgramDrafts)
        return Speculation{sp.ngram, sp.medusa, v};
    }
  }
  return Status::errorf(
      "--speculate '{}': expected ngram, ngram:K, medusa, medusa:K, ngram+medusa or "
      "ngram+medusa:K with 1 <= K <= {}",
      spec, kMaxNgramDrafts);
}

Expected<std::shared_ptr<const engine::MedusaSet>> load_medusa(
    const ModelOptions& o, const std::string& model_dir,
    const std::vector<std::pair<std::string, std::string>>& adapters,
    const model::Phi3Config& config, Backend& backend) {
  if (o.speculate_medusa <= 0) {
    if (!o.medusa_dir.empty())
      return Status::errorf("--medusa {}: heads are for --speculate medusa[:K], which is not given",
                            o.medusa_dir);
    return std::shared_ptr<const engine::MedusaSet>();
  }
  auto set = std::make_shared<engine::MedusaSet>();
  const std::string base_dir =
      !o.medusa_dir.empty()                                                         ? o.medusa_dir
      : io::is_regular_file(io::join_path(model_dir, "medusa_lm_head.safetensors")) ? model_dir
                                                                                    : "";
  if (!base_dir.empty()) {
    auto heads = model::MedusaHeads::load(base_dir, config, backend);
    if (!heads.ok())
      return Status::errorf("Medusa heads of the base model: {}", heads.status().message());
    set->base = std::make_shared<const model::MedusaHeads>(std::move(*heads));
  }
  for (const auto& [name, dir] : adapters) {
    if (!io::is_regular_file(io::join_path(dir, "medusa_lm_head.safetensors"))) continue;
    auto heads = model::MedusaHeads::load(dir, config, backend);
    if (!heads.ok())
      return Status::errorf("Medusa heads of adapter '{}': {}", name, heads.status().message());
    set->adapters[name] = std::make_shared<const model::MedusaHeads>(std::move(*heads));
  }
  if (!set->base && set->adapters.empty())
    return Status::errorf(
        "--speculate medusa: no Medusa heads (give --medusa DIR, or put "
        "medusa_lm_head.safetensors and its config in {} or in an adapter's directory)",
        model_dir);
  return std::shared_ptr<const engine::MedusaSet>(std::move(set));
}

void add_simulate_ranks_option(CLI::App& cmd, bool& simulate) {
  cmd.add_flag("--simulate-ranks", simulate,
               "with --tensor-parallel on cuda: run every rank on one GPU, each a backend of its "
               "own, collectives copied through host memory (to check the split model's results "
               "where there are fewer GPUs than ranks; slow, no step graphs); on the cpu, whose "
               "ranks are simulated anyway, the collectives take the same host-copy path");
}

void add_lora_columns_option(CLI::App& cmd, int64_t& columns) {
  cmd.add_option(
         "--lora-columns", columns,
         "columns of every LoRA target weight kept for resident adapters' B, so that steps of "
         "up to 256 tokens apply LoRA inside the base matmul (0: off; default: 16 per adapter "
         "slot, at most 1024; bench: the rank, rounded up to 8, per adapter)")
      ->check(CLI::Range(int64_t(-1), int64_t(1) << 20));
}

void attach_lora_columns(model::Phi3ForCausalLM& model, lora::AdapterSlots& slots,
                         int64_t requested) {
  const int64_t columns = lora::columns_to_attach(requested, slots.num_slots());
  if (columns == 0) return;
  if (!model.lora_columns_supported()) {
    std::cerr << "philora: LoRA columns off: the " << model.backend().name()
              << " backend's columns shrink does not take this model's sizes; LoRA stays in its "
                 "own kernels\n";
    return;
  }
  slots.attach_columns(model.widen_for_lora(columns), columns);
  model.backend().release_cached_memory();  // the narrow weights' blocks
}

Expected<std::vector<std::unique_ptr<Backend>>> tensor_parallel_backends(const Backend& main,
                                                                         int64_t n, bool simulate) {
  return make_rank_backends(main, n, simulate);
}

Expected<std::vector<std::unique_ptr<Communicator>>> tensor_parallel_communicators(
    const std::vector<Backend*>& backends, bool simulate) {
  return make_rank_communicators(backends, simulate);
}

Expected<TensorParallelModel> load_tensor_parallel_model(
    const io::TensorSet& tensors, const model::Phi3Config& config,
    const std::vector<Backend*>& backends, int num_slots, bool simulate,
    const std::function<void(int64_t, int64_t)>& progress) {
  TensorParallelModel m;
  PHILORA_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<Communicator>> comms,
                           tensor_parallel_communicators(backends, simulate));
  PHILORA_ASSIGN_OR_RETURN(
      m.model, model::load_tensor_parallel(tensors, config, backends, std::move(comms), progress));
  m.slots = std::make_unique<lora::AdapterSlots>(backends, config, num_slots);
  return m;
}

Expected<LoadedModel> load_model(const ModelOptions& o) {
  std::vector<std::pair<std::string, std::string>> adapters;  // NAME, DIR
  for (const std::string& spec : o.adapters) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      return Status::errorf("--adapter '{}': expected NAME=DIR", spec);
    const std::string name = spec.substr(0, eq);
    for (const auto& a : adapters)
      if (a.first == name) return Status::errorf("--adapter: name '{}' given twice", name);
    adapters.emplace_back(name, spec.substr(eq + 1));
  }
  LoadedModel m;
  // --device cuda --tensor-parallel N: NCCL and N GPUs, or an error naming them first.
  if (o.device == "cuda")
    PHILORA_RETURN_IF_ERROR(tensor_parallel_available("cuda", o.tensor_parallel, o.simulate_ranks));
  PHILORA_ASSIGN_OR_RETURN(m.backend, make_backend(o.device));
  PHILORA_ASSIGN_OR_RETURN(model::Phi3Config config, model::load_config(o.model_dir));
  PHILORA_ASSIGN_OR_RETURN(io::TensorSet tensors, io::TensorSet::open_model_dir(o.model_dir));
  m.tensors = std::make_unique<io::TensorSet>(std::move(tensors));
  const int num_slots = std::max<int>(1, int(adapters.size()));
  if (o.tensor_parallel > 1) {
    PHILORA_ASSIGN_OR_RETURN(
        m.peer_backends, tensor_parallel_backends(*m.backend, o.tensor_parallel, o.simulate_ranks));
    std::vector<Backend*> backends = {m.backend.get()};
    for (const auto& b : m.peer_backends) backends.push_back(b.get());
    PHILORA_ASSIGN_OR_RETURN(
        TensorParallelModel tp,
        load_tensor_parallel_model(*m.tensors, config, backends, num_slots, o.simulate_ranks));
    m.model = std::move(tp.model);
    m.slots = std::move(tp.slots);
  } else {
    PHILORA_ASSIGN_OR_RETURN(model::Phi3Weights weights,
                             model::load_weights(*m.tensors, config, *m.backend));
    m.slots = std::make_unique<lora::AdapterSlots>(*m.backend, config, num_slots);
    m.model =
        std::make_unique<model::Phi3ForCausalLM>(std::move(config), std::move(weights), *m.backend);
  }
  if (!adapters.empty()) attach_lora_columns(*m.model, *m.slots, o.lora_columns);
  lora::StoreOptions store_options;
  store_options.host_capacity = std::max<int64_t>(64, num_slots);
  store_options.base_checkpoint = m.tensors.get();
  m.store =
      std::make_unique<lora::AdapterStore>(m.model->config(), *m.slots, std::move(store_options));
  for (const auto& [name, dir] : adapters) {  // into slots 0..n-1, in order
    m.store->register_dir(name, dir);
    PHILORA_RETURN_IF_ERROR(m.store->preload(name));
  }
  PHILORA_ASSIGN_OR_RETURN(m.medusa,
                           load_medusa(o, o.model_dir, adapters, m.model->config(), *m.backend));
  return m;
}

namespace {

// One line of a requests file (`where`: FILE:LINE, for errors).
Expected<engine::Request> parse_request(const nlohmann::json& j, const std::string& where,
                                        const engine::Request& defaults,
                                        const PromptIds& prompt_ids, const LineFields& fields) {
  if (j.is_discarded() || !j.is_object()) return Status::errorf("{}: not a JSON object", where);
  engine::Request r = defaults;
  if (!j.contains("id")) return Status::errorf("{}: missing \"id\"", where);
  r.id = j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump();
  if (j.contains("input_ids")) {
    if (!j["input_ids"].is_array())
      return Status::errorf("{}: \"input_ids\" must be an array", where);
    for (const auto& v : j["input_ids"]) {
      if (!v.is_number_integer())
        return Status::errorf("{}: \"input_ids\" must hold integers", where);
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id > INT32_MAX)
        return Status::errorf("{}: token id {} out of range", where, id);
      r.prompt.push_back(int32_t(id));
    }
  }
  std::optional<std::string> text;
  if (j.contains("prompt") && !j["prompt"].is_null()) {
    if (!j["prompt"].is_string()) return Status::errorf("{}: \"prompt\" must be a string", where);
    text = j["prompt"].get<std::string>();
  }
  if (!j.contains("input_ids") && !text)
    return Status::errorf("{}: needs \"input_ids\" (or \"prompt\")", where);
  if (j.contains("adapter") && !j["adapter"].is_null()) {
    if (!j["adapter"].is_string())
      return Status::errorf("{}: \"adapter\" must be a string or null", where);
    r.adapter = j["adapter"].get<std::string>();
  }
  if (j.contains("max_new_tokens")) {
    if (!j["max_new_tokens"].is_number_integer() || j["max_new_tokens"].get<int64_t>() < 0)
      return Status::errorf("{}: \"max_new_tokens\" must be a non-negative integer", where);
    r.max_new_tokens = j["max_new_tokens"].get<int64_t>();
  }
  if (j.contains("ignore_eos") && j["ignore_eos"].is_boolean())
    r.ignore_eos = r.ignore_eos || j["ignore_eos"].get<bool>();
  if (text) {
    PHILORA_ASSIGN_OR_RETURN(r.prompt, prompt_ids(r, *text));
  }
  if (fields) PHILORA_RETURN_IF_ERROR(fields(j, where, r));
  return r;
}

}  // namespace

Expected<std::vector<engine::Request>> read_requests(const std::string& path,
                                                     const engine::Request& defaults,
                                                     const PromptIds& prompt_ids,
                                                     const LineFields& fields) {
  std::ifstream in(path);
  if (!in) return Status::errorf("cannot open requests file '{}'", path);
  std::vector<engine::Request> requests;
  std::string text;
  for (int64_t n = 1; std::getline(in, text); ++n) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    PHILORA_ASSIGN_OR_RETURN(engine::Request r, parse_request(j, path + ":" + std::to_string(n),
                                                              defaults, prompt_ids, fields));
    requests.push_back(std::move(r));
  }
  if (requests.empty()) return Status::errorf("requests file '{}' holds no requests", path);
  return requests;
}

int fail(const Status& s) {
  std::cerr << "philora: error: " << s.message() << "\n";
  return 1;
}

}  // namespace philora::app
