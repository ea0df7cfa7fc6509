"""`dagc analyze`: which neurons and synapses does a trained classifier use?

Three questions, answered on a trained run folder and written to ANALYSIS.md, analysis.json
and PNG figures:

1. Lesions: every neuron silenced alone (see `dagc.runtime.lesion`), on a fixed, seeded subset
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

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dagc.compiler.errors import DagcError
from dagc.compiler.output import check_writable_dir, write_atomic

from .data import load_split, normalise
from .lesion import (
    COMMAND_INTERNEURONS,
    LoadedRun,
    load_run,
    silenced,
    test_subset,
)


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
    batch: int = 250
    quiet: bool = False


# ---------------------------------------------------------------------------------------------
# Lesions


def node_levels(module) -> list[int]:
    levels = [0] * len(module.NODES)
    for level, (start, stop) in enumerate(module.LEVELS):
        for i in range(start, stop):
            levels[i] = level
    return levels


def score(logp: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    predicted = logp.argmax(1)
    right = (predicted == labels).double()
    per_class = [
        right[labels == k].mean().item() if (labels == k).any() else float("nan")
        for k in range(num_classes)
    ]
    return {
        "accuracy": right.mean().item(),
        "loss": -logp.gather(1, labels[:, None]).mean().item(),
        "per_class": per_class,
    }


class IncrementalForward:
    """The generated network's eval-mode forward pass, node by node, reusing activations.

    Silencing neuron i changes only i and the neurons downstream of it, so a lesion scan
    computes every neuron once for the intact network, keeps the activations, and for each
    lesion recomputes only i's descendants (about half the work over all neurons of the
    hermaphrodite). The arithmetic is the generated code's, in its order (a node's inputs are
    summed in edge order, the output nodes in OUTPUT_NODES order); `matches` checks that
    against the module's own forward before it is trusted.
    """

    def __init__(self, net: torch.nn.Module, module):
        self.net, self.module = net, module
        n = len(module.NODES)
        self.in_edges: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.successors: list[list[int]] = [[] for _ in range(n)]
        for e, (pre, post) in enumerate(module.EDGES):
            self.in_edges[post].append((e, pre))
            self.successors[pre].append(post)
        self.inputs = set(module.INPUT_NODES)
        self.outputs = list(module.OUTPUT_NODES)
        # A module with the generated reverse pass computes each node through its
        # weighted_relu and conv_batch_norm functions (which dagc's kernels may replace);
        # older and autograd-backward modules inline torch's ops, as below.
        self.primitives = all(
            callable(getattr(module, name, None))
            for name in ("weighted_relu", "conv_batch_norm")
        )

    def descendants(self, i: int) -> list[int]:
        seen, stack = {i}, [i]
        while stack:
            for post in self.successors[stack.pop()]:
                if post not in seen:
                    seen.add(post)
                    stack.append(post)
        seen.discard(i)
        return sorted(seen)

    def _node(self, i: int, values, source, w) -> torch.Tensor:
        if i in self.inputs:
            return self._conv_bn(i, source)
        # The module's own functions, so dagc's kernels when they are swapped in.
        if self.primitives:
            edges = [e for e, _ in self.in_edges[i]]
            summed = self.module.weighted_relu(
                w[edges], *(values[pre] for _, pre in self.in_edges[i])
            )
            return self._conv_bn(i, summed)
        (first, pre), *rest = self.in_edges[i]
        total = torch.mul(values[pre], w[first])
        for e, pre in rest:
            total.addcmul_(values[pre], w[e])
        return self._conv_bn(i, total.relu_())

    def _conv_bn(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Node i's depthwise conv and eval-mode BatchNorm, from the stacked parameters
        (every variant of the generated module stores them the same way)."""
        net = self.net
        if self.primitives:
            return self.module.conv_batch_norm(
                x, net.node_conv[i], net.node_bn_weight[i], net.node_bn_bias[i],
                net.node_bn_mean[i], net.node_bn_var[i], False, net.bn_eps,
            )[1]  # fmt: skip
        x = F.conv2d(x, net.node_conv[i], padding=1, groups=net.node_conv.shape[1])
        return F.batch_norm(
            x,
            net.node_bn_mean[i],
            net.node_bn_var[i],
            net.node_bn_weight[i],
            net.node_bn_bias[i],
            False,
            0.0,
            net.bn_eps,
        )

    def _head(self, values) -> torch.Tensor:
        net = self.net
        total = values[self.outputs[0]]
        for i in self.outputs[1:]:
            total = total + values[i]
        x = total / len(self.outputs)
        x = F.relu(net.sink_bn(net.sink_conv(F.relu(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.log_softmax(net.classifier(x), dim=1)

    def intact(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every node's activation for normalised images `x`, and the log-probabilities."""
        net = self.net
        w = net.edge_weights()
        source = F.relu(net.stem_bn(net.stem_conv(x)))
        values: list = [None] * len(self.module.NODES)
        for i in range(len(values)):
            values[i] = self._node(i, values, source, w)
        return values, self._head(values)

    def silenced(self, cache: list[torch.Tensor], i: int) -> torch.Tensor:
        """Log-probabilities with neuron i's output held at zero."""
        w = self.net.edge_weights()
        changed = {i: torch.zeros_like(cache[i])}
        view = _Overlay(cache, changed)
        for d in self.descendants(i):
            changed[d] = self._node(d, view, None, w)
        return self._head(view)

    def matches(self, x: torch.Tensor) -> bool:
        _, mine = self.intact(x)
        theirs = self.net(x)
        return mine.shape == theirs.shape and bool(
            torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5)
        )


class _Overlay:
    """cache[i], unless changed holds a new value for i."""

    def __init__(self, cache, changed):
        self.cache, self.changed = cache, changed

    def __getitem__(self, i):
        value = self.changed.get(i)
        return self.cache[i] if value is None else value


def lesion_scan(
    run: LoadedRun,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int = 250,
    quiet: bool = False,
    log=lambda line: None,
) -> tuple[dict, list[dict]]:
    """The intact network's scores and, per neuron silenced alone, its scores and drops."""
    module, net = run.module, run.net
    n, num_classes = len(module.NODES), run.info.num_classes
    labels_cpu = labels.cpu()
    net.eval()
    forward = IncrementalForward(net, module)
    with torch.inference_mode():
        fast = forward.matches(normalise(images[: min(len(images), 8)]))
    if not fast:
        log(
            "this module's forward pass is not the one the fast scan knows: full passes"
        )
    intact_parts: list[torch.Tensor] = []
    parts: list[list[torch.Tensor]] = [[] for _ in range(n)]
    batches = range(0, len(images), batch)
    bar = tqdm(total=n * len(batches), desc="lesions", unit="neuron", disable=quiet,
               leave=False, dynamic_ncols=True)  # fmt: skip
    with torch.inference_mode():
        for start in batches:
            x = normalise(images[start : start + batch])
            if fast:
                cache, logp = forward.intact(x)
            else:
                logp = net(x)
            intact_parts.append(logp.double().cpu())
            for i in range(n):
                if fast:
                    out = forward.silenced(cache, i)
                else:
                    with silenced(net, [i]):
                        out = net(x)
                parts[i].append(out.double().cpu())
                bar.update()
            cache = None
    bar.close()
    intact = score(torch.cat(intact_parts), labels_cpu, num_classes)
    levels = node_levels(module)
    rows = []
    for i in range(n):
        scores = score(torch.cat(parts[i]), labels_cpu, num_classes)
        rows.append(
            {
                "name": module.NODES[i],
                "index": i,
                "type": module.NODE_TYPES[i],
                "level": levels[i],
                "accuracy": scores["accuracy"],
                "drop": intact["accuracy"] - scores["accuracy"],
                "loss_rise": scores["loss"] - intact["loss"],
                "class_drops": [
                    a - b for a, b in zip(intact["per_class"], scores["per_class"])
                ],
            }
        )
    rows.sort(
        key=lambda row: (-round(row["drop"], 12), -row["loss_rise"], row["index"])
    )
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    intact["fast_scan"] = fast
    return intact, rows


def summarise(rows: list[dict], key: str) -> list[dict]:
    """Drop statistics per value of `key` (type or level), sorted by that value."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    out = []
    for value in sorted(groups):
        members = groups[value]
        drops = np.array([row["drop"] for row in members])
        top = max(members, key=lambda row: (row["drop"], row["loss_rise"]))
        out.append(
            {
                key: value,
                "neurons": len(members),
                "mean_drop": float(drops.mean()),
                "median_drop": float(np.median(drops)),
                "max_drop": float(drops.max()),
                "mean_loss_rise": float(np.mean([row["loss_rise"] for row in members])),
                "harmful": int((drops > 0).sum()),
                "top": top["name"],
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Synapses


def ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values).astype(np.float64)


def spearman_permutation(
    x: np.ndarray, y: np.ndarray, permutations: int, seed: int
) -> dict:
    """Spearman's rho of x and y and its two-sided permutation p-value (y shuffled)."""
    n = len(x)
    if n < 3:
        return {"n": n, "rho": None, "p": None, "permutations": 0}
    rx, ry = ranks(x), ranks(y)
    rx = (rx - rx.mean()) / (np.linalg.norm(rx - rx.mean()) or 1.0)
    ry = (ry - ry.mean()) / (np.linalg.norm(ry - ry.mean()) or 1.0)
    rho = float(rx @ ry)
    if np.all(rx == 0) or np.all(ry == 0):  # a constant side: no correlation to test
        return {"n": n, "rho": None, "p": None, "permutations": 0}
    rng = np.random.default_rng(seed)
    extreme, done, chunk = 0, 0, max(1, min(permutations, 2_000_000 // n))
    while done < permutations:
        k = min(chunk, permutations - done)
        shuffled = rng.permuted(np.broadcast_to(ry, (k, n)), axis=1)
        extreme += int((np.abs(shuffled @ rx) >= abs(rho) - 1e-12).sum())
        done += k
    return {
        "n": n,
        "rho": rho,
        "p": (extreme + 1) / (permutations + 1),
        "permutations": permutations,
    }


def synapse_analysis(run: LoadedRun, permutations: int, seed: int) -> dict:
    module = run.module
    with torch.no_grad():
        weights = run.net.edge_weights().double().cpu().numpy()
    counts = np.asarray(module.SYNAPSES, dtype=np.float64)
    pre_types = np.array([module.NODE_TYPES[a] for a, _ in module.EDGES])
    magnitude = np.abs(weights)
    result = {
        "edge_weights": module.EDGE_WEIGHTS,
        "edges": len(counts),
        "overall": spearman_permutation(counts, magnitude, permutations, seed),
        "by_presynaptic_type": {},
    }
    result["overall"]["median_weight"] = float(np.median(magnitude))
    for kind in sorted(set(pre_types)):
        mask = pre_types == kind
        stats = spearman_permutation(counts[mask], magnitude[mask], permutations, seed)
        stats["median_weight"] = float(np.median(magnitude[mask]))
        result["by_presynaptic_type"][kind] = stats
    signs = getattr(module, "EDGE_SIGNS", None)
    if module.EDGE_WEIGHTS == "dale" and signs is not None:
        result["dale"] = dale_analysis(
            magnitude, counts, np.asarray(signs), permutations, seed
        )
    return result


def dale_analysis(
    magnitude: np.ndarray,
    counts: np.ndarray,
    signs: np.ndarray,
    permutations: int,
    seed: int,
) -> dict:
    out = {}
    for label, mask in (("excitatory", signs > 0), ("inhibitory", signs < 0)):
        values = magnitude[mask]
        out[label] = {
            "edges": int(mask.sum()),
            "median": float(np.median(values)) if len(values) else None,
            "mean": float(values.mean()) if len(values) else None,
            "vs_synapses": spearman_permutation(
                counts[mask], values, permutations, seed
            ),
        }
    exc, inh = magnitude[signs > 0], magnitude[signs < 0]
    if len(exc) and len(inh):
        from scipy.stats import mannwhitneyu

        test = mannwhitneyu(inh, exc, alternative="two-sided")
        # Common-language effect size: P(a random inhibitory weight > a random excitatory one).
        out["mann_whitney_p"] = float(test.pvalue)
        out["p_inhibitory_larger"] = float(test.statistic / (len(exc) * len(inh)))
    return out


# ---------------------------------------------------------------------------------------------
# The whole analysis


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
    run = load_run(Path(config.run), config.dataset, config.device)
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
        return float(
            json.loads((folder / "summary.json").read_text())["final_test_accuracy"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        rows = [
            json.loads(line)
            for line in (folder / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
        evaluated = [row for row in rows if "test_accuracy" in row]
        return float(evaluated[-1]["test_accuracy"]) if evaluated else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def synapse_data(run: LoadedRun) -> dict:
    module = run.module
    with torch.no_grad():
        weights = run.net.edge_weights().double().cpu().numpy()
    return {
        "weights": weights,
        "counts": np.asarray(module.SYNAPSES, dtype=np.float64),
        "pre_types": np.array([module.NODE_TYPES[a] for a, _ in module.EDGES]),
        "signs": np.asarray(getattr(module, "EDGE_SIGNS", np.sign(weights))),
    }


def initial_weight(run: LoadedRun) -> float | None:
    """The magnitude every edge weight starts from (a fresh model's), when they all start equal."""
    from .loading import build_model

    with torch.no_grad():
        start = build_model(run.module).edge_weights().abs()
    return float(start[0]) if bool((start == start[0]).all()) else None


# ---------------------------------------------------------------------------------------------
# Figures


def figures(report: dict, out: Path, data: dict, start: float | None) -> list[Path]:
    paths = [
        plot_ranking(report, out / "lesion_ranking.png"),
        plot_type_level(report, out / "lesion_by_type_and_level.png"),
        plot_classes(report, out / "lesion_classes.png"),
        plot_synapses(report, data, start, out / "weights_vs_synapses.png"),
    ]
    if "dale" in report["synapses"]:
        paths.append(plot_dale(report, data, out / "dale.png"))
    return paths


def _plt():
    from . import figures as run_figures  # chooses the Agg backend

    return run_figures.plt, run_figures._save


def _colour(kind: str) -> str:
    from dagc.compiler.draw import TYPE_COLOURS

    return TYPE_COLOURS.get(kind, "#7f7f7f")


def _type_legend(ax, kinds, counts=None, **kwargs):
    from matplotlib.patches import Patch

    handles = [
        Patch(color=_colour(k), label=f"{k} ({counts[k]})" if counts else k)
        for k in kinds
    ]
    ax.legend(handles=handles, frameon=False, **kwargs)


def _subtitle(report: dict) -> str:
    model = report["model"]
    return (
        f"{model['connectome']}, {model['channels']} channels, {model['edge_weights']} "
        f"weights; {report['subset']['images']} {report['dataset']} test images "
        f"(seed {report['subset']['seed']}), intact accuracy "
        f"{100 * report['intact']['accuracy']:.1f} %"
    )


def plot_ranking(report: dict, path: Path, top: int = 30) -> Path:
    plt, save = _plt()
    rows = report["neurons"]
    kinds = [row["type"] for row in report["by_type"]]
    counts = {row["type"]: row["neurons"] for row in report["by_type"]}
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 6.4), layout="constrained", width_ratios=(1, 1.6)
    )
    shown = rows[:top][::-1]
    left.barh(
        range(len(shown)),
        [100 * row["drop"] for row in shown],
        color=[_colour(row["type"]) for row in shown],
    )
    left.set_yticks(range(len(shown)), [row["name"] for row in shown], fontsize=8)
    left.set_xlabel("accuracy drop when silenced alone (points)")
    left.set_title(f"The {len(shown)} neurons the classifier needs most", fontsize=11)
    left.axvline(0, color="0.3", linewidth=0.8)
    left.grid(axis="x", alpha=0.3)
    drops = [100 * row["drop"] for row in rows]
    right.bar(
        range(1, len(rows) + 1),
        drops,
        width=1.0,
        color=[_colour(row["type"]) for row in rows],
    )
    right.axhline(0, color="0.3", linewidth=0.8)
    right.set_xlim(0, len(rows) + 1)
    right.set_xlabel("rank (all neurons)")
    right.set_ylabel("accuracy drop (points)")
    right.set_title("Every neuron, ranked", fontsize=11)
    right.grid(axis="y", alpha=0.3)
    harmful = sum(d > 0 for d in drops)
    right.annotate(
        f"{harmful} of {len(rows)} lesions lower the accuracy",
        (0.97, 0.95), xycoords="axes fraction", ha="right", va="top", fontsize=9,
    )  # fmt: skip
    _type_legend(right, kinds, counts, loc="center right", title="neuron type")
    fig.suptitle(_subtitle(report), fontsize=9, color="0.3")
    return save(fig, path)


def plot_type_level(report: dict, path: Path) -> Path:
    plt, save = _plt()
    rows = report["neurons"]
    rng = np.random.default_rng(0)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4.6), layout="constrained", width_ratios=(1, 2)
    )
    by_type = report["by_type"]
    for y, group in enumerate(by_type):
        members = [100 * r["drop"] for r in rows if r["type"] == group["type"]]
        left.scatter(
            members,
            y + rng.uniform(-0.18, 0.18, len(members)),
            s=14, color=_colour(group["type"]), alpha=0.7, edgecolors="none",
        )  # fmt: skip
        left.plot(
            [100 * group["mean_drop"]] * 2,
            [y - 0.3, y + 0.3],
            color="black",
            linewidth=2,
        )
    left.set_yticks(
        range(len(by_type)), [f"{g['type']}\n({g['neurons']})" for g in by_type]
    )
    left.invert_yaxis()
    left.axvline(0, color="0.6", linewidth=0.8)
    left.set_xlabel("accuracy drop (points); bar = mean")
    left.set_title("Per neuron type", fontsize=11)
    left.grid(axis="x", alpha=0.3)
    levels = np.array([r["level"] for r in rows])
    drops = np.array([100 * r["drop"] for r in rows])
    right.scatter(
        levels + rng.uniform(-0.25, 0.25, len(levels)),
        drops,
        s=14, c=[_colour(r["type"]) for r in rows], alpha=0.7, edgecolors="none",
    )  # fmt: skip
    by_level = report["by_level"]
    right.plot(
        [g["level"] for g in by_level],
        [100 * g["mean_drop"] for g in by_level],
        color="black", linewidth=1, alpha=0.7, label="mean per level",
    )  # fmt: skip
    right.axhline(0, color="0.6", linewidth=0.8)
    right.set_xlabel(
        "topological level (0 = sensory inputs; deeper = closer to the sink)"
    )
    right.set_ylabel("accuracy drop (points)")
    right.set_title("Per topological level", fontsize=11)
    right.grid(alpha=0.3)
    right.legend(frameon=False, loc="upper left")
    fig.suptitle(_subtitle(report), fontsize=9, color="0.3")
    return save(fig, path)


def plot_classes(report: dict, path: Path, top: int = 20) -> Path:
    plt, save = _plt()
    rows = report["neurons"][:top]
    matrix = 100 * np.array([row["class_drops"] for row in rows])
    limit = max(1.0, float(np.nanmax(np.abs(matrix)))) if matrix.size else 1.0
    fig, ax = plt.subplots(figsize=(7.2, 0.28 * len(rows) + 1.6), layout="constrained")
    shown = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(report["class_names"])), report["class_names"])
    ax.set_yticks(
        range(len(rows)), [f"{r['name']} ({r['type']})" for r in rows], fontsize=8
    )
    ax.set_xlabel("class")
    ax.set_title(
        f"Which classes the top {len(rows)} neurons serve: per-class accuracy drop",
        fontsize=10,
    )
    bar = fig.colorbar(shown, ax=ax, shrink=0.8)
    bar.set_label("accuracy drop (points); red = worse")
    for (i, j), value in np.ndenumerate(matrix):
        if abs(value) >= 0.5 * limit:
            ax.text(
                j,
                i,
                f"{value:.0f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white",
            )
    return save(fig, path)


def _jitter(counts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Spread integer synapse counts a little on a log axis so that ties are visible."""
    rng = np.random.default_rng(seed)
    return counts * np.exp(rng.uniform(-0.12, 0.12, len(counts)))


def plot_synapses(report: dict, data: dict, start: float | None, path: Path) -> Path:
    plt, save = _plt()
    counts, magnitude, pre = data["counts"], np.abs(data["weights"]), data["pre_types"]
    syn = report["synapses"]
    fig, ax = plt.subplots(figsize=(7.6, 5.4), layout="constrained")
    floor = max(
        float(magnitude[magnitude > 0].min()) if (magnitude > 0).any() else 1e-6, 1e-6
    )
    x = _jitter(counts)
    kinds = sorted(set(pre))
    for kind in kinds:
        mask = pre == kind
        ax.scatter(
            x[mask], np.maximum(magnitude[mask], floor),
            s=9, alpha=0.45, color=_colour(kind), edgecolors="none",
        )  # fmt: skip
    centres, medians = [], []
    for lo in 2.0 ** np.arange(0, np.ceil(np.log2(max(counts.max(), 1))) + 1):
        inside = (counts >= lo) & (counts < 2 * lo)
        if inside.any():
            centres.append(float(np.exp(np.log(counts[inside]).mean())))
            medians.append(float(np.median(np.maximum(magnitude[inside], floor))))
    ax.plot(centres, medians, color="black", linewidth=1.8, marker="o", markersize=4,
            label="median in bins 1, 2-3, 4-7, ...")  # fmt: skip
    if start is not None:
        ax.axhline(start, color="0.4", linestyle="--", linewidth=1,
                   label=f"every weight at initialisation ({start:g})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("synapses in the wiring diagram (jittered)")
    ax.set_ylabel("learned edge weight |w|")
    overall = syn["overall"]
    rho = "n/a" if overall["rho"] is None else f"{overall['rho']:+.3f}"
    p = (
        "n/a"
        if overall["p"] is None
        else _p_text(overall["p"], overall["permutations"])
    )
    ax.set_title(
        f"Learned weights against synapse counts ({overall['n']} edges): "
        f"Spearman rho {rho}, p {p}",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    stats = syn["by_presynaptic_type"]
    for kind in kinds:
        r = stats[kind]["rho"]
        label = f"from {kind}: rho {r:+.2f}" if r is not None else f"from {kind}"
        handles.append(
            Line2D([], [], marker="o", linestyle="", color=_colour(kind), label=label)
        )
    ax.legend(handles=handles, frameon=False, fontsize=8, loc="best")
    return save(fig, path)


def _plain_log_ticks(ax) -> None:
    """Log axes labelled 0.5, 2, 10 rather than 5 x 10^-1."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(FormatStrFormatter("%g"))
        low, high = axis.get_view_interval()
        if high / max(low, 1e-12) > 30:  # wide range: label the decades only
            axis.set_minor_formatter(FormatStrFormatter(""))
            axis.set_major_locator(LogLocator(base=10))


def plot_dale(report: dict, data: dict, path: Path) -> Path:
    plt, save = _plt()
    magnitude, signs = np.abs(data["weights"]), data["signs"]
    dale = report["synapses"]["dale"]
    fig, ax = plt.subplots(figsize=(6.8, 4.2), layout="constrained")
    positive = magnitude[magnitude > 0]
    low = max(float(positive.min()) if len(positive) else 1e-4, 1e-6)
    bins = np.geomspace(low, max(float(magnitude.max()), low * 10), 40)
    for label, mask, colour in (
        ("excitatory", signs > 0, "#c62828"),
        ("inhibitory (GABA)", signs < 0, "#1565c0"),
    ):
        if mask.any():
            ax.hist(
                np.maximum(magnitude[mask], low), bins=bins, density=True, alpha=0.55,
                color=colour, label=f"{label}: {int(mask.sum())} edges, median "
                f"{np.median(magnitude[mask]):.3f}",
            )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("learned weight magnitude |w|")
    ax.set_ylabel("density")
    title = "Dale's law: excitatory against inhibitory weight magnitudes"
    if "mann_whitney_p" in dale:
        title += f"\nMann-Whitney p {dale['mann_whitney_p']:.2g}"
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return save(fig, path)


def _p_text(p: float, permutations: int) -> str:
    floor = 1 / (permutations + 1)
    return f"< {floor:.1g}" if p <= floor * 1.0001 else f"= {p:.2g}"


# ---------------------------------------------------------------------------------------------
# ANALYSIS.md


def _pts(value: float) -> str:
    return f"{100 * value:+.2f}"


def markdown(report: dict) -> str:
    model, intact, rows = report["model"], report["intact"], report["neurons"]
    subset = report["subset"]
    syn = report["synapses"]
    harmful = sum(row["drop"] > 0 for row in rows)
    helpful = sum(row["drop"] < 0 for row in rows)
    recorded = report["run_test_accuracy"]
    lines = [
        "# Which neurons and synapses does the classifier use?",
        "",
        f"Run `{report['run']}` (weights `{report['weights']}`): the {model['connectome']} "
        f"connectome, {model['dag']} DAG, {model['nodes']} neurons, {model['edges']} edges, "
        f"{model['levels']} topological levels, {model['channels']} channels per neuron, "
        f"{model['edge_weights']} edge weights, trained on {report['dataset']}"
        + (
            f" (full test accuracy {100 * recorded:.2f} %)."
            if recorded is not None
            else "."
        ),
        "",
        "Written by `dagc analyze`; the numbers are in `analysis.json`.",
        "",
        "## Lesions: every neuron silenced alone",
        "",
        f"Each neuron's output was held at zero (its BatchNorm scale and shift set to zero) and "
        f"the network evaluated on the same {subset['images']} test images (drawn with seed "
        f"{subset['seed']}; one image is {100 / subset['images']:.2f} points). Intact, it "
        f"classifies {100 * intact['accuracy']:.2f} % of them (mean test loss "
        f"{intact['loss']:.4f}). Neurons are ranked by the accuracy drop, ties by the rise "
        f"in test loss.",
        "",
        f"- {harmful} of {len(rows)} lesions lower the accuracy, {helpful} raise it, "
        f"{len(rows) - harmful - helpful} leave it unchanged.",
        f"- The largest drop: {rows[0]['name']} ({rows[0]['type']}, level {rows[0]['level']}), "
        f"{_pts(rows[0]['drop'])} points.",
        "",
        "![ranking](lesion_ranking.png)",
        "",
        "| rank | neuron | type | level | accuracy % | drop (points) | loss rise |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in rows[:20]:
        lines.append(
            f"| {row['rank']} | {row['name']} | {row['type']} | {row['level']} | "
            f"{100 * row['accuracy']:.2f} | {_pts(row['drop'])} | {row['loss_rise']:+.4f} |"
        )
    lines += [
        "",
        "### Per neuron type and per topological level",
        "",
        "![by type and level](lesion_by_type_and_level.png)",
        "",
        "| type | neurons | mean drop | median drop | max drop (neuron) | lesions that hurt |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for g in sorted(report["by_type"], key=lambda g: -g["mean_drop"]):
        lines.append(
            f"| {g['type']} | {g['neurons']} | {_pts(g['mean_drop'])} | "
            f"{_pts(g['median_drop'])} | {_pts(g['max_drop'])} ({g['top']}) | "
            f"{g['harmful']} |"
        )
    lines += ["", _level_summary(report), ""]
    command = report["command_interneurons"]
    if command:
        interneurons = [r for r in rows if r["type"] == "interneuron"]
        others = [r for r in interneurons if r not in command]
        mean_cmd = np.mean([r["drop"] for r in command])
        mean_rest = np.mean([r["drop"] for r in others]) if others else float("nan")
        lines += [
            "### The command interneurons",
            "",
            f"AVA, AVB, AVD, AVE and PVC drive locomotion in the worm. Here their mean drop is "
            f"{_pts(mean_cmd)} points against {_pts(mean_rest)} for the other "
            f"{len(others)} interneurons.",
            "",
            "| neuron | rank | level | drop (points) | loss rise |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in sorted(command, key=lambda r: r["rank"]):
            lines.append(
                f"| {r['name']} | {r['rank']} | {r['level']} | {_pts(r['drop'])} | "
                f"{r['loss_rise']:+.4f} |"
            )
        lines.append("")
    lines += [
        "### Which classes they serve",
        "",
        "![per class](lesion_classes.png)",
        "",
        "## Synapses: learned weights against the wiring diagram",
        "",
        f"Each of the {syn['edges']} edges has one learned weight ({model['edge_weights']}: "
        + {
            "sigmoid": "sigmoid of a logit, in (0, 1)",
            "dale": "sigmoid magnitude times the presynaptic transmitter's sign",
            "free": "unconstrained; magnitudes compared",
        }.get(model["edge_weights"], model["edge_weights"])
        + "). Spearman's rho of |weight| against the synapse count, with a two-sided "
        f"permutation p-value ({syn['overall']['permutations']} shuffles of the weights, "
        f"seed {subset['seed']}):",
        "",
        "| edges from | edges | rho | p | median weight |",
        "|---|---:|---:|---:|---:|",
        _rho_row("all neurons", syn["overall"], syn["overall"].get("median_weight")),
    ]
    for kind, stats in syn["by_presynaptic_type"].items():
        lines.append(_rho_row(kind, stats, stats.get("median_weight")))
    lines += ["", "![weights vs synapses](weights_vs_synapses.png)", ""]
    dale = syn.get("dale")
    lines += ["## Dale's law: excitatory against inhibitory weights", ""]
    if dale:
        lines += [
            "| sign | edges | median |w| | mean |w| | rho with synapses | p |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label in ("excitatory", "inhibitory"):
            d = dale[label]
            vs = d["vs_synapses"]
            lines.append(
                f"| {label} | {d['edges']} | {_num(d['median'])} | {_num(d['mean'])} | "
                f"{_num(vs['rho'], '+.3f')} | {_pval(vs)} |"
            )
        if "mann_whitney_p" in dale:
            lines += [
                "",
                f"Mann-Whitney U: p = {dale['mann_whitney_p']:.2g}; a random inhibitory "
                f"weight exceeds a random excitatory one with probability "
                f"{dale['p_inhibitory_larger']:.2f}.",
            ]
        lines += ["", "![dale](dale.png)", ""]
    else:
        lines += [
            f"Not a Dale run (edge weights: {model['edge_weights']}); compile with "
            "`--edge-weights dale` to compare excitatory and inhibitory synapses.",
            "",
        ]
    timing = report["timing_s"]
    lines += [
        "## How this was made",
        "",
        f"`dagc analyze {report['run']} --subset {subset['images']} --seed {subset['seed']}`: "
        f"{timing['lesions']:.0f} s of lesions, {timing.get('total', 0):.0f} s in all "
        f"(wall clock; {timing.get('cpu', 0):.0f} s of CPU time on "
        f"{timing.get('threads', 1)} thread(s)).",
        "",
    ]
    return "\n".join(lines)


def _num(value, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _pval(stats: dict) -> str:
    if stats["p"] is None:
        return "n/a"
    return _p_text(stats["p"], stats["permutations"]).replace("= ", "")


def _rho_row(label: str, stats: dict, median) -> str:
    return (
        f"| {label} | {stats['n']} | {_num(stats['rho'], '+.3f')} | {_pval(stats)} | "
        f"{_num(median)} |"
    )


def _level_summary(report: dict, bands: int = 6) -> str:
    """Mean drop in bands of topological levels, as one small table."""
    rows = report["neurons"]
    depth = report["model"]["levels"]
    edges = np.linspace(0, depth, bands + 1).round().astype(int)
    lines = [
        "| levels | neurons | mean drop | max drop (neuron) |",
        "|---|---:|---:|---|",
    ]
    for lo, hi in zip(edges[:-1], edges[1:]):
        members = [r for r in rows if lo <= r["level"] < hi]
        if not members:
            continue
        top = max(members, key=lambda r: (r["drop"], r["loss_rise"]))
        label = f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}"
        lines.append(
            f"| {label} | {len(members)} | {_pts(np.mean([r['drop'] for r in members]))} | "
            f"{_pts(top['drop'])} ({top['name']}) |"
        )
    return "\n".join(lines)
