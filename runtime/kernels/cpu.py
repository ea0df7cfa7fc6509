"""The C++ backend: dagc's kernels for a generated network's per-neuron work on the CPU.

A generated network with the reverse pass (`--backward generated`) calls five plain functions
at module level, once per neuron: `weighted_relu`, `gather`, `dots` (the edge work) and
`conv_batch_norm`, `conv_batch_norm_backward` (the node's convolution and BatchNorm). Their
torch versions make several passes over the activations per call: an in-place `addcmul_` per
edge reads the accumulator and the input and writes the accumulator, and torch's depthwise
convolution on 14 x 14 planes runs far below the memory speed. `cpu.cpp` beside this file
does the same work with each input read once and each output written once (docs/kernels.md
has the passes and the measurements); `kernels()` lists them for the dispatch in
`dagc.runtime.kernels`, which swaps them in (`install(module, "cpp")`).

The kernels are built on first use with the system's C++ compiler (`$CXX`, else `c++`,
`g++` or `clang++`; OpenMP for the two threads) into a cache folder (`$DAGC_KERNEL_CACHE`,
else `~/.cache/dagc/kernels`), keyed by the source, the compiler and this CPU, and loaded
with ctypes: nothing to install, and the generated file still imports only torch.
Without a compiler, `available()` is False and `unavailable_reason()` says why.

Calls the kernels cannot take fall back to the module's own torch function: other dtypes
than float32, non-contiguous tensors, mixed shapes, and tensors that need autograd while
grad mode is on (the kernels record no graph). Results are bitwise the same for any thread
count; they are not bitwise torch's (float32 sums in another order, float64 block totals
for the reductions), within float32 rounding of them (tests/kernels/test_cpu_kernels.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = [
    "available",
    "unavailable_reason",
    "build",
    "weighted_relu",
    "gather",
    "dots",
    "conv_batch_norm",
    "conv_batch_norm_backward",
    "kernels",
    "REQUIRED",
    "OPTIONAL",
]

SOURCE = Path(__file__).with_name("cpu.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
# The edge primitives every generated module with the reverse pass defines, then the
# convolution primitives that modules generated since the C++ kernels define.
REQUIRED = ("weighted_relu", "gather", "dots")
OPTIONAL = ("conv_batch_norm", "conv_batch_norm_backward")

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "dagc_weighted_sum": [_P, _P, _P, _I64, _I64, _INT, _INT],
    "dagc_dots": [_P, _P, _P, _I64, _I64, _INT, _P],
    "dagc_conv_batch_norm": [_P] * 8 + [_I64] * 4 + [_INT, ctypes.c_double, _INT, _P],
    "dagc_conv_batch_norm_backward": [_P] * 11 + [_I64] * 4 + [_INT, _INT, _INT, _P],
}
_BLOCK = 4096  # kBlock in cpu.cpp: the dots' scratch has one value per block

_library: ctypes.CDLL | None = None
_failure: str | None = None


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be built or loaded (no compiler, or it failed)."""


# --- building -----------------------------------------------------------------------------


def find_compiler() -> str | None:
    """The C++ compiler to use: $CXX, else the first of c++, g++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"]) or os.environ["CXX"]
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def cache_dir() -> Path:
    if os.environ.get("DAGC_KERNEL_CACHE"):
        return Path(os.environ["DAGC_KERNEL_CACHE"])
    return Path.home() / ".cache" / "dagc" / "kernels"


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags (Linux), else the
    machine name, so a cache shared between different CPUs never loads a foreign build."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


def _build_key(compiler: str) -> str:
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), version.encode()):
        digest.update(part)
    digest.update(" ".join(FLAGS).encode())
    digest.update(_cpu_identity().encode())
    return digest.hexdigest()[:16]


def build() -> Path:
    """Compile cpu.cpp into the cache unless it is there already; return the
    shared library's path. Raises KernelBuildError with the reason."""
    compiler = find_compiler()
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (set CXX, or install g++)")
    target = cache_dir() / f"dagc_cpu_kernels_{_build_key(compiler)}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: a concurrent or interrupted build never
    # leaves a half-written library under the final name.
    handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", partial],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise KernelBuildError(
                f"{Path(compiler).name} failed to build the kernels: "
                + (message[-1] if message else f"exit code {result.returncode}")
            )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _load() -> ctypes.CDLL:
    """The loaded kernels (built on the first call); KernelBuildError if impossible."""
    global _library, _failure
    if _library is not None:
        return _library
    if _failure is not None:
        raise KernelBuildError(_failure)
    try:
        library = ctypes.CDLL(str(build()))
        for name, argtypes in _SIGNATURES.items():
            function = getattr(library, name)
            function.argtypes, function.restype = argtypes, None
    except (KernelBuildError, OSError, AttributeError) as error:
        _failure = str(error)
        raise KernelBuildError(_failure) from None
    _library = library
    return library


