"""dagc's native CPU engine: a generated network's whole neuron DAG in one native call per pass.

`install(module)` replaces the module's `dag_forward` and `dag_backward` (the eager path that
`ConnectomeDag` and `connectome_dag` call by global name) with versions that run the whole
DAG, forward or reverse, as ONE call into `engine.cpp`, driven by the module's tables (NODES,
EDGES, SUMMED_NODES, READ_NODES, CONSUMER_ORDER, OUTPUT_NODES). The generated Python stays
the readable truth and the torch.compile path (its custom ops still wrap the module's own
functions). The C++ side is parallel over channels (every channel is independent inside the
DAG), keeps each node's planes in cache, saves only each summed node's conv input x for the
reverse pass (which recomputes the conv output and activation), and runs the reverse pass in
fused pull form (each consumer gradient read once for both the gather and the edge weight's
dot). Results are bitwise the same for any thread count and equal the torch path's within
float32 rounding (tests/test_engine.py).

`precision="bf16"` keeps the saved x and the per-channel arenas (activations, gradients) in
bfloat16, with float32 accumulation and float32 parameters, statistics and gradients.

Calls the engine cannot take (not CPU float32 contiguous tensors of the expected shapes) go
to the module's own functions. Built on first use with the system's C++ compiler into the
same cache as dagc.runtime.cpu_kernels (`$DAGC_KERNEL_CACHE`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import torch

from dagc.compiler.errors import DagcError

from . import cpu
from .native import KernelBuildError, NativeLibrary

__all__ = [
    "available",
    "unavailable_reason",
    "build",
    "kernels",
    "KernelBuildError",
    "PRECISIONS",
    "REQUIRED",
    "OPTIONAL",
]

SOURCE = Path(__file__).with_name("engine.cpp")
PRECISIONS = ("fp32", "bf16")
# The DAG's two passes, then the C++ kernels' per-neuron primitives, which the engine installs
# too: whatever calls them node by node (the lesion scan, a call the engine cannot take)
# runs on the C++ kernels.
REQUIRED = ("dag_forward", "dag_backward", *cpu.REQUIRED)
OPTIONAL = cpu.OPTIONAL

_P, _I64, _INT, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_SIGNATURES = {
    # tables, N, E, n_read, n_out, source, w, conv, bn_weight, bn_bias, bn_mean, bn_invstd,
    # B, C, H, W, training, eps, save, bf16, out, mean, invstd, shift, saved_x, threads
    "dagc_engine_forward": [_P, _I64, _I64, _I64, _I64]
    + [_P] * 7
    + [_I64] * 4
    + [_INT, _D, _INT, _INT]
    + [_P] * 5
    + [_INT],
    # tables, N, E, n_summed, n_out, grad, source, w, conv, bn_weight, mean, invstd, shift,
    # B, C, H, W, training, bf16, saved_x, grad_source, dw_part, grad_w, grad_conv,
    # grad_bn_weight, grad_bn_bias, threads
    "dagc_engine_backward": [_P, _I64, _I64, _I64, _I64]
    + [_P] * 8
    + [_I64] * 4
    + [_INT, _INT]
    + [_P] * 7
    + [_INT],
}

_native = NativeLibrary(SOURCE, "dagc_engine", _SIGNATURES, "the engine")
build = _native.build
_load = _native.load


def unavailable_reason() -> str | None:
    """Why the engine cannot be used here, or None when it can (builds both libraries)."""
    return _native.unavailable_reason() or cpu.unavailable_reason()


def available() -> bool:
    """Whether the engine can be used here (builds it on the first call)."""
    return unavailable_reason() is None


# --- the network's tables ----------------------------------------------------------------


def _slots(order, kept, dies_at) -> tuple[list[int], int]:
    """Arena slots for the nodes in `kept`, visited in `order`: node k's slot is taken when
    k is visited and given back once the node `dies_at(k)` is (its last reader: a visit
    reads before it writes). Returns each node's slot (-1: none) and the slots needed."""
    order = list(order)
    slot = [-1] * len(order)
    free: list[int] = []
    dying: dict[int, list[int]] = {}
    count = 0
    for k in order:
        for d in dying.pop(k, ()):
            free.append(slot[d])
        if k in kept:
            if free:
                slot[k] = free.pop()
            else:
                slot[k], count = count, count + 1
            dying.setdefault(dies_at(k), []).append(k)
    return slot, count


