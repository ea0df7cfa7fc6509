"""Stage 4: the network topology plan, plain data that the renderer and runtime consume.

source -> input nodes -> ... DAG ... -> output nodes -> sink. Nodes are numbered in
topological order, level by level, so that each level is a contiguous block (the `levels`
layout slices its parameters without copying) and each node's incoming edges are contiguous.
Within a level nodes are ordered by name (code-point order), never by their position in the
source file, so one graph always compiles to the same module whatever order its rows came in.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .dag import Dag


@dataclass(frozen=True)
class PlanNode:
    name: str  # neuron name
    type: str
    transmitter: str
    level: int  # 0 = fed by the source
    preds: tuple[
        int, ...
    ]  # plan indices of the nodes feeding this one (empty: the source does)
    edge_slice: tuple[int, int]  # this node's incoming edges in the plan's edge list
    synapses: tuple[float, ...]  # the connectome weight of each incoming edge
    label: str = ""  # a readable name when `name` is an id (comments only)


@dataclass(frozen=True)
class NetworkPlan:
    name: str
    dag_kind: str
    seed: int | None
    nodes: tuple[PlanNode, ...]
    edges: tuple[tuple[int, int], ...]  # (pre index, post index), grouped by post
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    levels: tuple[tuple[int, int], ...]  # [start, stop) of each level
    pruned: tuple[str, ...]  # DAG nodes the input cannot reach

    @property
    def depth(self) -> int:
        return len(self.levels)


def reachable_from(inputs: tuple[str, ...], edges) -> set[str]:
    successors: dict[str, list[str]] = {}
    for edge in edges:
        successors.setdefault(edge.pre, []).append(edge.post)
    seen, stack = set(inputs), list(inputs)
    while stack:
        for post in successors.get(stack.pop(), ()):
            if post not in seen:
                seen.add(post)
                stack.append(post)
    return seen


def build_plan(dag: Dag) -> NetworkPlan:
    reached = reachable_from(dag.inputs, dag.edges)
    pruned = tuple(sorted(name for name in dag.nodes if name not in reached))
    if pruned:
        warnings.warn(
            f"{len(pruned)} node(s) cannot be reached from the input and are left out of the "
            f"network: {', '.join(pruned)}",
            stacklevel=2,
        )
    kept = [name for name in dag.nodes if name in reached]
    edges = [edge for edge in dag.edges if edge.pre in reached and edge.post in reached]
    inputs = set(dag.inputs)
    in_edges: dict[str, list] = {name: [] for name in kept}
    for edge in edges:
        in_edges[edge.post].append(edge)

    # Level = longest path from the source; edges come from strictly lower levels.
    level: dict[str, int] = {}
    for name in _topological(kept, edges):
        level[name] = max((level[e.pre] + 1 for e in in_edges[name]), default=0)
    order = sorted(
        kept, key=lambda name: (level[name], name)
    )  # canonical: no file order
    index = {name: i for i, name in enumerate(order)}

    plan_nodes, plan_edges = [], []
    for name in order:
        feeding = sorted(in_edges[name], key=lambda e: index[e.pre])
        start = len(plan_edges)
        plan_edges += [(index[e.pre], index[name]) for e in feeding]
        plan_nodes.append(
            PlanNode(
                name=name,
                type=dag.types[name],
                transmitter=dag.transmitters.get(name, ""),
                level=level[name],
                preds=tuple(index[e.pre] for e in feeding),
                edge_slice=(start, len(plan_edges)),
                synapses=tuple(e.weight for e in feeding),
                label=dag.labels.get(name, ""),
            )
        )
    fed_onward = {pre for pre, _ in plan_edges}
    levels, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or plan_nodes[i].level != plan_nodes[start].level:
            levels.append((start, i))
            start = i
    return NetworkPlan(
        name=dag.name,
        dag_kind=dag.kind,
        seed=dag.seed,
        nodes=tuple(plan_nodes),
        edges=tuple(plan_edges),
        inputs=tuple(index[name] for name in order if name in inputs),
        outputs=tuple(i for i in range(len(order)) if i not in fed_onward),
        levels=tuple(levels),
        pruned=pruned,
    )


def _topological(nodes: list[str], edges) -> list[str]:
    """A topological order (Kahn's algorithm). Which one does not matter: levels are longest
    paths and the plan orders nodes by (level, name). Pure Python: importing igraph took a
    second of the larva's compile."""
    successors: dict[str, list[str]] = {name: [] for name in nodes}
    waiting = dict.fromkeys(nodes, 0)
    for edge in edges:
        successors[edge.pre].append(edge.post)
        waiting[edge.post] += 1
    order = [name for name in nodes if not waiting[name]]
    for name in order:  # grows while it is read
        for post in successors[name]:
            waiting[post] -= 1
            if not waiting[post]:
                order.append(post)
    if len(order) != len(nodes):
        raise ValueError("the plan's graph has a cycle; a DAG builder is broken")
    return order
