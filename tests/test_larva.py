"""The Drosophila larva brain (issue 22): its pinned numbers, its loaders, the compile path
that makes 3,000 nodes fast (per-layer cycle checks, black around the fmt: off blocks) and
the memory check that refuses a training run which cannot fit."""

from __future__ import annotations

import gzip
import json
import random
import types
import warnings
from pathlib import Path

import black
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagc.compiler import render
from dagc.compiler.build import compile_network
from dagc.compiler.bundled import BUNDLED_DIR, load_bundled
from dagc.compiler.connectome import Cell, Edge, build_connectome
from dagc.compiler.dag import DagOptions, constrained_dag, sensory_layers
from dagc.compiler.errors import DagcError
from dagc.compiler.graph import PrepareOptions, prepare_graph
from dagc.compiler.loaders import load_connectome
from dagc.compiler.loaders.larva import larva_pair_paths, load_larva_pair
from dagc.compiler.loaders.tables import load_csv_pair, write_csv_pair
from dagc.compiler.render import CompileOptions
from dagc.runtime.memory import (
    EVAL_BATCH,
    GIB,
    check_training_memory,
    estimate_memory,
    tensor_counts,
)

from conftest import SHARED

REPO = Path(__file__).resolve().parents[1]
LARVA = SHARED / "data" / "connectome" / "larva"
RAW_NODES = LARVA / "unmatched_full_nodes.csv"
RAW_EDGES = LARVA / "unmatched_full_edgelist.csv"

# What dagc computes for the bundled larva (io -> type, docs/recipe.md), as the eight
# C. elegans numbers are pinned in test_front_end.py.
LARVA_NUMBERS = {
    "cells": 3013,
    "synapse_edges": 111243,
    "graph": (3012, 111238),  # 11717035 has no input and is not sensory: dropped
    "self_loops": 537,
    "types": {"interneuron": 2129, "motor": 420, "sensory": 463},
    "dropped": {"isolated": [], "unfed": ["11717035"]},
    "dag": (3012, 72447),
    "layers": [463, 973, 1563, 13],
    "network": (3012, 72447),
    "inputs_outputs": (463, 199),
    "depth": 1155,
    "parameters_78": 2664631,
}


