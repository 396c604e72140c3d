#!/usr/bin/env bash
# Builds philora and runs its main job: the HTTP server (LoRAX + OpenAI APIs)
# on the embedded model (models/philora-tiny, trained by tools/train_tiny.py)
# with its adapters (models/adapters: kjv, devil, jargon), on the GPU when
# there is one, else on the CPU. Try, from another shell:
#   curl -s localhost:8080/generate -H 'content-type: application/json' \
#     -d '{"inputs": "In the beginning", "parameters": {"adapter_id": "kjv", "max_new_tokens": 40}}'
#   curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \
#     -d '{"model": "philora-tiny", "messages": [{"role": "user", "content": "What does ocean mean?"}]}'
# Set PORT to change the port; extra arguments go to `philora serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec build/philora serve --port "${PORT:-8080}" "$@"
