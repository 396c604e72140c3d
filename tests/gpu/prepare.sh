#!/usr/bin/env bash
# Run HERE (the CPU machine), before tests/gpu/run.sh runs on the GPU machine.
#
# The GPU machine has nvcc, cmake and ninja but none of the Debian -dev packages
# philora builds against (fmt, nlohmann-json, CLI11, gtest, OpenBLAS, PCRE2), so
# everything is built here (nvcc compiles the sm_90a kernels without a GPU) and
# the binaries travel in the ignored folder .carry/, with the shared libraries
# they need that the GPU machine may lack:
#   .carry/bundle.tar.xz, holding
#     bin/            philora, philora_op_tests, philora_model_tests, op_bench
#     lib/            libfmt, libopenblas, libgfortran, libpcre2-8, libstdc++, ...
#   .carry/build_root the directory the binaries were built in (test binaries bake
#                     in paths below it; run.sh links it to the repo root there)
# libcudart and libcublasLt come from the CUDA toolkit on the GPU machine (13.0,
# the same as here): cuBLASLt alone is over 500 MB and could not travel.
#
# Usage: tests/gpu/prepare.sh [--head]
#   default  builds a copy of the working tree as it is now
#   --head   builds the last commit, with the working tree's copies of the
#            CUDA backend, tests/gpu, dev/cuda and tests/ops laid over it (for
#            when someone else's uncommitted files don't compile)
# Then:  run(command="bash tests/gpu/run.sh", carry=[".carry"])
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
src=/tmp/philora-gpu-src
mkdir -p "$src"

if [ "${1:-}" = "--head" ]; then
  rm -rf "$src.new" && mkdir -p "$src.new"
  git archive HEAD | tar -x -C "$src.new"
  for p in src/backend/cuda tests/gpu dev/cuda tests/ops; do
    [ -e "$p" ] && mkdir -p "$src.new/$p" && cp -a "$p/." "$src.new/$p/"
  done
else
  rm -rf "$src.new" && mkdir -p "$src.new"
  tar -c --exclude=./.git --exclude='./build*' --exclude=./.carry --exclude=node_modules \
    --exclude=./.whl --exclude=./.gl . | tar -x -C "$src.new"
fi
# Replace the sources, keep the build folder. A file is copied (so its mtime
# becomes now) only when its contents changed, and ninja rebuilds exactly what
# changed: keeping the tree's own mtimes instead missed files edited while an
# earlier build ran (their objects were newer than the edit).
(cd "$src.new" && find . -type f) | while IFS= read -r f; do
  if ! cmp -s "$src.new/$f" "$src/$f"; then
    mkdir -p "$(dirname "$src/$f")" && cp "$src.new/$f" "$src/$f"
  fi
done
(cd "$src" && find . -path ./build -prune -o -type f -print) | while IFS= read -r f; do
  [ -e "$src.new/$f" ] || rm -f "$src/$f"
done
rm -rf "$src.new"

cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
targets=(philora)
known=$(ninja -C "$src/build" -t targets all 2>/dev/null)
# (The unit tests need no GPU and would take ~2 MB of the 64 MiB that travel.)
for t in philora_op_tests philora_model_tests; do
  if grep -q "^$t:" <<<"$known"; then targets+=("$t"); fi
done
ninja -C "$src/build" -j2 "${targets[@]}"

rm -rf .carry
mkdir -p .carry/bin .carry/lib
cp "$src/build/philora" .carry/bin/
for t in "${targets[@]:1}"; do cp "$src/build/tests/$t" .carry/bin/; done
# The kernel lab's timing program (dev/cuda), linked against the same library.
if [ -f "$src/dev/cuda/op_bench.cpp" ]; then
  g++ -std=c++20 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -DFMT_SHARED -DPHILORA_HAVE_CUDA=1 \
    -I"$src/src" -isystem /usr/local/cuda/include "$src/dev/cuda/op_bench.cpp" "$src/build/libphilora_lib.a" \
    -L/usr/local/cuda/lib64 -lcudart -lcublasLt -lfmt -lopenblas -lpcre2-8 -lpthread -o .carry/bin/op_bench
fi
strip --strip-debug .carry/bin/* 2>/dev/null || true
echo "$src" > .carry/build_root

# Shared libraries outside glibc and the CUDA toolkit.
for b in .carry/bin/*; do ldd "$b"; done | awk '/=> \//{print $1, $3}' | sort -u |
  while read -r name path; do
    case "$name" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libcuda.so*|libcudart.so*|libcublas*) ;;
      *) cp -L "$path" ".carry/lib/$name" ;;
    esac
  done
ls .carry/bin .carry/lib
# What travels is limited (64 MiB with the working tree): pack it; run.sh unpacks.
tar -C .carry -cf - bin lib | xz -T2 -6 >.carry/bundle.tar.xz
rm -rf .carry/bin .carry/lib
du -sh .carry/bundle.tar.xz
