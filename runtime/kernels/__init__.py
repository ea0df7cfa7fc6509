"""The kernels wing: how a generated module's per-neuron primitives are computed.

A generated network with the reverse pass (`--backward generated`) calls its per-neuron
primitives (`weighted_relu`, `gather`, `dots`, `conv_batch_norm`, ...) by global name at run
time, so replacing the module's globals is enough to route every call through a faster
kernel. This package is the front door to that swap; the backends beside it only describe
their kernels as data and never import this file back:

- `engine`: the CPU engine, the whole neuron DAG as one native call per pass (`engine.cpp`),
  with the C++ kernels for whatever runs node by node;
- `cpu`: dagc's C++ kernels per neuron (`cpu.cpp`);
- `triton`: Triton kernels for the edge primitives on a GPU.
(`native.py` builds the C++ sources with the system compiler and loads them by ctypes.)

A backend module defines `REQUIRED` and `OPTIONAL` (the module functions it replaces),
`available()` / `unavailable_reason()`, and `kernels(module, **options)`: a table of name
-> (fast function, accepts), where `accepts(*args)` says whether the fast function can take
this call. Every other call goes to the module's own torch function, which is kept on the
module, once, whichever backend came first, and comes back with `uninstall`.

Imports run one way: studies -> the training core -> kernels, never back up.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from dagc.compiler.errors import DagcError

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "backend",
    "engine_hint",
    "install",
    "installed",
    "uninstall",
    "use_kernels",
]

# --kernels choice -> the backend module (in this package) that implements it.
BACKENDS = {"engine": "engine", "cpp": "cpu", "triton": "triton"}
# --precision: how activations are stored (fp32, or bf16 with fp32 arithmetic: the engine).
PRECISIONS = ("fp32", "bf16")
# The module attributes that keep the torch functions, and what was installed.
ORIGINALS = "_dagc_torch_primitives"
INSTALLED = "_dagc_kernels"


def backend(choice: str) -> ModuleType:
    """The backend module for a --kernels choice ("engine", "cpp" or "triton")."""
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
    """Replace `module`'s functions with dispatchers to the `choice` backend's kernels
    ("engine", "cpp" or "triton"; `options` go to the backend's `kernels`: the engine's
    precision="bf16", Triton's force=True for CPU tensors under TRITON_INTERPRET=1). Raises
    AttributeError when the module lacks a function the backend requires, and whatever the
    backend raises when it cannot (KernelBuildError: no library; DagcError: a module or an
    option it cannot take). Installing twice, or one backend after another, wraps the
    module's own functions, never an earlier dispatcher. Returns the module."""
    chosen = backend(choice)
    table = chosen.kernels(module, **options)
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
        else:  # a function an earlier backend took and this one does not
            setattr(module, name, original)
    module.__dict__[INSTALLED] = (choice, dict(options))
    return module


def installed(module) -> tuple[str, dict] | None:
    """The backend installed in `module` and its options, or None (its own functions)."""
    return module.__dict__.get(INSTALLED)


def uninstall(module):
    """Put the module's own torch functions back. Returns the module. (Not between a
    forward pass and its backward: the module's own reverse pass cannot read what a
    backend's forward saved.)"""
    for name, function in module.__dict__.pop(ORIGINALS, {}).items():
        setattr(module, name, function)
    module.__dict__.pop(INSTALLED, None)
    return module


def use_kernels(
    choice: str,
    module,
    device: torch.device,
    path: str,
    main: bool = True,
    precision: str = "fp32",
) -> str:
    """Swap the module's functions for dagc's kernels as `choice` asks (auto: the CPU
    engine on a CPU when it builds, else the C++ kernels; engine; cpp; triton; torch) with
    activations stored in `precision`; return which ones run ("torch", "engine", "cpp" or
    "triton"), or a DagcError saying in one line why they cannot. Every command that runs
    a network calls this, so training, `dagc eval` and the lesion scans compute with the
    same kernels (and agree to the image)."""
    uninstall(module)  # a module imported before may carry an earlier choice
    if precision not in PRECISIONS:
        raise DagcError(f"--precision must be one of {', '.join(PRECISIONS)}")
    generated = has_generated_backward(module)
    on_cpu = device.type == "cpu"
    if choice == "torch" or (choice == "auto" and not (generated and on_cpu)):
        return _fp32_only("torch", precision)
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
        return _fp32_only("triton", precision)
    if not on_cpu:
        raise DagcError(f"--kernels {choice} runs on the CPU (try --kernels torch)")
    if choice in ("auto", "engine"):
        reason = backend("engine").unavailable_reason()  # builds it on first use
        if reason is None:
            install(module, "engine", precision=precision)
            return "engine"
        if choice == "engine":
            raise DagcError(f"--kernels engine: {reason} (try --kernels torch)")
    _fp32_only("cpp" if choice == "cpp" else "torch", precision)
    reason = backend("cpp").unavailable_reason()
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


def engine_hint(choice: str, module, device: torch.device, path: str) -> str | None:
    """One line for a user whose `--kernels auto` on a CPU got torch's ops because the
    module has autograd's reverse pass: a slowdown of several times that would go unnoticed
    (None when it does not apply)."""
    if choice != "auto" or device.type != "cpu" or has_generated_backward(module):
        return None
    return (
        f"dagc: {Path(path).name} has autograd's reverse pass (--layout levels or "
        "--backward autograd), so it runs on torch's ops; compiled with the defaults it "
        "would run on the CPU engine, several times faster"
    )


def has_generated_backward(module) -> bool:
    """Whether the module carries the rendered reverse pass dagc's kernels replace."""
    return getattr(module, "BACKWARD", "autograd") == "generated"


def _fp32_only(kernels: str, precision: str) -> str:
    """`kernels`, when they can store activations in `precision` (only the engine stores
    bf16); else the one-line error."""
    if precision != "fp32":
        raise DagcError(
            f"--precision {precision} needs dagc's CPU engine (--kernels auto or engine, "
            f"a CPU, a module compiled with --backward generated), not {kernels}; "
            "on CUDA use --amp bf16"
        )
    return kernels
