#!/usr/bin/env bash
# Tensor parallelism on a machine with several GPUs (issue 22), after tests/gpu/run.sh has put
# the carried binaries in build/ (same call, or its first lines again). Its CUDA path has NEVER
# RUN: written when no multi-GPU machine was lent (the CPU path, PHILORA_TP_DEVICE=cpu, ran on
# the development machine); expect to fix it on its first GPU run.
#   1. every golden fixture whose heads split: `philora score` over N = 2 and 4 GPUs against
#      one GPU (both bf16): per-request relative L2 error of the logits ≤ 3e-2; greedy
#      `philora generate` tokens compared (reported, not failed: bf16 near-ties may differ)
#   2. `philora bench --tensor-parallel N` for N = 1, 2, 4 (the Phi-3-mini shape, random weights;
#      PHILORA_TP_BENCH_ARGS adds arguments, e.g. a Phi-4-shaped --model)
# NCCL: libnccl.so.2 is loaded at run time. When the loader does not find it, the nvidia-nccl
# wheel's copy (torch's) is tried. PHILORA_TP_DEVICE=cpu runs the same steps on the CPU's
# simulated ranks (a check of this script; tolerance 1e-5 there). PHILORA_TP_SIMULATE=1 adds
# --simulate-ranks: every rank on GPU 0, collectives through host copies (no NCCL, one GPU):
# the split model's CUDA kernels checked where there is one GPU; step 2's times then mean
# nothing.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
out=${OUT:-$repo/gpu-out}
mkdir -p "$out"
device=${PHILORA_TP_DEVICE:-cuda}
export LD_LIBRARY_PATH="$repo/.carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
bin=build/philora
if [ ! -x "$bin" ]; then  # run.sh has not run in this call: unpack the carried binaries as it does
  [ -f .carry/bundle.tar.xz ] && tar -C .carry -xJf .carry/bundle.tar.xz
  mkdir -p build && cp .carry/bin/philora build/
fi
if [ "$device" = cuda ] && ! ldconfig -p | grep -q 'libnccl.so.2 '; then
  wheel=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
  [ -n "$wheel" ] && export LD_LIBRARY_PATH="$wheel:$LD_LIBRARY_PATH"
fi
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
echo "device $device, $gpus GPUs; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
tolerance=$([ "$device" = cuda ] && echo 3e-2 || echo 1e-5)
simulate=()
if [ "${PHILORA_TP_SIMULATE:-0}" = 1 ]; then simulate=(--simulate-ranks); gpus=64; fi
status=0

echo "=== 1. golden fixtures over N ranks vs one"
for dir in tests/data/golden/*/; do
  case=$(basename "$dir")
  args=(--model "$dir/model" --device "$device")
  for a in "$dir"/adapters/*/; do [ -d "$a" ] && args+=(--adapter "$(basename "$a")=$a"); done
  "$bin" score "${args[@]}" --requests "$dir/requests.jsonl" >"$out/tp_${case}_score_1.jsonl" \
    2>"$out/tp_${case}_score_1.err" || { echo "$case: one rank failed"; status=1; continue; }
  "$bin" generate "${args[@]}" --greedy --requests "$dir/generate_requests.jsonl" \
    >"$out/tp_${case}_gen_1.jsonl" 2>"$out/tp_${case}_gen_1.err"
  for n in 2 4; do
    if [ "$device" = cuda ] && [ "$gpus" -lt "$n" ]; then echo "$case: $n ranks: only $gpus GPUs"; continue; fi
    if ! "$bin" score "${args[@]}" "${simulate[@]}" --requests "$dir/requests.jsonl" --tensor-parallel "$n" \
      >"$out/tp_${case}_score_$n.jsonl" 2>"$out/tp_${case}_score_$n.err"; then
      echo "$case: $n ranks: $(tail -n 1 "$out/tp_${case}_score_$n.err")"  # refused counts are fine
      continue
    fi
    "$bin" generate "${args[@]}" "${simulate[@]}" --greedy --requests "$dir/generate_requests.jsonl" \
      --tensor-parallel "$n" >"$out/tp_${case}_gen_$n.jsonl" 2>"$out/tp_${case}_gen_$n.err"
    python3 - "$out" "$case" "$n" "$tolerance" <<'EOF' || status=1
import json, math, sys
out, case, n, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]
one, many = lines(f"{out}/tp_{case}_score_1.jsonl"), lines(f"{out}/tp_{case}_score_{n}.jsonl")
assert len(one) == len(many) and one, "score: different request counts"
worst = 0.0
for a, b in zip(one, many):
    num = den = 0.0
    for ra, rb in zip(a["logits"], b["logits"]):
        for x, y in zip(ra, rb):
            num += (x - y) ** 2
            den += x * x
    worst = max(worst, math.sqrt(num / den))
ga, gb = lines(f"{out}/tp_{case}_gen_1.jsonl"), lines(f"{out}/tp_{case}_gen_{n}.jsonl")
same = sum(1 for a, b in zip(ga, gb) for x, y in zip(a["tokens"], b["tokens"]) if x == y)
total = sum(len(a["tokens"]) for a in ga)
print(f"{case}: {n} ranks: logits worst relative error {worst:.2e} (tolerance {tol:g}); "
      f"greedy tokens equal {same}/{total}")
sys.exit(0 if worst <= tol else 1)
EOF
  done
done

echo "=== 2. bench over 1, 2, 4 ranks"
for n in 1 2 4; do
  if [ "$device" = cuda ] && [ "$gpus" -lt "$n" ]; then continue; fi
  # shellcheck disable=SC2086
  "$bin" bench --device "$device" --tensor-parallel "$n" "${simulate[@]}" ${PHILORA_TP_BENCH_ARGS:-} \
    >"$out/tp_bench_$n.log" 2>&1 || status=1
  tail -n 1 "$out/tp_bench_$n.log"
done
exit $status
