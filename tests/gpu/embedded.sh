#!/usr/bin/env bash
# The embedded model (models/) on the GPU machine, after tests/gpu/run.sh has put the carried
# binaries in build/ (same call, or run.sh's first lines again):
#   1. held-out losses through `philora score --output loss --device cuda` (bf16) for the base
#      model on every domain and each adapter on its own, against the training script's (HF,
#      f32 on the exported bf16 weights: models/training.json); bf16 tolerance 2e-2 relative
#   2. greedy chat answers to the five held-out questions, CUDA and CPU side by side
#   3. `philora bench --model models/philora-tiny --device cuda` (issue 16's GPU table)
#   4. bench/speculate.sh --device cuda (issue 20: tokens/s with and without n-gram / Medusa)
# Each step logs to $OUT/embedded_<step>.log. Needs python3 + the tokenizers package (the GPU
# machine has both).
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
out=${OUT:-$repo/gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$repo/.carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
bin=build/philora
if [ ! -x "$bin" ]; then  # run.sh has not run in this call: unpack the carried binaries as it does
  [ -f .carry/bundle.tar.xz ] && tar -C .carry -xJf .carry/bundle.tar.xz
  mkdir -p build && cp .carry/bin/philora build/
fi
reps=${PHILORA_SPECULATE_REPS:-3}
models=models
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
adapters=()
for a in "$models"/adapters/*/; do adapters+=(--adapter "$(basename "$a")=$a"); done

echo "=== 1. held-out losses, CUDA bf16 vs the training script"
python3 - "$models" "$work" <<'EOF'
import json, os, sys
sys.path.insert(0, "tools")
import train_tiny as tt
from tokenizers import Tokenizer
models, work = sys.argv[1], sys.argv[2]
tok = Tokenizer.from_file(os.path.join(models, tt.MODEL_DIRNAME, "tokenizer.json"))
for d in tt.DOMAINS:
    docs = tt.read_jsonl_docs(os.path.join(models, "heldout", tt.HELDOUT_FILES[d]), 0)["texts"]
    stream = []
    for e in tok.encode_batch(docs, add_special_tokens=False):
        stream.extend(e.ids)
    with open(os.path.join(work, f"{d}.jsonl"), "w") as f:
        for i, seq in enumerate(tt.heldout_sequences(stream)):
            f.write(json.dumps({"id": f"{d}-{i}", "input_ids": seq}) + "\n")
EOF
python3 - "$models" "$work" "$bin" <<'EOF' 2>&1 | tee "$out/embedded_loss.log"
import json, os, subprocess, sys
models, work, bin_ = sys.argv[1:4]
ref = json.load(open(os.path.join(models, "training.json")))["heldout"]
ads = sorted(os.listdir(os.path.join(models, "adapters")))
def loss(domain, adapter=None):
    reqs = os.path.join(work, f"{domain}.jsonl")
    if adapter:
        lines = [dict(json.loads(l), adapter=adapter) for l in open(reqs)]
        reqs = os.path.join(work, f"{domain}-{adapter}.jsonl")
        with open(reqs, "w") as f:
            f.writelines(json.dumps(l) + "\n" for l in lines)
    cmd = [bin_, "score", "--device", "cuda", "--model", os.path.join(models, "philora-tiny"),
           "--requests", reqs, "--output", "loss"]
    for a in ads:
        cmd += ["--adapter", f"{a}={os.path.join(models, 'adapters', a)}"]
    res = [json.loads(l) for l in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split("\n") if l]
    return sum(r["nll"] for r in res) / sum(r["tokens"] for r in res)
worst = 0.0
rows = [(d, None, ref["base"][d]) for d in ref["base"]] + [(a, a, ref["adapters"][a]["loss"]) for a in ref["adapters"]]
for d, a, want in rows:
    got = loss(d, a)
    rel = abs(got - want) / want
    worst = max(worst, rel)
    print(f"{d:<7} {a or 'base':<7} philora cuda {got:.5f}  training script {want:.5f}  rel {rel:.2e}")
print(f"worst relative difference {worst:.2e} ({'within' if worst <= 2e-2 else 'OVER'} the bf16 tolerance 2e-2)")
EOF

echo "=== 2. chat answers, CUDA and CPU"
python3 - "$models" > "$work/chat.jsonl" <<'EOF'
import json, sys
for i, l in enumerate(open(f"{sys.argv[1]}/heldout/chat_questions.jsonl")):
    q = json.loads(l)["question"]
    print(json.dumps({"id": f"q{i}", "prompt": f"<|user|>\n{q}<|end|>\n<|assistant|>\n", "max_new_tokens": 96}))
EOF
for dev in cuda cpu; do
  "$bin" generate --device "$dev" --model "$models/philora-tiny" --requests "$work/chat.jsonl" --greedy \
    --stats > "$work/chat-$dev.out" 2> "$work/chat-$dev.err"
done
python3 - "$work" <<'EOF' 2>&1 | tee "$out/embedded_chat.log"
import json, sys
w = sys.argv[1]
a = {j["id"]: j for j in map(json.loads, open(f"{w}/chat-cuda.out"))}
b = {j["id"]: j for j in map(json.loads, open(f"{w}/chat-cpu.out"))}
for k in sorted(a):
    same = a[k]["tokens"] == b[k]["tokens"]
    print(f"{k}: {'same tokens' if same else 'DIFFERENT tokens (bf16 vs f32 near-ties)'}; finish {a[k]['finish_reason']}")
    print(f"  cuda: {a[k]['text']!r}")
    if not same:
        print(f"  cpu:  {b[k]['text']!r}")
EOF

echo "=== 3. philora bench on the embedded model"
timeout 120 "$bin" bench --device cuda --model "$models/philora-tiny" --batch 1 8 --prompt 50 \
  --context 128 --skip-lora 2>&1 | tee "$out/embedded_bench.log"

echo "=== 4. speculation"
timeout 200 bash bench/speculate.sh --device cuda --philora "$bin" --reps "$reps" 2>&1 | tee "$out/embedded_speculate.log"
