"""The larva brain as an image classifier, beside the worm and the larva's own random DAG.

    python scripts/larva_study.py --data-dir ../shared/data --out docs/larva

Trains at 8 channels with the paper's protocol otherwise (batch 100, Adam 0.004, seed 0), on
the CPU engine in fp32, for a few hundred iterations (a reduced run: the paper trains 15,000;
a larva step takes seconds and an evaluation minutes here):
- larva8-mnist: the larva's constrained DAG (3,012 neurons, 1,155 levels) on MNIST, 200;
- larva-random8-mnist: Roberts et al.'s random DAG on the same larva graph (`--dag random`),
  200;
- larva8-fashion-mnist: the constrained DAG on Fashion-MNIST, 100.
The worm at the same width is read from the precision study's fp32 runs
(docs/results/precision/runs/hermaphrodite8-*-fp32, 1,500 iterations, evaluated every 100):
same protocol, same seed, so its accuracy at this run's last iteration is what a run of this
length would have reached.

Writes OUT/runs/NAME (metrics, summary, figures), OUT/summary.json, OUT/curves.png,
OUT/fig2_larva.png and OUT/fig2_larva_random.png (`dagc draw`, binned by level). A complete
run is not trained again, so the script can be stopped and restarted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from study_runs import (
    accuracy_at,
    compile_model,
    final_row,
    read_metrics,
    read_summary,
    run_is_complete,
    tidy,
    train,
)

CHANNELS = 8
WORM_RUNS = Path("docs/results/precision/runs")


@dataclass(frozen=True)
class Run:
    name: str
    dag: str
    dataset: str
    iterations: int
    eval_every: int  # a larva evaluation (10,000 images) costs minutes: few of them


RUNS = (
    Run("larva8-mnist", "constrained", "mnist", 200, 100),
    Run("larva-random8-mnist", "random", "mnist", 200, 200),
    Run("larva8-fashion-mnist", "constrained", "fashion-mnist", 100, 100),
)


def dag_statistics(dag: str) -> dict:
    inspected = subprocess.run(
        ["dagc", "inspect", "larva", "--dag", dag, "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(inspected.stdout)["network"]


def worm_row(dataset: str, iterations: int) -> dict | None:
    """The worm at 8 channels on `dataset`, at `iterations` of the precision study's run."""
    worm = WORM_RUNS / f"hermaphrodite8-{dataset}-fp32"
    if not run_is_complete(worm):
        return None
    metrics = read_metrics(worm)
    return {
        "dag": "constrained",
        "dataset": dataset,
        "parameters": read_summary(worm)["parameters"],
        "iteration": iterations,
        "test_accuracy": accuracy_at(metrics, iterations),
        "loss": next(r["loss"] for r in metrics if r["iteration"] == iterations),
        "from": str(worm),
    }


def summarize(out: Path) -> dict:
    rows = {}
    for run in RUNS:
        folder = out / "runs" / run.name
        if not run_is_complete(folder):
            continue
        tidy(folder)  # a run completed by an earlier, interrupted invocation
        summary = read_summary(folder)
        rows[run.name] = {
            "dag": run.dag,
            "dataset": run.dataset,
            "parameters": summary["parameters"],
            "train_wall_time_s": summary["train_wall_time_s"],
            **final_row(read_metrics(folder)),
        }
    for run in RUNS:  # the worm beside each larva run that was trained
        if run.name not in rows or run.dag != "constrained":
            continue
        worm = worm_row(run.dataset, run.iterations)
        if worm:
            rows[f"hermaphrodite8-{run.dataset}-at-{run.iterations}"] = worm
    return rows


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [
        (run.name, out / "runs" / run.name, run.dataset, run.iterations) for run in RUNS
    ]
    for run in RUNS:  # the worm beside each larva run that was trained
        if run.dag == "constrained" and run_is_complete(out / "runs" / run.name):
            worm = WORM_RUNS / f"hermaphrodite8-{run.dataset}-fp32"
            curves.append(
                (f"hermaphrodite8-{run.dataset}", worm, run.dataset, run.iterations)
            )
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for name, folder, dataset, iterations in curves:
        if not (folder / "metrics.jsonl").exists():
            continue
        metrics = [r for r in read_metrics(folder) if r["iteration"] <= iterations]
        style = "--" if "fashion" in dataset else "-"
        axes[0].plot([r["iteration"] for r in metrics], [r["loss"] for r in metrics], style,
                     label=name)  # fmt: skip
        evaluated = [r for r in metrics if "test_accuracy" in r]
        axes[1].plot([r["iteration"] for r in evaluated],
                     [100 * r["test_accuracy"] for r in evaluated], style, marker="o",
                     label=name)  # fmt: skip
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel("test accuracy (%)")
    for axis in axes:
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(
        f"Larva brain vs worm vs the larva's random DAG ({CHANNELS} channels, seed 0)"
    )
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/larva"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--only", nargs="*", default=None, help="run names to train")
    args = parser.parse_args()
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    for dag, figure in (
        ("constrained", "fig2_larva.png"),
        ("random", "fig2_larva_random.png"),
    ):
        if not (args.out / figure).exists():
            command = [
                "dagc",
                "draw",
                "larva",
                "--dag",
                dag,
                "-o",
                str(args.out / figure),
            ]
            subprocess.run(command, check=True)
    with tempfile.TemporaryDirectory() as models:
        for run in RUNS:
            if args.only is not None and run.name not in args.only:
                continue
            model = compile_model(
                Path(models), f"larva_{run.dag}{CHANNELS}",
                "-c", "larva", "--dag", run.dag, "--channels", str(CHANNELS),
            )  # fmt: skip
            folder = args.out / "runs" / run.name
            if not run_is_complete(folder):
                train(
                    model, folder, args.data_dir,
                    dataset=run.dataset, iterations=run.iterations,
                    eval_every=run.eval_every, log_every=10,
                    seed=0, kernels="engine", precision="fp32",
                )  # fmt: skip
    report = {
        "channels": CHANNELS,
        "dags": {dag: dag_statistics(dag) for dag in ("constrained", "random")},
        "runs": summarize(args.out),
    }
    (args.out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(args.out)
    print(json.dumps(report["runs"], indent=2))


if __name__ == "__main__":
    main()
