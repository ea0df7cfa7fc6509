"""`dagc reproduce`: Park & Kim 2023's Table 1 and Fig. 3, and dagc's extra rows, in one command.

Compiles every network once, trains each (network, data set, seed) run in its own folder, skips
finished runs and resumes interrupted ones, then writes REPORT.md, results.json and figures.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from dagc.compiler.build import compile_network
from dagc.compiler.dag import DagOptions
from dagc.compiler.graph import PrepareOptions
from dagc.compiler.output import write_atomic
from dagc.compiler.render import CompileOptions
from dagc.runtime.train import TrainConfig, train

DATASETS = ("mnist", "fashion-mnist")


@dataclass(frozen=True)
class Network:
    label: str  # the row name in the table
    connectome: str
    dag: str
    edge_weights: str = "sigmoid"
    seeded: bool = False  # a random DAG: each seed draws a new graph

    def file_name(self, seed: int) -> str:
        dag = f"{self.dag}{seed}" if self.seeded else self.dag
        return f"{self.connectome}-{dag}-{self.edge_weights}"


@dataclass(frozen=True)
class Row:
    network: Network
    dataset: str
    paper: float | None  # percent; None where the paper has no such row


CONSTRAINED = {
    sex: Network(f"{sex}, constrained DAG", sex, "constrained")
    for sex in ("hermaphrodite", "male")
}
RANDOM_DAG = Network("hermaphrodite, random DAG (Roberts et al.)", "hermaphrodite", "random",
                     seeded=True)  # fmt: skip
WATTS_STROGATZ = Network(
    "Watts-Strogatz random graph", "hermaphrodite", "ws", seeded=True
)
DALE = Network(
    "hermaphrodite, Dale's law (dagc)", "hermaphrodite", "constrained", "dale"
)

ROWS = (
    Row(CONSTRAINED["hermaphrodite"], "mnist", 99.6),
    Row(CONSTRAINED["male"], "mnist", 99.5),
    Row(CONSTRAINED["hermaphrodite"], "fashion-mnist", 92.7),
    Row(CONSTRAINED["male"], "fashion-mnist", 92.6),
    Row(RANDOM_DAG, "mnist", 99.0),
    Row(WATTS_STROGATZ, "mnist", 99.3),
    Row(DALE, "mnist", None),
)


@dataclass(frozen=True)
class Settings:
    seeds: int = 3
    channels: int = 78
    iterations: int = 15000
    eval_every: int = 500
    device: str = "auto"
    data_dir: str | None = None
    quick: bool = False

    @classmethod
    def quick_settings(cls, **overrides) -> Settings:
        base = dict(seeds=1, channels=4, iterations=120, eval_every=40, quick=True)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def compile_model(
    network: Network, seed: int, settings: Settings, models_dir: Path
) -> Path:
    path = models_dir / f"{network.file_name(seed)}-c{settings.channels}.py"
    if not path.exists():
        dag = DagOptions(network.dag, seed if network.seeded else 0)
        options = CompileOptions(channels=settings.channels, edge_weights=network.edge_weights,
                                 layout="levels")  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # the male's CANL/CANR are listed in the module
            _, source = compile_network(
                network.connectome, PrepareOptions(), dag, options
            )
        write_atomic(path, source)
    return path


def run_one(row: Row, seed: int, settings: Settings, out: Path, log) -> dict:
    model = compile_model(row.network, seed, settings, out / "models")
    run_dir = out / "runs" / f"{row.network.file_name(seed)}-{row.dataset}-s{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        log(f"skip (finished): {run_dir.name}")
        return json.loads(summary_path.read_text())
    resume = run_dir.exists()
    log(f"{'resume' if resume else 'train'}: {run_dir.name}")
    config = TrainConfig(
        model=str(model), dataset=row.dataset, data_dir=settings.data_dir,
        iterations=settings.iterations, eval_every=settings.eval_every, seed=seed,
        device=settings.device, out=str(run_dir), resume=resume, quiet=True,
        command=f"dagc reproduce ({run_dir.name})",
    )  # fmt: skip
    return train(config)


def reproduce(out: Path, settings: Settings, log=print) -> Path:
    for folder in (out, out / "models", out / "runs"):
        folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    for row in ROWS:
        summaries = [
            run_one(row, seed, settings, out, log) for seed in range(settings.seeds)
        ]
        results.append((row, summaries))
    report = write_report(out, settings, results, time.perf_counter() - started)
    log(f"wrote {report}")
    return report


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_report(out: Path, settings: Settings, results, session_s: float) -> Path:
    from dagc.runtime import figures

    table = []
    for row, summaries in results:
        accuracies = [100 * s["final_test_accuracy"] for s in summaries]
        table.append({
            "network": row.network.label, "dataset": row.dataset,
            "accuracy_percent": accuracies, "mean": statistics.mean(accuracies),
            "paper": row.paper, "parameters": summaries[0]["parameters"],
            "wall_time_s": sum(s.get("wall_time_s", s["train_wall_time_s"]) for s in summaries),
            "device": summaries[0]["device"], "runs": [s["command"] for s in summaries],
        })  # fmt: skip
    curves = {}
    for dataset in DATASETS:
        series, paper = {}, {}
        for row, _summaries in results:
            if row.dataset == dataset and row.network in CONSTRAINED.values():
                run = out / "runs" / f"{row.network.file_name(0)}-{dataset}-s0"
                rows = [
                    json.loads(line)
                    for line in (run / "metrics.jsonl").read_text().splitlines()
                ]
                series[row.network.connectome] = [
                    (r["iteration"], 100 * r["test_accuracy"])
                    for r in rows
                    if "test_accuracy" in r
                ]
                paper[f"paper, {row.network.connectome}"] = row.paper
        name = f"fig3_accuracy_{dataset}.png"
        figures.plot_accuracy_series(
            series, out / name, f"Test accuracy, {dataset}", paper
        )
        curves[dataset] = name
        for sex in ("hermaphrodite", "male"):
            source = (
                out
                / "runs"
                / f"{sex}-constrained-sigmoid-{dataset}-s0"
                / "examples.png"
            )
            shutil.copyfile(source, out / f"fig3_examples_{sex}_{dataset}.png")
    results_json = {
        "settings": settings.__dict__,
        "rows": table,
        "session_wall_time_s": session_s,
    }
    write_atomic(out / "results.json", json.dumps(results_json, indent=2) + "\n")
    write_atomic(out / "REPORT.md", render_report(settings, table, curves))
    return out / "REPORT.md"


def render_report(settings: Settings, table: list[dict], curves: dict[str, str]) -> str:
    lines = ["# dagc reproduction of Park & Kim 2023, Table 1 and Fig. 3", ""]
    if settings.quick:
        lines += [
            "> **REDUCED RUN (`--quick`)**: "
            f"{settings.channels} channels, {settings.iterations} iterations, "
            f"{settings.seeds} seed(s). These numbers test the pipeline; they are not the "
            "paper's protocol (78 channels, 15,000 iterations) and are not comparable with it.",
            "",
        ]
    seeds = f"{settings.seeds} seed{'s' if settings.seeds > 1 else ''}"
    lines += [
        f"Protocol: {settings.channels} channels, {settings.iterations} iterations, batch 100, "
        f"Adam lr 0.004 (x0.1 every 10,000), {seeds}; test accuracy after the last iteration "
        "(mean ± sd over seeds).",
        "",
        "| network | data set | dagc accuracy (%) | paper (%) | parameters | wall time | device |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in table:
        paper = f"{entry['paper']:.1f}" if entry["paper"] is not None else "-"
        lines.append(
            f"| {entry['network']} | {entry['dataset']} | {mean_sd(entry['accuracy_percent'])} "
            f"| {paper} | {entry['parameters']:,} | {entry['wall_time_s'] / 60:.1f} min "
            f"| {entry['device']} |"
        )
    lines += ["", "## Figures", ""]
    for dataset, name in curves.items():
        lines += [
            f"Test accuracy versus iteration, {dataset} (Fig. 3A/B):",
            "",
            f"![]({name})",
            "",
        ]
        for sex in ("hermaphrodite", "male"):
            lines += [f"Right and wrong test images, {sex}, {dataset} (Fig. 3C-F):", "",
                      f"![](fig3_examples_{sex}_{dataset}.png)", ""]  # fmt: skip
    lines += [
        "Per-run folders (metrics, checkpoints, figures) are under `runs/`; the compiled",
        "networks under `models/`; every number above is in `results.json`.",
        "",
    ]
    return "\n".join(lines)
