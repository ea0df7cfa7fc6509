"""`dagc draw`: the network architecture figure (Park & Kim 2023, Fig. 2).

Nodes are placed by topological level from the source (left) to the sink (right) and coloured
by neuron type; edge width follows the synapse weight. Within a level, nodes are ordered by the
mean height of the nodes feeding them, so that wiring flows instead of crossing.
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    if path.suffix.lower() not in FORMATS:
        raise DagcError(f"figure format must be one of {', '.join(FORMATS)}", path)
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
    ax.set_title(
        f"{title}: {len(plan.nodes)} neurons, {len(plan.edges)} synapses, {plan.depth} levels"
    )
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix.lstrip(".").lower(), dpi=200)
    finally:
        plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path
