"""The CUDA-graph training step trains like the eager one (runs only where CUDA is; the
same check's output from an H100 is in docs/results/gpu-h100/graph-vs-eager.txt)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dagc.runtime.graphs import GraphedStep
from dagc.runtime.loading import build_model, load_generated

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def train(path, graphed: bool, xs, ys, steps: int = 12):
    torch.manual_seed(0)
    model = build_model(load_generated(path), channels=4).cuda()
    lr = torch.tensor(0.004, device="cuda") if graphed else 0.004
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, capturable=graphed)

    def loss_fn(out, target):
        return F.nll_loss(out.float(), target)

    step = GraphedStep(model, optimizer, loss_fn, xs[0], ys[0]) if graphed else None
    losses = []
    for i in range(steps):
        if graphed:
            loss = step.warmup(xs[i], ys[i]) if i < 3 else step(xs[i], ys[i])
        else:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xs[i]), ys[i])
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_graphed_steps_follow_the_eager_loss_curve(compile_to):
    _, path = compile_to("hermaphrodite", kind="er", seed=1, nodes=20)
    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(12, 16, 1, 28, 28, generator=generator).cuda()
    ys = torch.randint(0, 10, (12, 16), generator=generator).cuda()
    eager, graphed = train(path, False, xs, ys), train(path, True, xs, ys)
    assert eager[0] == pytest.approx(graphed[0], rel=1e-5)
    assert eager == pytest.approx(graphed, rel=1e-2)
    assert graphed[-1] != graphed[3]  # replays train: the loss moves
