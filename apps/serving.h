// What `serve` and `chat` share: the model on its device, its tokenizer and
// chat template, the adapter store, a KV cache sized from the memory left,
// and the continuous-batching engine over them. Without --model, the embedded
// model under models/ and its adapters.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "backend/backend.h"
#include "common.h"
#include "engine/engine.h"
#include "io/safetensors.h"
#include "kv/kv_cache.h"
#include "lora/slots.h"
#include "lora/store.h"
#include "model/phi3.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace philora::app {

struct ServingOptions {
  ModelOptions model;       // model_dir empty: the embedded model
  std::string adapter_dir;  // empty with the embedded model: its adapters
  std::string tokenizer;    // tokenizer.json; empty: the model dir's, when it has one
  std::string served_model_name;  // what clients call the base model; empty: the directory's name
  // KV cache: an explicit token count, else a share of the memory left after
  // the weights (CUDA: --gpu-memory-utilization of the card; CPU:
  // --kv-cache-memory bytes, default min(10% of available RAM, 1 GiB)). Never
  // more than every running sequence at the model's full context needs.
  std::optional<int64_t> kv_tokens;
  double gpu_memory_utilization = 0.9;
  std::optional<int64_t> kv_cache_memory;
  int64_t max_batched_tokens = 2048;
  int64_t max_running = 256;
  int adapter_slots = 16;  // --max-loras (--adapter-slots): adapters resident on the device
  // Host tier of the adapter store: bytes of parsed adapters (f32) kept in memory.
  int64_t max_cpu_adapter_memory = int64_t(4) << 30;
  int64_t max_lora_rank = 0;         // 0: any rank
  std::vector<std::string> preload;  // adapters made resident at start
};

// Registers the options above (and the model options, --model optional) on `cmd`.
void add_serving_options(CLI::App& cmd, ServingOptions& o);

struct Serving {
  std::unique_ptr<Backend> backend;
  std::vector<std::unique_ptr<Backend>> peer_backends;  // --tensor-parallel: ranks 1 .. N-1
  io::TensorSet tensors;  // keeps the mmap'd checkpoint alive
  std::unique_ptr<model::Phi3ForCausalLM> model;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;            // null: token-id prompts only
  std::shared_ptr<tokenizer::ChatTemplate> chat_template;     // null: no chat
  std::unique_ptr<lora::AdapterSlots> slots;
  std::unique_ptr<lora::AdapterStore> store;
  std::unique_ptr<kv::KvCache> kv;
  std::unique_ptr<engine::Engine> engine;
  std::shared_ptr<const engine::MedusaSet> medusa;  // --speculate medusa's heads

  std::string model_dir;
  std::string model_name;             // what clients call the base model (--served-model-name)
  std::vector<std::string> adapters;  // names known at start (--adapter, then --adapter-dir's)
  std::vector<std::string> named_adapters;  // --adapter NAME=DIR's names
  std::string adapter_dir;  // --adapter-dir (the embedded model's adapters by default); empty: none
  int64_t kv_tokens = 0;
  std::string kv_rule;      // how the KV size was chosen, for the ready line
  std::string device_name;  // e.g. "cuda (NVIDIA H100 80GB HBM3)" or "cpu (2 threads)"
};

// Loads everything; `progress` (may be empty) hears each stage and the
// weights' bytes as they upload.
using Progress = std::function<void(const std::string& stage, int64_t done, int64_t total)>;
Expected<std::unique_ptr<Serving>> open_serving(const ServingOptions& o, const Progress& progress);

// The embedded model's directory (models/philora-tiny beside the binary's
// build directory or in the source tree), or an error saying where it looked.
Expected<std::string> embedded_model_dir();

// A progress bar on stderr when it is a terminal; nothing otherwise.
Progress terminal_progress();

}  // namespace philora::app
