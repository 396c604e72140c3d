#!/usr/bin/env bash
# Builds philora and runs its main job. Until the server exists, that is a
# greedy generation batch (two adapters and the base model mixed in one batch)
# on the tiny committed golden model, through the paged-KV decode path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
g=tests/data/golden/gqa_multi_lora
exec build/philora generate --model "$g/model" --adapter a="$g/adapters/a" --adapter b="$g/adapters/b" --adapter c="$g/adapters/c" \
  --requests "$g/generate_requests.jsonl" --greedy "$@"
