#!/usr/bin/env bash
# The real-client tests (clients.test.mjs) against PHILORA_BINARY (or $1).
# Exits 77 (skipped) when the npm packages are not installed: scripts/test.sh
# installs them with `npm ci` from package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
export PHILORA_BINARY="${1:-${PHILORA_BINARY:-../../build/philora}}"
if [ ! -d node_modules/openai ] || [ ! -d node_modules/@huggingface/inference ]; then
  echo "tests/clients: npm packages not installed (run scripts/test.sh or npm ci here); skipped"
  exit 77
fi
exec node --test clients.test.mjs
