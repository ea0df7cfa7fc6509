"""Does bf16 storage keep the accuracy? fp32 and bf16 training runs of the CPU engine, side by side.

    python scripts/precision_study.py --data-dir ../shared/data --out docs/results/precision

Trains, with the paper's protocol otherwise and seed 0:
- the hermaphrodite at 8 channels for 1,500 iterations on MNIST and Fashion-MNIST, fp32 and bf16;
- the hermaphrodite at the paper's 78 channels on MNIST for its first 600 iterations, fp32 and bf16.

Each run is an ordinary `dagc train` (engine kernels) into OUT/runs/NAME; a run whose
summary.json says "complete" is not run again, so the script can be stopped and restarted.
It then writes OUT/summary.json (final accuracy and loss of every run, the differences
bf16 - fp32) and OUT/curves.png (loss and test accuracy of each pair, side by side).
Checkpoints are deleted once a run is complete: the metrics are the evidence.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from study_runs import (
    compile_model,
    final_row,
    read_metrics,
    read_summary,
    run_is_complete,
    tidy,
    train,
)

PRECISIONS = ("fp32", "bf16")
# What is compared between the two precisions (see study_runs.final_row).
DIFFERENCES = (
    "test_accuracy",
    "best_test_accuracy",
    "mean_last5_test_accuracy",
    "loss",
)


@dataclass(frozen=True)
class Pair:
    """One network, data set and length, trained once per precision."""

    name: str
    channels: int
    dataset: str
    iterations: int
    eval_every: int
    log_every: int


PAIRS = (
    Pair("hermaphrodite8-mnist", 8, "mnist", 1500, 100, 25),
    Pair("hermaphrodite8-fashion-mnist", 8, "fashion-mnist", 1500, 100, 25),
    Pair("hermaphrodite78-mnist", 78, "mnist", 600, 150, 10),
)


def summarize(out: Path) -> dict:
    pairs = {}
    for pair in PAIRS:
        runs = {p: out / "runs" / f"{pair.name}-{p}" for p in PRECISIONS}
        if not all(run_is_complete(run) for run in runs.values()):
            continue
        for run in runs.values():
            tidy(run)  # completed by an earlier, interrupted invocation
        finals = {p: final_row(read_metrics(run)) for p, run in runs.items()}
        pairs[pair.name] = {
            "channels": pair.channels,
            "dataset": pair.dataset,
            "iterations": pair.iterations,
            **finals,
            "bf16_minus_fp32": {
                key: finals["bf16"][key] - finals["fp32"][key] for key in DIFFERENCES
            },
            "train_wall_time_s": {
                p: read_summary(run)["train_wall_time_s"] for p, run in runs.items()
            },
        }
    return pairs


def plot(out: Path, pairs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(pairs)
    figure, axes = plt.subplots(
        2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False
    )
    for column, name in enumerate(names):
        for precision, style in zip(PRECISIONS, ("-", "--")):
            metrics = read_metrics(out / "runs" / f"{name}-{precision}")
            steps = [row["iteration"] for row in metrics]
            axes[0][column].plot(
                steps, [row["loss"] for row in metrics], style, label=precision
            )
            evaluated = [row for row in metrics if "test_accuracy" in row]
            axes[1][column].plot(
                [row["iteration"] for row in evaluated],
                [100 * row["test_accuracy"] for row in evaluated],
                style, marker="o", label=precision,
            )  # fmt: skip
        axes[0][column].set_title(name, fontsize=10)
        axes[0][column].set_yscale("log")
        axes[0][column].set_ylabel("training loss")
        axes[1][column].set_ylabel("test accuracy (%)")
        axes[1][column].set_xlabel("iteration")
        for axis in axes[:, column]:
            axis.grid(alpha=0.3)
            axis.legend()
    figure.suptitle("CPU engine: activations stored in fp32 vs bf16 (seed 0)")
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/precision"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--only", nargs="*", default=None, help="pair names to train")
    args = parser.parse_args()
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as models:
        for pair in PAIRS:
            if args.only is not None and pair.name not in args.only:
                continue
            model = compile_model(
                Path(models), f"hermaphrodite{pair.channels}",
                "-c", "hermaphrodite", "--channels", str(pair.channels),
            )  # fmt: skip
            for precision in PRECISIONS:
                run = args.out / "runs" / f"{pair.name}-{precision}"
                if not run_is_complete(run):
                    train(
                        model, run, args.data_dir,
                        dataset=pair.dataset, iterations=pair.iterations,
                        eval_every=pair.eval_every, log_every=pair.log_every,
                        seed=0, kernels="engine", precision=precision,
                    )  # fmt: skip
    pairs = summarize(args.out)
    (args.out / "summary.json").write_text(json.dumps(pairs, indent=2) + "\n")
    if pairs:
        plot(args.out, pairs)
    print(json.dumps(pairs, indent=2))


if __name__ == "__main__":
    main()
