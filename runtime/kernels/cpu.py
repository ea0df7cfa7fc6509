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
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .native import KernelBuildError, NativeLibrary

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
    "KernelBuildError",
    "REQUIRED",
    "OPTIONAL",
]

SOURCE = Path(__file__).with_name("cpu.cpp")
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

_native = NativeLibrary(SOURCE, "dagc_cpu_kernels", _SIGNATURES, "the kernels")
build = _native.build
_load = _native.load
unavailable_reason = _native.unavailable_reason


def available() -> bool:
    """Whether the kernels can be used here (builds them on the first call)."""
    return unavailable_reason() is None


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


def kernels(module=None) -> dict[str, tuple[Callable, Callable[..., bool]]]:
    """Primitive name -> (C++ kernel, whether it takes a call's arguments), for the
    dispatch in dagc.runtime.kernels (the same for every module). Builds the library first
    if needed (KernelBuildError says why it cannot)."""
    _load()
    return {
        "weighted_relu": (weighted_relu, _accepts_sum),
        "gather": (gather, _accepts_sum),
        "dots": (dots, _accepts_dots),
        "conv_batch_norm": (conv_batch_norm, _accepts_conv),
        "conv_batch_norm_backward": (conv_batch_norm_backward, _accepts_conv_backward),
    }