@pytest.fixture(scope="module")
def larva_stats(run_dagc):
    result = run_dagc("inspect", "larva", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def run_dagc():
    """`dagc ARGS` in this process, for module-scoped fixtures (conftest's `dagc` is
    per test): the larva is inspected once."""
    from dagc.cli import main

    def run(*args):
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main([str(arg) for arg in args])
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
        return types.SimpleNamespace(
            returncode=code, stdout=out.getvalue(), stderr=err.getvalue()
        )

    return run


def test_larva_numbers_are_pinned(larva_stats):
    stats, pinned = larva_stats, LARVA_NUMBERS
    assert stats["connectome"]["cells"] == pinned["cells"]
    assert stats["connectome"]["synapse_edges"] == pinned["synapse_edges"]
    assert (stats["graph"]["nodes"], stats["graph"]["edges"]) == pinned["graph"]
    assert stats["graph"]["self_loops"] == pinned["self_loops"]
    assert stats["graph"]["dropped"] == pinned["dropped"]
    assert stats["types"] == pinned["types"]
    assert (stats["dag"]["nodes"], stats["dag"]["edges"]) == pinned["dag"]
    assert stats["dag"]["layers"] == pinned["layers"]
    network = stats["network"]
    assert (network["nodes"], network["edges"]) == pinned["network"]
    assert (network["input_nodes"], network["output_nodes"]) == pinned["inputs_outputs"]
    assert network["depth"] == pinned["depth"]
    assert network["pruned"] == []
    assert network["parameters"]["total"] == pinned["parameters_78"]


def test_bundled_larva_is_named_by_skeleton_id_with_readable_labels():
    connectome = load_bundled("larva")
    cells = connectome.cell_map()
    assert all(name.isdigit() for name in cells)  # skeleton ids: unique, unlike names
    assert cells["11691603"].label == "KC17" and cells["11691603"].type == "interneuron"
    labels = [cell.label for cell in connectome.cells]
    assert len(set(labels)) < len(labels)  # why names cannot identify neurons
    assert (BUNDLED_DIR / "README.md").read_text().count("MIT License") == 1


def test_raw_pair_loads_like_the_bundled_tables(shared):
    shared(RAW_NODES, RAW_EDGES)
    bundled = load_bundled("larva")
    raw = load_connectome(str(RAW_EDGES))  # either file of the pair names it
    assert raw.cells == bundled.cells
    assert raw.edges == bundled.edges
    assert larva_pair_paths(RAW_EDGES) == larva_pair_paths(RAW_NODES)


def test_bundled_larva_files_are_fresh(shared, tmp_path):
    """scripts/build_larva.py's output, byte for byte (the gzip is reproducible)."""
    shared(RAW_NODES, RAW_EDGES)
    connectome = load_larva_pair(RAW_NODES)
    nodes, edges = tmp_path / "larva.nodes.csv.gz", tmp_path / "larva.edges.csv.gz"
    write_csv_pair(connectome, nodes, edges)
    assert nodes.read_bytes() == (BUNDLED_DIR / nodes.name).read_bytes()
    assert edges.read_bytes() == (BUNDLED_DIR / edges.name).read_bytes()


def test_io_column_types_the_neurons(tmp_path):
    nodes = tmp_path / "tiny_nodes.csv"
    nodes.write_text(
        ",name,sensory,io\n"
        "1,ORN a,True,input\n"
        "2,A00c a1l,False,input\n"
        "3,LN  left,False,inter\n"
        "4,dVNC,False,output\n"
    )
    (tmp_path / "tiny_edgelist.csv").write_text("1,3,4.0\n2,3,1.0\n3,4,2.0\n4,4,1.0\n")
    connectome = load_connectome(str(nodes))
    assert [(c.name, c.type, c.label) for c in connectome.cells] == [
        ("1", "sensory", "ORN a"),
        ("2", "sensory", "A00c a1l"),  # an ascending input: io says input
        ("3", "interneuron", "LN left"),
        ("4", "motor", "dVNC"),
    ]
    assert Edge("1", "3", 4) in connectome.edges  # whole numbers stay ints
    graph = prepare_graph(connectome)
    assert graph.self_loops == 1
    dag = constrained_dag(graph)
    assert ("4", "4") not in {(e.pre, e.post) for e in dag.edges}  # self-loops dropped


@pytest.mark.parametrize(
    "nodes_text, edges_text, needle",
    [
        ("name,io\n1,input\n", "", "unnamed first column"),
        (",name\n1,a\n", "", "'io' column"),
        (",name,io\n1,a,sideways\n", "", "io 'sideways'"),
        (",name,io\n1,a,input\n2,b,inter\n", "1,2\n", "edgelist.csv:1: expected 3"),
        (",name,io\n1,a,input\n2,b,inter\n", "1,2,1\n1,9,1\n", "unknown node '9'"),
    ],
)
def test_bad_larva_files_are_one_line_errors(tmp_path, nodes_text, edges_text, needle):
    (tmp_path / "x_nodes.csv").write_text(nodes_text)
    (tmp_path / "x_edgelist.csv").write_text(edges_text)
    with pytest.raises(DagcError, match=needle):
        load_connectome(str(tmp_path / "x_edgelist.csv"))


def test_gzip_csv_pair_round_trips_reproducibly(tmp_path):
    connectome = load_bundled("hermaphrodite")
    first = (tmp_path / "a.nodes.csv.gz", tmp_path / "a.edges.csv.gz")
    write_csv_pair(connectome, *first)
    again = tmp_path / "again"
    again.mkdir()
    second = (again / "a.nodes.csv.gz", again / "a.edges.csv.gz")
    write_csv_pair(connectome, *second)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert gzip.decompress(first[0].read_bytes()).startswith(b"name,type,")
    loaded = load_csv_pair(first[1])
    assert loaded.cells == connectome.cells and loaded.edges == connectome.edges


# --- the constrained DAG: per-layer cycle checks give the global algorithm's result ------


def reference_constrained_edges(graph):
    """The original algorithm: one reachability bitmask per node of the whole graph,
    updated for every accepted edge (O(E x N)); the per-layer version must agree."""
    layers = sensory_layers(graph)
    layer_of = {name: depth for depth, layer in enumerate(layers) for name in layer}
    index = {name: i for i, name in enumerate(graph.nodes)}
    reach = [1 << i for i in range(len(graph.nodes))]
    accepted = []
    for edge in sorted(graph.edges, key=lambda e: (-e.weight, e.pre, e.post)):
        a, b = layer_of.get(edge.pre), layer_of.get(edge.post)
        if a is None or b is None or (a == 0 and b == 0) or a > b:
            continue
        source, target = index[edge.pre], index[edge.post]
        if reach[target] >> source & 1:
            continue
        for i, mask in enumerate(reach):
            if mask >> source & 1:
                reach[i] = mask | reach[target]
        accepted.append(edge)
    return tuple(accepted)


@st.composite
def layered_graphs(draw):
    """Few sensory neurons and many edges: big layers with many intra-layer cycles."""
    n = draw(st.integers(2, 90))
    names = [f"c{i:02d}" for i in range(n)]
    sensory = set(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4)))
    cells = [
        Cell(name, "sensory" if i in sensory else "interneuron")
        for i, name in enumerate(names)
    ]
    seed = draw(st.integers(0, 2**31))
    rng = random.Random(seed)
    count = draw(st.integers(0, 6 * n))
    pairs = {(rng.randrange(n), rng.randrange(n)) for _ in range(count)}
    edges = [(names[a], names[b], rng.randint(1, 3)) for a, b in sorted(pairs)]
    return build_connectome("layered", "x.csv", "0" * 64, cells, edges, None)


