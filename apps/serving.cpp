#include "serving.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>

#include <fmt/format.h>

#include "backend/tensor_parallel_group.h"
#include "io/file.h"
#include "lora/adapter.h"
#include "model/config.h"
#include "model/weights.h"

#ifndef PHILORA_SOURCE_DIR
#define PHILORA_SOURCE_DIR ""
#endif

namespace philora::app {

namespace fs = std::filesystem;

namespace {

constexpr const char* kEmbeddedModel = "models/philora-tiny";
constexpr const char* kEmbeddedAdapters = "models/adapters";
constexpr const char* kEmbeddedMedusa = "medusa";  // beside the embedded model: models/medusa
constexpr int64_t kCpuKvDefaultCap = int64_t(1) << 30;  // 1 GiB
constexpr double kCpuKvDefaultShare = 0.10;

// Subdirectories of `dir` that hold an adapter_config.json, sorted.
std::vector<std::string> adapters_in(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_directory(ec) && io::is_regular_file((e.path() / "adapter_config.json").string()))
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return fmt::format("{:.{}f} {}", b, u == 0 ? 0 : 1, units[u]);
}

// Pages for the KV cache: the explicit count, or the memory rule of ServingOptions.
Expected<int64_t> kv_pages(const ServingOptions& o, Backend& b, const model::Phi3Config& c,
                           std::string& rule) {
  const int64_t page = o.model.page_size;
  const int64_t elem = dtype_size(b.compute_dtype());
  // Tensor parallelism: a rank holds its kv heads (replicated below N). The
  // CPU's simulated ranks share this memory (every rank's pools); a GPU holds
  // its own rank's only (each GPU is as full as rank 0's).
  const int64_t n = o.model.tensor_parallel;
  const int64_t kv_heads =
      model::shard_config(c, n).num_key_value_heads * (b.device() == Device::cpu ? n : 1);
  const int64_t page_bytes = c.num_hidden_layers * 2 * kv_heads * page * c.head_dim * elem;
  const int64_t useful_tokens = o.max_running * c.max_position_embeddings;
  if (o.kv_tokens) {
    rule = "--kv-tokens";
    return (*o.kv_tokens + page - 1) / page;
  }
  PHILORA_ASSIGN_OR_RETURN(Backend::MemoryInfo mem, b.memory_info());
  int64_t budget = 0;
  if (b.device() == Device::cpu) {
    budget = o.kv_cache_memory.value_or(std::min<int64_t>(
        int64_t(kCpuKvDefaultShare * double(mem.free_bytes)), kCpuKvDefaultCap));
    rule = o.kv_cache_memory ? fmt::format("--kv-cache-memory {}", human_bytes(double(budget)))
                             : fmt::format("{} of RAM: 10% of {} available, at most 1 GiB",
                                           human_bytes(double(budget)), human_bytes(double(mem.free_bytes)));
  } else {
    // What the weights and adapter columns took is already gone from `free`;
    // keep (1 - utilization) of the card for activations, graphs and others.
    const int64_t used = mem.total_bytes - mem.free_bytes;
    budget = int64_t(o.gpu_memory_utilization * double(mem.total_bytes)) - used;
    rule = fmt::format("{:.0f}% of {} less {} in use", o.gpu_memory_utilization * 100,
                       human_bytes(double(mem.total_bytes)), human_bytes(double(used)));
    if (o.kv_cache_memory) {
      budget = std::min(budget, *o.kv_cache_memory);
      rule += fmt::format(", at most --kv-cache-memory {}", human_bytes(double(*o.kv_cache_memory)));
    }
  }
  int64_t pages = budget / page_bytes;
  if (pages * page > useful_tokens) {
    pages = (useful_tokens + page - 1) / page;
    rule += fmt::format("; capped at --max-running {} × {} positions", o.max_running,
                        c.max_position_embeddings);
  }
  if (pages < 1)
    return Status::errorf("no memory left for the KV cache ({}); lower the model's footprint or "
                          "give --kv-tokens / --kv-cache-memory",
                          rule);
  return pages;
}

}  // namespace

