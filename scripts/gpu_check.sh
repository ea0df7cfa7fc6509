#!/usr/bin/env bash
# One GPU session's checks (docs/performance.md, docs/kernels.md): CUDA-graph step == eager
# step, the Triton kernels' tests and timings on CUDA, `dagc bench` on CUDA (autograd and
# generated backward, with and without the kernels), then the paper's hermaphrodite MNIST run
# with the Triton kernels for as long as allowed (TRAIN_SECONDS).
# Usage on a GPU machine, from the repository root (wheels for missing packages in .whl/,
# MNIST's four .gz files in .data/mnist/):  OUT=results bash scripts/gpu_check.sh
set -u
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install -e . failed"
DAGC="python3 -m dagc"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

echo "== graphed vs eager training steps (8 channels, 30 steps)"
timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/graph_check.txt"
import torch, torch.nn.functional as F
from dagc.runtime.loading import load_generated, build_model
from dagc.runtime.graphs import GraphedStep
mod = load_generated("generated/hermaphrodite_net.py")
g = torch.Generator().manual_seed(0)
xs = torch.randn(30, 100, 1, 28, 28, generator=g).cuda(); ys = torch.randint(0, 10, (30, 100), generator=g).cuda()
def run(graphed):
    torch.manual_seed(0); model = build_model(mod, channels=8).cuda()
    lr = torch.tensor(0.004, device="cuda") if graphed else 0.004
    opt = torch.optim.Adam(model.parameters(), lr=lr, capturable=graphed)
    loss_fn = lambda out, t: F.nll_loss(out.float(), t)
    step = GraphedStep(model, opt, loss_fn, xs[0], ys[0]) if graphed else None
    losses = []
    for i in range(30):
        if graphed:
            losses.append((step.warmup(xs[i], ys[i]) if i < 3 else step(xs[i], ys[i])).item())
        else:
            opt.zero_grad(set_to_none=True); loss = loss_fn(model(xs[i]), ys[i]); loss.backward(); opt.step(); losses.append(loss.item())
    return losses, torch.cat([p.detach().flatten() for p in model.parameters()])
(le, pe), (lg, pg) = run(False), run(True)
print("eager  losses", [round(v, 5) for v in le[::5]])
print("graphed losses", [round(v, 5) for v in lg[::5]])
print("max |loss diff|", max(abs(a - b) for a, b in zip(le, lg)), "max |param diff|", (pe - pg).abs().max().item())
PY

echo "== Triton kernels on CUDA: tests (no interpreter), then timings against the torch ops"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py 2>&1 | tail -5 | tee "$OUT/triton_tests.txt"
timeout 120 python3 scripts/kernels_check.py --device cuda --json "$OUT/kernels-cuda.json" 2>&1 | tail -30 | tee "$OUT/kernels.txt"

echo "== dagc bench (78 channels, batch 100)"
timeout 300 $DAGC bench generated/hermaphrodite_net.py --device cuda --steps 20 --warmup 3 \
  --modes interpreter,flat,generated,flat+cudagraph,generated+cudagraph,generated+triton+cudagraph,generated+compile \
  --mode-timeout 120 --json "$OUT/bench-cuda.json" 2>&1 | tee "$OUT/bench.txt"

echo "== the paper's protocol: MNIST, 78 channels, Triton kernels, paused at the time limit"
$DAGC train generated/hermaphrodite_net.py --dataset mnist --kernels "${KERNELS:-triton}" \
  --data-dir .data --out "$OUT/run" --resume --time-limit "${TRAIN_SECONDS:-190}s" --quiet 2>&1 | tail -5 | tee "$OUT/train.txt"
ls "$OUT"
