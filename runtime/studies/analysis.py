"""`dagc analyze`: which neurons and synapses does a trained classifier use?

Three questions, answered on a trained run folder and written to ANALYSIS.md, analysis.json
and PNG figures:

1. Lesions: every neuron silenced alone (see `dagc.runtime.studies.lesion`), on a fixed, seeded subset
   of the test set; neurons ranked by the accuracy drop (ties broken by the rise in test
   loss, then by topological order), summarised per neuron type and per topological level.
2. Synapses: the learned edge weights (`edge_weights()`, after the sigmoid and Dale's signs)
   against the wiring diagram's synapse counts (`SYNAPSES`), Spearman's rho with a seeded
   permutation p-value, overall and per presynaptic neuron type.
3. Dale runs: excitatory against inhibitory weight magnitudes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dagc.compiler.errors import DagcError
from dagc.compiler.output import check_writable_dir, write_atomic
from dagc.runtime.data import load_split
from dagc.runtime.run_dir import read_metrics, read_summary

from .lesion import COMMAND_INTERNEURONS, load_run, test_subset
from .plots import figures
from .report import markdown
from .scan import lesion_scan
from .statistics import initial_weight, summarise, synapse_analysis, synapse_data


@dataclass(frozen=True)
class AnalysisConfig:
    run: str
    out: str
    subset: int = 300
    seed: int = 0
    permutations: int = 10000
    dataset: str | None = None
    data_dir: str | None = None
    device: str = "auto"
    precision: str | None = None  # the run's own by default
    batch: int = 250
    quiet: bool = False


def analyze(config: AnalysisConfig, log=lambda line: None) -> dict:
    started, cpu_started = time.perf_counter(), time.process_time()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise DagcError("not a folder", out)
    if not out.parent.is_dir():
        raise DagcError("parent folder does not exist", out.parent)
    if config.subset < 0:
        raise DagcError("--subset must be 0 (the whole test set) or more")
    if config.permutations < 1:
        raise DagcError("--permutations must be at least 1")
    run = load_run(Path(config.run), config.dataset, config.device, config.precision)
    out.mkdir(exist_ok=True)
    check_writable_dir(out / "analysis.json")
    images, labels = load_split(run.dataset, False, config.data_dir)
    chosen = test_subset(labels, config.subset, config.seed)
    images, labels = images[chosen].to(run.device), labels[chosen].to(run.device)
    log(
        f"silencing each of {len(run.module.NODES)} neurons on {len(chosen)} "
        f"{run.dataset} test images"
    )
    intact, rows = lesion_scan(run, images, labels, config.batch, config.quiet, log)
    lesion_time = time.perf_counter() - started
    synapses = synapse_analysis(run, config.permutations, config.seed)
    module = run.module
    report = {
        "run": str(config.run),
        "weights": Path(run.weights).name,
        "model": {
            "connectome": getattr(module, "CONNECTOME", "?"),
            "dag": getattr(module, "DAG_KIND", "?"),
            "channels": getattr(module, "CHANNELS", None),
            "edge_weights": module.EDGE_WEIGHTS,
            "nodes": len(module.NODES),
            "edges": len(module.EDGES),
            "levels": len(module.LEVELS),
            "output_nodes": [module.NODES[i] for i in module.OUTPUT_NODES],
        },
        "dataset": run.dataset,
        "class_names": list(run.info.class_names),
        "subset": {"images": len(chosen), "seed": config.seed},
        "run_test_accuracy": recorded_accuracy(Path(config.run)),
        "intact": intact,
        "neurons": rows,
        "by_type": summarise(rows, "type"),
        "by_level": summarise(rows, "level"),
        "command_interneurons": [
            row for row in rows if row["name"] in COMMAND_INTERNEURONS
        ],
        "synapses": synapses,
        "timing_s": {"lesions": round(lesion_time, 1)},
    }
    written = figures(report, out, synapse_data(run), initial_weight(run))
    report["figures"] = [path.name for path in written]
    report["timing_s"]["total"] = round(time.perf_counter() - started, 1)
    report["timing_s"]["cpu"] = round(time.process_time() - cpu_started, 1)
    report["timing_s"]["threads"] = torch.get_num_threads()
    write_atomic(out / "analysis.json", json.dumps(report, indent=1) + "\n")
    write_atomic(out / "ANALYSIS.md", markdown(report))
    return report


def recorded_accuracy(target: Path) -> float | None:
    """The run's own full test accuracy: summary.json, else the last evaluation logged."""
    folder = target if target.is_dir() else target.parent
    try:
        return float((read_summary(folder) or {})["final_test_accuracy"])
    except (KeyError, TypeError, ValueError):
        pass
    try:
        evaluated = [row for row in read_metrics(folder) if "test_accuracy" in row]
        return float(evaluated[-1]["test_accuracy"]) if evaluated else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
