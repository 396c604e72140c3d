#!/usr/bin/env bash
# Kernel lab: a variant of the philora binary with one CUDA source compiled with
# extra flags, for A/B timing of two versions in one device call (see NOTES.md,
# "Method note"). Run after tests/gpu/prepare.sh, which builds in
# /tmp/philora-gpu-src/build and empties .carry/:
#   dev/cuda/variant.sh NAME src/backend/cuda/FILE.cu -DSWITCH=0 ...
# writes .carry/philora_NAME: the same objects as build/philora, with FILE.cu's
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
compile=$(ninja -C "$build" -t commands libphilora_lib.a | grep -F -- "-c /tmp/philora-gpu-src/$file -o $obj" | head -1)
link=$(ninja -C "$build" -t commands philora | tail -1)
[ -n "$compile" ] && [ -n "$link" ] || { echo "variant.sh: no build commands for $file (run tests/gpu/prepare.sh first)" >&2; exit 2; }
out="variant_$name.o"
link=${link/ libphilora_lib.a / $out libphilora_lib.a }
(cd "$build" && eval "${compile/-o $obj/$* -o $out}" && eval "${link/ -o philora / -o philora_$name }")
cp "$build/philora_$name" ".carry/philora_$name"
strip --strip-debug ".carry/philora_$name"
ls -la ".carry/philora_$name"
