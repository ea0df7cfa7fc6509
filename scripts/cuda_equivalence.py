"""The generated module against the reference interpreter on one device, for each kernel
backend: outputs, every parameter's gradient and BatchNorm's running statistics, in float32,
in train and eval mode. The GPU campaign's first check (scripts/gpu_campaign.sh): no GPU has
run the generated reverse pass with the Triton kernels since it landed.

    python scripts/cuda_equivalence.py --device cuda --kernels torch,triton
    python scripts/cuda_equivalence.py --device cpu --kernels torch,cpp,engine   # here

Prints one line per (kernels, mode) with the largest relative differences and exits 1 when
one is above --tolerance (relative to the largest value of the same tensor: the measure of
dagc.runtime.equivalence, which the CPU tests use too). TF32 is switched off: it would
round the convolutions of both sides to 10 bits.
"""

from __future__ import annotations

import argparse
import sys

import torch

from dagc.runtime import kernels as dispatch
from dagc.runtime.equivalence import against_interpreter, worst_by_kind
from dagc.runtime.loading import load_generated


def compare(path: str, kernels: str, train: bool, device: torch.device, channels: int):
    """The largest relative difference of each kind (output, gradient, buffer) with
    `kernels` installed in the generated module."""
    module = load_generated(path)
    if kernels != "torch":
        dispatch.install(module, kernels)
    try:
        found = against_interpreter(
            module, train, device=device, batch=4, channels=channels
        )
    finally:
        dispatch.uninstall(module)
    return worst_by_kind(found)


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
