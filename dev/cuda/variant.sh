#!/usr/bin/env bash
# Kernel lab: a variant of the philora binary with one CUDA source compiled with
# extra flags, for A/B timing of two versions in one device call (see NOTES.md,
# "Method note"). Run after tests/gpu/prepare.sh, which builds in
# /tmp/philora-gpu-src/build and empties .carry/:
#   dev/cuda/variant.sh NAME src/backend/cuda/FILE -DSWITCH=0 ...
# writes .carry/philora_NAME (and .carry/op_bench_NAME): the same objects as
# build/philora (op_bench), with FILE's
# object compiled with the flags linked ahead of libphilora_lib.a (so the
# library's copy of it is never pulled in). On the GPU machine, after
# tests/gpu/run.sh has unpacked the bundle:
#   LD_LIBRARY_PATH=$PWD/.carry/lib:/usr/local/cuda/lib64 .carry/philora_NAME bench ...
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
name=$1 file=$2
shift 2
build=/tmp/philora-gpu-src/build
obj="CMakeFiles/philora_lib.dir/$file.o"
compile=$(ninja -C "$build" -t commands libphilora_lib.a | grep -F -- "/tmp/philora-gpu-src/$file" | grep -F -- "-o $obj" | head -1)
link=$(ninja -C "$build" -t commands philora | tail -1)
[ -n "$compile" ] && [ -n "$link" ] || { echo "variant.sh: no build commands for $file (run tests/gpu/prepare.sh first)" >&2; exit 2; }
out="variant_$name.o"
link=${link/ libphilora_lib.a / $out libphilora_lib.a }
(cd "$build" && eval "${compile/-o $obj/$* -o $out}" && eval "${link/ -o philora / -o philora_$name }")
cp "$build/philora_$name" ".carry/philora_$name"
if [ -f dev/cuda/op_bench.cpp ]; then  # and the op timer, linked the same way
  g++ -std=c++20 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -DFMT_SHARED -DPHILORA_HAVE_CUDA=1 \
    -I"$build/../src" -isystem /usr/local/cuda/include dev/cuda/op_bench.cpp "$build/$out" "$build/libphilora_lib.a" \
    -L/usr/local/cuda/lib64 -lcudart -lcublasLt -lfmt -lopenblas -lpcre2-8 -lpthread -o ".carry/op_bench_$name"
  strip --strip-debug ".carry/op_bench_$name"
fi
strip --strip-debug ".carry/philora_$name"
ls -la ".carry/philora_$name"
