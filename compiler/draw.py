"""`dagc draw`: the network architecture figure (Park & Kim 2023, Fig. 2).

Nodes are placed by topological level from the source (left) to the sink (right) and coloured
by neuron type; edge width follows the synapse weight. Within a level, nodes are ordered by the
mean height of the nodes feeding them, so that wiring flows instead of crossing.

A brain of thousands of neurons (the larva: 3,012 neurons over 1,155 levels) would be ink, so
above BINNED_ABOVE nodes the levels are binned: how many neurons of each type each stretch of
levels holds (and how many feed the sink), over a map of how many synapses run from each
stretch to each later one.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from .connectome import NEURON_TYPES
from .errors import DagcError
from .output import write_atomic
from .plan import NetworkPlan

TYPE_COLOURS = {
    "sensory": "#d62728",
    "interneuron": "#1f77b4",
    "motor": "#2ca02c",
    "sex-specific": "#9467bd",
    "other": "#8c564b",
}
FORMATS = (".svg", ".png", ".pdf")
BINNED_ABOVE = 600  # nodes; the worms (282, 357) are drawn neuron by neuron
LEVEL_BINS = 60


def node_positions(plan: NetworkPlan) -> list[tuple[float, float]]:
    """(x, y) per plan node: x = level, y in [-1, 1] ordered by the inputs' mean height."""
    heights: list[float] = [0.0] * len(plan.nodes)
    positions: list[tuple[float, float]] = [(0.0, 0.0)] * len(plan.nodes)
    tallest = max(stop - start for start, stop in plan.levels)
    for level, (start, stop) in enumerate(plan.levels):
        members = list(range(start, stop))
        wanted = {
            i: (
                sum(heights[p] for p in plan.nodes[i].preds) / len(plan.nodes[i].preds)
                if plan.nodes[i].preds
                else 0.0
            )
            for i in members
        }
        members.sort(key=lambda i: (wanted[i], i))
        # A level's spread grows with its size; small levels sit near their inputs.
        spread = len(members) / tallest
        centre = sum(wanted.values()) / len(members) if level else 0.0
        for rank, i in enumerate(members):
            offset = (rank + 0.5) / len(members) - 0.5 if len(members) > 1 else 0.0
            heights[i] = max(
                -1.0, min(1.0, centre * (1 - spread) + 2 * offset * spread)
            )
            positions[i] = (float(level + 1), heights[i])
    return positions


def draw_plan(plan: NetworkPlan, path: Path, title: str) -> Path:
    """Fig. 2 of the plan into `path` (.svg, .png or .pdf), written atomically."""
    if path.suffix.lower() not in FORMATS:
        raise DagcError(f"figure format must be one of {', '.join(FORMATS)}", path)
    import matplotlib

    matplotlib.use("Agg")
    if len(plan.nodes) > BINNED_ABOVE:
        fig = binned_figure(plan, title)
    else:
        fig = neuron_figure(plan, title)
    return _save(fig, path)