@settings(max_examples=200, deadline=None)
@given(layered_graphs())
def test_per_layer_reachability_equals_the_global_bitmasks(connectome):
    graph = prepare_graph(connectome, PrepareOptions(False, False, False))
    assert constrained_dag(graph).edges == reference_constrained_edges(graph)


# --- black around the fmt: off blocks gives black's own result ---------------------------


FORMAT_SOURCE = render.format_source  # the real one, whatever a test patches in


def captured_sources(monkeypatch, spec, **options):
    """The unformatted texts render_source hands to format_source while compiling."""
    seen = []
    monkeypatch.setattr(
        render, "format_source", lambda text: seen.append(text) or FORMAT_SOURCE(text)
    )
    render.template_names.cache_clear()  # render its probe again, through the patch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, source = compile_network(
            spec, PrepareOptions(), DagOptions(), CompileOptions(**options)
        )
    monkeypatch.undo()
    return seen, source


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """A 40-neuron random connectome as a CSV pair: the same blocks, a fraction of the text."""
    rng = random.Random(7)
    names = [f"N{i}" for i in range(40)]
    cells = [
        Cell(n, "sensory" if i < 5 else "interneuron") for i, n in enumerate(names)
    ]
    pairs = {(rng.randrange(40), rng.randrange(5, 40)) for _ in range(160)}
    edges = [(names[a], names[b], rng.randint(1, 9)) for a, b in sorted(pairs)]
    connectome = build_connectome("small", "small", "0" * 64, cells, edges, None)
    folder = tmp_path_factory.mktemp("small")
    write_csv_pair(connectome, folder / "small.nodes.csv", folder / "small.edges.csv")
    return str(folder / "small.nodes.csv")


OPTION_SETS = {
    "default": {},
    "levels": {"layout": "levels"},
    "autograd": {"backward": "autograd", "edge_weights": "free"},
}


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_chunked_black_equals_black(monkeypatch, small_pair, options):
    seen, source = captured_sources(monkeypatch, small_pair, **options)
    assert seen and source == FORMAT_SOURCE(seen[-1])
    for text in seen:
        assert FORMAT_SOURCE(text) == black.format_str(text, mode=black.Mode())


