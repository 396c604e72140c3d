// What the philora subcommands share: loading a model and its adapters onto a
// backend, and reading JSON-lines requests. Errors are returned; main() exits.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "backend/backend.h"
#include "engine/offline.h"
#include "io/safetensors.h"
#include "lora/slots.h"
#include "model/phi3.h"

namespace philora::app {

struct ModelOptions {
  std::string model_dir;
  std::vector<std::string> adapters;  // NAME=DIR
  std::string device = "cpu";  // cpu, cuda or auto
  int64_t page_size = 16;
  bool enforce_eager = false;  // no step graphs
  int64_t lora_columns = -1;   // LoRA columns a target weight; -1: kLoraColumnsPerSlot a slot
};

// Decode's one-matmul LoRA: this many columns of every target weight per
// adapter slot unless --lora-columns says otherwise (a rank-16 adapter each),
// for at most kLoraColumnsMaxSlots slots (1024 columns: 2.1 GB on Phi-3-mini).
inline constexpr int64_t kLoraColumnsPerSlot = 16;
inline constexpr int64_t kLoraColumnsMaxSlots = 64;

// --model (required unless `model_required` is false), --adapter, --device, ...
void add_model_options(CLI::App& cmd, ModelOptions& o, bool model_required = true);
void add_lora_columns_option(CLI::App& cmd, int64_t& columns);

// Widens the model's LoRA target weights and attaches the columns to the
// slots (before any adapter is assigned): `requested` < 0 means
// kLoraColumnsPerSlot per slot (up to kLoraColumnsMaxSlots), 0 none; rounded
// up to a multiple of 8.
void attach_lora_columns(model::Phi3ForCausalLM& model, lora::AdapterSlots& slots, int64_t requested);

// A model with its adapters resident in slots 0..n-1 (in --adapter order).
struct LoadedModel {
  std::unique_ptr<Backend> backend;
  io::TensorSet tensors;  // keeps the mmap'd checkpoint alive
  std::unique_ptr<model::Phi3ForCausalLM> model;
  std::unique_ptr<lora::AdapterSlots> slots;
  std::map<std::string, int32_t> adapter_slot;  // name -> slot
};

Expected<LoadedModel> load_model(const ModelOptions& o);

// One parsed line of a requests file.
struct RequestLine {
  std::string id;
  std::vector<int32_t> input_ids;
  std::optional<std::string> prompt;
  std::optional<std::string> adapter;
  std::optional<int64_t> max_new_tokens;
  bool ignore_eos = false;
};

Expected<std::vector<RequestLine>> read_requests(const std::string& path);

// Maps each line's adapter name to its slot (error for an unknown name).
Expected<std::vector<engine::OfflineRequest>> to_offline(const LoadedModel& m,
                                                         const std::vector<RequestLine>& lines);

int fail(const Status& s);  // prints "philora: error: ..." to stderr, returns 1

}  // namespace philora::app
