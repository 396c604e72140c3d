#!/usr/bin/env bash
# The GPU call for dev/cuda/parked/gemv_chain.patch (session 12: written, tested on the CPU
# only; the GPU would not start again). Here, first:
#   git apply dev/cuda/parked/gemv_chain.patch
#   bash tests/gpu/prepare.sh && bash dev/cuda/persist_lab.sh
#   bash dev/cuda/variant.sh ko src/backend/cuda/cuda_matmul.cpp -DPHILORA_LAB_KNOCKOUT=1
#   (cd .carry && tar -c philora_ko persist_lab | xz -9e -T2 > lab.tar.xz && rm philora_ko op_bench_ko persist_lab)
#   cp dev/cuda/parked/gemv_chain_check.sh .carry/
# then run(command="bash .carry/gemv_chain_check.sh", carry=[".carry"]) (~3 minutes):
# the CUDA op cases with GemvChainBits and the goldens with the chain on, the lab's
# variants against the GEMV launches, batch 1 and 8 against the knock-out (the chain off),
# and the verification cost.
cd "$(dirname "$0")/.."
t0=$SECONDS
PHILORA_GPU_SKIP_OP_BENCH=1 PHILORA_GPU_SKIP_BENCH=1 timeout 240 bash tests/gpu/run.sh > $OUT/run.txt 2>&1
echo "tests rc=$? ($((SECONDS-t0)) s)"; grep -A30 "=== summary" $OUT/run.txt
grep -E "FAILED|Failure|error" $OUT/op_tests.log $OUT/golden.log | head -20
tar -C .carry -xJf .carry/lab.tar.xz
export LD_LIBRARY_PATH=$PWD/.carry/lib:/usr/local/cuda/lib64
timeout 120 .carry/persist_lab 32 20 > $OUT/persist.txt 2>&1; echo "lab rc=$? ($((SECONDS-t0)) s)"; cat $OUT/persist.txt
for i in 1 2; do
  echo "== chain ($i)"; timeout 70 build/philora bench --device cuda --batch 1,8 --prompt 128 --skip-lora 2>&1 | tee -a $OUT/e2e.txt | grep -E "decode batch"
  echo "== knock-out ($i)"; PHILORA_LAB_SKIP=chain timeout 70 .carry/philora_ko bench --device cuda --batch 1,8 --prompt 128 --skip-lora 2>&1 | tee -a $OUT/e2e_ko.txt | grep -E "decode batch"
done
echo "== verify (chain)"; timeout 90 build/philora bench --device cuda --speculate ngram:8 --skip-lora --batch 1 --prompt 512 --context 512 2>&1 | tee $OUT/ver.txt | grep -iE "verif|decode batch"
echo "($((SECONDS-t0)) s)"