def available() -> bool:
    """Whether the kernels can be used here (builds them on the first call)."""
    try:
        _load()
    except KernelBuildError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why the kernels cannot be used here, or None when they can."""
    try:
        _load()
    except KernelBuildError as error:
        return str(error)
    return None


# --- the primitives -------------------------------------------------------------------------


def _pointers(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
    return (_P * len(tensors))(*(t.data_ptr() for t in tensors))


def _threads() -> int:
    return torch.get_num_threads()


def _weighted_sum(w: torch.Tensor, inputs: Sequence[torch.Tensor], relu: bool):
    out = torch.empty_like(inputs[0])
    weights = w.detach().contiguous()
    _load().dagc_weighted_sum(
        out.data_ptr(),
        _pointers(inputs),
        weights.data_ptr(),
        len(inputs),
        out.numel(),
        int(relu),
        _threads(),
    )
    return out


def weighted_relu(w: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """relu(sum_j w[j] * inputs[j]): one pass over the inputs."""
    return _weighted_sum(w, inputs, True)


def gather(w: torch.Tensor, *grads: torch.Tensor) -> torch.Tensor:
    """sum_j w[j] * grads[j]: one pass over the gradients."""
    return _weighted_sum(w, grads, False)


def dots(h: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """float32 (k,): dots[j] = sum(h * inputs[j]); h and each input read once."""
    n, k = h.numel(), len(inputs)
    out = torch.empty(k, dtype=torch.float32)
    scratch = torch.empty(k * -(-n // _BLOCK), dtype=torch.float64)
    _load().dagc_dots(
        out.data_ptr(),
        h.data_ptr(),
        _pointers(inputs),
        k,
        n,
        _threads(),
        scratch.data_ptr(),
    )
    return out


def _channel_stats(bn_mean, bn_var, eps) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval mode's BatchNorm statistics: the running mean and 1 / sqrt(running var + eps)."""
    return bn_mean.detach().clone(), torch.rsqrt(bn_var.detach() + eps)


def conv_batch_norm(x, weight, bn_weight, bn_bias, bn_mean, bn_var, training, eps):
    """A node's depthwise 3x3 conv and BatchNorm (the generated module's conv_batch_norm):
    (y, out, mean, invstd), the batch statistics taken while y is written."""
    batch, channels = x.shape[:2]
    y, out = torch.empty_like(x), torch.empty_like(x)
    if training:
        mean, invstd = torch.empty(channels), torch.empty(channels)
    else:
        mean, invstd = _channel_stats(bn_mean, bn_var, eps)
    scratch = torch.empty(batch * channels * 2 + channels * 2, dtype=torch.float64)
    _load().dagc_conv_batch_norm(
        y.data_ptr(),
        out.data_ptr(),
        mean.data_ptr(),
        invstd.data_ptr(),
        x.data_ptr(),
        weight.detach().data_ptr(),
        bn_weight.detach().data_ptr(),
        bn_bias.detach().data_ptr(),
        *x.shape,
        int(training),
        float(eps),
        _threads(),
        scratch.data_ptr(),
    )
    return y, out, mean, invstd


