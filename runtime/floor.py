"""The floor of a training step: the bytes and FLOPs it must at least move and compute.

With this machine's measured bandwidth and arithmetic rate they give the best possible step
time that `dagc bench` sets each mode against.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from dagc import __version__


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_floor_counts(module, channels: int, batch: int) -> dict:
    """Bytes and FLOPs of one training step at two floors (float32).

    Unit: one activation pass, batch x channels x (input/2)^2 floats read or written once.

    `activation_passes`, every op ideally fused but each op on its own (the floor before the
    generated reverse pass): per node with k inputs, forward: read k inputs and write the
    sum, ReLU fused into it (k + 1); depthwise conv (read 1, write 1); BatchNorm (statistics
    read 1, normalise read 1 and write 1). Backward: BatchNorm (read grad and input, reduce
    and write: 5); conv (input grad read 1 write 1, weight grad read 2); ReLU mask (read 2,
    write 1); per input edge, the weight's gradient reads the input once and the input's
    gradient is read and written once (3 per edge; the node's own gradient stays in cache).
    So 18 + 4k per node.

    `fused_passes`, a node's work fused into few kernels and each input read once forward,
    once by its consumers' gradient gather and once for the edge-weight gradients: 3 per
    edge; per node, forward: write the sum (1), conv fused with the BatchNorm statistics
    (read 1, write 1), normalise (read 1, write 1); backward: the gather writes the output
    gradient while reducing it against the conv output for BatchNorm (write 1, read 1), then
    one pass for BatchNorm's input gradient, the conv's input and weight gradients and the
    ReLU mask (read gradient, conv output and conv input, write 1: 4). So 11 + 3k per node.

    `engine_passes`, the CPU engine's pull-form passes (docs/engine.md): per edge, the
    forward reads the predecessor's activation once and the reverse pass reads the
    consumer's gradient once, for both the gather and the edge weight's dot (2); per node,
    the forward writes its conv input (saved) and its activation, the reverse pass reads the
    conv input back and writes the node's gradient (4); the conv, BatchNorm and their
    reverse run on a plane that stays in cache. So 4 + 2k per node, at 4 bytes an element
    in fp32 and 2 with bf16 storage.

    Stem, sink and the optimizer are under 1 % and left out.
    """
    size = module.INPUT_SHAPE[1]
    spatial = ((size + 1) // 2) ** 2  # the stem's stride-2 conv
    elements = batch * channels * spatial
    nodes, edges = len(module.NODES), len(module.EDGES)
    passes = 18 * nodes + 4 * edges
    fused = 11 * nodes + 3 * edges
    engine = 4 * nodes + 2 * edges
    flops = elements * (
        nodes * (2 * 9 * 3 + 10) + edges * 6
    )  # conv fwd+2 bwd, BN, edges
    return {
        "activation_bytes": 4 * elements,
        "activation_passes": passes,
        "bytes": 4 * elements * passes,
        "fused_passes": fused,
        "fused_bytes": 4 * elements * fused,
        "engine_passes": engine,
        "engine_bytes": 4 * elements * engine,
        "engine_bf16_bytes": 2 * elements * engine,
        "flops": flops,
    }


def measure_machine(device_kind: str) -> dict:
    """Streaming bandwidth (a copy far larger than the caches) and float32 matmul rate."""
    import torch

    device = torch.device("cuda" if device_kind == "cuda" else "cpu")
    n = (1 << 30) // 4  # 1 GiB per side: far beyond any cache
    source = torch.ones(n, device=device)
    target = torch.empty_like(source)

    def timed(fn, repeat):
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        sync(device)
        return (time.perf_counter() - start) / repeat

    copy_s = timed(lambda: target.copy_(source), 10 if device_kind == "cuda" else 3)  # noqa: F821
    m = 4096 if device_kind == "cuda" else 1024
    a = torch.randn(m, m, device=device)
    matmul_s = timed(lambda: a @ a, 10 if device_kind == "cuda" else 3)
    del source, target
    return {
        "copy_bandwidth_bytes_per_s": 2 * 4 * n / copy_s,  # read + write
        "fp32_matmul_flops_per_s": 2 * m**3 / matmul_s,
    }


def step_floor(module, channels: int, batch: int, machine: dict) -> dict:
    """The counts and the best possible step time on a machine `measure_machine` measured."""
    counts = step_floor_counts(module, channels, batch)
    compute_s = counts["flops"] / machine["fp32_matmul_flops_per_s"]
    bandwidth = machine["copy_bandwidth_bytes_per_s"]
    return {
        **counts,
        "step_s": max(counts["bytes"] / bandwidth, compute_s),
        "fused_step_s": max(counts["fused_bytes"] / bandwidth, compute_s),
        "engine_step_s": max(counts["engine_bytes"] / bandwidth, compute_s),
        "engine_bf16_step_s": max(counts["engine_bf16_bytes"] / bandwidth, compute_s),
    }


def machine_info(device_kind: str) -> dict:
    import torch

    info = {
        "dagc": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device_kind == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
