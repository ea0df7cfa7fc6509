"""The Triton backend: GPU kernels for a generated module's edge primitives (sums, gathers, dots).

A generated network defines three plain functions at module level and calls them once per
neuron; this module provides faster implementations of the same contract, and `kernels()`
lists them for the dispatch in `dagc.runtime.kernels` (`install(module, "triton")`). All tensors of one call share one shape (B, C, H, W), are contiguous, on one
device and of one dtype (float32 or bfloat16); `w` is a 1-D float32 tensor of length k (a view
of a larger tensor is fine: its stride is passed, nothing is copied).

- `weighted_relu(w, *inputs)`: relu(sum_j w[j] * inputs[j]), inputs' shape and dtype.
- `gather(w, *grads)`: sum_j w[j] * grads[j], grads' shape and dtype.
- `dots(h, *inputs)`: float32 (k,), dots[j] = sum(h * inputs[j]).
- `relu_mask_dots(gp, p, *inputs)`: h = gp where p > 0 else 0, and dots(h, *inputs), in one
  pass over gp and p.

One kernel family serves any k: the k input addresses go into a small int64 table on the
device (filled by a tiny kernel that takes them as scalar arguments, so the fill is a kernel
launch that CUDA graphs capture like any other), and the main kernels loop over the table at
run time. k is a run-time argument excluded from Triton's specialisation, so no neuron causes a
recompile; the variants compiled are (op, dtype, address alignment) only. Every input is read
once, sums are accumulated in float32, and `dots` reduces in a fixed order (per-block partial
sums, then one program per edge summing its partials in block order): no atomics, so results
are bitwise reproducible for a given shape.

See docs/kernels.md for the design and the bytes moved.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

try:  # Triton is optional: the generated module and dagc run with torch alone.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = [
    "available",
    "interpreting",
    "weighted_relu",
    "gather",
    "dots",
    "relu_mask_dots",
    "kernels",
    "clear_table_cache",
    "compile_seconds",
    "CONFIG",
    "REQUIRED",
    "OPTIONAL",
]

REQUIRED = ("weighted_relu", "gather", "dots")

# Launch configuration. Chosen for the large case (batch 100 x 78 channels x 14 x 14 = 1.53 M
# elements per activation; 748 programs of 2048) and correct for any size (tails are masked).
# Not autotuned yet: that needs a GPU (docs/kernels.md).
CONFIG = {
    "wsum_block": 2048,  # elements per program of weighted_relu / gather
    "wsum_warps": 8,
    "dots_block": 2048,  # elements per program of the first dots stage (h held in registers)
    "dots_warps": 8,
    "reduce_block": 1024,  # partials per step of the second dots stage
    "reduce_warps": 4,
}

TABLE_SLOTS = 16  # addresses written per launch of the table-fill kernel

# First-call wall time (compile + first run, synchronised) of each kernel variant, keyed by
# "kernel[variant]". Triton caches compiled kernels on disk, so a second process pays less.
compile_seconds: dict[str, float] = {}

_DTYPES = (torch.float32, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Whether the Triton kernels can run on a GPU here (Triton importable and CUDA present)."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit(do_not_specialize=[f"a{i}" for i in range(TABLE_SLOTS)] + ["start"])
    def _fill_table_kernel(
        table,
        start,
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
    ):  # fmt: skip
        # Unused slots carry a copy of a real address (the table is padded to a whole number
        # of launches), so every launch has the same argument types and stores unconditionally.
        t = table + start
        tl.store(t + 0, a0)
        tl.store(t + 1, a1)
        tl.store(t + 2, a2)
        tl.store(t + 3, a3)
        tl.store(t + 4, a4)
        tl.store(t + 5, a5)
        tl.store(t + 6, a6)
        tl.store(t + 7, a7)
        tl.store(t + 8, a8)
        tl.store(t + 9, a9)
        tl.store(t + 10, a10)
        tl.store(t + 11, a11)
        tl.store(t + 12, a12)
        tl.store(t + 13, a13)
        tl.store(t + 14, a14)
        tl.store(t + 15, a15)

    @triton.jit
    def _input_pointer(table, j, ety: tl.constexpr, ALIGNED: tl.constexpr):
        """The j-th table entry as a pointer to `ety`, with a 16-byte alignment hint.

        The hint must sit on the pointer: on the int64 before the cast it does not reach
        Triton's alignment analysis, and the loads stay scalar (checked in sm_90 PTX).
        """
        pointer = tl.load(table + j).to(tl.pointer_type(ety))
        if ALIGNED:
            pointer = tl.multiple_of(pointer, 16)
        return pointer

    @triton.jit
    def _round_to_bf16(x):
        """float32 -> bfloat16 rounding to nearest even, by hand: Triton's interpreter casts
        float32 to bfloat16 by truncation (3.8), where compiled code rounds to nearest even.
        """
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)

    @triton.jit(do_not_specialize=["w", "w_stride", "k"])
    def _wsum_kernel(
        table,
        w,
        w_stride,
        out,
        n,
        k,
        RELU: tl.constexpr,
        ALIGNED: tl.constexpr,
        ROUND_BY_HAND: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # out[i] = (relu)(sum_j w[j] * x_j[i]) over one block of i; inputs in table order, four
        # independent loads in flight per step, float32 accumulator, one store.
        ety = out.dtype.element_ty
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        k4 = k - k % 4
        for j in range(0, k4, 4):
            p0 = _input_pointer(table, j, ety, ALIGNED)
            p1 = _input_pointer(table, j + 1, ety, ALIGNED)
            p2 = _input_pointer(table, j + 2, ety, ALIGNED)
            p3 = _input_pointer(table, j + 3, ety, ALIGNED)
            x0 = tl.load(p0 + offs, mask=mask, other=0.0).to(tl.float32)
            x1 = tl.load(p1 + offs, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(p2 + offs, mask=mask, other=0.0).to(tl.float32)
            x3 = tl.load(p3 + offs, mask=mask, other=0.0).to(tl.float32)
            acc += tl.load(w + j * w_stride).to(tl.float32) * x0
            acc += tl.load(w + (j + 1) * w_stride).to(tl.float32) * x1
            acc += tl.load(w + (j + 2) * w_stride).to(tl.float32) * x2
            acc += tl.load(w + (j + 3) * w_stride).to(tl.float32) * x3
        for j in range(k4, k):
            p = _input_pointer(table, j, ety, ALIGNED)
            x = tl.load(p + offs, mask=mask, other=0.0).to(tl.float32)
            acc += tl.load(w + j * w_stride).to(tl.float32) * x
        if RELU:
            acc = tl.maximum(
                acc, 0.0, propagate_nan=tl.PropagateNan.ALL
            )  # as torch.relu
        if ROUND_BY_HAND:
            tl.store(out + offs, _round_to_bf16(acc), mask=mask)
        else:
            tl.store(out + offs, acc.to(ety), mask=mask)

    @triton.jit(do_not_specialize=["k", "n_blocks"])
    def _dots_partial_kernel(
        table,
        h,
        p,
        h_out,
        partials,
        n,
        k,
        n_blocks,
        MASK: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # partials[j, block] = sum over the block of h * x_j. h is loaded once and kept in
        # registers for all k inputs; with MASK, h = where(p > 0, gp, 0) is computed from the
        # gradient `h` and the pre-activation `p` and also stored to h_out.
        ety = h.dtype.element_ty
        block = tl.program_id(0)
        offs = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        hv = tl.load(h + offs, mask=mask, other=0.0)
        if MASK:
            pv = tl.load(p + offs, mask=mask, other=0.0)
            hv = tl.where(pv > 0, hv, tl.zeros_like(hv))
            tl.store(h_out + offs, hv, mask=mask)
        hf = hv.to(tl.float32)
        for j in range(k):
            x = tl.load(
                _input_pointer(table, j, ety, ALIGNED) + offs, mask=mask, other=0.0
            )
            tl.store(
                partials + j * n_blocks + block, tl.sum(hf * x.to(tl.float32), axis=0)
            )

    @triton.jit(do_not_specialize=["n_blocks"])
    def _dots_reduce_kernel(partials, out, n_blocks, BLOCK: tl.constexpr):
        # out[j] = sum of partials[j, :], in a fixed order: block-strided float32 vector
        # accumulation, then one tree reduction of fixed shape.
        j = tl.program_id(0)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, n_blocks, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(
                partials + j * n_blocks + offs, mask=offs < n_blocks, other=0.0
            )
        tl.store(out + j, tl.sum(acc, axis=0))


def _require_triton() -> None:
    if triton is None:
        raise RuntimeError("dagc.runtime.kernels needs the `triton` package")


def _timed_launch(key: str, device: torch.device, launch: Callable[[], None]) -> None:
    """Run `launch`; on the first call of `key` in this process record its wall time (not
    during CUDA-graph capture, where synchronising is illegal)."""
    if key in compile_seconds or _capturing(device):
        launch()
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    launch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compile_seconds[key] = time.perf_counter() - start


def _check(tensors: Sequence[torch.Tensor], what: str) -> None:
    first = tensors[0]
    if first.dtype not in _DTYPES:
        raise TypeError(f"{what}: dtype {first.dtype} is not float32 or bfloat16")
    for t in tensors:
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"{what}: all tensors need one shape, dtype and device")
        if not t.is_contiguous():
            raise ValueError(f"{what}: tensors must be contiguous")


def _check_w(w: torch.Tensor, k: int, device: torch.device) -> None:
    if w.dim() != 1 or w.shape[0] != k:
        raise ValueError(f"w must be 1-D of length {k}, got shape {tuple(w.shape)}")
    if w.device != device:
        raise ValueError("w must be on the inputs' device")


# Eager calls reuse tables: a table only holds addresses, so it stays valid for the same
# tuple of addresses whatever the memory holds, and a training loop gets the same addresses
# from the caching allocator step after step. Bounded; cleared by clear_table_cache().
TABLE_CACHE_SIZE = 4096
_table_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def clear_table_cache() -> None:
    _table_cache.clear()


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _pointer_table(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """An int64 tensor on the tensors' device holding their addresses, padded to whole fills.

    During CUDA-graph capture the table is always filled afresh by captured launches (a cached
    table could be evicted and freed while the graph still reads it, and a table made during
    capture holds nothing until the graph is replayed), and it is not cached.
    """
    addresses = [t.data_ptr() for t in tensors]
    device = tensors[0].device
    capturing = _capturing(device)
    key = (device, *addresses)
    if not capturing:
        table = _table_cache.get(key)
        if table is not None:
            _table_cache.move_to_end(key)
            return table
    padded = -(-len(addresses) // TABLE_SLOTS) * TABLE_SLOTS
    addresses += [addresses[0]] * (padded - len(addresses))
    table = torch.empty(padded, dtype=torch.int64, device=device)
    for start in range(0, padded, TABLE_SLOTS):
        chunk = addresses[start : start + TABLE_SLOTS]
        _timed_launch(
            "fill_table",
            device,
            lambda: _fill_table_kernel[(1,)](table, start, *chunk),  # noqa: B023 (called now)
        )
    if not capturing:
        _table_cache[key] = table
        if len(_table_cache) > TABLE_CACHE_SIZE:
            _table_cache.popitem(last=False)
    return table


def _aligned(tensors: Sequence[torch.Tensor]) -> bool:
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def _variant(dtype: torch.dtype, aligned: bool, *flags: str) -> str:
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    return ",".join([name, "aligned" if aligned else "unaligned", *flags])


def _wsum(w: torch.Tensor, inputs: Sequence[torch.Tensor], relu: bool) -> torch.Tensor:
    _require_triton()
    if not inputs:
        raise ValueError("at least one input is needed")
    _check(inputs, "weighted_relu" if relu else "gather")
    _check_w(w, len(inputs), inputs[0].device)
    w = w.detach()
    out = torch.empty_like(inputs[0])
    n = out.numel()
    if n == 0:
        return out
    table = _pointer_table(inputs)
    aligned = _aligned(inputs) and _aligned([out])
    block = CONFIG["wsum_block"]
    grid = (triton.cdiv(n, block),)
    name = "weighted_relu" if relu else "gather"
    _timed_launch(
        f"{name}[{_variant(out.dtype, aligned)}]",
        out.device,
        lambda: _wsum_kernel[grid](
            table,
            w,
            w.stride(0),
            out,
            n,
            len(inputs),
            RELU=relu,
            ALIGNED=aligned,
            ROUND_BY_HAND=out.dtype == torch.bfloat16 and interpreting(),
            BLOCK=block,
            num_warps=CONFIG["wsum_warps"],
        ),
    )
    return out


def weighted_relu(w: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """relu(sum_j w[j] * inputs[j]) in one pass over the inputs (float32 accumulation)."""
    return _wsum(w, inputs, relu=True)


def gather(w: torch.Tensor, *grads: torch.Tensor) -> torch.Tensor:
    """sum_j w[j] * grads[j] in one pass over the gradients (float32 accumulation)."""
    return _wsum(w, grads, relu=False)


def _dots(
    h: torch.Tensor, p: torch.Tensor | None, inputs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    _require_triton()
    if not inputs:
        raise ValueError("at least one input is needed")
    masked = p is not None
    _check(
        [h, *([p] if masked else []), *inputs], "relu_mask_dots" if masked else "dots"
    )
    device = h.device
    k = len(inputs)
    out = torch.empty(k, dtype=torch.float32, device=device)
    h_out = torch.empty_like(h) if masked else h
    n = h.numel()
    if n == 0:
        out.zero_()
        return h_out, out
    table = _pointer_table(inputs)
    aligned = _aligned([*inputs, h, h_out] + ([p] if masked else []))
    block = CONFIG["dots_block"]
    n_blocks = triton.cdiv(n, block)
    partials = torch.empty((k, n_blocks), dtype=torch.float32, device=device)
    name = "relu_mask_dots" if masked else "dots"
    _timed_launch(
        f"{name}[{_variant(h.dtype, aligned)}]",
        device,
        lambda: _dots_partial_kernel[(n_blocks,)](
            table,
            h,
            p if masked else h,
            h_out,
            partials,
            n,
            k,
            n_blocks,
            MASK=masked,
            ALIGNED=aligned,
            BLOCK=block,
            num_warps=CONFIG["dots_warps"],
        ),
    )
    _timed_launch(
        "dots_reduce",
        device,
        lambda: _dots_reduce_kernel[(k,)](
            partials,
            out,
            n_blocks,
            BLOCK=CONFIG["reduce_block"],
            num_warps=CONFIG["reduce_warps"],
        ),
    )
    return h_out, out


def dots(h: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """float32 (k,): dots[j] = sum(h * inputs[j]); one pass over h and each input, no atomics."""
    return _dots(h, None, inputs)[1]


def relu_mask_dots(
    gp: torch.Tensor, p: torch.Tensor, *inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, dots(h, *inputs)) with h = gp where p > 0 else 0, in one pass over gp and p."""
    return _dots(gp, p, inputs)


