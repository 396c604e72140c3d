PHILORA_GPU_SKIP_OP_BENCH=1 PHILORA_GPU_SKIP_BENCH=1 bash tests/gpu/run.sh > $OUT/tests.log 2>&1; tail -8 $OUT/tests.log
export LD_LIBRARY_PATH=$PWD/.carry/lib:/usr/local/cuda/lib64
B=".carry/bin/philora"
for v in old mma minb3 minb4; do p=.carry/philora_$v; [ $v = mma ] && p=$B; echo "== $v"; $p bench --device cuda --batch 1,8,32,64,256 --skip-lora --prompt 128 2>&1 | tail -14; done > $OUT/bench.log 2>&1
for v in old mma minb3; do p=.carry/op_bench_$v; [ $v = mma ] && p=.carry/bin/op_bench; echo "== $v"; $p ctx 2>&1 | grep attention; done > $OUT/op.log 2>&1
for v in old mma; do p=.carry/op_bench_$v; [ $v = mma ] && p=.carry/bin/op_bench; timeout 120 ncu --kernel-name regex:decode_attention --launch-skip 3 --launch-count 1 --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis $p "decode B=8 ctx 512" > $OUT/ncu_$v.txt 2>&1; done
cat $OUT/bench.log $OUT/op.log
