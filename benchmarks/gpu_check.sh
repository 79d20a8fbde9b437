#!/usr/bin/env bash
# The GPU check of issue 7 on the device machine, in one call (see benchmarks/RESULTS.md,
# "How to run the GPU check"): correctness of every Triton kernel against its PyTorch
# reference (benchmarks/gpu_check.py), then their timings (benchmarks/kernels.py).
# Run from the repo root; results go to $OUT (the device tool's folder that comes back).
#
# The image's python3 has torch and triton but nothing can be fetched there, so nothing is
# installed except clbench itself, editable and without dependencies: `clbench.kernels`
# lives in kernels/ and only pyproject's package-dir mapping puts it under clbench.
# Avalanche is not in the image; gpu_check.py does without it (see its HOPE check).
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the folder for the results}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -5
"$PYTHON" -c "import clbench.kernels.dgd_rule" || { echo "clbench.kernels is not importable"; exit 1; }

status=0
# Caps keep the whole call under the tool's 600 s. gpu_check: ~1.5-3 min expected, mostly
# Triton compiles (64-token tiles at K = V = 64 take longest); it saves its JSON after
# every check, so a capped run still returns what it measured.
timeout 240 "$PYTHON" benchmarks/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log" || status=1
timeout 300 "$PYTHON" benchmarks/kernels.py --out "$OUT/kernels.md" 2>&1 | tee "$OUT/kernels.log" || status=1
echo "gpu_check.sh: exit $status (1: a check failed or a step timed out; see the logs)"
exit $status
