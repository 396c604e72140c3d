// What the philora subcommands share: loading a model and its adapters onto a
// backend, and reading JSON-lines requests. Errors are returned; main() exits.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "backend/communicator.h"
#include "engine/engine.h"
#include "engine/offline.h"
#include "engine/request.h"
#include "io/safetensors.h"
#include "lora/slots.h"
#include "lora/store.h"
#include "model/phi3.h"

namespace philora::app {

struct ModelOptions {
  std::string model_dir;
  std::vector<std::string> adapters;  // NAME=DIR
  std::string device = "cpu";         // cpu, cuda or auto
  int64_t page_size = 16;
  bool enforce_eager = false;  // no step graphs
  bool prefix_cache = true;    // reuse the KV pages of cached prefixes (--no-prefix-cache: off)
  int64_t lora_columns = -1;   // LoRA columns a target weight; -1: lora::kColumnsPerSlot a slot
  // --speculate ngram[:K]: the most n-gram drafts a sequence verifies per step; 0: off.
  int64_t speculate_ngram = 0;
  // --speculate medusa[:K]: the most Medusa drafts (at most the heads' number); 0: off.
  int64_t speculate_medusa = 0;
  // --speculate-paths N: candidate chains a sequence verifies per step (tree speculation).
  int64_t speculate_paths = 1;
  // --speculate-row-cost C: one more verified row's cost relative to a step; negative: the
  // backend's.
  double speculate_row_cost = -1.0;
  // --medusa DIR: the base model's Medusa heads (LoRAX's layout); empty: the
  // model directory's medusa_lm_head.safetensors, when it has one.
  std::string medusa_dir;
  // --tensor-parallel N: the model split over N ranks (model/tensor_parallel.h).
  int64_t tensor_parallel = 1;
  // --simulate-ranks: on cuda, every rank on one GPU (backend/staged_communicator.h).
  bool simulate_ranks = false;
};

// Rank 1 .. n-1's backends for --tensor-parallel n beside rank 0's `main`
// (backend/tensor_parallel_group.h): on the CPU, CPU backends of their own
// (simulated ranks: threads of this process, collectives through a
// LoopbackGroup); on CUDA, GPUs 1 .. n-1 (collectives through NCCL), or with
// `simulate` backends of their own on main's GPU (collectives staged through
// host memory).
Expected<std::vector<std::unique_ptr<Backend>>> tensor_parallel_backends(const Backend& main,
                                                                         int64_t n,
                                                                         bool simulate = false);
// One communicator per rank of `backends` (rank 0 first), rank order: on the
// CPU a LoopbackGroup's, on CUDA NCCL's (simulated: host-staged).
Expected<std::vector<std::unique_ptr<Communicator>>> tensor_parallel_communicators(
    const std::vector<Backend*>& backends, bool simulate = false);
// The model split over the ranks of `backends` (rank 0 first), talking
// through tensor_parallel_communicators, and adapter slots split the same way.
struct TensorParallelModel {
  std::unique_ptr<model::Phi3ForCausalLM> model;
  std::unique_ptr<lora::AdapterSlots> slots;
};
Expected<TensorParallelModel> load_tensor_parallel_model(
    const io::TensorSet& tensors, const model::Phi3Config& config,
    const std::vector<Backend*>& backends, int num_slots, bool simulate = false,
    const std::function<void(int64_t done, int64_t total)>& progress = {});

// The speculation --speculate names: "ngram" / "medusa" / "ngram+medusa"
// (kDefaultNgramDrafts, kDefaultMedusaDrafts drafts) or "ngram:K" / "medusa:K"
// / "ngram+medusa:K" (1 ≤ K ≤ kMaxNgramDrafts); an error otherwise.
struct Speculation {
  bool ngram = false;
  bool medusa = false;  // both: n-gram lookup's chains first, the heads' where it finds none
  int64_t k = 0;
};
inline constexpr int64_t kDefaultNgramDrafts = 4;
inline constexpr int64_t kDefaultMedusaDrafts =
    4;  // LoRAX's --speculative-tokens: the heads' number
inline constexpr int64_t kMaxNgramDrafts = 16;
Expected<Speculation> parse_speculate(const std::string& spec);

// The Medusa heads of --speculate medusa: the base model's (--medusa DIR, else
// the model directory's when it holds medusa_lm_head.safetensors, its
// config.json then carrying medusa_num_heads / medusa_num_layers), and those
// of every adapter (NAME, DIR) whose directory holds
// medusa_lm_head.safetensors (LoRAX's Medusa and Medusa-LoRA adapters). Null
// without --speculate medusa; an error naming the file for heads that do not
// load or fit the model, or when there are no heads at all.
Expected<std::shared_ptr<const engine::MedusaSet>> load_medusa(
    const ModelOptions& o, const std::string& model_dir,
    const std::vector<std::pair<std::string, std::string>>& adapters,
    const model::Phi3Config& config, Backend& backend);

// --model (required unless `model_required` is false), --adapter, --device, ...
void add_model_options(CLI::App& cmd, ModelOptions& o, bool model_required = true);
void add_lora_columns_option(CLI::App& cmd, int64_t& columns);
// --simulate-ranks (with --tensor-parallel on cuda).
void add_simulate_ranks_option(CLI::App& cmd, bool& simulate);

// Widens the model's LoRA target weights and attaches the columns to the
// slots (before any adapter is assigned): `requested` < 0 means
// lora::columns_to_attach: lora::kColumnsPerSlot per slot (up to kColumnsMaxSlots), 0 none; rounded
// up to a multiple of 8.
void attach_lora_columns(model::Phi3ForCausalLM& model, lora::AdapterSlots& slots,
                         int64_t requested);

// A model with its adapters resident in slots 0..n-1 (in --adapter order),
// served through an adapter store that knows them by name.
struct LoadedModel {
  std::unique_ptr<Backend> backend;
  std::vector<std::unique_ptr<Backend>> peer_backends;  // --tensor-parallel: ranks 1 .. N-1
  std::unique_ptr<io::TensorSet>
      tensors;  // the mmap'd checkpoint (the store checks copies against it)
  std::unique_ptr<model::Phi3ForCausalLM> model;
  std::unique_ptr<lora::AdapterSlots> slots;
  std::unique_ptr<lora::AdapterStore> store;
  std::shared_ptr<const engine::MedusaSet> medusa;  // --speculate medusa's heads (load_medusa)
};

Expected<LoadedModel> load_model(const ModelOptions& o);

// The ids of a line's "prompt" text (`request` holds its input_ids, if any),
// or why the command takes none.
using PromptIds = std::function<Expected<std::vector<int32_t>>(const engine::Request& request,
                                                               const std::string& text)>;

// A command's own fields of a request line, read into the request after the
// common ones (`where` is FILE:LINE, for errors).
using LineFields = std::function<Status(const nlohmann::json& line, const std::string& where,
                                        engine::Request& request)>;

// The requests of a JSON-lines file: each line's id, input_ids (or "prompt",
// through `prompt_ids`), adapter, max_new_tokens and ignore_eos over
// `defaults` (ignore_eos: either), then `fields` (may be empty).
Expected<std::vector<engine::Request>> read_requests(const std::string& path,
                                                     const engine::Request& defaults,
                                                     const PromptIds& prompt_ids,
                                                     const LineFields& fields = {});

int fail(const Status& s);  // prints "philora: error: ..." to stderr, returns 1

}  // namespace philora::app