def neuron_figure(plan: NetworkPlan, title: str):
    """Every neuron a dot at its level, every synapse a line."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    positions = node_positions(plan)
    sink_x = plan.depth + 1
    width = max(10.0, min(40.0, plan.depth * 0.35))
    fig, ax = plt.subplots(figsize=(width, 9), layout="constrained")
    biggest = max((w for node in plan.nodes for w in node.synapses), default=1)

    segments, widths = [], []
    for node_index, node in enumerate(plan.nodes):
        for pre, weight in zip(node.preds, node.synapses):
            segments.append([positions[pre], positions[node_index]])
            widths.append(0.15 + 1.6 * math.log1p(weight) / math.log1p(biggest))
    source_segments = [[(0.0, 0.0), positions[i]] for i in plan.inputs]
    sink_segments = [[positions[i], (sink_x, 0.0)] for i in plan.outputs]
    ax.add_collection(
        LineCollection(segments, linewidths=widths, colors="0.35", alpha=0.25)
    )
    ax.add_collection(
        LineCollection(
            source_segments + sink_segments, linewidths=0.3, colors="0.6", alpha=0.4
        )
    )
    for cell_type, colour in TYPE_COLOURS.items():
        members = [i for i, node in enumerate(plan.nodes) if node.type == cell_type]
        if members:
            ax.scatter(
                [positions[i][0] for i in members],
                [positions[i][1] for i in members],
                s=28, c=colour, edgecolors="white", linewidths=0.4, zorder=3,
            )  # fmt: skip
    for i, node in enumerate(plan.nodes):
        x, y = positions[i]
        ax.annotate(
            node.name, (x, y), xytext=(2, 2), textcoords="offset points", fontsize=3.5
        )
    for x, label in ((0.0, "source\n3x3 conv"), (sink_x, "sink\n1x1 conv, FC")):
        ax.scatter([x], [0.0], s=220, c="black", marker="s", zorder=4)
        ax.annotate(label, (x, 0.0), xytext=(0, -22), textcoords="offset points",
                    ha="center", fontsize=9)  # fmt: skip
    present = [t for t in NEURON_TYPES if any(node.type == t for node in plan.nodes)]
    handles = [
        Line2D([], [], marker="o", linestyle="", color=TYPE_COLOURS[t],
               label=f"{t} ({sum(node.type == t for node in plan.nodes)})")
        for t in present
    ]  # fmt: skip
    handles.append(
        Line2D(
            [], [], color="0.35", linewidth=1.5, label="synapse (width ~ log weight)"
        )
    )
    ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.9)
    ax.set_xlim(-1, sink_x + 1)
    ax.set_ylim(-1.12, 1.12)
    ax.set_xlabel("topological level (source -> sink)")
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(_heading(plan, title))
    return fig


def _heading(plan: NetworkPlan, title: str) -> str:
    return f"{title}: {len(plan.nodes)} neurons, {len(plan.edges)} synapses, {plan.depth} levels"


def level_bins(plan: NetworkPlan, bins: int) -> list[int]:
    """The bin of each plan node: its level scaled onto `bins` equal stretches."""
    bins = min(bins, plan.depth)
    return [node.level * bins // plan.depth for node in plan.nodes]


def binned_figure(plan: NetworkPlan, title: str, bins: int = LEVEL_BINS):
    """Neurons per stretch of levels, stacked by type, over the synapses between stretches."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    of_node = level_bins(plan, bins)
    bins = max(of_node) + 1
    per_level = plan.depth / bins  # levels per bin
    centres = (np.arange(bins) + 0.5) * per_level
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(13, 10), sharex=True, height_ratios=(2, 3), layout="constrained"
    )
    stacked = np.zeros(bins)
    for cell_type in NEURON_TYPES:
        counts = np.bincount(
            [b for b, node in zip(of_node, plan.nodes) if node.type == cell_type],
            minlength=bins,
        )
        if counts.any():
            top.bar(centres, counts, width=per_level * 0.9, bottom=stacked,
                    color=TYPE_COLOURS[cell_type],
                    label=f"{cell_type} ({int(counts.sum())})")  # fmt: skip
            stacked += counts
    outputs = np.bincount([of_node[i] for i in plan.outputs], minlength=bins)
    top.step(centres, outputs, where="mid", color="black", linewidth=1.2,
             label=f"feed the sink ({len(plan.outputs)})")  # fmt: skip
    top.set_yscale("symlog", linthresh=10)
    top.set_ylabel(f"neurons per {per_level:.0f} levels")
    top.legend(fontsize=9, loc="upper right", framealpha=0.9)
    top.set_title(_heading(plan, title) + f"; {len(plan.inputs)} fed by the source")

    synapses = np.zeros((bins, bins))
    for pre, post in plan.edges:
        synapses[of_node[pre], of_node[post]] += 1
    extent = (0, plan.depth, plan.depth, 0)
    image = bottom.imshow(
        np.ma.masked_equal(synapses, 0), extent=extent, aspect="auto",
        cmap="viridis", norm=LogNorm(vmin=1, vmax=max(synapses.max(), 2)),
    )  # fmt: skip
    fig.colorbar(image, ax=bottom, label="synapses (DAG edges)", pad=0.01)
    bottom.set_ylabel("presynaptic level")
    bottom.set_xlabel("postsynaptic level (source -> sink)")
    return fig


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix.lstrip(".").lower(), dpi=200)
    finally:
        plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path
