"""The paper's eight graph numbers, DAG invariants and the random baselines."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagc.compiler.bundled import load_bundled
from dagc.compiler.connectome import Cell, build_connectome
from dagc.compiler.dag import DagOptions, build_dag, constrained_dag, random_dag
from dagc.compiler.graph import PrepareOptions, prepare_graph
from dagc.compiler.loaders.cook import load_cook_si5
from dagc.compiler.plan import build_plan

from conftest import RAW

PAPER = {
    # sex: (graph nodes, graph edges, DAG nodes, DAG edges, layer sizes)
    "hermaphrodite": (282, 3567, 282, 2260, [83, 137, 59, 3]),
    "male": (357, 3889, 357, 2494, [81, 180, 85, 9]),
}


def check_paper_numbers(connectome, sex):
    graph = prepare_graph(connectome)
    dag = constrained_dag(graph)
    nodes, edges, dag_nodes, dag_edges, layers = PAPER[sex]
    assert (len(graph.nodes), len(graph.edges)) == (nodes, edges)
    assert (len(dag.nodes), len(dag.edges)) == (dag_nodes, dag_edges)
    assert [len(layer) for layer in dag.layers] == layers
    return graph, dag


@pytest.mark.parametrize("sex", ["hermaphrodite", "male"])
def test_bundled_reproduce_the_paper(sex):
    check_paper_numbers(load_bundled(sex), sex)


@pytest.mark.parametrize("sex", ["hermaphrodite", "male"])
def test_cook_spreadsheets_reproduce_the_paper(sex, si5):
    check_paper_numbers(load_cook_si5(si5, sex), sex)


@pytest.mark.parametrize("sex", ["hermaphrodite", "male"])
def test_bundled_equals_the_spreadsheets(sex, si5):
    bundled, raw = load_bundled(sex), load_cook_si5(si5, sex)
    assert set(bundled.edges) == set(raw.edges)
    assert [(c.name, c.type) for c in bundled.cells] == [
        (c.name, c.type) for c in raw.cells
    ]


def test_genuine_mat_reproduces_the_male_numbers(shared):
    from dagc.compiler.loaders.matlab import load_matlab

    mat = load_matlab(shared(RAW / "GMaleChem.mat"))
    graph, _ = check_paper_numbers(mat, "male")
    bundled = prepare_graph(load_bundled("male"))
    assert set(graph.edges) == set(bundled.edges)
    assert graph.types == bundled.types


def test_male_steps_drop_the_documented_neurons():
    graph = prepare_graph(load_bundled("male"))
    assert set(graph.dropped["isolated"]) == {"ADAR", "BAGR", "CA01", "URYDL"}
    assert set(graph.dropped["unfed"]) == {"AINL", "ALA", "CEMDR"}
    assert graph.self_loops > 0  # self-loops are counted among the 3,889 edges


def test_hermaphrodite_network_shape():
    plan = build_plan(constrained_dag(prepare_graph(load_bundled("hermaphrodite"))))
    assert len(plan.inputs) == 83 and len(plan.outputs) == 24 and plan.depth == 72
    assert plan.pruned == ()


def test_male_network_prunes_can_cells():
    dag = constrained_dag(prepare_graph(load_bundled("male")))
    with pytest.warns(UserWarning, match="CANL, CANR"):
        plan = build_plan(dag)
    assert plan.pruned == ("CANL", "CANR")
    assert len(plan.nodes) == 355


def test_unfed_step_can_be_switched_off():
    graph = prepare_graph(load_bundled("male"), PrepareOptions(drop_unfed=False))
    assert len(graph.nodes) == 360


# --- DAG invariants ---------------------------------------------------------------------------


def assert_constrained_invariants(graph, dag):
    layer_of = {name: i for i, layer in enumerate(dag.layers) for name in layer}
    graph_weights = {(e.pre, e.post): e.weight for e in graph.edges}
    for edge in dag.edges:
        assert graph_weights[(edge.pre, edge.post)] == edge.weight
        assert not (layer_of[edge.pre] == 0 and layer_of[edge.post] == 0)
        assert layer_of[edge.pre] <= layer_of[edge.post]
    assert_acyclic(dag.nodes, dag.edges)


def assert_acyclic(nodes, edges):
    import igraph

    index = {name: i for i, name in enumerate(nodes)}
    g = igraph.Graph(
        n=len(nodes),
        edges=[(index[e.pre], index[e.post]) for e in edges],
        directed=True,
    )
    assert g.is_dag()


@pytest.mark.parametrize("sex", ["hermaphrodite", "male"])
def test_constrained_dag_invariants(sex):
    graph = prepare_graph(load_bundled(sex))
    assert_constrained_invariants(graph, constrained_dag(graph))


TYPES = ["sensory", "interneuron", "motor", "sex-specific", "other"]


@st.composite
def typed_graphs(draw):
    n = draw(st.integers(2, 25))
    names = [f"c{i}" for i in range(n)]
    types = [draw(st.sampled_from(TYPES)) for _ in names]
    types[0] = "sensory"
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.integers(1, 5)),
            max_size=80,
            unique_by=lambda t: (t[0], t[1]),
        )
    )
    cells = [Cell(name, cell_type) for name, cell_type in zip(names, types)]
    edges = [(names[a], names[b], w) for a, b, w in pairs]
    return build_connectome("random", "random.csv", "0" * 64, cells, edges, None)


@settings(max_examples=150, deadline=None)
@given(typed_graphs())
def test_constrained_dag_invariants_on_random_graphs(connectome):
    graph = prepare_graph(
        connectome, PrepareOptions(drop_isolated=False, drop_unfed=False)
    )
    dag = constrained_dag(graph)
    assert_constrained_invariants(graph, dag)
    assert dag.inputs == tuple(n for n in graph.nodes if graph.types[n] == "sensory")
    # Every edge the DAG rejected had a reason: re-adding any rejected, layer-respecting,
    # non-input-internal edge must close a cycle (the DAG is maximal under its rules).
    layer_of = {name: i for i, layer in enumerate(dag.layers) for name in layer}
    accepted = set(dag.edges)
    for edge in graph.edges:
        if edge in accepted or edge.pre not in layer_of or edge.post not in layer_of:
            continue
        if (
            layer_of[edge.pre] == layer_of[edge.post] == 0
            or layer_of[edge.pre] > layer_of[edge.post]
        ):
            continue
        with pytest.raises(AssertionError):
            assert_acyclic(dag.nodes, tuple(accepted) + (edge,))


@settings(max_examples=60, deadline=None)
@given(typed_graphs(), st.integers(0, 2**31))
def test_random_dag_on_random_graphs(connectome, seed):
    graph = prepare_graph(
        connectome, PrepareOptions(drop_isolated=False, drop_unfed=False)
    )
    dag = random_dag(graph, seed)
    assert_acyclic(dag.nodes, dag.edges)
    undirected = {frozenset((e.pre, e.post)) for e in graph.edges if e.pre != e.post}
    assert {frozenset((e.pre, e.post)) for e in dag.edges} == undirected
    plan = build_plan(dag)
    assert all(
        plan.nodes[p].level < node.level for node in plan.nodes for p in node.preds
    )


def test_random_dag_depends_only_on_the_seed():
    graph = prepare_graph(load_bundled("hermaphrodite"))
    first, again, other = (
        random_dag(graph, 1),
        random_dag(graph, 1),
        random_dag(graph, 2),
    )
    assert first == again
    assert first.edges != other.edges


@pytest.mark.parametrize("kind", ["ws", "er", "ba"])
def test_random_graph_baselines(kind):
    graph = prepare_graph(load_bundled("hermaphrodite"))
    dag = build_dag(graph, DagOptions(kind, seed=3))
    assert len(dag.nodes) == 282
    assert (
        0.8 * 2897 <= len(dag.edges) <= 1.2 * 2897
    )  # sized like the connectome's wiring
    assert_acyclic(dag.nodes, dag.edges)
    assert dag == build_dag(graph, DagOptions(kind, seed=3))
    assert dag.edges != build_dag(graph, DagOptions(kind, seed=4)).edges


# --- the inspect command ----------------------------------------------------------------------


def test_inspect_json_hermaphrodite(dagc):
    result = dagc("inspect", "hermaphrodite", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["graph"]["nodes"] == 282 and stats["graph"]["edges"] == 3567
    assert stats["dag"]["nodes"] == 282 and stats["dag"]["edges"] == 2260
    assert stats["dag"]["layers"] == [83, 137, 59, 3]
    assert stats["types"] == {
        "sensory": 83,
        "interneuron": 81,
        "motor": 108,
        "sex-specific": 8,
        "other": 2,
    }
    assert stats["network"]["pruned"] == []
    assert 200_000 <= stats["network"]["parameters"]["total"] <= 260_000


def test_inspect_json_male_lists_pruned(dagc):
    result = dagc("inspect", "male", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["graph"]["nodes"], stats["graph"]["edges"]) == (357, 3889)
    assert (stats["dag"]["nodes"], stats["dag"]["edges"]) == (357, 2494)
    assert stats["dag"]["layers"] == [81, 180, 85, 9]
    assert stats["network"]["pruned"] == ["CANL", "CANR"]
    assert "CANL" in result.stderr


def test_inspect_random_seed(dagc):
    args = ("inspect", "hermaphrodite", "--dag", "random", "--json", "--seed")
    first, again, other = dagc(*args, 1), dagc(*args, 1), dagc(*args, 2)
    assert first.stdout == again.stdout != other.stdout
    assert json.loads(first.stdout)["dag"]["seed"] == 1


def test_inspect_table(dagc):
    result = dagc("inspect", "hermaphrodite")
    assert result.returncode == 0, result.stderr
    assert "282 / 2260" in result.stdout and "83 / 137 / 59 / 3" in result.stdout
