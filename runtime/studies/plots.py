"""The figures of `dagc analyze`, drawn from its report.

Lesion ranking, drops by type and level, per-class drops, learned weights against synapse
counts, and Dale's excitatory against inhibitory weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .statistics import p_text


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
    from dagc.runtime import figures as run_figures  # chooses the Agg backend

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
    p = "n/a" if overall["p"] is None else p_text(overall["p"], overall["permutations"])
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