class Tables:
    """The module's graph as the int32 array engine.cpp reads (see its struct Tables)."""

    def __init__(self, module):
        nodes, edges = len(module.NODES), list(module.EDGES)
        summed, read = list(module.SUMMED_NODES), list(module.READ_NODES)
        outputs = getattr(module, "OUTPUT_NODES", None)
        if outputs is None:
            outputs = sorted(set(range(nodes)) - set(read))
        summed_slot = [-1] * nodes
        for slot, k in enumerate(summed):
            summed_slot[k] = slot
        # Arena slots by liveness, a freed slot reused first (likely still in cache): an
        # activation lives from its node to its last consumer (forward), a gradient from
        # its node to its first predecessor (reverse pass, in reverse order).
        last_use, first_use = [-1] * nodes, [nodes] * nodes
        for pre, post in edges:
            last_use[pre] = max(last_use[pre], post)
            first_use[post] = min(first_use[post], pre)
        read_slot, self.read_slots = _slots(
            range(nodes), set(read), lambda k: last_use[k]
        )
        grad_slot, self.grad_slots = _slots(
            range(nodes - 1, -1, -1), set(summed), lambda k: first_use[k]
        )
        is_output = [0] * nodes
        for k in outputs:
            is_output[k] = 1
        # In-edges in EDGES order (the generated forward's w[a:b] slices, inputs in order);
        # out-edges in CONSUMER_ORDER (the generated reverse pass's gather order).
        incoming = [[] for _ in range(nodes)]
        for e, (_, post) in enumerate(edges):
            incoming[post].append(e)
        outgoing = [[] for _ in range(nodes)]
        for e in module.CONSUMER_ORDER:
            outgoing[edges[e][0]].append(e)

        def pointers(lists):
            ptr = [0]
            for items in lists:
                ptr.append(ptr[-1] + len(items))
            return ptr, [e for items in lists for e in items]

        in_ptr, in_edge = pointers(incoming)
        out_ptr, out_edge = pointers(outgoing)
        values = (
            summed_slot + read_slot + grad_slot + is_output + in_ptr + in_edge + out_ptr + out_edge
            + [pre for pre, _ in edges] + [post for _, post in edges]
        )  # fmt: skip
        self.array = torch.tensor(values, dtype=torch.int32)
        self.nodes, self.edges = nodes, len(edges)
        self.summed, self.read, self.outputs = len(summed), len(read), len(outputs)


# --- the passes ------------------------------------------------------------------------------


