#!/usr/bin/env bash
# The CPU test suite again under AddressSanitizer + UndefinedBehaviorSanitizer,
# then every libFuzzer target of tests/fuzz for PHILORA_FUZZ_SECONDS seconds
# each (default 20) over its committed corpus: one clang build (build-asan,
# no CUDA, -DPHILORA_FUZZ=ON) serves both. Any sanitizer finding fails its
# test; a fuzzer's finding is saved under build-asan/fuzz-artifacts/ (replay:
# build-asan/tests/fuzz/TARGET FILE). Part of scripts/test.sh; run alone only
# after it (it needs the npm packages and tokenizer data that it installs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Paths under the checkout hash as relative ones, so a fresh clone elsewhere (CI)
# reuses what an earlier clone compiled (Release builds carry no debug paths).
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"
jobs=$(nproc)

CC=clang CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPHILORA_CUDA=OFF -DPHILORA_FUZZ=ON >/dev/null
cmake --build build-asan -j"$jobs"

# A small quarantine keeps resident memory near what the program holds (the
# load test checks that it stays flat).
export ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=32:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# The embedded model's tests and the npm clients run in the plain build only:
# under the sanitizers one held-out pass of the 16M-parameter model takes six
# minutes; the same forward, server and engine code runs here on the golden
# fixtures' tiny models.
ctest --test-dir build-asan -L cpu -E '^(Embedded|Clients[.])' \
  --output-on-failure -j"$jobs"

seconds="${PHILORA_FUZZ_SECONDS:-20}"
mkdir -p build-asan/fuzz-artifacts
status=0
for seeds in tests/fuzz/corpus/*/; do
  target=$(basename "$seeds")
  found="build-asan/fuzz-corpus/$target"  # what runs add; the committed seeds stay as they are
  mkdir -p "$found"
  log="build-asan/fuzz-$target.log"
  # A fixed seed: a run explores the same inputs in the same order wherever it
  # runs (a slower machine a prefix of them), so CI fails on the code, not on luck.
  if "build-asan/tests/fuzz/$target" -seed=1 -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="build-asan/fuzz-artifacts/$target-" \
      "$found" "$seeds" >"$log" 2>&1; then
    echo "fuzz: $target: $(grep -E 'stat::number_of_executed_units' "$log" | awk '{print $2}') runs" \
         "in ${seconds} s, no finding"
  else
    echo "fuzz: $target FAILED; the end of its log ($log):"
    tail -60 "$log"
    status=1
  fi
done
exit "$status"
