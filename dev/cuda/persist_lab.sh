#!/usr/bin/env bash
# Builds the persistent-kernel lab (persist_lab.cu) against the library that
# tests/gpu/prepare.sh built in /tmp/philora-gpu-src/build (run that first; it
# empties .carry/), into .carry/persist_lab. On the GPU machine, after
# tests/gpu/run.sh (or the bundle) has put the libraries in .carry/lib:
#   LD_LIBRARY_PATH=$PWD/.carry/lib:/usr/local/cuda/lib64 .carry/persist_lab [layers] [reps]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=/tmp/philora-gpu-src/build
[ -f "$build/libphilora_lib.a" ] || { echo "persist_lab.sh: run tests/gpu/prepare.sh first" >&2; exit 2; }
/usr/local/cuda/bin/nvcc -std=c++20 -O3 -DNDEBUG -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
  -Xcompiler=-Wall,-Wextra,-Wno-unused-parameter -Werror=all-warnings -Xptxas=-v -DFMT_SHARED -DPHILORA_HAVE_CUDA=1 \
  -I/tmp/philora-gpu-src/src dev/cuda/persist_lab.cu "$build/libphilora_lib.a" \
  -L/usr/local/cuda/lib64 -lcudart -lcublasLt -lfmt -lopenblas -lpcre2-8 -lpthread -o .carry/persist_lab 2>&1 |
  grep -E "error|warning|persist_kernel|registers|spill" | grep -v "^$" || true
[ -x .carry/persist_lab ] && strip --strip-debug .carry/persist_lab && ls -la .carry/persist_lab
