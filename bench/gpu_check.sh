#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA device whose python3 already holds a CUDA PyTorch
# (the project's .venv pins a CPU build): the tests marked `cuda`, the compiled-step check and the
# GPU benchmark (eager, then compiled), each stage under its own time limit, logs and RESULT lines
# under $OUT (default ./gpu-out). About 8-10 minutes on an H200, most of it compiling.
# Packages the machine lacks (pydantic, Ray and their needs) may come as wheels in .whl/ and
# archives .whl/*.tar.xz of unpacked packages (bench/gpu_wheels.sh makes them); they go to a private
# folder on PYTHONPATH. Device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"]).
#   bash bench/gpu_check.sh [population]   (default 256 networks per task for the benchmark)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
POP=${1:-256}
SITE=/tmp/nfopt-site
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  for t in .whl/*.tar.xz; do [ -e "$t" ] && tar xJf "$t" -C "$SITE"; done
fi
export PYTHONPATH="$PWD/platform:$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RAY_AUTH_MODE=disabled NFOPT_BUILD_DIR=/tmp/nfopt-native

stage() {  # stage NAME LIMIT_S CMD...: run, log to $OUT/NAME.log, report its exit status and time
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc $((SECONDS - t0))s; last lines:"
  tail -n 25 "$OUT/$name.log"
}

nvidia-smi -L 2>&1 | head -2
stage env 120 "$PY" -c "
import torch, nfopt
from nfopt.nn import _native
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))
print('native CPU kernels', _native.available(), _native._state['error'])
"
# test modules that import what the machine lacks (mlflow) fail to collect: the cuda ones still run
stage cuda_tests 420 "$PY" -m pytest -m cuda -q -p no:cacheprovider -o addopts= -o log_level=WARNING -rfEs \
  --durations=15 --continue-on-collection-errors tests
stage compiled_step 200 "$PY" bench/compiled_step.py
stage meta_throughput_cuda 300 "$PY" bench/meta_throughput.py --device cuda --population "$POP" --rounds 3 --steps 3 \
  --warmup 2
# the compiled unroll (one while_loop graph per 16 steps): what a GPU needs against eager's launches
stage meta_throughput_cuda_compiled 400 "$PY" bench/meta_throughput.py --device cuda --compile --population "$POP" \
  --rounds 3 --steps 3 --warmup 2
grep -h "^RESULT" "$OUT"/*.log
