#!/usr/bin/env bash
# Timing of one full-profile Split CIFAR-100 DER++ cell on the device machine (issue 16):
# benchmarks/gpu_cifar_full.py, 2 experiences x 2 epochs, amp off then on; results in $OUT.
# See benchmarks/RESULTS.md, "Split CIFAR-100 full profile on the GPU", for the call and
# for what the device image lacks (Avalanche and its import closure, and the CIFAR-100
# copy, which is over the 64 MiB the device tool carries).
#
# Needs, carried by the caller (`carry`): .gpu_wheels/ (a wheelhouse holding avalanche-lib
# 0.6.0 and every distribution its import closure needs that the image lacks) and
# .gpu_data/CIFAR100 (a CIFAR-100 copy in a layout clbench.scenarios.cifar100_data reads).
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
OUT=${OUT:?set OUT to the folder for the results}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
if ! "$PYTHON" -c "import avalanche" 2>/dev/null; then
  [ -d .gpu_wheels ] || { echo "avalanche is not importable and no .gpu_wheels/ was carried"; exit 2; }
  "$PYTHON" -m pip install -q --no-index --find-links .gpu_wheels avalanche-lib==0.6.0 2>&1 | tail -5
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -5
"$PYTHON" -c "import avalanche, clbench.runner" || { echo "avalanche or clbench is not importable"; exit 2; }
[ -d .gpu_data/CIFAR100 ] || { echo "no .gpu_data/CIFAR100 was carried"; exit 2; }

timeout 480 "$PYTHON" benchmarks/gpu_cifar_full.py --out "$OUT" --data-root .gpu_data \
  --experiences 2 --epochs 2 2>&1 | tee "$OUT/gpu_cifar_full.log"
status=$?
echo "gpu_cifar_full.sh: exit $status"
exit $status