def conv_batch_norm_backward(
    grad,
    x,
    y,
    weight,
    bn_weight,
    bn_mean,
    bn_var,
    mean,
    invstd,
    training,
    eps,
    relu_input,
):
    """conv_batch_norm's gradients at x (through x's ReLU with relu_input), the conv weight,
    bn_weight and bn_bias: one pass for BatchNorm's sums, one for everything else."""
    batch, channels = x.shape[:2]
    if not training:
        mean, invstd = _channel_stats(bn_mean, bn_var, eps)
    grad_x, grad_weight = torch.empty_like(x), torch.empty_like(weight)
    grad_bn_weight, grad_bn_bias = torch.empty(channels), torch.empty(channels)
    scratch = torch.empty(batch * channels * 11 + channels * 3, dtype=torch.float64)
    _load().dagc_conv_batch_norm_backward(
        grad_x.data_ptr(),
        grad_weight.data_ptr(),
        grad_bn_weight.data_ptr(),
        grad_bn_bias.data_ptr(),
        grad.data_ptr(),
        x.data_ptr(),
        y.data_ptr(),
        weight.detach().data_ptr(),
        bn_weight.detach().data_ptr(),
        mean.data_ptr(),
        invstd.data_ptr(),
        *x.shape,
        int(training),
        int(relu_input),
        _threads(),
        scratch.data_ptr(),
    )
    return grad_x, grad_weight, grad_bn_weight, grad_bn_bias


# --- when a call can take a kernel ------------------------------------------------------------


def _plain(t: torch.Tensor) -> bool:
    """A CPU float32 contiguous tensor that no autograd graph needs recorded for."""
    return (
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.is_contiguous()
        and not (t.requires_grad and torch.is_grad_enabled())
    )


def _activations(first: torch.Tensor, rest: Sequence[torch.Tensor]) -> bool:
    return (
        first.numel() > 0
        and _plain(first)
        and all(_plain(t) and t.shape == first.shape for t in rest)
    )


def _edge_weights(w: torch.Tensor, k: int) -> bool:
    return _plain(w) and w.dim() == 1 and w.shape[0] == k


def _conv_weight(weight: torch.Tensor, x: torch.Tensor) -> bool:
    return (
        x.dim() == 4 and _plain(weight) and tuple(weight.shape) == (x.shape[1], 1, 3, 3)
    )


def _channel_vectors(x: torch.Tensor, *vectors: torch.Tensor) -> bool:
    """Per-channel parameters and statistics of x's BatchNorm: plain, one value a channel."""
    return all(
        v is not None and _plain(v) and tuple(v.shape) == (x.shape[1],) for v in vectors
    )


def _accepts_sum(w, *inputs) -> bool:
    return (
        bool(inputs)
        and _activations(inputs[0], inputs[1:])
        and _edge_weights(w, len(inputs))
    )


def _accepts_dots(h, *inputs) -> bool:
    return bool(inputs) and _activations(h, inputs)


def _accepts_conv(x, weight, bn_weight, bn_bias, bn_mean, bn_var, training, eps):
    return (
        _activations(x, ())
        and _conv_weight(weight, x)
        and _channel_vectors(x, bn_weight, bn_bias, bn_mean, bn_var)
    )


def _accepts_conv_backward(grad, x, y, weight, bn_weight, bn_mean, bn_var, mean, invstd,
                           training, eps, relu_input):  # fmt: skip
    stats = (mean, invstd) if training else (bn_mean, bn_var)
    return (
        _activations(grad, (x, y))
        and _conv_weight(weight, x)
        and _channel_vectors(x, bn_weight, *stats)
    )


def kernels() -> dict[str, tuple[Callable, Callable[..., bool]]]:
    """Primitive name -> (C++ kernel, whether it takes a call's arguments), for the
    dispatch in dagc.runtime.kernels. Builds the library first if needed
    (KernelBuildError says why it cannot)."""
    _load()
    return {
        "weighted_relu": (weighted_relu, _accepts_sum),
        "gather": (gather, _accepts_sum),
        "dots": (dots, _accepts_dots),
        "conv_batch_norm": (conv_batch_norm, _accepts_conv),
        "conv_batch_norm_backward": (conv_batch_norm_backward, _accepts_conv_backward),
    }
