// philora bench --workload: a replayable serving workload through the engine (cmd_bench_workload.cpp).
#pragma once

#include <cstdint>
#include <string>

#include "backend/backend.h"
#include "core/status.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace philora::app {

struct WorkloadOptions {
  std::string workload;    // "poisson"
  std::string device = "cpu";
  std::string model_dir;   // empty: the Phi-3-mini shape with random weights
  int64_t layers = 32;     // of the random model
  double rate = 4;         // requests per second (Poisson arrivals)
  // > 0: instead of `rate`, the rate that keeps about this many sequences running, calibrated
  // before the run (printed, so that --rate with it replays the run).
  int64_t running = 0;
  double duration = 60;    // seconds during which requests arrive
  uint64_t seed = 0;
  int64_t adapters = 100;  // synthetic adapters; 0: every request on the base model
  double zipf_alpha = 1.0;
  int64_t lora_rank = 16;
  int64_t prompt_len = 256, prompt_spread = 128;  // uniform in [len - spread, len + spread]
  int64_t output_len = 128, output_spread = 64;
  int64_t max_loras = 16;            // device slots
  int64_t lora_columns = -1;         // as --lora-columns
  int64_t max_running = 256;
  int64_t max_batched_tokens = 2048;
  int64_t kv_tokens = 65536;
  bool enforce_eager = false;
};

// Runs the workload and prints its report (a table, then a one-line summary); returns the
// exit code.
int run_workload(const WorkloadOptions& o);

// The model a bench runs (both benches, cmd_bench.cpp): MODEL_DIR's config and
// checkpoint, or with MODEL_DIR empty the Phi-3-mini shape with `layers`
// layers and no checkpoint.
struct BenchCheckpoint {
  model::Phi3Config config;
  io::TensorSet tensors;  // the uploaded weights may point into it: keep it while they live
};
Expected<BenchCheckpoint> open_bench_checkpoint(const std::string& model_dir, int64_t layers);
// Its weights on `b`: the checkpoint's, or random ones (seed 1234) without one;
// with `shard`, that rank's part of them.
Expected<model::Phi3Weights> bench_weights(const BenchCheckpoint& m, bool random, Backend& b,
                                           model::TpShard shard = {});

}  // namespace philora::app
