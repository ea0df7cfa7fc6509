"""A whole training step (forward, backward, optimizer) captured as one CUDA graph.

A 282-node network launches several thousand small kernels per step; on a GPU the launches,
not the arithmetic, set the pace of eager PyTorch. Replaying a captured graph launches them
all at once, with no compiler in the loop (torch.compile's warm-up is minutes for this graph).
Requirements the caller meets: the optimizer is built with capturable=True, gradients are
None before capture, and each step's batch is copied into the static input tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GraphedStep:
    """`step(x, y)` runs `loss_fn(model(x), y)`, backward and `optimizer.step()` by replay.

    Eager steps on a side stream must come first (CUDA graphs require it; they also train,
    so a caller counts them as iterations): the first `warmup_steps` calls are such steps,
    or a caller runs `warmup()` itself. Returns the static loss tensor.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        example_x: torch.Tensor,
        example_y: torch.Tensor,
        autocast_dtype: torch.dtype | None = None,
        warmup_steps: int = 0,
    ):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.warmup_left = warmup_steps
        self.autocast_dtype = autocast_dtype
        self.static_x = example_x.clone()
        self.static_y = example_y.clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_loss: torch.Tensor | None = None

    def _eager(self) -> torch.Tensor:
        with torch.autocast(
            "cuda",
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
            cache_enabled=False,  # autocast's weight cache must not outlive a capture
        ):
            loss = self.loss_fn(self.model(self.static_x), self.static_y)
        loss.backward()
        self.optimizer.step()
        return loss

    def warmup(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One eager step on a side stream (before capture); it trains like any step."""
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._eager().detach()
        torch.cuda.current_stream().wait_stream(side)
        return loss

    def capture(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = self._eager().detach()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.warmup_left:
            self.warmup_left -= 1
            return self.warmup(x, y)
        if self.graph is None:
            self.capture()
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss


def capture_forward(model: torch.nn.Module, example_x: torch.Tensor, warmup: int = 2):
    """An inference-only graph: returns f(x) -> logits by replay (model in eval mode)."""
    static_x = example_x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmup):
            model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = model(static_x)

    def run(x: torch.Tensor) -> torch.Tensor:
        static_x.copy_(x)
        graph.replay()
        return static_out

    return run
