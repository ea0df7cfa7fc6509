"""Swapping a generated module's per-neuron primitives for faster kernels, and back.

A generated network with the reverse pass calls its per-neuron primitives (`weighted_relu`,
`gather`, `dots`, `conv_batch_norm`, ...) by global name at run time, so replacing the
module's globals is enough to route every call through a kernel library's dispatcher.
dagc.runtime.kernels (Triton) and dagc.runtime.cpu_kernels (C++) both swap through here; the
module's own torch functions are kept on it, once, whichever library came first.
"""

from __future__ import annotations

from collections.abc import Callable

ORIGINALS = (
    "_dagc_torch_primitives"  # the module attribute that keeps the torch functions
)


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
