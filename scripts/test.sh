#!/usr/bin/env bash
# Builds philora and runs every CPU test (unit, op harness, golden model tests,
# tokenizer differential tests, real API clients from npm), then the suite again
# under ASan + UBSan and the fuzzers (scripts/sanitize.sh). GPU tests:
# tests/gpu/run.sh on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
if [ -f tests/tokenizer/setup.sh ]; then bash tests/tokenizer/setup.sh; fi
# Real API clients (tests/clients), exactly as package-lock.json pins them.
if [ -f tests/clients/package-lock.json ]; then
  (cd tests/clients
   if [ ! -f node_modules/.philora-lock ] || ! cmp -s package-lock.json node_modules/.philora-lock; then
     npm ci --no-audit --no-fund --loglevel=error
     cp package-lock.json node_modules/.philora-lock
   fi)
fi
# The structured-output oracles (tests/structured: ajv + ajv-formats), likewise.
if [ -f tests/structured/package-lock.json ]; then
  (cd tests/structured
   if [ ! -f node_modules/.philora-lock ] || ! cmp -s package-lock.json node_modules/.philora-lock; then
     npm ci --no-audit --no-fund --loglevel=error
     cp package-lock.json node_modules/.philora-lock
   fi)
fi
ctest --test-dir build -L cpu --output-on-failure -j"$(nproc)"
# The suite again under ASan + UBSan, then the fuzzers (one clang build).
bash scripts/sanitize.sh
