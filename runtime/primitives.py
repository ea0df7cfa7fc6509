"""Swapping a generated module's per-neuron primitives for faster kernels, and back.

A generated network with the reverse pass calls its per-neuron primitives (`weighted_relu`,
`gather`, `dots`, `conv_batch_norm`, ...) by global name at run time, so replacing the
module's globals is enough to route every call through a kernel library's dispatcher.
dagc.runtime.kernels (Triton) and dagc.runtime.cpu_kernels (C++) both swap through here; the
module's own torch functions are kept on it, once, whichever library came first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from dagc.compiler.errors import DagcError

# The module attribute that keeps the torch functions.
ORIGINALS = "_dagc_torch_primitives"


def swap(
    module,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    dispatching: Callable[[str, Callable], Callable | None],
):
    """Replace each primitive `name` of `module` with `dispatching(name, original)` (None:
    leave it), where `original` is always the module's own torch function, never an earlier
    dispatcher. Raises AttributeError when a required primitive is missing. Returns the
    module."""
    missing = [name for name in required if not callable(getattr(module, name, None))]
    if missing:
        raise AttributeError(f"{module.__name__} defines no {', '.join(missing)}")
    originals = module.__dict__.setdefault(ORIGINALS, {})
    for name in (*required, *optional):
        if name not in originals and callable(getattr(module, name, None)):
            originals[name] = getattr(module, name)
    for name, original in originals.items():
        replacement = dispatching(name, original)
        if replacement is not None:
            setattr(module, name, replacement)
    return module


def restore(module):
    """Put the module's own torch functions back. Returns the module."""
    for name, function in module.__dict__.pop(ORIGINALS, {}).items():
        setattr(module, name, function)
    return module


def use_kernels(
    choice: str, module, device: torch.device, path: str, main: bool = True
) -> str:
    """Swap the module's per-neuron primitives for dagc's kernels as `choice` asks (auto:
    the C++ kernels on a CPU when they build; cpp; triton; torch); return which ones run
    ("torch", "cpp" or "triton"), or a DagcError saying in one line why they cannot. Every
    command that runs a network calls this, so training, `dagc eval` and the lesion scans
    compute with the same kernels (and agree to the image)."""
    restore(module)  # a module imported before may carry an earlier choice
    generated = getattr(module, "BACKWARD", "autograd") == "generated"
    if choice == "torch" or (
        choice == "auto" and (not generated or device.type != "cpu")
    ):
        return "torch"
    if not generated:
        raise DagcError(
            f"--kernels {choice} needs a module compiled with --backward generated",
            path,
        )
    if choice == "triton":
        from . import kernels

        if device.type != "cuda" or not kernels.available():
            raise DagcError(
                "--kernels triton needs a CUDA device and Triton (try --kernels torch)"
            )
        kernels.install(module)
        return "triton"
    from . import cpu_kernels

    if device.type != "cpu":
        raise DagcError("--kernels cpp runs on the CPU (try --kernels torch)")
    reason = cpu_kernels.unavailable_reason()  # builds them on first use (seconds)
    if reason is None:
        cpu_kernels.install(module)
        return "cpp"
    if choice == "cpp":
        raise DagcError(f"--kernels cpp: {reason} (try --kernels torch)")
    if main:
        print(
            f"dagc: C++ kernels unavailable ({reason}); using torch's ops",
            file=sys.stderr,
        )
    return "torch"
