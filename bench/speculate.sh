#!/usr/bin/env bash
# Speculative decoding on the embedded model (issue 20): generated tokens/s
# with and without each method, at batch 1, 8 and 32, on two prompt sets,
# through `philora generate --stats` (greedy, so every method writes the same
# text; the script checks that it does).
#
#   bench/speculate.sh [--device cpu|cuda] [--new N] [--philora BIN] [--reps R]
#                      [--tree N] [--row-cost C] [--batches "1 8 32"]
#
# Prompt sets, from the held-out base text (models/heldout/base.jsonl, never
# trained on; its documents joined by blank lines and cut into 32 evenly spaced
# passages of 700 characters):
#   copy   a passage, a blank line, then its first 150 characters again: the
#          model may copy what follows (what prompt lookup is for: summaries,
#          code edits, RAG quotes)
#   free   the first 200 characters of a passage
# Batch B: the first B passages, one request each, in one batch
# (`philora generate` runs a file's requests together). Methods: none,
# ngram:4, medusa:4 and ngram+medusa:4 (models/medusa, when it exists), and with --tree N each of
# them again as "+tree" (--speculate-paths N: tree speculation). --row-cost C
# passes --speculate-row-cost C to every run (e.g. the GPU's 0.03 on the CPU, to
# see the drafts and chains a GPU would verify). Each cell is the best of
# R runs (default 3) of the seconds from the first step to the last, each run
# after a warm-up run of the same batch in the same process (`--warmup 1`:
# step graphs recorded and matmul shapes tuned, as in a server that has been
# up a while; the prefix cache off, so that the timed run computes its prompts).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
device=cpu new=128 bin="$root/build/philora" reps=3 tree=0 row_cost="" batches="1 8 32"
while [ $# -gt 0 ]; do
  case "$1" in
    --tree) tree=$2; shift 2 ;;
    --row-cost) row_cost=$2; shift 2 ;;
    --batches) batches=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --new) new=$2; shift 2 ;;
    --philora) bin=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) echo "speculate.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
model="$root/models/philora-tiny"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$root/models/heldout/base.jsonl" "$work" <<'EOF'
import json, sys
text = "\n\n".join(json.loads(l)["text"] for l in open(sys.argv[1], encoding="utf-8") if l.strip())
step = len(text) // 32
assert step >= 700, f"the held-out base text has only {len(text)} characters"
docs = [text[i * step:i * step + 700] for i in range(32)]
for name, make in (("copy", lambda d: d[:700] + "\n\n" + d[:150]), ("free", lambda d: d[:200])):
    for b in (1, 8, 32):
        with open(f"{sys.argv[2]}/{name}-{b}.jsonl", "w", encoding="utf-8") as f:
            for i, d in enumerate(docs[:b]):
                f.write(json.dumps({"id": f"{name}{i}", "prompt": make(d)}) + "\n")
EOF
methods=(none ngram:4)
[ -f "$root/models/medusa/medusa_lm_head.safetensors" ] && methods+=(medusa:4 ngram+medusa:4)
if [ "$tree" -gt 1 ]; then
  for m in "${methods[@]:1}"; do methods+=("$m+tree"); done
fi
echo "device $device, $new new tokens per request, greedy, best of $reps;" \
  "tree $tree, row cost ${row_cost:-of the backend}; $(date -u +%FT%TZ)"
echo "| prompts | batch | method | tokens/s | vs none | steps | drafted | accepted (rate) | alternatives (tokens won) | same text |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for set in copy free; do
  for b in $batches; do
    base_tps=""
    for m in "${methods[@]}"; do
      args=(generate --model "$model" --device "$device" --requests "$work/$set-$b.jsonl" --greedy
            --max-new-tokens "$new" --stats --warmup 1 --no-prefix-cache)
      spec=${m%+tree}
      case "$spec" in
        none) ;;
        *medusa:*) args+=(--speculate "$spec" --medusa "$root/models/medusa") ;;
        *) args+=(--speculate "$spec") ;;
      esac
      [ "$spec" != "$m" ] && args+=(--speculate-paths "$tree")
      [ "$spec" != none ] && [ -n "$row_cost" ] && args+=(--speculate-row-cost "$row_cost")
      best=""
      for ((r = 0; r < reps; r++)); do
        "$bin" "${args[@]}" >"$work/out-$m" 2>"$work/err-$m"
        line=$(tail -1 "$work/err-$m")
        best=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]) if sys.argv[2] else None
print(json.dumps(a if b is None or a["tokens_per_second"] > b["tokens_per_second"] else b))' "$line" "$best")
      done
      [ "$m" = none ] && cp "$work/out-$m" "$work/out-ref"
      same=$(python3 -c 'import json,sys
toks = lambda p: [(o["id"], o["tokens"]) for o in map(json.loads, open(p))]
print("yes" if toks(sys.argv[1]) == toks(sys.argv[2]) else "NO")' "$work/out-$m" "$work/out-ref")
      python3 - "$best" "$set" "$b" "$m" "$same" "${base_tps:-0}" <<'EOF'
import json, sys
s = json.loads(sys.argv[1]); base = float(sys.argv[6])
tps = s["tokens_per_second"]; d, a = s["spec_draft_tokens"], s["spec_accepted_tokens"]
vs = f"{tps / base:.2f}x" if base else "1.00x"
rate = f"{a:,} ({a / d:.0%})" if d else "0"
alt = f"{s.get('spec_alt_chains', 0):,} ({s.get('spec_alt_tokens', 0):,})"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {tps:,.0f} | {vs} | {s['steps']:,} | {d:,} | {rate} | {alt} | {sys.argv[5]} |")
EOF
      if [ "$m" = none ]; then
        base_tps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["tokens_per_second"])' "$best")
      fi
    done
  done
done
