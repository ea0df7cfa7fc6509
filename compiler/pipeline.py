"""The whole front end in one call, and the statistics `dagc inspect` prints."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

from .connectome import Connectome
from .dag import Dag, DagOptions, build_dag
from .graph import Graph, PrepareOptions, prepare_graph
from .loaders import load_connectome
from .params import ParameterCount, parameter_breakdown
from .plan import NetworkPlan, build_plan


@dataclass(frozen=True)
class FrontEnd:
    connectome: Connectome
    graph: Graph
    dag: Dag
    plan: NetworkPlan


def run_front_end(
    spec: str,
    prepare: PrepareOptions = PrepareOptions(),
    dag_options: DagOptions = DagOptions(),
) -> FrontEnd:
    connectome = load_connectome(spec)
    graph = prepare_graph(connectome, prepare)
    dag = build_dag(graph, dag_options)
    with warnings.catch_warnings():
        # Pruned nodes are reported in the stats; callers decide how to tell the user.
        warnings.simplefilter("ignore")
        plan = build_plan(dag)
    return FrontEnd(connectome, graph, dag, plan)


@dataclass(frozen=True)
class ConnectomeStats:
    name: str
    source: str
    sha256: str
    cells: int
    synapse_edges: int


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    edges: int
    self_loops: int
    dropped: dict[str, list[str]]  # step -> the neurons it dropped


@dataclass(frozen=True)
class DagStats:
    kind: str
    seed: int | None  # None for the deterministic constrained DAG
    nodes: int
    edges: int
    layers: list[int]  # sizes of X(0), X(1), ... (constrained DAG only)


@dataclass(frozen=True)
class NetworkStats:
    nodes: int
    edges: int
    input_nodes: int
    output_nodes: int
    depth: int
    levels: list[int]  # nodes per topological level
    pruned: list[str]
    channels: int
    parameters: ParameterCount


@dataclass(frozen=True)
class FrontEndStats:
    """What `dagc inspect` reports, stage by stage."""

    connectome: ConnectomeStats
    graph: GraphStats
    types: dict[str, int]  # neuron type -> count in the graph
    dag: DagStats
    network: NetworkStats

    def as_dict(self) -> dict:
        """The JSON form `dagc inspect --json` prints."""
        stats = asdict(self)
        stats["network"]["parameters"] = self.network.parameters.as_dict()
        return stats


def front_end_stats(
    front: FrontEnd, channels: int = 78, in_channels: int = 1, num_classes: int = 10
) -> FrontEndStats:
    graph, dag, plan = front.graph, front.dag, front.plan
    return FrontEndStats(
        connectome=ConnectomeStats(
            name=front.connectome.name,
            source=front.connectome.source,
            sha256=front.connectome.sha256,
            cells=len(front.connectome.cells),
            synapse_edges=len(front.connectome.edges),
        ),
        graph=GraphStats(
            nodes=len(graph.nodes),
            edges=len(graph.edges),
            self_loops=graph.self_loops,
            dropped={step: list(names) for step, names in graph.dropped.items()},
        ),
        types=graph.type_counts(),
        dag=DagStats(
            kind=dag.kind,
            seed=dag.seed,
            nodes=len(dag.nodes),
            edges=len(dag.edges),
            layers=[len(layer) for layer in dag.layers],
        ),
        network=NetworkStats(
            nodes=len(plan.nodes),
            edges=len(plan.edges),
            input_nodes=len(plan.inputs),
            output_nodes=len(plan.outputs),
            depth=plan.depth,
            levels=[stop - start for start, stop in plan.levels],
            pruned=list(plan.pruned),
            channels=channels,
            parameters=parameter_breakdown(plan, channels, in_channels, num_classes),
        ),
    )
