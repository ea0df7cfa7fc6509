"""What the study scripts (precision_study.py, larva_study.py) share: `dagc train` runs that
can be stopped and restarted, and their metrics read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def run_is_complete(run: Path) -> bool:
    return (run / "summary.json").exists() and read_summary(run).get(
        "status"
    ) == "complete"


def train(model: Path, run: Path, data_dir: str | None, **options) -> None:
    """`dagc train MODEL --out RUN --OPTION VALUE ...` on the CPU, resumed when an earlier
    attempt left a summary, then tidied."""
    command = [
        "dagc",
        "train",
        str(model),
        "--out",
        str(run),
        "--device",
        "cpu",
        "--quiet",
    ]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    if data_dir:
        command += ["--data-dir", data_dir]
    if (run / "summary.json").exists():
        command.append("--resume")
    print("$", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)
    tidy(run)


def tidy(run: Path) -> None:
    """Drop what a complete run no longer needs: its checkpoints and its copy of the model
    (megabytes; the study compiles it again from the bundled connectome). The metrics, the
    summary and the figures are the evidence, and the repository stays lean."""
    if not run_is_complete(run):
        return
    for path in [*run.glob("ckpt-*"), run / "latest.json", run / "model.py"]:
        path.unlink(missing_ok=True)


def compile_model(folder: Path, name: str, *arguments: str) -> Path:
    """`dagc compile ARGUMENTS -o FOLDER/NAME.py`, unless that file is there already."""
    path = folder / f"{name}.py"
    if not path.exists():
        subprocess.run(["dagc", "compile", *arguments, "-o", str(path)], check=True)
    return path


def final_row(metrics: list[dict]) -> dict:
    """The last logged loss and the last test accuracy (both at the final iteration), the
    best test accuracy, and the mean of the last five evaluations (at 8 channels and a
    learning rate of 0.004 one evaluation can dip by points, so a single final number is a
    noisy comparison)."""
    last = metrics[-1]
    accuracies = [row["test_accuracy"] for row in metrics if "test_accuracy" in row]
    speeds = sorted(row["images_per_s"] for row in metrics)
    tail = accuracies[-5:]
    return {
        "iteration": last["iteration"],
        "loss": last["loss"],
        "test_accuracy": accuracies[-1] if accuracies else None,
        "best_test_accuracy": max(accuracies) if accuracies else None,
        "mean_last5_test_accuracy": sum(tail) / len(tail) if tail else None,
        "median_images_per_s": speeds[len(speeds) // 2],
    }


def accuracy_at(metrics: list[dict], iteration: int) -> float | None:
    for row in metrics:
        if row["iteration"] == iteration and "test_accuracy" in row:
            return row["test_accuracy"]
    return None