@pytest.mark.slow
@pytest.mark.parametrize(
    "options", [*OPTION_SETS.values(), {"edge_weights": "dale"}], ids=str
)
def test_chunked_black_equals_black_on_the_male(monkeypatch, options):
    seen, source = captured_sources(monkeypatch, "male", **options)
    for text in seen:
        assert FORMAT_SOURCE(text) == black.format_str(text, mode=black.Mode())


def test_format_source_without_blocks_is_black():
    text = "x = (1,\n  2)\n# fmt: off\ny = ( 1, )\n"  # a block left open: black does it all
    assert render.format_source(text) == black.format_str(text, mode=black.Mode())
    plain = "def f( a ):\n  return a\n"
    assert render.format_source(plain) == black.format_str(plain, mode=black.Mode())


@pytest.mark.slow
def test_larva_chunked_black_equals_black(monkeypatch):
    seen, source = captured_sources(monkeypatch, "larva", channels=8)
    assert source == black.format_str(seen[-1], mode=black.Mode())


@pytest.mark.slow
def test_larva_compiles_deterministic_and_navigable(tmp_path, run_dagc):
    paths = [tmp_path / "a.py", tmp_path / "b.py"]
    for path in paths:
        result = run_dagc("compile", "--connectome", "larva", "-o", path)
        assert result.returncode == 0, result.stderr
    text = paths[0].read_text()
    assert text == paths[1].read_text()
    # Each neuron's statement is named after its skeleton id, its comment says who it is.
    assert "    # 11691603 (KC17; interneuron) <- " in text
    assert "    n_11691603 = node(" in text
    assert "--connectome larva" in text.splitlines()[1]


# --- the memory check ---------------------------------------------------------------------


def tiny_module(channels=8, backward="generated"):
    """A chain 0 -> 1 -> 2 plus 0 -> 2: the tables a generated module carries."""
    return types.SimpleNamespace(
        NODES=("a", "b", "c"),
        EDGES=((0, 1), (0, 2), (1, 2)),
        OUTPUT_NODES=(2,),
        CHANNELS=channels,
        INPUT_SHAPE=(1, 28, 28),
        NUM_CLASSES=10,
        BACKWARD=backward,
    )


def test_tensor_counts_follow_the_generated_reverse_pass():
    # saved: inputs of the 2 summed nodes + 3 conv outputs + 2 read activations.
    # Reverse pass: b's and c's gradients overlap at b's step. Forward: a lives to c.
    assert tensor_counts(tiny_module()) == (7, 2, 3)
    assert tensor_counts(tiny_module(backward="autograd"))[0] == 2 + 2 * 3


def test_estimate_scales_with_batch_and_channels():
    small = estimate_memory(tiny_module(8), 100)
    assert small.tensor_bytes == 100 * 8 * 14 * 14 * 4
    wide = estimate_memory(tiny_module(16), 200)
    assert wide.tensor_bytes == 4 * small.tensor_bytes
    assert wide.activation_bytes == 4 * small.activation_bytes


