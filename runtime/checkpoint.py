"""Checkpoints that survive `kill -9` at any moment.

A checkpoint is a generation of two files, `ckpt-<iteration>.safetensors` (weights and
BatchNorm statistics) and `ckpt-<iteration>.pt` (optimizer, scheduler, iteration, metrics so
far). `latest.json` names the newest complete generation and is replaced atomically only after
both files are on disk, so a reader never sees a torn checkpoint. Older generations are removed
after the pointer moves.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dagc.compiler.errors import DagcError
from dagc.compiler.output import write_atomic

POINTER = "latest.json"


def save_checkpoint(run_dir: Path, iteration: int, model, trainer_state: dict) -> Path:
    from safetensors.torch import save

    weights = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
    }
    stem = f"ckpt-{iteration:06d}"
    write_atomic(
        run_dir / f"{stem}.safetensors",
        save(weights, metadata={"iteration": str(iteration)}),
    )
    buffer = _torch_bytes({"iteration": iteration, **trainer_state})
    write_atomic(run_dir / f"{stem}.pt", buffer)
    write_atomic(
        run_dir / POINTER, json.dumps({"iteration": iteration, "stem": stem}) + "\n"
    )
    for old in run_dir.glob("ckpt-*"):
        if not old.name.startswith(stem + "."):
            old.unlink(missing_ok=True)
    return run_dir / f"{stem}.safetensors"


def _torch_bytes(obj) -> bytes:
    import io

    stream = io.BytesIO()
    torch.save(obj, stream)
    return stream.getvalue()


def latest_checkpoint(run_dir: Path) -> tuple[Path, Path] | None:
    pointer = run_dir / POINTER
    if not pointer.exists():
        return None
    try:
        stem = json.loads(pointer.read_text())["stem"]
    except (ValueError, KeyError):
        raise DagcError("checkpoint pointer is corrupt", pointer) from None
    weights, state = run_dir / f"{stem}.safetensors", run_dir / f"{stem}.pt"
    if not (weights.exists() and state.exists()):
        raise DagcError(f"checkpoint {stem} named by {POINTER} is missing", run_dir)
    return weights, state


def load_weights(path: Path, map_location="cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DagcError(f"unreadable weights ({exc})", path) from None


def load_trainer_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors of many kinds
        raise DagcError(
            f"unreadable trainer state ({exc.__class__.__name__})", path
        ) from None
