"""A generated module against the reference interpreter (runtime/interpreter.py): the output,
every parameter's gradient and every running statistic after one forward and backward pass
from the same non-trivial state. The tests use it on the CPU in float64 and float32;
scripts/cuda_equivalence.py uses it on a GPU, where the Triton kernels run.

Each difference is relative to the largest value of the tensor it belongs to, so one
tolerance serves tensors of any scale. One exception: stem_bn.weight's gradient is zero in
exact arithmetic (every path from it meets another train-mode BatchNorm, which cancels any
rescaling), so what both sides hold is rounding noise; it is measured against the largest
gradient of the whole model instead.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch

from .interpreter import InterpretedNet
from .loading import build_model

# Gradients that are rounding noise around zero (see the module docstring).
NOISE_GRADIENTS = ("stem_bn.weight",)


def randomise(model: torch.nn.Module, seed: int) -> dict:
    """`model`'s state with non-trivial edge weights, BatchNorm affines and running
    statistics (initial ones and zeros would hide a swapped scale or shift, and eval mode
    would test nothing)."""
    generator = torch.Generator().manual_seed(seed)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    state["node_bn_mean"].normal_(0, 0.1, generator=generator)
    state["node_bn_var"].uniform_(0.5, 1.5, generator=generator)
    state["node_bn_weight"].uniform_(0.5, 1.5, generator=generator)
    state["node_bn_bias"].normal_(0, 0.1, generator=generator)
    state["edge_weight"].normal_(0, 1, generator=generator)
    return state


def output_and_gradients(
    model: torch.nn.Module, x: torch.Tensor, runner: Callable | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`model`'s output for `x` and its parameters' gradients of a fixed, class-weighted sum
    of it; called through `runner` (e.g. a torch.compile wrapper of `model`) when given."""
    for parameter in model.parameters():
        parameter.grad = None
    out = (model if runner is None else runner)(x)
    weights = torch.linspace(-1, 1, out.shape[1], dtype=out.dtype, device=out.device)
    (out * weights).sum().backward()
    gradients = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.detach(), gradients


def relative(expected: torch.Tensor, got: torch.Tensor, floor: float = 1e-30) -> float:
    """Largest absolute difference over the largest magnitude of `expected` (or `floor`)."""
    scale = expected.abs().max().clamp_min(floor)
    return ((expected - got).abs().max() / scale).item()


def differences(
    reference: torch.nn.Module,
    model: torch.nn.Module,
    x: torch.Tensor,
    runner: Callable | None = None,
) -> dict[str, float]:
    """One pass of each from their current states; the relative difference of the output
    ("output"), each gradient ("gradient NAME") and each floating-point buffer afterwards
    ("buffer NAME": train mode moves the running statistics)."""
    expected, expected_gradients = output_and_gradients(reference, x)
    out, gradients = output_and_gradients(model, x, runner)
    largest = max(g.abs().max().item() for g in expected_gradients.values())
    found = {"output": relative(expected, out)}
    for name, gradient in expected_gradients.items():
        floor = largest if name in NOISE_GRADIENTS else 1e-30
        found[f"gradient {name}"] = relative(gradient, gradients[name], floor)
    buffers = dict(model.named_buffers())
    for name, buffer in reference.named_buffers():
        if buffer.is_floating_point() and name in buffers:
            found[f"buffer {name}"] = relative(buffer, buffers[name])
    return found


def against_interpreter(
    module: ModuleType,
    train: bool,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    batch: int = 3,
    **overrides,
) -> dict[str, float]:
    """`differences` between the reference interpreter and the generated model of `module`
    (with whatever kernels are installed in it), both from `randomise(seed)`; `overrides`
    (e.g. channels=8) go to both constructors."""
    torch.manual_seed(seed)
    reference = InterpretedNet(module, aggregate="chain", **overrides)
    reference = reference.to(device=device, dtype=dtype)
    state = randomise(reference, seed)
    reference.load_state_dict(state)
    model = build_model(module, **overrides).to(device=device, dtype=dtype)
    model.load_state_dict(state)
    reference.train(train)
    model.train(train)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *module.INPUT_SHAPE, generator=generator, dtype=dtype)
    return differences(reference, model, x.to(device))


def worst_by_kind(found: dict[str, float]) -> dict[str, float]:
    """The largest difference of each kind: output, gradient, buffer."""
    worst: dict[str, float] = {}
    for key, value in found.items():
        kind = key.split(" ")[0]
        worst[kind] = max(worst.get(kind, 0.0), value)
    return worst
