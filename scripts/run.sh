#!/usr/bin/env bash
# Builds philora and runs its main job: the HTTP server (LoRAX + OpenAI APIs)
# on the embedded model (models/philora-tiny, trained by tools/train_tiny.py)
# with its adapters (models/adapters), on the GPU when there is one, else on
# the CPU. Try, from another shell:
#   curl -s localhost:8080/generate -H 'content-type: application/json' \
#     -d '{"inputs": "In the beginning", "parameters": {"adapter_id": "kjv", "max_new_tokens": 40}}'
#   curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \
#     -d '{"model": "philora-tiny", "messages": [{"role": "user", "content": "What does ocean mean?"}]}'
# Until the embedded model is in the tree, it serves the random 2-layer golden
# fixture instead (token-id prompts only). Set PORT to change the port; extra
# arguments go to `philora serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
if [ -f models/philora-tiny/config.json ]; then
  exec build/philora serve --port "${PORT:-8080}" "$@"
fi
g=tests/data/golden/gqa_multi_lora
echo "run.sh: models/philora-tiny is missing; serving the golden fixture $g" >&2
exec build/philora serve --model "$g/model" --adapter-dir "$g/adapters" --port "${PORT:-8080}" "$@"