void add_serving_options(CLI::App& cmd, ServingOptions& o) {
  o.model.device = "auto";
  add_model_options(cmd, o.model, /*model_required=*/false);
  cmd.add_option("--adapter-dir", o.adapter_dir,
                 "directory of PEFT adapters, loaded by name on demand (default with the embedded "
                 "model: its adapters)");
  cmd.add_option("--tokenizer", o.tokenizer, "tokenizer.json (default: the model dir's)");
  cmd.add_option("--served-model-name", o.served_model_name,
                 "the name clients give the base model (OpenAI's `model`, /v1/models, /info, the "
                 "metrics' model_name; default: the model directory's name)");
  cmd.add_option("--kv-tokens", o.kv_tokens, "KV cache size in tokens (default: from memory)")
      ->check(CLI::Range(int64_t(16), int64_t(1) << 30));
  cmd.add_option("--gpu-memory-utilization", o.gpu_memory_utilization,
                 "share of the GPU's memory philora may use; the KV cache takes what the weights "
                 "leave of it")
      ->check(CLI::Range(0.05, 0.99));
  cmd.add_option("--kv-cache-memory", o.kv_cache_memory,
                 "bytes for the KV cache (CPU default: 10% of available RAM, at most 1 GiB; "
                 "CUDA: an upper bound)")
      ->check(CLI::Range(int64_t(1) << 16, int64_t(1) << 50));
  cmd.add_option("--max-batched-tokens", o.max_batched_tokens, "token budget of one step")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd.add_option("--max-running", o.max_running, "sequences in flight")->check(CLI::Range(1, 4096));
  cmd.add_option("--max-loras,--adapter-slots", o.adapter_slots,
                 "adapters resident on the device at once (device slots)")
      ->check(CLI::Range(1, 4096));
  cmd.add_option("--max-cpu-adapter-memory", o.max_cpu_adapter_memory,
                 "memory for adapters kept parsed on the host (f32), least recently used dropped "
                 "first, e.g. 2GiB (default 4GiB)")
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(int64_t(1), int64_t(1) << 50));
  cmd.add_option("--max-lora-rank", o.max_lora_rank,
                 "largest LoRA rank served: an adapter of a larger rank is refused at load "
                 "(default: any)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd.add_option("--preload", o.preload,
                 "adapters (by name) loaded onto the device at start; a bad one stops the start")
      ->expected(1, -1);
}

Expected<std::string> embedded_model_dir() {
  std::vector<std::string> tried;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& base : {exe.parent_path().parent_path(), exe.parent_path()})
      tried.push_back((base / kEmbeddedModel).string());
  }
  if (*PHILORA_SOURCE_DIR) tried.push_back((fs::path(PHILORA_SOURCE_DIR) / kEmbeddedModel).string());
  // In this order (beside the binary first), each place once.
  std::vector<std::string> places;
  for (const std::string& t : tried) {
    const std::string p = fs::weakly_canonical(t, ec).string();
    if (!ec && std::find(places.begin(), places.end(), p) == places.end()) places.push_back(p);
  }
  tried = places;
  for (const std::string& dir : tried)
    if (io::is_regular_file(io::join_path(dir, "config.json"))) return dir;
  std::string where;
  for (const std::string& t : tried) where += (where.empty() ? "" : ", ") + t;
  return Status::errorf("no --model given and the embedded model is not at {}", where);
}

