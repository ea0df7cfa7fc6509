"""The machine's ceilings, measured by dagc's own C++ (probe.cpp), not by torch's kernels:

- the fused multiply-add rate of vector FMAs on registers (the compute floor of a step);
- the read bandwidth of each thread streaming its own buffer, at sizes that live in the L2,
  in the L3 and in DRAM (the byte floor at each level the engine's planes come from).

    python -m dagc.runtime.kernels.probe [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import time
from pathlib import Path

import torch

from .native import NativeLibrary

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_native = NativeLibrary(
    Path(__file__).with_name("probe.cpp"),
    "dagc_probe",
    {
        "probe_fma": [_I64, _INT, _P],
        "probe_read": [_P, _I64, _INT, _INT],
        "probe_lanes": [],
    },
    "the machine probe",
)
# Per-thread buffer sizes: half the 2 MB L2 of this machine class, a slice of the L3 and far
# beyond any cache.
READ_SIZES = {"L2": 1 << 20, "L3": 32 << 20, "DRAM": 1 << 30}


def _library() -> ctypes.CDLL:
    library = _native.load()
    library.probe_fma.restype = ctypes.c_double
    library.probe_read.restype = ctypes.c_double
    library.probe_lanes.restype = ctypes.c_int
    return library


def _best_of(repeat: int, run) -> float:
    """The fastest of `repeat` timed calls of run() (seconds): the ceiling, not the mean."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def fma_per_s(threads: int, rounds: int = 20_000_000, repeat: int = 3) -> float:
    library = _library()
    checksum = (ctypes.c_float * 1)()
    library.probe_fma(1000, threads, checksum)  # wake the threads up
    seconds = _best_of(repeat, lambda: library.probe_fma(rounds, threads, checksum))
    done = library.probe_fma(rounds, threads, checksum)
    return done / seconds


def read_bytes_per_s(
    threads: int, size: int, total: int = 4 << 30, repeat: int = 3
) -> float:
    """Bytes per second read by `threads` threads, each streaming its own `size`-byte buffer
    about `total / (threads * size)` times per timed call."""
    library = _library()
    floats = size // 4
    data = torch.ones(threads * floats, dtype=torch.float32)
    repeats = max(1, total // (threads * size))
    library.probe_read(data.data_ptr(), floats, 1, threads)  # touch every page once
    seconds = _best_of(
        repeat, lambda: library.probe_read(data.data_ptr(), floats, repeats, threads)
    )
    return threads * size * repeats / seconds


def measure(threads: int | None = None, scale: float = 1.0) -> dict:
    """Every probe at `threads` threads (default: the CPUs this process may use); `scale`
    shortens the runs (tests use a tiny one)."""
    threads = threads or len(os.sched_getaffinity(0))
    sizes = {
        level: max(4096, int(size * min(1.0, scale * 8)))
        for level, size in READ_SIZES.items()
    }
    return {
        "threads": threads,
        "vector_lanes": _library().probe_lanes(),
        "fma_per_s": fma_per_s(threads, rounds=max(1000, int(20_000_000 * scale))),
        "read_bytes_per_s": {
            level: read_bytes_per_s(
                threads, size, total=max(size, int((4 << 30) * scale))
            )
            for level, size in sizes.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    facts = measure(args.threads)
    if args.json:
        print(json.dumps(facts, indent=2))
        return
    print(f"{facts['threads']} threads, {facts['vector_lanes']} fp32 lanes per vector")
    print(f"FMA: {facts['fma_per_s'] / 1e9:.1f} G fused multiply-adds/s")
    for level, rate in facts["read_bytes_per_s"].items():
        print(f"read from {level}: {rate / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