def reference_relu_mask_dots(
    gp: torch.Tensor, p: torch.Tensor, *inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pure-torch meaning of relu_mask_dots (float32 dot products)."""
    h = torch.where(p > 0, gp, torch.zeros_like(gp))
    hf = h.flatten().float()
    return h, torch.stack([torch.dot(hf, x.flatten().float()) for x in inputs])


# --- the table the dispatch swaps in -----------------------------------------------------------

# Swapped too when a generated module defines it (the contract only requires REQUIRED).
OPTIONAL = ("relu_mask_dots",)


def _usable(first: torch.Tensor, rest: Sequence[torch.Tensor], force: bool) -> bool:
    """Whether a call can take the Triton path (else the module's own torch function runs)."""
    if triton is None or first.dtype not in _DTYPES:
        return False
    if torch.is_grad_enabled() and (
        first.requires_grad or any(t.requires_grad for t in rest)
    ):
        return False  # the kernels record no autograd graph: let torch's ops do it
    device = first.device
    if device.type == "cuda":
        if interpreting():
            return False  # the interpreter reads host memory: device addresses in a table fail
    elif not (device.type == "cpu" and force and interpreting()):
        return False
    if not first.is_contiguous():
        return False
    return all(
        t.device == device
        and t.dtype == first.dtype
        and t.shape == first.shape
        and t.is_contiguous()
        for t in rest
    )


def _weights_usable(w: torch.Tensor, k: int, device: torch.device) -> bool:
    if torch.is_grad_enabled() and w.requires_grad:
        return False  # an autograd caller needs the gradient of w
    return (
        w.dim() == 1
        and w.shape[0] == k
        and w.device == device
        and w.dtype == torch.float32
    )


def kernels(
    module=None, *, force: bool = False
) -> dict[str, tuple[Callable, Callable[..., bool]]]:
    """Primitive name -> (Triton kernel, whether it takes a call's arguments), for the
    dispatch in dagc.runtime.kernels (`install(module, "triton")`; the same for every
    module).

    CUDA tensors take the Triton kernels; CPU tensors only with `force=True` under
    TRITON_INTERPRET=1 (tests); everything else (no Triton, other dtypes, non-contiguous
    tensors, mixed devices, tensors that need autograd while grad mode is on: the kernels
    record no graph) goes to the module's own torch functions."""

    def accepts_sum(w, *inputs):
        return (
            bool(inputs)
            and _usable(inputs[0], inputs[1:], force)
            and _weights_usable(w, len(inputs), inputs[0].device)
        )

    def accepts_dots(h, *inputs):
        return bool(inputs) and _usable(h, inputs, force)

    def accepts_mask_dots(gp, p, *inputs):
        return bool(inputs) and _usable(gp, (p, *inputs), force)

    return {
        "weighted_relu": (weighted_relu, accepts_sum),
        "gather": (gather, accepts_sum),
        "dots": (dots, accepts_dots),
        "relu_mask_dots": (relu_mask_dots, accepts_mask_dots),
    }
