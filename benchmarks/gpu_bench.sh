#!/usr/bin/env bash
# The benchmarks on a lent GPU machine (the device tool), in under 5 minutes, after gpu_check.sh:
#
#   device run: bash benchmarks/gpu_bench.sh   carry: .whl, nst_fast/_C.cpython-312-x86_64-linux-gnu.so (.images)
#                                              timeout_s: 330
#
# benchmarks/README.md ("On a lent GPU") says what to prepare here, what to carry, and what to copy back.
#
#  0. uses the module that gpu_check.sh built (carried back in, or left on a machine still warm), and
#     builds it only without one: that takes its time from the steps below;
#  1. the operator at the style-layer shapes of a 2048 px image, the extension against eager PyTorch,
#     fp32 and bf16 (benchmarks/test_ops.py) → ops-2048.json;
#  2. the kernels per dtype and layout at those shapes, and a split-K sweep at C = 64 (benchmarks/gpu.py
#     kernels: NOTES.md §10's predictions) → kernels.json; then ncu's shared-memory bank conflicts per
#     kernel (benchmarks/gpu.py profile) → the log;
#  3. one iteration of the reference and of the torch backend per precision at 512 and 2048 px, with
#     its FLOPs, FLOP/s and fraction of the reachable peak measured in the same run (nst-fast bench)
#     → iterations.json;
#  4. the headline: images per second to the fixed quality at 256, 512 and 1024 px, batches of 1 and 4
#     (nst-fast bench --quality; the targets that benchmarks/quality-targets.json lacks are computed
#     here, by the reference, and returned) → throughput.json, quality-targets.json;
#  5. the torch backend's loop per --graph mode at 512 px in bf16 (benchmarks/loops.py) → loops.json;
#  6. the memory estimate against the CUDA allocator's peak at 2048 and 4096 px (benchmarks/memory.py)
#     → memory.json;
#  7. time-to-quality at 512 px, the reference against the torch backend (benchmarks/gpu.py quality)
#     → quality.json.
#
# Each step has a time limit; the limits add up to 290 s, and no step runs past 295 s from the start.
# The scripts write their JSON after every row, so a step cut short keeps what it measured. A failed
# step is reported ("!! ... failed") and the next one runs; the exit status is 1 if any failed.
# $OUT receives gpu-bench.log (everything printed) and the eight JSON files above.
#
#   bash benchmarks/gpu_bench.sh --dry-run     (CI: no GPU) runs every Python part on the CPU at tiny
#                                               sizes (PYTHON names the interpreter), without ncu.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_SCRIPT=bench
source benchmarks/gpu_common.sh

# What each step measures, on the GPU and (--dry-run) on the CPU at sizes that take seconds.
# (The dry run measures one configuration where the GPU measures several: the flags are what it checks.)
if ((DRY)); then
  DEVICE=cpu OPS_SIZE=32 KERNEL=(--size 32 --rounds 1) SIZES=32 BACKENDS=reference LOOP_SIZE=32 MEMORY_SIZES=32
  QUALITY_SIZE=32 PRECISION=fp32 GRAPHS=eager LOOP_STEPS=2 CHECKPOINT=off QUALITY=(--steps 3 --backends reference)
  ROUNDS=(--rounds 1 --warmup 0)
  THROUGHPUT=(--quality 32 --quality-batch-sizes 1,2 --reference-steps 3 --no-peak) TARGETS=$OUT/quality-targets.json
  export NST_FAST_BENCH_SMOKE=1
  echo "dry run: the Python parts on the CPU at tiny sizes; no ncu"
else
  DEVICE=cuda OPS_SIZE=2048 KERNEL=(--size 2048) SIZES=512,2048 BACKENDS=reference,torch LOOP_SIZE=512
  MEMORY_SIZES=2048,4096 QUALITY_SIZE=512 PRECISION=bf16 GRAPHS=eager,cuda,compile LOOP_STEPS=20 CHECKPOINT=off,on
  QUALITY=(--steps 300 --backends torch) ROUNDS=(--rounds 3 --warmup 1)
  THROUGHPUT=(--quality 256,512,1024 --quality-batch-sizes 1,4) TARGETS=benchmarks/quality-targets.json
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  if ! timeout 30 "$PY" -c "from nst_fast import _ext; assert _ext.WITH_CUDA" 2>/dev/null; then
    ARCH=$(timeout 30 "$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    step "build for sm_${ARCH/./} (none carried)" 120 \
      env TORCH_CUDA_ARCH_LIST="$ARCH" "$PY" setup.py -q build_ext --inplace
  fi
fi
timeout 30 "$PY" -c "from nst_fast import selfcheck; print('self-check:', selfcheck.status())"

step "operator at the style layers of $OPS_SIZE px (pytest-benchmark)" 30 env NST_FAST_BENCH_SIZES=$OPS_SIZE \
  "$PY" -m pytest benchmarks/test_ops.py -q -p no:cacheprovider -k "$DEVICE" --benchmark-enable --benchmark-only \
  --benchmark-json="$OUT/ops-$OPS_SIZE.json"
step "kernels per dtype and layout, split-K sweep" 25 \
  "$PY" benchmarks/gpu.py kernels --device "$DEVICE" "${KERNEL[@]}" --out "$OUT/kernels.json"
PROFILE=("$PY" benchmarks/gpu.py profile --device "$DEVICE" --size $((OPS_SIZE / 2)))
if ((DRY)); then
  step "ncu's workload (without ncu)" 25 "${PROFILE[@]}"
else
  # Shared-memory wavefronts and bank conflicts (NOTES.md §10), time, and the atomics of split-K.
  METRICS=gpu__time_duration.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,\
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,\
l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum,smsp__sass_inst_executed_op_global_red.sum
  step "ncu: shared-memory bank conflicts per kernel" 25 ncu --clock-control none --metrics "$METRICS" \
    -k regex:'gram_kernel|backward_kernel' "${PROFILE[@]}"
fi
step "one iteration per backend and precision at $SIZES px, and the peak" 60 "$PY" -m nst_fast bench \
  --device "$DEVICE" --sizes "$SIZES" --backends "$BACKENDS" "${ROUNDS[@]}" --json "$OUT/iterations.json"
step "images per second to the fixed quality (${THROUGHPUT[1]} px)" 50 "$PY" -m nst_fast bench --device "$DEVICE" \
  --no-iterations "${THROUGHPUT[@]}" --targets "$TARGETS" --json "$OUT/throughput.json"
[[ -f $TARGETS && $TARGETS != "$OUT/quality-targets.json" ]] && cp "$TARGETS" "$OUT/quality-targets.json"
step "the loop per --graph mode at $LOOP_SIZE px" 45 "$PY" benchmarks/loops.py --device "$DEVICE" \
  --sizes "$LOOP_SIZE" --precisions "$PRECISION" --graphs "$GRAPHS" --steps "$LOOP_STEPS" --rounds 2 \
  --out "$OUT/loops.json"
step "memory estimate against the allocator at $MEMORY_SIZES px" 30 "$PY" benchmarks/memory.py --device "$DEVICE" \
  --sizes "$MEMORY_SIZES" --precisions "$PRECISION" --checkpoint "$CHECKPOINT" --steps 2 --out "$OUT/memory.json"
step "time to quality at $QUALITY_SIZE px" 25 "$PY" benchmarks/gpu.py quality --device "$DEVICE" \
  --size "$QUALITY_SIZE" "${QUALITY[@]}" --out "$OUT/quality.json"

echo "== gpu_bench: $FAILED step(s) failed, $SECONDS s; output in $OUT"
((FAILED == 0))
