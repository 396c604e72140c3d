#!/usr/bin/env bash
# The one script the GPU machine runs (through the device tool), after
# tests/gpu/prepare.sh built everything here and filled .carry/:
#   run(command="bash tests/gpu/run.sh", carry=[".carry"])
# Steps (each logs to $OUT/<step>.log; a summary is printed last):
#   1. the card, the driver, and whether the carried binaries find their libraries
#   2. the op harness on CUDA: every case vs the CPU backend, and the CUDA-only bit-exactness
#      checks (philora_op_tests)
#   3. the golden HF fixtures through `philora score/generate --device cuda` (graphs and
#      --enforce-eager) and the engine's schedules on the GPU, with and without step graphs
#      (philora_model_tests with PHILORA_TEST_DEVICE=cuda), when tests/data/golden exists, and
#      the Medusa heads inside CUDA steps and graphs against their eager drafts (StepHeads)
#   4. dev/cuda's op_bench (per-op times at Phi-3-mini shapes), unless PHILORA_GPU_SKIP_OP_BENCH=1
#   5. `philora bench --device cuda`, unless PHILORA_GPU_SKIP_BENCH=1
# Extra arguments are passed to philora_op_tests (e.g. --gtest_filter=...).
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
out=${OUT:-$repo/gpu-out}
mkdir -p "$out"

if [ ! -f .carry/build_root ]; then
  echo "run.sh: .carry/ is missing: run tests/gpu/prepare.sh here and carry .carry" >&2
  exit 2
fi
# The test binaries name the test data and the philora binary by the absolute
# path they were built in; make that path this checkout.
root=$(cat .carry/build_root)
if [ "$root" != "$repo" ] && [ ! -e "$root" ]; then
  mkdir -p "$(dirname "$root")" && ln -s "$repo" "$root"
fi
[ -f .carry/bundle.tar.xz ] && tar -C .carry -xJf .carry/bundle.tar.xz
mkdir -p build/tests
cp .carry/bin/philora build/
for t in .carry/bin/*_tests; do [ -e "$t" ] && cp "$t" build/tests/; done
export LD_LIBRARY_PATH="$repo/.carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

declare -A result
step() {  # step NAME COMMAND...: runs, logs, records pass/fail
  local name=$1
  shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  result[$name]="rc=$rc ($((SECONDS - t0)) s)"
  tail -n 60 "$out/$name.log"
  return $rc
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  ls -l /usr/local/cuda/lib64/libcublasLt.so* /usr/local/cuda/lib64/libcudart.so* 2>&1
  ldd build/philora | grep -E "not found|cublas|cudart|fmt|openblas"
} >"$out/env.log" 2>&1
cat "$out/env.log"

step op_tests build/tests/philora_op_tests --gtest_filter='*/cuda_*:sample/*/cuda:graph/*/cuda:PrologueMatmulBits.*' --gtest_brief=1 "$@"
if [ -d tests/data/golden ] && [ -e build/tests/philora_model_tests ]; then
  PHILORA_TEST_DEVICE=cuda step golden build/tests/philora_model_tests --gtest_filter='*Golden*:*StepHeads*'
fi
if [ -e .carry/bin/op_bench ] && [ "${PHILORA_GPU_SKIP_OP_BENCH:-0}" != 1 ]; then
  step op_bench timeout 200 .carry/bin/op_bench
fi
if [ "${PHILORA_GPU_SKIP_BENCH:-0}" != 1 ]; then
  step bench timeout 300 build/philora bench --device cuda
fi

echo "=== summary"
grep -hE "^\[  (PASSED|FAILED|SKIPPED) |tests? ran|FAILED TEST" "$out"/op_tests.log "$out"/golden.log 2>/dev/null | sort | uniq -c | head -40
for k in "${!result[@]}"; do echo "$k: ${result[$k]}"; done
