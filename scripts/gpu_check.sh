#!/usr/bin/env bash
# One GPU session's checks (docs/performance.md): CUDA-graph step == eager step, `dagc bench`
# on CUDA, then the paper's 15,000-iteration hermaphrodite MNIST run for as long as allowed.
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

echo "== dagc bench (78 channels, batch 100)"
timeout 300 $DAGC bench generated/hermaphrodite_net.py --device cuda --steps 20 --warmup 3 \
  --modes interpreter,flat,levels,flat+cudagraph,levels+cudagraph,flat+bf16+cudagraph,flat+compile \
  --mode-timeout 150 --json "$OUT/bench-cuda.json" 2>&1 | tee "$OUT/bench.txt"

echo "== the paper's protocol: 15,000 iterations, MNIST, 78 channels"
timeout "${TRAIN_SECONDS:-190}" $DAGC train generated/hermaphrodite_net.py --dataset mnist \
  --data-dir .data --out /tmp/run --quiet 2>&1 | tail -5 | tee "$OUT/train.txt"
cp /tmp/run/summary.json /tmp/run/metrics.jsonl /tmp/run/accuracy.png "$OUT/" 2>/dev/null
ls "$OUT"
