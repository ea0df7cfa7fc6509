"""The kernels wing: how a generated module's per-neuron primitives are computed.

A generated network with the reverse pass (`--backward generated`) calls its per-neuron
primitives (`weighted_relu`, `gather`, `dots`, `conv_batch_norm`, ...) by global name at run
time, so replacing the module's globals is enough to route every call through a faster
kernel. This package is the front door to that swap; the backends beside it only describe
their kernels as data and never import this file back:

- `cpu`: dagc's C++ kernels (`cpu.cpp`, built with the system compiler, loaded by ctypes);
- `triton`: Triton kernels for the edge primitives on a GPU.

A backend module defines `REQUIRED` and `OPTIONAL` (the primitive names it replaces),
`available()` / `unavailable_reason()`, and `kernels(**options)`: a table of primitive name
-> (fast function, accepts), where `accepts(*args)` says whether the fast function can take
this call. Every other call goes to the module's own torch function, which is kept on the
module, once, whichever backend came first, and comes back with `uninstall`.

Imports run one way: studies -> the training core -> kernels, never back up.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType

import torch

from dagc.compiler.errors import DagcError

__all__ = ["BACKENDS", "backend", "install", "uninstall", "use_kernels"]

# --kernels choice -> the backend module (in this package) that implements it.
BACKENDS = {"cpp": "cpu", "triton": "triton"}
# The module attribute that keeps the torch functions.
ORIGINALS = "_dagc_torch_primitives"


def backend(choice: str) -> ModuleType:
    """The backend module for a --kernels choice ("cpp" or "triton")."""
    return importlib.import_module(f".{BACKENDS[choice]}", __name__)


def _dispatcher(
    name: str, original: Callable, fast: Callable, accepts: Callable, label: str
) -> Callable:
    def dispatch(*args):
        return fast(*args) if accepts(*args) else original(*args)

    dispatch.__name__ = dispatch.__qualname__ = name
    dispatch.__doc__ = f"dagc's {label} `{name}` where usable, else the module's own."
    dispatch.__wrapped__ = original
    return dispatch


def install(module, choice: str, **options):
    """Replace `module`'s per-neuron primitives with dispatchers to the `choice` backend's
    kernels ("cpp" or "triton"; `options` go to the backend's `kernels`, e.g. Triton's
    force=True for CPU tensors under TRITON_INTERPRET=1). Raises AttributeError when the
    module lacks a primitive the backend requires, and whatever the backend raises when it
    cannot load (the C++ one: KernelBuildError). Installing twice, or one backend after
    another, wraps the module's own functions, never an earlier dispatcher. Returns the
    module."""
    chosen = backend(choice)
    table = chosen.kernels(**options)
    missing = [n for n in chosen.REQUIRED if not callable(getattr(module, n, None))]
    if missing:
        raise AttributeError(f"{module.__name__} defines no {', '.join(missing)}")
    originals = module.__dict__.setdefault(ORIGINALS, {})
    for name in (*chosen.REQUIRED, *chosen.OPTIONAL):
        if name not in originals and callable(getattr(module, name, None)):
            originals[name] = getattr(module, name)
    for name, original in originals.items():
        if name in table:
            fast, accepts = table[name]
            setattr(module, name, _dispatcher(name, original, fast, accepts, choice))
        else:  # a primitive an earlier backend took and this one does not
            setattr(module, name, original)
    return module


def uninstall(module):
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
    uninstall(module)  # a module imported before may carry an earlier choice
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
        if device.type != "cuda" or not backend("triton").available():
            raise DagcError(
                "--kernels triton needs a CUDA device and Triton (try --kernels torch)"
            )
        install(module, "triton")
        return "triton"
    if device.type != "cpu":
        raise DagcError("--kernels cpp runs on the CPU (try --kernels torch)")
    reason = backend("cpp").unavailable_reason()  # builds them on first use (seconds)
    if reason is None:
        install(module, "cpp")
        return "cpp"
    if choice == "cpp":
        raise DagcError(f"--kernels cpp: {reason} (try --kernels torch)")
    if main:
        print(
            f"dagc: C++ kernels unavailable ({reason}); using torch's ops",
            file=sys.stderr,
        )
    return "torch"
