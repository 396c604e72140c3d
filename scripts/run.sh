#!/usr/bin/env bash
# Builds philora and runs its main job: the HTTP server (LoRAX + OpenAI APIs)
# on the tiny committed model, with its three PEFT adapters loadable by name.
# Try, from another shell:
#   curl -s localhost:8080/generate -H 'content-type: application/json' \
#     -d '{"inputs": [1, 17, 42], "parameters": {"adapter_id": "a", "max_new_tokens": 8, "details": true}}'
#   curl -s localhost:8080/v1/completions -H 'content-type: application/json' \
#     -d '{"model": "b", "prompt": [1, 17, 42], "max_tokens": 8, "temperature": 0}'
# (The tiny model ships no tokenizer, so prompts are token ids; with a model
# directory that has tokenizer.json, text works.) Extra arguments go to serve.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
g=tests/data/golden/gqa_multi_lora
exec build/philora serve --model "$g/model" --adapter-dir "$g/adapters" --port "${PORT:-8080}" "$@"
