"""The whole front end in one call, and the statistics `dagc inspect` prints."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from dagc.compiler.connectome import Connectome
from dagc.compiler.dag import Dag, DagOptions, build_dag
from dagc.compiler.graph import Graph, PrepareOptions, prepare_graph
from dagc.compiler.loaders import load_connectome
from dagc.compiler.params import parameter_breakdown
from dagc.compiler.plan import NetworkPlan, build_plan


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


def front_end_stats(
    front: FrontEnd, channels: int = 78, in_channels: int = 1, num_classes: int = 10
) -> dict:
    graph, dag, plan = front.graph, front.dag, front.plan
    return {
        "connectome": {
            "name": front.connectome.name,
            "source": front.connectome.source,
            "sha256": front.connectome.sha256,
            "cells": len(front.connectome.cells),
            "synapse_edges": len(front.connectome.edges),
        },
        "graph": {
            "nodes": len(graph.nodes),
            "edges": len(graph.edges),
            "self_loops": graph.self_loops,
            "dropped": {step: list(names) for step, names in graph.dropped.items()},
        },
        "types": graph.type_counts(),
        "dag": {
            "kind": dag.kind,
            "seed": dag.seed,
            "nodes": len(dag.nodes),
            "edges": len(dag.edges),
            "layers": [len(layer) for layer in dag.layers],
        },
        "network": {
            "nodes": len(plan.nodes),
            "edges": len(plan.edges),
            "input_nodes": len(plan.inputs),
            "output_nodes": len(plan.outputs),
            "depth": plan.depth,
            "levels": [stop - start for start, stop in plan.levels],
            "pruned": list(plan.pruned),
            "channels": channels,
            "parameters": parameter_breakdown(plan, channels, in_channels, num_classes),
        },
    }