Expected<std::unique_ptr<Serving>> open_serving(const ServingOptions& o, const Progress& progress) {
  auto s = std::make_unique<Serving>();
  auto report = [&](const std::string& stage, int64_t done, int64_t total) {
    if (progress) progress(stage, done, total);
  };
  // However this returns, the progress display ends ("ready" clears it).
  struct EndProgress {
    const Progress& p;
    ~EndProgress() {
      if (p) p("ready", 0, 0);
    }
  } end_progress{progress};
  std::string adapter_dir = o.adapter_dir;
  s->model_dir = o.model.model_dir;
  if (s->model_dir.empty()) {
    PHILORA_ASSIGN_OR_RETURN(s->model_dir, embedded_model_dir());
    if (adapter_dir.empty() && o.model.adapters.empty()) {
      const fs::path dir = fs::path(s->model_dir).parent_path().parent_path() / kEmbeddedAdapters;
      if (fs::is_directory(dir)) adapter_dir = dir.string();
    }
  }
  s->model_name = fs::path(s->model_dir).lexically_normal().filename().string();
  if (s->model_name.empty()) s->model_name = fs::path(s->model_dir).parent_path().filename().string();
  if (!o.served_model_name.empty()) s->model_name = o.served_model_name;

  report("device", 0, 0);
  // --device cuda --tensor-parallel N: NCCL and N GPUs, or an error naming them first.
  if (o.model.device == "cuda")
    PHILORA_RETURN_IF_ERROR(
        tensor_parallel_available("cuda", o.model.tensor_parallel, o.model.simulate_ranks));
  PHILORA_ASSIGN_OR_RETURN(s->backend, make_backend(o.model.device));
  Backend& b = *s->backend;
  s->device_name = b.description();

  PHILORA_ASSIGN_OR_RETURN(model::Phi3Config config, model::load_config(s->model_dir));
  PHILORA_ASSIGN_OR_RETURN(s->tensors, io::TensorSet::open_model_dir(s->model_dir));
  const auto weights_progress = [&](int64_t done, int64_t total) {
    report("weights", done, total);
  };
  if (o.model.tensor_parallel > 1) {  // simulated ranks on the cpu; GPUs 0 .. N-1 on cuda
    PHILORA_ASSIGN_OR_RETURN(s->peer_backends,
                             tensor_parallel_backends(b, o.model.tensor_parallel, o.model.simulate_ranks));
    std::vector<Backend*> backends = {&b};
    for (const auto& peer : s->peer_backends) backends.push_back(peer.get());
    PHILORA_ASSIGN_OR_RETURN(TensorParallelModel tp,
                             load_tensor_parallel_model(s->tensors, config, backends,
                                                        o.adapter_slots, o.model.simulate_ranks,
                                                        weights_progress));
    s->model = std::move(tp.model);
    s->slots = std::move(tp.slots);
  } else {
    PHILORA_ASSIGN_OR_RETURN(model::Phi3Weights weights,
                             model::load_weights(s->tensors, config, b, weights_progress));
    s->model = std::make_unique<model::Phi3ForCausalLM>(std::move(config), std::move(weights), b);
    s->slots = std::make_unique<lora::AdapterSlots>(b, s->model->config(), o.adapter_slots);
  }
  const model::Phi3Config& c = s->model->config();

  report("tokenizer", 0, 0);
  const std::string tok_file =
      o.tokenizer.empty() ? io::join_path(s->model_dir, "tokenizer.json") : o.tokenizer;
  if (!o.tokenizer.empty() || io::is_regular_file(tok_file)) {
    PHILORA_ASSIGN_OR_RETURN(s->tokenizer, o.tokenizer.empty()
                                               ? tokenizer::Tokenizer::from_model_dir(s->model_dir)
                                               : tokenizer::Tokenizer::from_file(o.tokenizer));
  }
  if (io::is_regular_file(io::join_path(s->model_dir, "tokenizer_config.json")) ||
      io::is_regular_file(io::join_path(s->model_dir, "chat_template.jinja"))) {
    auto t = tokenizer::ChatTemplate::from_model_dir(s->model_dir);
    if (t.ok())
      s->chat_template = std::make_shared<tokenizer::ChatTemplate>(std::move(*t));
    else if (t.status().message().find("no chat template") == std::string::npos)
      std::cerr << "philora: no chat: " << t.status().message() << "\n";
  }

  report("adapters", 0, 0);
  lora::StoreOptions store_options;
  store_options.adapter_dir = adapter_dir;
  s->adapter_dir = adapter_dir;
  store_options.host_capacity = std::numeric_limits<int64_t>::max();  // bounded by bytes
  store_options.base_checkpoint = &s->tensors;
  store_options.host_memory_bytes = o.max_cpu_adapter_memory;
  store_options.max_rank = o.max_lora_rank;
  s->store = std::make_unique<lora::AdapterStore>(c, *s->slots, std::move(store_options));
  for (const std::string& spec : o.model.adapters) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      return Status::errorf("--adapter '{}': expected NAME=DIR", spec);
    const std::string name = spec.substr(0, eq), dir = spec.substr(eq + 1);
    if (std::find(s->adapters.begin(), s->adapters.end(), name) != s->adapters.end())
      return Status::errorf("--adapter: name '{}' given twice", name);
    // Parsed once now so that a bad adapter fails at start, not at the first request.
    PHILORA_ASSIGN_OR_RETURN(const lora::Adapter parsed,
                             lora::load_adapter(name, dir, c, &s->tensors));
    if (o.max_lora_rank > 0 && parsed.max_rank > o.max_lora_rank)
      return Status::errorf("--adapter {}: rank {} is above --max-lora-rank {}", name,
                            parsed.max_rank, o.max_lora_rank);
    s->store->register_dir(name, dir);
    s->adapters.push_back(name);
    s->named_adapters.push_back(name);
  }
  std::vector<std::pair<std::string, std::string>> adapter_dirs;  // NAME, DIR (Medusa heads)
  for (const std::string& spec : o.model.adapters) {
    const size_t eq = spec.find('=');
    adapter_dirs.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
  }
  if (!adapter_dir.empty())
    for (const std::string& name : adapters_in(adapter_dir))
      if (std::find(s->adapters.begin(), s->adapters.end(), name) == s->adapters.end()) {
        s->adapters.push_back(name);
        adapter_dirs.emplace_back(name, (fs::path(adapter_dir) / name).string());
      }
  report("medusa", 0, 0);
  ModelOptions medusa_options = o.model;  // the embedded model's heads are models/medusa
  if (o.model.model_dir.empty() && medusa_options.medusa_dir.empty() &&
      o.model.speculate_medusa > 0) {
    const fs::path heads = fs::path(s->model_dir).parent_path() / kEmbeddedMedusa;
    if (io::is_regular_file((heads / "medusa_lm_head.safetensors").string()))
      medusa_options.medusa_dir = heads.string();
  }
  PHILORA_ASSIGN_OR_RETURN(s->medusa,
                           load_medusa(medusa_options, s->model_dir, adapter_dirs, c, b));
  if (!adapter_dir.empty() || !o.model.adapters.empty())  // else no adapter can ever load
    attach_lora_columns(*s->model, *s->slots, o.model.lora_columns);
  if (int64_t(o.preload.size()) > o.adapter_slots)
    return Status::errorf("--preload names {} adapters, more than the {} device slots (--max-loras)",
                          o.preload.size(), o.adapter_slots);
  for (const std::string& name : o.preload) {
    report("adapter " + name, 0, 0);
    if (Status st = s->store->preload(name); !st.ok())
      return Status::errorf("--preload {}: {}", name, st.message());
  }

  report("kv cache", 0, 0);
  b.release_cached_memory();  // blocks the allocator keeps would count as used
  PHILORA_ASSIGN_OR_RETURN(const int64_t pages, kv_pages(o, b, c, s->kv_rule));
  s->kv = std::make_unique<kv::KvCache>(s->model->make_kv_cache(pages, o.model.page_size));
  s->kv_tokens = pages * o.model.page_size;
  // With the tokenizer the engine detokenizes and matches stop strings itself.
  s->engine = std::make_unique<engine::Engine>(
      *s->model, *s->kv, s->store.get(),
      engine::EngineConfig{o.max_batched_tokens, o.max_running, !o.model.enforce_eager,
                           o.model.prefix_cache, /*count_rows=*/0, o.model.speculate_ngram,
                           o.model.speculate_medusa, s->medusa, o.model.speculate_paths,
                           engine::EngineConfig().speculate_max_batch, o.model.speculate_row_cost},
      s->tokenizer.get());
  return s;
}

Progress terminal_progress() {
  if (!isatty(STDERR_FILENO)) return {};
  return [](const std::string& stage, int64_t done, int64_t total) {
    if (stage == "ready") {
      std::fputs("\r\033[K", stderr);
    } else if (total > 0) {
      constexpr int kWidth = 30;
      const int fill = int(double(done) / double(total) * kWidth);
      std::fprintf(stderr, "\r\033[Kphilora: loading %s [%s%s] %3d%% %s", stage.c_str(),
                   std::string(size_t(fill), '#').c_str(), std::string(size_t(kWidth - fill), ' ').c_str(),
                   int(100 * done / total), human_bytes(double(done)).c_str());
    } else {
      std::fprintf(stderr, "\r\033[Kphilora: loading %s…", stage.c_str());
    }
    std::fflush(stderr);
  };
}

}  // namespace philora::app
