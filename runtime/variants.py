"""Re-render a generated module in another layout, from the tables the module carries.

`dagc bench` compares the flat and levels layouts of any model file, including files compiled
from a connectome that is not at hand; every table the renderer needs is in the file.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from dagc.compiler.plan import NetworkPlan, PlanNode
from dagc.compiler.render import CompileOptions, render_module


def plan_from_module(module: ModuleType) -> NetworkPlan:
    nodes, edges = module.NODES, module.EDGES
    level_of = {}
    for depth, (start, stop) in enumerate(module.LEVELS):
        level_of.update({i: depth for i in range(start, stop)})
    in_edges: list[list[int]] = [[] for _ in nodes]
    for e, (_, post) in enumerate(edges):
        in_edges[post].append(e)
    synapses = getattr(module, "SYNAPSES", (1.0,) * len(edges))
    plan_nodes = tuple(
        PlanNode(
            name=name,
            type=module.NODE_TYPES[i],
            transmitter=module.NEUROTRANSMITTERS[i],
            level=level_of[i],
            preds=tuple(edges[e][0] for e in in_edges[i]),
            edge_slice=(in_edges[i][0], in_edges[i][-1] + 1) if in_edges[i] else (0, 0),
            synapses=tuple(synapses[e] for e in in_edges[i]),
        )
        for i, name in enumerate(nodes)
    )
    return NetworkPlan(
        name=module.CONNECTOME,
        dag_kind=module.DAG_KIND,
        seed=None,
        nodes=plan_nodes,
        edges=tuple(tuple(edge) for edge in edges),
        inputs=tuple(module.INPUT_NODES),
        outputs=tuple(module.OUTPUT_NODES),
        levels=tuple(tuple(level) for level in module.LEVELS),
        pruned=tuple(module.PRUNED_NODES),
    )


def render_layout(module: ModuleType, layout: str, backward: str = "") -> str:
    """The module's network as dagc would compile it with --layout LAYOUT --backward
    BACKWARD ("": that layout's default)."""
    in_channels, input_size, _ = module.INPUT_SHAPE
    options = CompileOptions(
        channels=module.CHANNELS,
        in_channels=in_channels,
        num_classes=module.NUM_CLASSES,
        input_size=input_size,
        edge_weights=module.EDGE_WEIGHTS,
        layout=layout,
        backward=backward,
    )
    header = {
        "command": f"re-rendered from {Path(module.__file__).name} by dagc bench",
        "source": Path(module.__file__).name,
        "sha256": "-",
    }
    if module.EDGE_WEIGHTS == "dale":
        header["edge_signs"] = [int(s) for s in module.EDGE_SIGNS]
    return render_module(plan_from_module(module), options, header)
