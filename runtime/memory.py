"""How much memory a training run will need, estimated before it starts, so that a run that
cannot fit is refused in one line instead of dying of memory mid-step (issue 22).

Computed from the generated module's tables alone (NODES, EDGES, OUTPUT_NODES, CHANNELS,
INPUT_SHAPE, BACKWARD); nothing is allocated. Every activation is one tensor of
batch x channels x (H/2) x (W/2) elements (the stem convolution has stride 2).

- A training step keeps, until its reverse pass reaches them, what the reverse pass reads:
  per node its convolution's output, for a node fed by other nodes its ReLU'd input sum, and
  for a node that other nodes read its output (the generated backward's SUMMED_NODES + NODES
  + READ_NODES; about the same for autograd's per-node ops). On top come the node gradients
  alive at once during the reverse pass (counted from the edges), a few working tensors,
  the parameters with their gradients and Adam's two moments, and the data set.
- An evaluation (no gradients) holds the node outputs still to be read at once: the widest
  point of the forward pass, counted from the edges. It runs in batches of 1000 unless that
  does not fit beside the training step's memory (the larva at 8 channels: ~11 GiB at 1000);
  then in the largest batch that does.
With the CPU engine (--kernels engine/auto) a step saves only each summed node's conv input
(in bf16 with --precision bf16) and keeps one channel's activations and gradients at a time
per thread, in arenas sized by the same liveness counts.
The estimate is an upper bound in spirit (no tensor is counted as freed early); 10% is added
for the allocator. A run is refused when its training step does not fit. Set
DAGC_MEMORY_CHECK=off to skip the check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dagc.compiler.errors import DagcError

EVAL_BATCH = 1000  # runtime/evaluate.py's batch
WORKING_TENSORS = 6  # a node's sum, conv and BatchNorm temporaries, source and its grad
ALLOCATOR_MARGIN = 1.10
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    saved_tensors: int  # activations a training step keeps for its reverse pass
    live_grads: int  # the most node gradients alive at once in the reverse pass
    eval_live: (
        int  # the most node outputs alive at once in a forward pass without grads
    )
    tensor_bytes: int  # one activation at the training batch
    sample_bytes: int  # one activation of one image
    parameter_bytes: int  # parameters, their gradients and Adam's two moments
    data_bytes: int  # the data set on the device (uint8 images, int64 labels)
    eval_batch: int = (
        EVAL_BATCH  # the evaluation's batch (lowered when 1000 cannot fit)
    )
    arena_bytes: int = 0  # the CPU engine's per-thread planes (activations, gradients)
    storage: str = "fp32"  # how the saved activations are stored

    @property
    def activation_bytes(self) -> int:
        tensors = self.saved_tensors + self.live_grads + WORKING_TENSORS
        return tensors * self.tensor_bytes + self.arena_bytes

    @property
    def train_bytes(self) -> int:
        return self.activation_bytes + self.parameter_bytes + self.data_bytes

    def eval_activation_bytes(self, batch: int) -> int:
        return (self.eval_live + WORKING_TENSORS) * self.sample_bytes * batch

    @property
    def peak_bytes(self) -> int:
        """A training step, then an evaluation on top: on a CPU the allocator keeps the
        step's freed memory for the next step (devices.keep_freed_cpu_memory), and the
        evaluation's differently sized tensors may not reuse it."""
        activations = self.eval_activation_bytes(self.eval_batch)
        return int((self.train_bytes + activations) * ALLOCATOR_MARGIN)

    def largest_eval_batch(self, available: int) -> int:
        """EVAL_BATCH, or the largest batch below it whose evaluation fits beside a training
        step's memory (at least 1)."""
        budget = available / ALLOCATOR_MARGIN - self.train_bytes
        per_image = (self.eval_live + WORKING_TENSORS) * self.sample_bytes
        return max(1, min(EVAL_BATCH, int(budget // max(per_image, 1))))


def tensor_counts(module) -> tuple[int, int, int]:
    """(saved tensors of a training step, most gradients alive at once in the reverse pass,
    most node outputs alive at once in a forward pass without gradients)."""
    n = len(module.NODES)
    edges = module.EDGES
    if getattr(module, "BACKWARD", "generated") == "generated":
        saved = summed_count(module) + n + len({pre for pre, _ in edges})
    else:  # autograd: each node's input sum, conv output and BatchNorm output
        saved = summed_count(module) + 2 * n
    # Reverse pass: node j's gradient exists from j's step down to that of its first
    # predecessor (the last gather that reads it). Forward pass: node i's output exists from
    # i's step up to that of its last consumer, or to the end for an output node.
    first_pred = [n] * n
    last_consumer = [-1] * n
    for pre, post in edges:
        first_pred[post] = min(first_pred[post], pre)
        last_consumer[pre] = max(last_consumer[pre], post)
    grads = [0] * (n + 1)
    outputs = [0] * (n + 1)
    for j in range(n):
        if first_pred[j] < n:
            grads[first_pred[j]] += 1
            grads[j + 1] -= 1
        end = last_consumer[j] if last_consumer[j] >= 0 else n - 1
        outputs[j] += 1
        outputs[end + 1] -= 1
    return saved, _peak(grads), _peak(outputs)


def summed_count(module) -> int:
    """How many nodes sum weighted inputs: those that keep a saved conv input."""
    summed = getattr(module, "SUMMED_NODES", None)  # the generated reverse pass's table
    if summed is None:
        summed = {post for _, post in module.EDGES}
    return len(summed)


def _peak(differences: list[int]) -> int:
    alive = peak = 0
    for change in differences:
        alive += change
        peak = max(peak, alive)
    return peak


def dataset_bytes(info) -> int:
    """A data set's two splits on the device: at most 70,000 uint8 images, int64 labels."""
    return 70_000 * (info.in_channels * info.image_size**2 + 8)


def estimate_memory(
    module,
    batch_size: int,
    data_bytes: int = 0,
    kernels: str = "torch",
    precision: str = "fp32",
    threads: int = 1,
) -> MemoryEstimate:
    channels, height, width = module.INPUT_SHAPE
    plane = ((height + 1) // 2) * ((width + 1) // 2)
    # fp32 throughout; with --amp, autocast keeps BatchNorm and the sums in fp32 on some
    # paths, so 4 bytes stays the safe count.
    element = 4
    saved, live_grads, eval_live = tensor_counts(module)
    n, c, e = len(module.NODES), module.CHANNELS, len(module.EDGES)
    parameters = (
        n * c * 11  # depthwise 3x3 weights and BatchNorm scale and shift
        + e
        + c * channels * 9
        + c * c
        + 4 * c
        + (c + 1) * module.NUM_CLASSES
    )
    arena_bytes = 0
    if kernels == "engine":
        # Saved: each summed node's conv input, half the bytes in bf16 (counted here in
        # fp32 tensors, rounded up); the gradients and activations of one channel at a
        # time live in each thread's arenas.
        stored = 2 if precision == "bf16" else 4
        saved = -(-summed_count(module) * stored // element)
        arena_bytes = threads * (eval_live + live_grads) * batch_size * plane * stored
        live_grads = 0
    return MemoryEstimate(
        saved_tensors=saved,
        live_grads=live_grads,
        eval_live=eval_live,
        arena_bytes=arena_bytes,
        storage=precision if kernels == "engine" else "fp32",
        tensor_bytes=batch_size * c * plane * element,
        sample_bytes=c * plane * element,
        parameter_bytes=parameters * 4 * 4,
        data_bytes=data_bytes,
    )


def available_bytes(device: torch.device) -> int | None:
    """Memory this process can still take: free GPU memory, or on Linux the smaller of
    MemAvailable and the cgroup's headroom; None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(current))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def widest_fitting_channels(module, estimate: MemoryEstimate, available: int) -> int:
    """The most channels whose training step fits (its memory scales with them)."""
    scalable = (estimate.train_bytes - estimate.data_bytes) * ALLOCATOR_MARGIN
    budget = available - estimate.data_bytes * ALLOCATOR_MARGIN
    return max(0, int(budget / max(scalable, 1) * module.CHANNELS))


def _engine_advice(module, batch_size, data_bytes, kernels, device, available) -> str:
    """ "--kernels engine (N GiB) or " when the CPU engine's step would fit where this one
    does not (it keeps one saved tensor per summed node; the rest lives per thread)."""
    if device.type != "cpu" or kernels == "engine":
        return ""
    threads = torch.get_num_threads()
    for precision in ("fp32", "bf16"):
        engine = estimate_memory(
            module, batch_size, data_bytes, "engine", precision, threads
        )
        if engine.train_bytes * ALLOCATOR_MARGIN <= available:
            flag = "--kernels engine" + (
                " --precision bf16" if precision == "bf16" else ""
            )
            return f"use {flag} (about {engine.train_bytes * ALLOCATOR_MARGIN / GIB:.1f} GiB), "
    return ""


def check_training_memory(
    module,
    batch_size: int,
    device: torch.device,
    path,
    data_bytes: int = 0,
    available: int | None = None,
    kernels: str = "torch",
    precision: str = "fp32",
) -> MemoryEstimate:
    """A DagcError, before anything is allocated, when a training step's estimated peak does
    not fit in the memory available now; else the estimate, with the evaluation batch
    lowered from 1000 when that is what fits. `kernels` and `precision`: what use_kernels
    chose (the CPU engine keeps far less)."""
    estimate = estimate_memory(
        module, batch_size, data_bytes, kernels, precision, torch.get_num_threads()
    )
    if os.environ.get("DAGC_MEMORY_CHECK", "").lower() in ("off", "0", "no"):
        return estimate
    if available is None:
        available = available_bytes(device)
    if available is None:
        return estimate
    if estimate.train_bytes * ALLOCATOR_MARGIN <= available:
        return replace(estimate, eval_batch=estimate.largest_eval_batch(available))
    _, height, width = module.INPUT_SHAPE
    plane = f"{(height + 1) // 2}x{(width + 1) // 2}"
    fits = widest_fitting_channels(module, estimate, available)
    advice = (
        f"recompile with --channels {fits} or fewer, or lower --batch-size"
        if fits
        else "lower --batch-size"
    )
    advice = (
        _engine_advice(module, batch_size, data_bytes, kernels, device, available)
        + advice
    )
    raise DagcError(
        f"not enough memory: a training step needs about "
        f"{estimate.train_bytes * ALLOCATOR_MARGIN / GIB:.1f} GiB ({estimate.saved_tensors} "
        f"saved activations of {batch_size}x{module.CHANNELS}x{plane} fp32, "
        f"{estimate.activation_bytes / GIB:.1f} GiB with the reverse pass's gradients) but "
        f"{available / GIB:.1f} GiB is available on {device.type}; {advice} "
        "(DAGC_MEMORY_CHECK=off skips this check)",
        path,
    )
