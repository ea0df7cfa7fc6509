"""Stage 3: turn a neuron graph into a DAG.

- `constrained_dag`: Park & Kim 2023. Layers by breadth-first reach from the sensory neurons,
  then the heaviest edges are accepted first as long as they respect the layers and close no
  cycle. Deterministic.
- `random_dag`: Roberts et al. 2019. The connectome's wiring with every edge pointed from the
  lower to the higher index of a random node order.
- `random_graph_dag`: Watts-Strogatz / Erdos-Renyi / Barabasi-Albert graphs from igraph, sized
  like the connectome, made acyclic the same way (as RandWire does).
Each is a pure function of (graph, options, seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from .connectome import Edge
from .errors import DagcError
from .graph import Graph

DAG_KINDS = ("constrained", "random", "ws", "er", "ba")


@dataclass(frozen=True)
class DagOptions:
    kind: str = "constrained"
    seed: int = 0
    # Random-graph baselines: sizes default to the connectome's (0 = same as the graph).
    nodes: int = 0
    edges: int = 0
    ws_rewire: float = 0.75  # RandWire's best WS setting rewires with p = 0.75


@dataclass(frozen=True)
class Dag:
    name: str  # e.g. "hermaphrodite"
    kind: str
    seed: int | None  # None for the deterministic constrained DAG
    nodes: tuple[str, ...]
    types: dict[str, str]
    transmitters: dict[str, str]
    edges: tuple[Edge, ...]
    layers: tuple[tuple[str, ...], ...]  # X(0), X(1), ... (constrained DAG only)
    inputs: tuple[str, ...]  # the nodes the network's source feeds
    labels: dict[str, str] = field(default_factory=dict)  # readable names (comments)


def build_dag(graph: Graph, options: DagOptions = DagOptions()) -> Dag:
    if options.kind == "constrained":
        return constrained_dag(graph)
    if options.kind == "random":
        return random_dag(graph, options.seed)
    if options.kind in ("ws", "er", "ba"):
        return random_graph_dag(graph, options)
    raise DagcError(
        f"unknown DAG kind {options.kind!r} (choose from {', '.join(DAG_KINDS)})"
    )


# --- constrained DAG -------------------------------------------------------------------------


def sensory_layers(graph: Graph) -> list[list[str]]:
    """X(0) = sensory neurons; X(i+1) = not-yet-layered successors of X(i) (graph order)."""
    successors: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for edge in graph.edges:
        successors[edge.pre].append(edge.post)
    layer = [name for name in graph.nodes if graph.types[name] == "sensory"]
    if not layer:
        raise DagcError(
            "no sensory neurons, so there is no input layer for a constrained DAG "
            "(use --dag random or type some neurons 'sensory')",
            graph.path or graph.source,
        )
    layered = set(layer)
    layers = []
    while layer:
        layers.append(layer)
        reached = {post for pre in layer for post in successors[pre]} - layered
        layer = [name for name in graph.nodes if name in reached]
        layered |= reached
    return layers


def constrained_dag(graph: Graph) -> Dag:
    layers = sensory_layers(graph)
    layer_of = {name: depth for depth, layer in enumerate(layers) for name in layer}
    position = {name: i for layer in layers for i, name in enumerate(layer)}
    # Heaviest first; ties by (pre, post) in code-point order. The tie-break is what makes the
    # result unique and reproduces the paper's edge counts (NOTES.md).
    ordered = sorted(graph.edges, key=lambda e: (-e.weight, e.pre, e.post))
    # An accepted edge never points to an earlier layer, so a path only ever stays in its
    # layer or moves on to later ones: a cycle can only close inside one layer. Reachability
    # is therefore kept per layer, among that layer's nodes only (LayerReach).
    reach: dict[int, LayerReach] = {}
    accepted = []
    for edge in ordered:
        pre_layer, post_layer = layer_of.get(edge.pre), layer_of.get(edge.post)
        if pre_layer is None or post_layer is None:
            continue  # an end the senses never reach
        if pre_layer == 0 and post_layer == 0:
            continue  # the input layer stays unconnected within itself
        if pre_layer > post_layer:
            continue  # information only flows away from the senses
        if pre_layer == post_layer:
            if pre_layer not in reach:
                reach[pre_layer] = LayerReach(len(layers[pre_layer]))
            if not reach[pre_layer].add(position[edge.pre], position[edge.post]):
                continue  # would close a cycle (a self-loop always does)
        accepted.append(edge)
    return Dag(
        name=graph.name,
        kind="constrained",
        seed=None,
        nodes=graph.nodes,
        types=graph.types,
        transmitters=graph.transmitters,
        edges=tuple(accepted),
        layers=tuple(tuple(layer) for layer in layers),
        inputs=tuple(layers[0]),
        labels=graph.labels,
    )


class LayerReach:
    """Reachability among the n nodes of one layer through the accepted edges inside it.

    Row i of `descendants` is a bitmask (n bits in 64-bit words) of the nodes that node i
    reaches, itself included. Accepting an edge s -> t ORs t's row into the rows of the
    nodes that reach s: one vectorised step over those rows, instead of one big-integer
    operation per node of the whole graph per accepted edge.
    """

    def __init__(self, n: int):
        nodes = np.arange(n)
        self.descendants = np.zeros((n, (n + 63) // 64), dtype=np.uint64)
        self.descendants[nodes, nodes >> 6] = np.left_shift(
            np.uint64(1), (nodes & 63).astype(np.uint64)
        )

    def reaches(self, source: int, target: int) -> bool:
        return bool(int(self.descendants[source, target >> 6]) >> (target & 63) & 1)

    def add(self, source: int, target: int) -> bool:
        """Accept source -> target unless it would close a cycle; whether it was accepted."""
        if self.reaches(target, source):
            return False  # target already reaches source (or is source)
        if not self.reaches(source, target):  # else nothing new becomes reachable
            rows = self.descendants
            bit = np.uint64(1 << (source & 63))
            ancestors = np.flatnonzero(rows[:, source >> 6] & bit)
            rows[ancestors] |= rows[target]
        return True


# --- random DAGs -----------------------------------------------------------------------------


def orient_by_order(
    nodes: tuple[str, ...], pairs: list[tuple[str, str, float]], seed: int
) -> tuple[Edge, ...]:
    """Point every edge from the earlier to the later node of a seeded random order.

    Self-loops vanish; a reciprocal pair (a->b, b->a) becomes one edge whose weight is the sum.
    """
    order = sorted(
        nodes
    )  # by name, so the result does not depend on the file's row order
    random.Random(seed).shuffle(order)
    rank = {name: i for i, name in enumerate(order)}
    merged: dict[tuple[str, str], float] = {}
    for pre, post, weight in pairs:
        if pre == post:
            continue
        if rank[pre] > rank[post]:
            pre, post = post, pre
        merged[(pre, post)] = merged.get((pre, post), 0) + weight
    node_index = {name: i for i, name in enumerate(nodes)}
    return tuple(
        Edge(pre, post, weight)
        for (pre, post), weight in sorted(
            merged.items(),
            key=lambda item: (node_index[item[0][0]], node_index[item[0][1]]),
        )
    )


def in_degree_zero(nodes: tuple[str, ...], edges: tuple[Edge, ...]) -> tuple[str, ...]:
    fed = {edge.post for edge in edges}
    return tuple(name for name in nodes if name not in fed)


def random_dag(graph: Graph, seed: int) -> Dag:
    pairs = [(e.pre, e.post, e.weight) for e in graph.edges]
    edges = orient_by_order(graph.nodes, pairs, seed)
    return Dag(
        name=graph.name,
        kind="random",
        seed=seed,
        nodes=graph.nodes,
        types=graph.types,
        transmitters=graph.transmitters,
        edges=edges,
        layers=(),
        inputs=in_degree_zero(graph.nodes, edges),
        labels=graph.labels,
    )


def undirected_pair_count(graph: Graph) -> int:
    return len({frozenset((e.pre, e.post)) for e in graph.edges if e.pre != e.post})


def random_graph_dag(graph: Graph, options: DagOptions) -> Dag:
    import igraph

    n = options.nodes or len(graph.nodes)
    m = options.edges or undirected_pair_count(graph)
    if n < 2 or m < 1:
        raise DagcError(
            f"a random graph needs at least 2 nodes and 1 edge (got {n} and {m})"
        )
    # igraph's generators draw from its own RNG; seed it so the graph is a function of the seed.
    igraph.set_random_number_generator(random.Random(options.seed))
    try:
        if options.kind == "ws":
            neighbours = max(1, round(m / n))
            generated = igraph.Graph.Watts_Strogatz(1, n, neighbours, options.ws_rewire)
            generated.simplify()
        elif options.kind == "er":
            generated = igraph.Graph.Erdos_Renyi(n=n, m=min(m, n * (n - 1) // 2))
        else:
            generated = igraph.Graph.Barabasi(n, max(1, round(m / n)))
    finally:
        igraph.set_random_number_generator(random)
    width = len(str(n - 1))
    nodes = tuple(f"n{i:0{width}d}" for i in range(n))
    pairs = [(nodes[a], nodes[b], 1) for a, b in generated.get_edgelist()]
    edges = orient_by_order(nodes, pairs, options.seed)
    return Dag(
        name=f"{options.kind}{n}",
        kind=options.kind,
        seed=options.seed,
        nodes=nodes,
        types={name: "other" for name in nodes},
        transmitters={name: "" for name in nodes},
        edges=edges,
        layers=(),
        inputs=in_degree_zero(nodes, edges),
    )