def test_the_engine_keeps_only_the_summed_nodes_inputs():
    """The CPU engine saves each summed node's conv input (2 here, half the bytes in bf16)
    and keeps one channel's planes per thread in arenas sized by the liveness counts."""
    module = tiny_module(8)
    torch_path = estimate_memory(module, 100)
    engine = estimate_memory(module, 100, kernels="engine", threads=2)
    bf16 = estimate_memory(module, 100, kernels="engine", precision="bf16", threads=2)
    plane = 100 * 14 * 14
    assert (engine.saved_tensors, engine.live_grads) == (2, 0)
    assert engine.arena_bytes == 2 * (3 + 2) * plane * 4
    assert (bf16.saved_tensors, bf16.arena_bytes) == (1, engine.arena_bytes // 2)
    assert bf16.train_bytes < engine.train_bytes < torch_path.train_bytes


def test_a_run_that_cannot_fit_is_refused_in_one_line():
    import torch

    module = tiny_module(78)
    need = estimate_memory(module, 100).train_bytes
    with pytest.raises(DagcError) as error:
        check_training_memory(
            module, 100, torch.device("cpu"), "net.py", available=need // 4
        )
    message = str(error.value)
    assert "\n" not in message and "not enough memory" in message
    assert "--channels" in message and "DAGC_MEMORY_CHECK=off" in message
    fits = check_training_memory(
        module, 100, torch.device("cpu"), "net.py", available=need * 100
    )
    assert fits.eval_batch == EVAL_BATCH


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_refusal_points_to_the_engine_when_its_step_would_fit(precision):
    import torch

    from dagc.runtime.memory import ALLOCATOR_MARGIN

    module = tiny_module(78)
    threads = torch.get_num_threads()
    engine = estimate_memory(module, 100, 0, "engine", precision, threads).train_bytes
    available = int(engine * ALLOCATOR_MARGIN) + 1
    assert estimate_memory(module, 100).train_bytes * ALLOCATOR_MARGIN > available
    with pytest.raises(DagcError) as error:
        check_training_memory(
            module,
            100,
            torch.device("cpu"),
            "net.py",
            available=available,
            kernels="cpp",
        )
    flag = "--kernels engine" + (" --precision bf16" if precision == "bf16" else "")
    assert f"use {flag} (about" in str(error.value)
    assert ("--precision bf16" in str(error.value)) == (precision == "bf16")
    # Already on the engine: no advice to use it.
    with pytest.raises(DagcError) as error:
        check_training_memory(
            module, 100, torch.device("cpu"), "net.py", available=1, kernels="engine"
        )
    assert "--kernels engine" not in str(error.value)


def test_evaluation_batch_shrinks_to_fit():
    import torch

    module = tiny_module(78)
    estimate = estimate_memory(module, 100)
    available = int(estimate.train_bytes * 1.2)
    assert estimate.peak_bytes > available  # with the default evaluation batch
    fits = check_training_memory(
        module, 100, torch.device("cpu"), "net.py", available=available
    )
    assert 1 <= fits.eval_batch < EVAL_BATCH
    assert fits.peak_bytes <= available


def test_memory_check_can_be_switched_off(monkeypatch):
    import torch

    monkeypatch.setenv("DAGC_MEMORY_CHECK", "off")
    check_training_memory(tiny_module(78), 100, torch.device("cpu"), "x", available=1)


def test_dagc_train_refuses_before_training(monkeypatch, dagc, tmp_path, clean_error):
    from dagc.runtime import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: GIB // 4)
    result = dagc(
        "train",
        REPO / "generated" / "hermaphrodite_net.py",
        "--dataset",
        "mnist",
        "--iterations",
        "1",
        "--out",
        tmp_path / "run",
        "--data-dir",
        tmp_path / "no-data",  # never read: the check comes first
    )
    line = clean_error(result, "not enough memory", "--channels")
    assert "hermaphrodite_net.py" in line
    assert not (tmp_path / "run").exists()


def test_larva_is_drawn_binned_by_level(run_dagc, tmp_path):
    from dagc.compiler import draw
    from dagc.compiler.pipeline import run_front_end

    plan = run_front_end("larva", PrepareOptions(), DagOptions()).plan
    bins = draw.level_bins(plan, draw.LEVEL_BINS)
    # Each of the 60 stretches holds levels [k * 1155 / 60, (k + 1) * 1155 / 60): a node
    # of a later level never lands in an earlier bin, and every bin holds some level.
    assert sorted(set(bins)) == list(range(draw.LEVEL_BINS))
    by_level = sorted(zip((node.level for node in plan.nodes), bins))
    assert [b for _, b in by_level] == sorted(b for _, b in by_level)
    assert bins[-1] == draw.LEVEL_BINS - 1  # the deepest node
    # The figure is the binned one (its synapse map has a colour bar), written whole.
    figure = draw.binned_figure(plan, "larva")
    assert len(figure.axes) == 3
    result = run_dagc("draw", "larva", "-o", tmp_path / "larva.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "larva.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
