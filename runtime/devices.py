"""Where a run computes: the device, the processes of a `torchrun` job, mixed precision.

Everything here is set up once before training and does not change during it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from dataclasses import dataclass

import torch

from dagc.compiler.errors import DagcError


@dataclass
class Distributed:
    """This process's place in a `torchrun` job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when `flag` is true on any of them (a collective)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def setup_distributed(kind: str) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    import torch.distributed as dist

    dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    return Distributed(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def device_kind(requested: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; explicit choices stay."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def pick_device(kind: str, dist: Distributed) -> torch.device:
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DagcError(
                "--device cuda: no CUDA device is available (try --device cpu)"
            )
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def keep_freed_cpu_memory(device: torch.device) -> bool:
    """For a run on the CPU, ask glibc's malloc to keep freed memory for the next training
    step instead of giving it back to the system; returns whether it did.

    A 78-channel step allocates and frees about 5 GB of 6 MB activations. By default glibc
    returns freed memory at the top of its heap once more than a threshold it adjusts at run
    time is free, so a step could start on fresh pages: a million minor page faults and
    about a second a step under torch.compile, whose free order differs from eager's
    (docs/performance.md). Fixed thresholds (allocations under 64 MiB from the heap; up to
    1 GiB of free heap kept) remove that. Process-wide, so only dagc's own commands call it,
    for a CPU run, and never when the user set MALLOC_TRIM_THRESHOLD_ or
    MALLOC_MMAP_THRESHOLD_ (glibc's environment tunables) themselves."""
    if device.type != "cpu":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(
        name in os.environ
        for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(
        mallopt(m_trim_threshold, 1 << 30)
    )


def amp_settings(amp: str, device: torch.device):
    """(autocast dtype or None, GradScaler or None) for --amp off / bf16 / fp16."""
    if amp not in ("off", "bf16", "fp16"):
        raise DagcError("--amp must be off, bf16 or fp16")
    if amp == "off":
        return None, None
    if amp == "fp16":
        if device.type != "cuda":
            raise DagcError(
                "--amp fp16 needs a CUDA device (use bf16 or off on the CPU)"
            )
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def use_cuda_graphs(
    requested: bool | None,
    device: torch.device,
    dist: Distributed,
    compiled: bool,
    scaler,
) -> bool:
    """--cuda-graphs: on by default for one CUDA process without --compile."""
    if requested and (device.type != "cuda" or dist.world > 1):
        raise DagcError("--cuda-graphs needs one CUDA process (no torchrun)")
    use = requested
    if use is None:
        use = device.type == "cuda" and dist.world == 1 and not compiled
    if use and scaler is not None:
        raise DagcError("--amp fp16 cannot be captured; use bf16 or --no-cuda-graphs")
    return use


def wrap_model(model, device: torch.device, dist: Distributed, compiled: bool):
    """The model as the training step calls it: under DDP and/or torch.compile."""
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if compiled else model


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
