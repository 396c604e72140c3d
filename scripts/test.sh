#!/usr/bin/env bash
# Builds philora and runs every CPU test (unit, op harness, golden model tests,
# tokenizer differential tests). GPU tests: tests/gpu/run.sh on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
if [ -f tests/tokenizer/setup.sh ]; then bash tests/tokenizer/setup.sh; fi
ctest --test-dir build -L cpu --output-on-failure -j"$(nproc)"
