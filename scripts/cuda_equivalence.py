"""The generated module against the reference interpreter on one device, for each kernel
backend: outputs, every parameter's gradient and BatchNorm's running statistics, in float32,
in train and eval mode. The GPU campaign's first check (scripts/gpu_campaign.sh): no GPU has
run the generated reverse pass with the Triton kernels since it landed.

    python scripts/cuda_equivalence.py --device cuda --kernels torch,triton
    python scripts/cuda_equivalence.py --device cpu --kernels torch,cpp,engine   # here

Prints one line per (kernels, mode) with the largest relative differences and exits 1 when
one is above --tolerance (relative to the largest value of the same tensor, as
tests/test_reverse_pass.py measures on the CPU). TF32 is switched off: it would round the
convolutions of both sides to 10 bits.
"""

from __future__ import annotations

import argparse
import sys

import torch

from dagc.runtime import kernels as dispatch
from dagc.runtime.interpreter import InterpretedNet
from dagc.runtime.loading import build_model, load_generated


def randomised_state(model: torch.nn.Module, seed: int) -> dict:
    """Parameters and running statistics away from their initial values (ones and zeros
    would hide a swapped scale or shift)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            noise = torch.rand(value.shape, generator=generator, dtype=value.dtype)
            value = value + 0.5 * noise if "var" in name else value + noise - 0.5
        state[name] = value
    return state


def forward_and_grads(model, x):
    for parameter in model.parameters():
        parameter.grad = None
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[1], device=out.device)).sum().backward()
    return out.detach(), {n: p.grad.detach() for n, p in model.named_parameters()}


def relative(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    return ((a - b).abs().max() / a.abs().max().clamp_min(floor)).item()


def compare(path: str, kernels: str, train: bool, device: torch.device, channels: int):
    module = load_generated(path)
    torch.manual_seed(0)
    reference = InterpretedNet(module, aggregate="chain", channels=channels).to(device)
    state = randomised_state(reference, 0)
    reference.load_state_dict(state)
    model = build_model(module, channels=channels).to(device)
    model.load_state_dict(state)
    if kernels != "torch":
        dispatch.install(module, kernels)
    reference.train(train)
    model.train(train)
    x = torch.randn(4, *module.INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    x = x.to(device)
    try:
        expected, expected_grads = forward_and_grads(reference, x)
        out, grads = forward_and_grads(model, x)
    finally:
        dispatch.uninstall(module)
    largest = max(g.abs().max() for g in expected_grads.values())
    errors = {"output": relative(expected, out)}
    errors["gradients"] = max(
        relative(g, grads[n], largest.item() if n == "stem_bn.weight" else 1e-30)
        for n, g in expected_grads.items()
    )
    errors["running statistics"] = max(
        relative(getattr(reference, b), getattr(model, b))
        for b in ("node_bn_mean", "node_bn_var")
    )
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="generated/hermaphrodite_net.py")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--kernels", default="torch,triton")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    worst = 0.0
    for kernels in args.kernels.split(","):
        for train in (True, False):
            errors = compare(args.model, kernels, train, device, args.channels)
            worst = max(worst, *errors.values())
            shown = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
            mode = "train" if train else "eval"
            print(f"{device.type} {kernels:6s} {mode:5s}: {shown}", flush=True)
    verdict = "equal" if worst <= args.tolerance else "DIFFERENT"
    print(
        f"{verdict}: largest relative difference {worst:.1e} (tolerance {args.tolerance:g})"
    )
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
