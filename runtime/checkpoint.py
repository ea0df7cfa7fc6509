"""Checkpoints that survive `kill -9` at any moment.

A checkpoint is a generation of two files, `ckpt-<iteration>.safetensors` (weights and
BatchNorm statistics) and `ckpt-<iteration>.pt` (optimizer, scheduler, iteration, metrics so
far). `latest.json` names the newest complete generation and is replaced atomically only after
both files are on disk, so a reader never sees a torn checkpoint. Older generations are removed
after the pointer moves.

Every checkpoint carries the fingerprint of the network it was trained on (`network_fingerprint`:
node names in order, edges, channels, edge-weight mode); weights never load silently into a
module of another network. Checkpoints written before fingerprints existed still load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from dagc.compiler.errors import DagcError
from dagc.compiler.output import write_atomic

POINTER = "latest.json"


def network_fingerprint(module, channels: int | None = None) -> str:
    """sha256 of what makes a network: node names in order, edges, channels, edge weights.

    Read from the generated module's own tables, so it needs nothing but the module.
    """
    description = {
        "nodes": list(module.NODES),
        "edges": [list(edge) for edge in module.EDGES],
        "channels": channels
        if channels is not None
        else getattr(module, "CHANNELS", None),
        "edge_weights": getattr(module, "EDGE_WEIGHTS", "sigmoid"),
    }
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(fingerprint: str) -> str:
    return fingerprint[:12]


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    model,
    trainer_state: dict,
    fingerprint: str | None = None,
) -> Path:
    from safetensors.torch import save

    weights = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
    }
    stem = f"ckpt-{iteration:06d}"
    metadata = {"iteration": str(iteration)}
    if fingerprint:
        metadata["fingerprint"] = fingerprint
    write_atomic(run_dir / f"{stem}.safetensors", save(weights, metadata=metadata))
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


def load_weights(
    path: Path, map_location="cpu", fingerprint: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a weights file on `map_location`; with `fingerprint`, a DagcError
    when the file was saved from another network (files without a fingerprint load)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
            saved = (handle.metadata() or {}).get("fingerprint")
            check_fingerprint(saved, fingerprint, path)
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DagcError(f"unreadable weights ({exc})", path) from None


def check_fingerprint(saved: str | None, expected: str | None, path: Path) -> None:
    if saved and expected and saved != expected:
        raise DagcError(
            f"these weights belong to network {short(saved)}, not to this module's network "
            f"{short(expected)} (nodes, edges, channels or edge weights differ)",
            path,
        )


def load_trainer_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors of many kinds
        raise DagcError(
            f"unreadable trainer state ({exc.__class__.__name__})", path
        ) from None
