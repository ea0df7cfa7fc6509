"""The run folder: everything a run leaves on disk, and how a run continues from it.

    model.py                 the generated module (the folder is self-contained)
    metrics.jsonl            one row per log interval; evaluations add test_accuracy
    ckpt-<it>.safetensors    weights and BatchNorm statistics, with the network fingerprint
    ckpt-<it>.pt             optimizer, scheduler, metrics, clocks, the unlogged loss so far
    latest.json              names the newest complete checkpoint (see checkpoint.py)
    summary.json             "status": "complete" (with figures) or "paused" (with the iteration)

A paused folder is a few hundred kB and resumes on any machine and device: tensors load onto
the new device and the optimizer state is adapted to the new step (eager or CUDA graph).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dagc.compiler.errors import DagcError
from dagc.compiler.output import write_atomic

from .checkpoint import (
    check_fingerprint,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    save_checkpoint,
)


@dataclass
class Progress:
    """Where a run stands: what a checkpoint saves besides the model and optimizer."""

    iteration: int = 0
    metrics: list[dict] = field(default_factory=list)
    elapsed: float = 0.0  # training wall time (steps only) of all sessions so far
    wall: float = 0.0  # whole wall time of earlier sessions (evaluations included)
    loss_sum: float | torch.Tensor = (
        0.0  # summed loss of steps not yet in a metrics row
    )
    since_log: int = 0  # how many steps that sum holds


class RunDir:
    def __init__(self, path: Path, main: bool = True):
        self.path = Path(path)
        self.main = main  # only the main process of a torchrun job writes

    def prepare(self, model_file: str | Path, resume: bool) -> None:
        """Create the folder (or check it for --resume) and copy the model into it."""
        if not self.main:
            return
        path = self.path
        if path.exists() and not resume and any(path.iterdir()):
            raise DagcError(
                "run folder is not empty: pass --resume to continue it or --out for a new one",
                path,
            )
        if not path.parent.is_dir():
            raise DagcError("parent folder does not exist", path.parent)
        path.mkdir(exist_ok=True)
        source = Path(model_file).read_text(encoding="utf-8")
        copy = path / "model.py"
        if copy.exists() and copy.read_text(encoding="utf-8") != source:
            raise DagcError("this run was started with a different model file", path)
        write_atomic(copy, source)

    # --- checkpoints ------------------------------------------------------------------------

    def save(self, progress: Progress, model, optimizer, scheduler, scaler, config: dict,
             fingerprint: str) -> None:  # fmt: skip
        if not self.main:
            return
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "metrics": progress.metrics,
            "elapsed": progress.elapsed,
            "wall": progress.wall,
            "loss_sum": torch.as_tensor(progress.loss_sum).detach().cpu().clone(),
            "since_log": progress.since_log,
            "fingerprint": fingerprint,
            "config": config,
        }
        save_checkpoint(self.path, progress.iteration, model, state, fingerprint)

    def restore(self, model, optimizer, scheduler, scaler, device: torch.device,
                fingerprint: str) -> Progress:  # fmt: skip
        """Load the newest checkpoint into the given objects; a fresh Progress if none."""
        found = latest_checkpoint(self.path)
        if found is None:
            return Progress()
        weights, state_path = found
        model.load_state_dict(load_weights(weights, device, fingerprint))
        state = load_trainer_state(state_path)
        check_fingerprint(state.get("fingerprint"), fingerprint, state_path)
        load_optimizer_state(optimizer, state["optimizer"], device)
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        progress = Progress(
            iteration=state["iteration"],
            metrics=state["metrics"],
            elapsed=state.get("elapsed", 0.0),
            wall=state.get("wall", 0.0),
            loss_sum=state.get("loss_sum", 0.0),
            since_log=state.get("since_log", 0),
        )
        if self.main:  # rows logged after the checkpoint are replayed, so drop them
            self.write_metrics(progress.metrics)
        return progress

    # --- metrics and summary ----------------------------------------------------------------

    def write_metrics(self, rows: list[dict]) -> None:
        write_atomic(
            self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
        )

    def append_metric(self, row: dict) -> None:
        if self.main:
            with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def write_summary(self, summary: dict) -> None:
        if self.main:
            write_atomic(
                self.path / "summary.json", json.dumps(summary, indent=2) + "\n"
            )


def read_summary(folder: Path) -> dict | None:
    """A run folder's summary.json, or None when it is missing or not a JSON object."""
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def read_metrics(folder: Path) -> list[dict]:
    """A run folder's metrics.jsonl rows ([] when there is none yet); a line that is not
    JSON raises ValueError."""
    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_optimizer_state(optimizer, saved: dict, device: torch.device) -> None:
    """Load an Adam state saved by any run (CPU or CUDA, eager or CUDA-graph step).

    `load_state_dict` moves the moments to the parameters' device but takes `capturable`, the
    learning rate and the step counters as saved; they are set here to what this optimizer
    was built with: a captured step reads them from device memory, an eager one from the host.
    """
    capturable = bool(optimizer.param_groups[0].get("capturable", False))
    optimizer.load_state_dict(saved)
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if capturable else lr
        if "initial_lr" in group:
            group["initial_lr"] = float(group["initial_lr"])
    for param_state in optimizer.state.values():
        if "step" in param_state:
            step = torch.as_tensor(param_state["step"], dtype=torch.float32)
            param_state["step"] = step.to(device) if capturable else step.cpu()