def _plain(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def _takes(tables: Tables, source, w, conv, bn_weight, *vectors) -> bool:
    """Whether the engine can take this call (else the module's own function does)."""
    if not (
        isinstance(source, torch.Tensor)
        and source.dim() == 4
        and source.numel() > 0
        and _plain(source)
        and _plain(w)
        and _plain(conv)
    ):
        return False
    channels = source.shape[1]
    return (
        tuple(w.shape) == (tables.edges,)
        and tuple(conv.shape) == (tables.nodes, channels, 1, 3, 3)
        and all(
            _plain(v) and tuple(v.shape) == (tables.nodes, channels)
            for v in (bn_weight, *vectors)
        )
    )


def _make_forward(tables: Tables, bf16: bool) -> Callable:
    def dag_forward(
        source, w, conv, bn_weight, bn_bias, bn_mean, bn_var, training, eps, save
    ):
        batch, channels, height, width = source.shape
        out = torch.empty_like(source)
        stats_shape = (tables.nodes, channels) if training else (0,)
        mean = torch.empty(stats_shape, dtype=torch.float32)
        invstd = torch.empty(stats_shape, dtype=torch.float32)
        run_mean, run_invstd = (
            (mean, invstd) if training else cpu._channel_stats(bn_mean, bn_var, eps)
        )
        plane = batch * height * width
        # One tensor per summed node (channels x plane), each small enough for glibc to
        # reuse freed heap memory (one 1.2 GB tensor came from fresh pages every step).
        dtype = torch.bfloat16 if bf16 else torch.float32
        saved_x = [
            torch.empty((channels, plane), dtype=dtype)
            for _ in range(tables.summed if save else 0)
        ]
        shift = torch.empty((tables.nodes, channels) if save else (0,))
        _load().dagc_engine_forward(
            tables.array.data_ptr(),
            tables.nodes,
            tables.edges,
            tables.read_slots,
            tables.outputs,
            source.data_ptr(),
            w.detach().data_ptr(),
            conv.detach().data_ptr(),
            bn_weight.detach().data_ptr(),
            bn_bias.detach().data_ptr(),
            run_mean.data_ptr(),
            run_invstd.data_ptr(),
            batch,
            channels,
            height,
            width,
            int(training),
            float(eps),
            int(save),
            int(bf16),
            out.data_ptr(),
            mean.data_ptr(),
            invstd.data_ptr(),
            shift.data_ptr(),
            _pointers(saved_x),
            torch.get_num_threads(),
        )
        return [out, mean, invstd, *saved_x, shift] if save else [out, mean, invstd]

    return dag_forward


def _pointers(tensors) -> ctypes.Array:
    return (_P * max(len(tensors), 1))(*(t.data_ptr() for t in tensors))


def _ours(saved, tables: Tables) -> bool:
    """Whether `saved` ([mean, invstd, *what dag_forward returned]) came from the engine:
    [mean, invstd, *x, shift] with a 2-D shift, where the generated file's saved tensors
    are all flattened."""
    return len(saved) == 3 + tables.summed and saved[-1].dim() == 2


def _make_backward(module, tables: Tables) -> Callable:
    def dag_backward(
        grad, source, w, conv, bn_weight, bn_mean, bn_var, training, eps, saved
    ):
        mean, invstd, *saved_x, shift = saved
        saved.clear()  # handed over: freed below, after their only use
        if any(t.untyped_storage().nbytes() == 0 for t in saved_x[:1]):
            raise module.saved_tensors_freed()
        batch, channels, height, width = source.shape
        if not training:
            mean, invstd = cpu._channel_stats(bn_mean, bn_var, eps)
        grad = grad.contiguous().float()
        grad_source = torch.empty_like(source)
        grad_w = torch.empty_like(w)
        grad_conv = torch.empty_like(conv)
        grad_bn_weight = torch.empty_like(bn_weight)
        grad_bn_bias = torch.empty_like(bn_weight)
        dw_part = torch.empty((tables.edges, channels), dtype=torch.float64)
        _load().dagc_engine_backward(
            tables.array.data_ptr(),
            tables.nodes,
            tables.edges,
            tables.grad_slots,
            tables.outputs,
            grad.data_ptr(),
            source.data_ptr(),
            w.detach().data_ptr(),
            conv.detach().data_ptr(),
            bn_weight.detach().data_ptr(),
            mean.data_ptr(),
            invstd.data_ptr(),
            shift.data_ptr(),
            batch,
            channels,
            height,
            width,
            int(training),
            int(bool(saved_x) and saved_x[0].dtype == torch.bfloat16),
            _pointers(saved_x),
            grad_source.data_ptr(),
            dw_part.data_ptr(),
            grad_w.data_ptr(),
            grad_conv.data_ptr(),
            grad_bn_weight.data_ptr(),
            grad_bn_bias.data_ptr(),
            torch.get_num_threads(),
        )
        for t in saved_x:  # a second backward through the graph is then a clear error
            t.untyped_storage().resize_(0)
        return [grad_source, grad_w, grad_conv, grad_bn_weight, grad_bn_bias]

    return dag_backward


# --- the table the dispatch swaps in ----------------------------------------------------------


def kernels(module, *, precision: str = "fp32") -> dict[str, tuple[Callable, Callable]]:
    """The module's dag_forward and dag_backward as one native call each, in `precision`
    (fp32, or bf16 storage), and the C++ kernels' per-neuron primitives: primitive name ->
    (function, whether it takes a call's arguments), for the dispatch in
    dagc.runtime.kernels (`install(module, "engine", precision=...)`). Raises DagcError for
    a module without the generated reverse pass or an unknown precision, KernelBuildError
    when a library cannot be built."""
    if getattr(module, "BACKWARD", "autograd") != "generated":
        raise DagcError(
            "the CPU engine needs a module compiled with --backward generated",
            getattr(module, "__file__", None),
        )
    if precision not in PRECISIONS:
        raise DagcError(
            f"unknown precision {precision!r} for the CPU engine "
            f"(one of {', '.join(PRECISIONS)})"
        )
    _load()
    table = cpu.kernels(module)
    tables = Tables(module)

    def takes_forward(source, w, conv, bn_weight, bn_bias, bn_mean, bn_var, *_):
        return _takes(tables, source, w, conv, bn_weight, bn_bias, bn_mean, bn_var)

    def takes_backward(*args):
        return _ours(args[-1], tables)  # the saved list: the engine's forward made it

    table["dag_forward"] = (_make_forward(tables, precision == "bf16"), takes_forward)
    table["dag_backward"] = (_make_backward(module, tables), takes_backward)
    return table
