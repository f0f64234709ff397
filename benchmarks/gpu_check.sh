#!/usr/bin/env bash
# The checks of the CUDA kernels on a lent GPU machine (the device tool), in under 5 minutes:
#
#   device run: bash benchmarks/gpu_check.sh        carry: .whl (.images)    timeout_s: 330
#
# benchmarks/README.md ("On a lent GPU") says what to prepare here, what to carry, and what to copy back.
#
#  1. builds nst_fast._C for the GPU present (TORCH_CUDA_ARCH_LIST = its compute capability), in place,
#     and copies the module to $OUT, for gpu_bench.sh to carry;
#  2. counts per kernel, in the module's SASS, the tensor-core (HMMA), shared-memory (LDSM, LDS, STS),
#     generic (LD) and atomic (RED) instructions, and fails unless HMMA is in the bf16/fp16 Gram kernels
#     only;
#  3. runs the self-check of the compiled operators (benchmarks/gpu.py selfcheck), twice;
#  4. runs the CUDA tests (pytest -k cuda), with the self-check off so that a kernel's fault shows in
#     the tests that reach it rather than as the self-check's one refusal;
#  5. runs compute-sanitizer memcheck, initcheck, racecheck and synccheck over benchmarks/gpu.py
#     sanitize (split-K and several tiles, bf16/fp16/fp32, both layouts, misaligned views), with torch's
#     caching allocator off, so that an access past a tensor's end lands outside any allocation.
#
# Each step has a time limit; the limits add up to 295 s, and no step runs past 295 s from the start.
# A failed step is reported ("!! ... failed") and the next one runs; the exit status is 1 if any failed.
# $OUT receives: gpu-check.log (everything printed), sass.txt, cuda-tests.xml, and the built module.
#
#   bash benchmarks/gpu_check.sh --dry-run     (CI: no GPU) runs the Python parts on the CPU (PYTHON
#                                               names the interpreter), and skips the build, the SASS
#                                               and compute-sanitizer itself.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_SCRIPT=check
source benchmarks/gpu_common.sh

SUFFIX=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
if ((DRY)); then
  DEVICE=cpu
  echo "dry run: the Python parts on the CPU; no build, SASS or compute-sanitizer"
else
  DEVICE=cuda
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  timeout 30 "$PY" -c "import torch as t; print('torch', t.__version__, 'CUDA', t.version.cuda, t.cuda.get_device_name())"
  ARCH=$(timeout 30 "$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")

  step "build for sm_${ARCH/./}" 120 bash -c \
    "TORCH_CUDA_ARCH_LIST=$ARCH '$PY' setup.py -q build_ext --inplace && cp nst_fast/_C$SUFFIX '$OUT/'"

  sass_summary() {  # per kernel: registers and instruction counts; fails unless HMMA is where it belongs
    local so=nst_fast/_C$SUFFIX
    printf '%-20s %5s %5s %5s %5s %5s %5s %5s %6s %5s\n' kernel regs HMMA LDSM LD LDS STS RED FFMA BAR
    {
      cuobjdump -res-usage "$so" | awk '/Function / {name = $2; sub(/:$/, "", name)}
        /REG:/ {match($0, /REG:[0-9]+/); print "R\t" name "\t" substr($0, RSTART + 4, RLENGTH - 4)}'
      cuobjdump -sass "$so" | awk '
        /Function : / {name = $3; next}
        name != "" && /^[[:space:]]+\/\*[0-9a-f]+\*\/[[:space:]]/ {
          sub(/^[[:space:]]+\/\*[0-9a-f]+\*\/[[:space:]]+/, ""); sub(/^@!?U?P[0-9T]+[[:space:]]+/, "")
          split($1, part, "."); op = part[1]; sub(/;$/, "", op)
          if (op ~ /^(HMMA|LDSM|LD|LDS|STS|RED|ATOM|ATOMG|FFMA|BAR)$/) print "I\t" name "\t" op
        }'
    } | awk -F'\t' '
      $1 == "R" {regs[$2] = $3; seen[$2] = 1; next}
      {n[$2 "\t" $3]++; seen[$2] = 1}
      END {
        for (k in seen) {
          if (!match(k, /(gram|backward)_kernelI(f|6__half|13__nv_bfloat16)LNS0_6LayoutE[01]/)) continue
          s = substr(k, RSTART, RLENGTH)
          label = (s ~ /^gram/ ? "gram" : "backward") " " (s ~ /bfloat16/ ? "bf16" : s ~ /half/ ? "fp16" : "fp32") \
                  " " (s ~ /E1$/ ? "NHWC" : "NCHW")
          hmma = n[k "\tHMMA"]
          printf "%-20s %5s %5d %5d %5d %5d %5d %5d %6d %5d\n", label, regs[k], hmma, n[k "\tLDSM"], n[k "\tLD"], \
                 n[k "\tLDS"], n[k "\tSTS"], n[k "\tRED"] + n[k "\tATOM"] + n[k "\tATOMG"], n[k "\tFFMA"], n[k "\tBAR"]
          if ((label ~ /^gram (bf16|fp16)/) != (hmma > 0)) bad = bad " " label
          found++
        }
        if (found != 12) {print "expected 12 kernels, found " found + 0; exit 1}
        if (bad != "") {print "HMMA misplaced in:" bad; exit 1}
      }' | sort
  }
  export -f sass_summary
  export SUFFIX
  step "SASS: instructions per kernel" 10 bash -o pipefail -c "sass_summary | tee '$OUT/sass.txt'"
fi

step "self-check of the compiled operators" 20 \
  "$PY" benchmarks/gpu.py selfcheck --device "$DEVICE" --rounds $((2 - DRY))

# The CUDA tests by keyword: those marked cuda, those with a cuda parameter, and any named for CUDA.
if ((DRY)); then  # collected, and skipped here with the reason
  step "CUDA tests: collected" 30 "$PY" -m pytest -qq -k cuda tests -p no:cacheprovider --collect-only
else
  step "CUDA tests" 75 env NST_FAST_SELF_CHECK=0 "$PY" -m pytest -q -k cuda tests -p no:cacheprovider -rfE \
    --junitxml="$OUT/cuda-tests.xml"
fi

# racecheck and synccheck watch this project's kernels only (they concern shared memory and barriers);
# memcheck and initcheck watch every kernel, torch's too, which write what ours read.
SANITIZE=("$PY" benchmarks/gpu.py sanitize --device "$DEVICE")
if ((DRY)); then
  step "compute-sanitizer's workload (without compute-sanitizer)" 20 "${SANITIZE[@]}"
else
  OURS=()
  compute-sanitizer --help 2>&1 | grep -q -- '--kernel-name ' && OURS=(--kernel-name kns=nst_fast)
  for tool in memcheck:20 initcheck:20 racecheck:15 synccheck:15; do
    name=${tool%:*} only=()
    [[ $name == racecheck || $name == synccheck ]] && only=("${OURS[@]}")
    step "compute-sanitizer $name" "${tool#*:}" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 NST_FAST_SELF_CHECK=0 \
      compute-sanitizer --tool "$name" --error-exitcode 1 --print-limit 20 "${only[@]}" "${SANITIZE[@]}"
  done
fi

echo "== gpu_check: $FAILED step(s) failed, $SECONDS s; output in $OUT"
((FAILED == 0))
