#!/usr/bin/env bash
# Builds bench/tokenizer_bench (statically, so the binary also runs on the GPU machine) and runs it
# on the tokenizers and texts that tests/tokenizer/setup.sh wrote.
#
#   bench/tokenizer_bench.sh [DATA_DIR] [SECONDS]      (default DATA_DIR: tests/tokenizer/out)
#   BUILD_ONLY=1 bench/tokenizer_bench.sh              (just build build-bench/tokenizer_bench)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${1:-$root/tests/tokenizer/out}"
seconds="${2:-3}"
out="${BENCH_BUILD_DIR:-$root/build-bench}"
mkdir -p "$out"
bin="$out/tokenizer_bench"
srcs=("$root"/src/tokenizer/*.cpp "$root"/src/tokenizer/jinja/*.cpp)
if [ ! -x "$bin" ] || [ -n "$(find "$root/src/tokenizer" "$root/bench/tokenizer_bench.cpp" -newer "$bin" -name '*.[ch]*' | head -1)" ]; then
  g++ -std=c++20 -O3 -DNDEBUG -DFMT_HEADER_ONLY -static -I"$root/src" "$root/bench/tokenizer_bench.cpp" "${srcs[@]}" \
      -lpcre2-8 -pthread -o "$bin"
fi
[ -n "${BUILD_ONLY:-}" ] && exit 0
names=()
for n in phi3 cl100k o200k phi4 phi4mini; do [ -f "$data/$n/tokenizer.json" ] && names+=("$n=$data/$n/tokenizer.json"); done
echo "philora tokenizer, single thread, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
"$bin" --seconds "$seconds" "${names[@]}" -- english="$data/bench/english.txt" code="$data/bench/code.txt"
