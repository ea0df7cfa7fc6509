"""`dagc reproduce`: Park & Kim 2023's Table 1 and Fig. 3, and dagc's extra rows, in one command.

Compiles every network once, trains each (network, data set, seed) run in its own folder in a
fixed order, then writes REPORT.md, results.json and figures. A campaign can be done in
slots: finished runs are skipped, a partial run is resumed before a new one starts, and with a
time limit (or on SIGTERM, SIGUSR1, SIGINT) the current run pauses cleanly and the report
marks each cell complete, partial (the iteration reached) or not started. Calling it again
continues; `--status` prints the table without training.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from dagc.compiler.build import compile_network
from dagc.compiler.dag import DagOptions
from dagc.compiler.errors import DagcError
from dagc.compiler.graph import PrepareOptions
from dagc.compiler.output import write_atomic
from dagc.compiler.render import CompileOptions
from dagc.runtime.run_dir import read_metrics, read_summary
from dagc.runtime.stopping import StopRequest
from dagc.runtime.train import TrainConfig, train

from .paper import paper_accuracy

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

    @property
    def paper(self) -> float | None:
        """Percent; None where the paper has no such row (dagc's own variants)."""
        if self.network.edge_weights != "sigmoid":
            return None
        return paper_accuracy(self.network.connectome, self.network.dag, self.dataset)


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

ROWS = (  # the table's rows, in the order the runs are done
    Row(CONSTRAINED["hermaphrodite"], "mnist"),
    Row(CONSTRAINED["male"], "mnist"),
    Row(CONSTRAINED["hermaphrodite"], "fashion-mnist"),
    Row(CONSTRAINED["male"], "fashion-mnist"),
    Row(RANDOM_DAG, "mnist"),
    Row(WATTS_STROGATZ, "mnist"),
    Row(DALE, "mnist"),
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
    precision: str = (
        "fp32"  # activation storage of the CPU engine (dagc train --precision)
    )

    @classmethod
    def quick_settings(cls, **overrides) -> Settings:
        base = dict(seeds=1, channels=4, iterations=120, eval_every=40, quick=True)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


# What fixes a campaign's protocol: written to CAMPAIGN_FILE when it starts, so that calling
# again with only --out continues (or reports) the same runs. The device and the data folder
# belong to a slot, not to the campaign: a slot may run on another machine.
CAMPAIGN_FILE = "campaign.json"
PROTOCOL = ("quick", "seeds", "channels", "iterations", "eval_every", "precision")


def campaign_settings(out: Path, quick: bool, given: dict) -> Settings:
    """The settings of the campaign in `out`: the options given (None = not given), the rest
    from its CAMPAIGN_FILE, or the defaults for a new campaign. An option that contradicts
    the recorded protocol is refused (DagcError): its runs would mix two protocols."""
    given = {key: value for key, value in given.items() if value is not None}
    if quick:
        given["quick"] = True
    recorded = read_protocol(out)
    if recorded is None:
        if given.pop("quick", False):
            return Settings.quick_settings(**given)
        return Settings(**given)
    for key, value in given.items():
        if key in PROTOCOL and value != recorded[key]:
            option = (
                "--quick" if key == "quick" else f"--{key.replace('_', '-')} {value}"
            )
            raise DagcError(
                f"{option}: this campaign runs with {key.replace('_', '-')} "
                f"{recorded[key]}; leave the option out to continue it, or use another "
                "--out for another protocol",
                out / CAMPAIGN_FILE,
            )
    return Settings(**{**given, **recorded})


def read_protocol(out: Path) -> dict | None:
    """The recorded protocol; for a campaign from before CAMPAIGN_FILE, the settings its
    last report wrote to results.json; None for a new campaign."""
    path = out / CAMPAIGN_FILE
    if not path.exists():
        try:
            report = json.loads((out / "results.json").read_text())
            recorded = {"precision": "fp32", **report["settings"]}  # before --precision
            return {key: recorded[key] for key in PROTOCOL}
        except (OSError, ValueError, KeyError, TypeError):
            return None
    try:
        recorded = json.loads(path.read_text())
        return {key: recorded[key] for key in PROTOCOL}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DagcError(f"not a campaign record ({exc})", path) from exc


def record_protocol(out: Path, settings: Settings) -> None:
    """Write the campaign's CAMPAIGN_FILE once, when it starts."""
    path = out / CAMPAIGN_FILE
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        record = {key: getattr(settings, key) for key in PROTOCOL}
        write_atomic(path, json.dumps(record, indent=2) + "\n")


def compile_model(
    network: Network, seed: int, settings: Settings, models_dir: Path
) -> Path:
    path = models_dir / f"{network.file_name(seed)}-c{settings.channels}.py"
    if not path.exists():
        dag = DagOptions(network.dag, seed if network.seeded else 0)
        # The compiler's defaults (flat layout, generated reverse pass): what `dagc train`
        # runs fastest, the CPU engine included; the levels layout falls back to torch's ops.
        options = CompileOptions(
            channels=settings.channels, edge_weights=network.edge_weights
        )
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # the male's CANL/CANR are listed in the module
            _, source = compile_network(
                network.connectome, PrepareOptions(), dag, options
            )
        write_atomic(path, source)
    return path


def run_dir_of(row: Row, seed: int, out: Path) -> Path:
    return out / "runs" / f"{row.network.file_name(seed)}-{row.dataset}-s{seed}"


@dataclass(frozen=True)
class Cell:
    """One run of the campaign and how far it is."""

    row: Row
    seed: int
    run_dir: Path
    state: str  # "complete", "partial" or "not started"
    iteration: int = 0  # reached so far (the last checkpoint's, for a partial run)
    summary: dict | None = None  # a complete run's summary.json
    paused: dict | None = None  # a partial run's summary.json, written when it paused

    def describe(self, iterations: int) -> str:
        if self.state == "partial":
            return f"partial ({self.iteration}/{iterations})"
        return self.state

    def latest_accuracy(self) -> str:
        """A partial run's last test accuracy (%) and where it was measured, or "-"."""
        evaluated = accuracy_points(self.run_dir)
        if not evaluated:
            return "-"
        iteration, accuracy = evaluated[-1]
        return f"{accuracy:.2f} at {iteration:,} (latest)"


def cell_state(row: Row, seed: int, out: Path) -> Cell:
    """Read a run's state from its folder alone (nothing is trained or compiled)."""
    run_dir = run_dir_of(row, seed, out)
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status", "complete") == "complete":
        return Cell(row, seed, run_dir, "complete", summary["iterations"], summary)
    if not run_dir.exists():
        return Cell(row, seed, run_dir, "not started")
    pointer = run_dir / "latest.json"
    iteration = json.loads(pointer.read_text())["iteration"] if pointer.exists() else 0
    return Cell(row, seed, run_dir, "partial", iteration, paused=summary)


def campaign(out: Path, settings: Settings) -> list[Cell]:
    """Every run in the campaign's fixed order: rows, then seeds."""
    return [
        cell_state(row, seed, out) for row in ROWS for seed in range(settings.seeds)
    ]


def run_one(
    cell: Cell, model: Path, settings: Settings, time_limit: float | None
) -> dict:
    """Trains (or resumes) one cell's run of the compiled `model`; its summary."""
    config = TrainConfig(
        model=str(model), dataset=cell.row.dataset, data_dir=settings.data_dir,
        iterations=settings.iterations, eval_every=settings.eval_every, seed=cell.seed,
        device=settings.device, precision=settings.precision,
        out=str(cell.run_dir), resume=cell.run_dir.exists(),
        quiet=True, time_limit=time_limit, command=f"dagc reproduce ({cell.run_dir.name})",
        reference_accuracy=paper_accuracy(
            cell.row.network.connectome, cell.row.network.dag, cell.row.dataset
        ),
    )  # fmt: skip
    return train(config)


def reproduce(
    out: Path, settings: Settings, log=print, time_limit: float | None = None
) -> bool:
    """Work through the campaign until it is complete (True) or time is up (False).

    The report is written either way. Partial runs go first, then the rest in order.
    """
    for folder in (out, out / "models", out / "runs"):
        folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cells = campaign(out, settings)
    todo = [c for c in cells if c.state == "partial"] + [
        c for c in cells if c.state == "not started"
    ]
    for cell in cells:
        if cell.state == "complete":
            log(f"skip (finished): {cell.run_dir.name}")
    paused = False
    with StopRequest(time_limit, started) as stop:
        for cell in todo:
            # Compiling takes seconds: a stop that comes meanwhile starts no run (and
            # one that came before leaves `model` None and is caught below).
            model = None
            if not stop.requested():
                model = compile_model(
                    cell.row.network, cell.seed, settings, out / "models"
                )
            remaining = None
            if time_limit is not None:
                remaining = time_limit - (time.monotonic() - started)
            if stop.requested() or (remaining is not None and remaining <= 0):
                paused = True
                break
            resume = cell.state == "partial"
            log(f"{'resume' if resume else 'train'}: {cell.run_dir.name}")
            # A stop signal in its last moments (summary, figures) reaches `stop` too
            # (stopping.py: nested requests pass it on), so the next run does not start.
            summary = run_one(cell, model, settings, remaining)
            if summary.get("status") == "paused":
                log(f"paused: {cell.run_dir.name} at iteration {summary['iteration']} "
                    f"({summary['stopped_by']})")  # fmt: skip
                paused = True
                break
    cells = campaign(out, settings)
    report = write_report(out, settings, cells, time.monotonic() - started)
    complete = all(cell.state == "complete" for cell in cells)
    log(
        f"wrote {report}"
        + ("" if complete else " (incomplete: call again to continue)")
    )
    return complete and not paused


def find_cell(out: Path, settings: Settings, name: str) -> Cell:
    """The campaign's cell whose run folder is `name`; a DagcError naming the others if none."""
    cells = campaign(out, settings)
    for cell in cells:
        if cell.run_dir.name == name:
            return cell
    names = ", ".join(cell.run_dir.name for cell in cells)
    raise DagcError(
        f"--cell {name!r}: no such run in this campaign (its runs: {names})"
    )


def reproduce_cell(out: Path, settings: Settings, name: str, log=print,
                   time_limit: float | None = None) -> bool:  # fmt: skip
    """Train one cell (a batch job of `dagc reproduce --launcher slurm`): True once complete.

    A stop signal or the time limit pauses it like a whole campaign (False). Only the
    training listens for the stop signals: a job script passes one on once it does
    (studies/slurm.py), so none falls between a check here and the training's own. A
    completed cell rewrites the report, one job at a time (a lock file), so the job that
    finishes the campaign's last cell leaves the complete report.
    """
    import fcntl

    started = time.monotonic()
    cell = find_cell(out, settings, name)
    summary = {"status": "complete"}
    if cell.state == "complete":
        log(f"skip (finished): {name}")
    else:
        log(f"{'resume' if cell.state == 'partial' else 'train'}: {name}")
        remaining = None
        if time_limit is not None:
            remaining = max(time_limit - (time.monotonic() - started), 1e-9)
        model = compile_model(cell.row.network, cell.seed, settings, out / "models")
        summary = run_one(cell, model, settings, remaining)
    if summary.get("status") != "complete":
        log(
            f"paused: {name} at iteration {summary['iteration']} ({summary['stopped_by']})"
        )
        return False  # no report now: the grace before the time limit is short
    if int(os.environ.get("RANK", "0")) != 0:
        return True  # under torchrun the main process writes the report
    with open(out / ".report.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_report(out, settings, campaign(out, settings), time.monotonic() - started)
    return True


def status_table(out: Path, settings: Settings) -> str:
    """The campaign's table as `dagc reproduce --status` prints it."""
    cells = campaign(out, settings)
    lines = [
        "| network | data set | seed | state | test accuracy (%) |",
        "|---|---|---|---|---|",
    ]
    for cell in cells:
        accuracy = (f"{100 * cell.summary['final_test_accuracy']:.2f}" if cell.summary
                    else cell.latest_accuracy())  # fmt: skip
        lines.append(f"| {cell.row.network.label} | {cell.row.dataset} | {cell.seed} "
                     f"| {cell.describe(settings.iterations)} | {accuracy} |")  # fmt: skip
    done = sum(cell.state == "complete" for cell in cells)
    lines += ["", f"{done} of {len(cells)} runs complete ({out})"]
    if not (out / "runs").is_dir():
        lines += reported_without_runs(out)
    return "\n".join(lines)


def reported_without_runs(out: Path) -> list[str]:
    """For a folder that kept its report but not its runs (the table above reads the run
    folders): what the last report recorded, so a committed report is not taken for an
    empty campaign."""
    try:
        rows = json.loads((out / "results.json").read_text())["rows"]
        reported = [(row["network"], row["dataset"], row["state"], row.get("mean"))
                    for row in rows]  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return []
    complete = [r for r in reported if r[2] == "complete" and r[3] is not None]
    lines = [
        f"No run folders under {out / 'runs'} (not kept: continuing would train every "
        f"run again). Its results.json records {len(complete)} of {len(reported)} "
        "rows complete:"
    ]
    return lines + [f"  {net}, {data}: {mean:.2f} %" for net, data, _, mean in complete]


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def row_state(cells: list[Cell], iterations: int) -> str:
    """A row's state: "complete", or each seed's state when some are not complete."""
    if all(cell.state == "complete" for cell in cells):
        return "complete"
    if len(cells) == 1:
        return cells[0].describe(iterations)
    return "; ".join(f"seed {cell.seed} {cell.describe(iterations)}" for cell in cells)


def accuracy_points(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["iteration"], 100 * r["test_accuracy"])
            for r in read_metrics(run_dir) if "test_accuracy" in r]  # fmt: skip


def write_report(
    out: Path, settings: Settings, cells: list[Cell], session_s: float
) -> Path:
    from dagc.runtime import figures

    table = []
    for row in ROWS:
        mine = [cell for cell in cells if cell.row == row]
        summaries = [cell.summary for cell in mine if cell.summary]
        accuracies = [100 * s["final_test_accuracy"] for s in summaries]
        paused = [cell for cell in mine if cell.paused]  # how far the partial runs are
        timed = summaries + [cell.paused for cell in paused]
        table.append({
            "network": row.network.label, "dataset": row.dataset,
            "state": row_state(mine, settings.iterations),
            "cells": [{"seed": c.seed, "state": c.state, "iteration": c.iteration} for c in mine],
            "accuracy_percent": accuracies,
            "mean": statistics.mean(accuracies) if accuracies else None,
            "paper": row.paper,
            "parameters": summaries[0]["parameters"] if summaries else None,
            "latest": [c.latest_accuracy() for c in paused],
            "wall_time_s": sum(s.get("wall_time_s", s["train_wall_time_s"]) for s in timed),
            "device": next((s.get("device") for s in timed), None),
            "runs": [s["command"] for s in summaries],
        })  # fmt: skip
    curves = {}
    for dataset in DATASETS:
        series, paper = {}, {}
        for row in ROWS:
            if row.dataset == dataset and row.network in CONSTRAINED.values():
                points = accuracy_points(run_dir_of(row, 0, out))  # partial runs too
                series[row.network.connectome] = points
                paper[f"paper, {row.network.connectome}"] = row.paper
        name = f"fig3_accuracy_{dataset}.png"
        figures.plot_accuracy_series(
            series, out / name, f"Test accuracy, {dataset}", paper
        )
        curves[dataset] = name
        for sex in ("hermaphrodite", "male"):
            source = run_dir_of(Row(CONSTRAINED[sex], dataset), 0, out) / "examples.png"
            target = out / f"fig3_examples_{sex}_{dataset}.png"
            if source.exists():  # written when the run completes
                shutil.copyfile(source, target)
    results_json = {
        "settings": settings.__dict__,
        "complete": all(cell.state == "complete" for cell in cells),
        "rows": table,
        "session_wall_time_s": session_s,
    }
    write_atomic(out / "results.json", json.dumps(results_json, indent=2) + "\n")
    write_atomic(out / "REPORT.md", render_report(settings, table, curves, out))
    return out / "REPORT.md"


# A complete cell further than MISS_POINTS from the paper's number needs a why, written by
# hand in NOTES_FILE: REPORT.md is rewritten at every pause, NOTES.md is not.
MISS_POINTS = 0.3
NOTES_FILE = "NOTES.md"


def against_the_paper(table: list[dict], out: Path) -> list[str]:
    """Each complete cell's distance to the paper's number, and OUT/NOTES.md, which says why."""
    lines = ["", "## Against the paper", ""]
    compared = [e for e in table if e["state"] == "complete" and e["paper"] is not None]
    if not compared:
        lines.append("No cell with a published number is complete yet.")
    for entry in compared:
        gap = entry["mean"] - entry["paper"]
        verdict = (f"misses it by more than {MISS_POINTS} points" if abs(gap) > MISS_POINTS
                   else f"within {MISS_POINTS} points")  # fmt: skip
        lines.append(f"- {entry['network']}, {entry['dataset']}: {entry['mean']:.2f} % "
                     f"against {entry['paper']:.1f} % ({gap:+.2f} points): {verdict}.")  # fmt: skip
    notes = out / NOTES_FILE
    if notes.exists():
        lines += ["", f"From `{NOTES_FILE}` (kept when this report is rewritten):", "",
                  notes.read_text().strip()]  # fmt: skip
    return lines


def render_report(settings: Settings, table: list[dict], curves: dict[str, str],
                  out: Path) -> str:  # fmt: skip
    lines = ["# dagc reproduction of Park & Kim 2023, Table 1 and Fig. 3", ""]
    if any(entry["state"] != "complete" for entry in table):
        lines += [
            "> **INCOMPLETE**: some runs are partial or not started (the state column); "
            f"call `dagc reproduce --out {out}` again to continue (the protocol is in "
            f"`{CAMPAIGN_FILE}`).",
            "",
        ]
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
        f"Adam lr 0.004 (x0.1 every 10,000), {seeds}, activations stored in "
        f"{settings.precision}; test accuracy after the last iteration (mean ± sd over "
        "seeds; for a partial run, its latest evaluation).",
        "",
        "| network | data set | state | dagc accuracy (%) | paper (%) | parameters "
        "| wall time | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in table:
        paper = f"{entry['paper']:.1f}" if entry["paper"] is not None else "-"
        accuracy = (
            mean_sd(entry["accuracy_percent"])
            if entry["accuracy_percent"]
            else "; ".join(entry["latest"]) or "-"
        )
        parameters = f"{entry['parameters']:,}" if entry["parameters"] else "-"
        wall = f"{entry['wall_time_s'] / 60:.1f} min" if entry["wall_time_s"] else "-"
        if entry["wall_time_s"] and entry["state"] != "complete":
            wall += " so far"
        lines.append(
            f"| {entry['network']} | {entry['dataset']} | {entry['state']} | {accuracy} "
            f"| {paper} | {parameters} | {wall} | {entry['device'] or '-'} |"
        )
    lines += against_the_paper(table, out)
    lines += ["", "## Figures", ""]
    for dataset, name in curves.items():
        lines += [
            f"Test accuracy versus iteration, {dataset} (Fig. 3A/B):",
            "",
            f"![]({name})",
            "",
        ]
        for sex in ("hermaphrodite", "male"):
            name = f"fig3_examples_{sex}_{dataset}.png"
            if (out / name).exists():
                lines += [f"Right and wrong test images, {sex}, {dataset} (Fig. 3C-F):", "",
                          f"![]({name})", ""]  # fmt: skip
    lines += [
        "Per-run folders (metrics, checkpoints, figures) are under `runs/`; the compiled",
        "networks under `models/`; every number above is in `results.json`.",
        "",
    ]
    return "\n".join(lines)
