#!/usr/bin/env bash
# The CPU test suite again under AddressSanitizer + UndefinedBehaviorSanitizer
# (build-asan: GCC, no CUDA; any finding fails its test), then every libFuzzer
# target of tests/fuzz (build-fuzz: clang, instrumented the same way) for
# PHILORA_FUZZ_SECONDS seconds each (default 20) over its committed corpus.
# Part of scripts/test.sh; run alone after it (it needs its npm and tokenizer
# data). A fuzzer's finding is saved under build-fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
jobs=$(nproc)

cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Release -DPHILORA_CUDA=OFF \
  -DPHILORA_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j"$jobs"
# A small quarantine keeps resident memory near what the program itself holds
# (the load test checks it stays flat).
export ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=32:strict_string_checks=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir build-asan -L cpu --output-on-failure -j"$jobs"

CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPHILORA_CUDA=OFF -DPHILORA_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$jobs"
seconds="${PHILORA_FUZZ_SECONDS:-20}"
mkdir -p build-fuzz/artifacts
status=0
for seeds in tests/fuzz/corpus/*/; do
  target=$(basename "$seeds")
  found="build-fuzz/corpus/$target"  # what this run adds; the committed seeds stay as they are
  mkdir -p "$found"
  echo "fuzz: $target for ${seconds} s"
  if ! "build-fuzz/tests/fuzz/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="build-fuzz/artifacts/$target-" \
      "$found" "$seeds" >"build-fuzz/$target.log" 2>&1; then
    echo "fuzz: $target FAILED; its log:"
    tail -60 "build-fuzz/$target.log"
    status=1
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "build-fuzz/$target.log" | tr '\n' ' '
    echo
  fi
done
exit "$status"
