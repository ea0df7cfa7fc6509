#!/usr/bin/env bash
# One GPU slot of the full-protocol campaign (docs/reproduction/full, README: "The paper's
# full protocol on a CPU"), in the pattern of scripts/gpu_check.sh:
#   check: the CUDA path against the reference interpreter (scripts/cuda_equivalence.py:
#          the generated reverse pass with torch's ops and with the Triton kernels; outputs,
#          gradients, running statistics) and the Triton kernels' own tests on CUDA;
#   slot:  the campaign continued on CUDA for SLOT_MINUTES (the protocol, precision included,
#          comes from the folder's campaign.json; a partial run resumes from its CPU
#          checkpoint), then the folder packed as one file, $OUT/full.tar.
# A device call runs at most 10 minutes: run `check` and `slot` as two calls, or `all` with a
# short SLOT_MINUTES. Back here: tar -xf FILES_AT/full.tar -C docs/reproduction, then commit.
# Usage on the device machine, from the repository root (MNIST's and, for the Fashion-MNIST
# cells, Fashion-MNIST's .gz files in .data/<name>/; wheels for missing packages in .whl/):
#   OUT=results SLOT_MINUTES=8 bash scripts/gpu_campaign.sh [check|slot|all]
set -u
STEP=${1:-all}
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
CAMPAIGN=${CAMPAIGN:-docs/reproduction/full}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install -e . failed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

if [ "$STEP" = check ] || [ "$STEP" = all ]; then
  echo "== the generated module on CUDA against the interpreter (torch's ops, Triton kernels)"
  timeout 240 python3 scripts/cuda_equivalence.py --device cuda --kernels torch,triton \
    2>&1 | tee "$OUT/equivalence.txt"
  echo "== the Triton kernels' tests on CUDA"
  timeout 180 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_kernels.py \
    2>&1 | tail -5 | tee "$OUT/triton_tests.txt"
fi

if [ "$STEP" = slot ] || [ "$STEP" = all ]; then
  echo "== the campaign on CUDA for ${SLOT_MINUTES:-6} minutes"
  python3 -m dagc reproduce --out "$CAMPAIGN" --device cuda --data-dir .data \
    --time-limit "${SLOT_MINUTES:-6}m" 2>&1 | tail -20 | tee "$OUT/slot.txt"
  echo "exit ${PIPESTATUS[0]} (75: paused at the time limit)" | tee -a "$OUT/slot.txt"
  python3 -m dagc reproduce --out "$CAMPAIGN" --status | tee -a "$OUT/slot.txt"
  # Only the latest checkpoint of each run is in the folder (the trainer keeps one).
  tar -cf "$OUT/full.tar" -C "$(dirname "$CAMPAIGN")" "$(basename "$CAMPAIGN")"
fi
ls -la "$OUT"
