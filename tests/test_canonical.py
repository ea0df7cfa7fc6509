"""One graph, one module: the compiled order does not depend on the order of the source rows."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest

from dagc.compiler.build import compile_network
from dagc.compiler.dag import DagOptions
from dagc.compiler.graph import PrepareOptions
from dagc.compiler.render import CompileOptions

BUNDLED = Path(__file__).resolve().parents[1] / "compiler" / "bundled"


def shuffled_copy(folder: Path, stem: str, seed: int) -> Path:
    """The bundled CSV pair `stem` with its node rows and edge rows in a shuffled order."""
    for kind in ("nodes", "edges"):
        header, *rows = (BUNDLED / f"{stem}.{kind}.csv").read_text().splitlines()
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        assert shuffled != rows
        (folder / f"{stem}.{kind}.csv").write_text(
            "\n".join([header, *shuffled]) + "\n"
        )
    return folder / f"{stem}.nodes.csv"


def compiled(spec: Path, dag: DagOptions) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, source = compile_network(
            str(spec), PrepareOptions(), dag, CompileOptions(channels=4)
        )
    return source


def without_source_hash(source: str) -> tuple[str, str]:
    """(the text without the provenance line, that line): the line holds the file's sha256."""
    lines = source.splitlines(keepends=True)
    (at,) = [
        i for i, line in enumerate(lines) if line.startswith("# Source connectome:")
    ]
    return "".join(lines[:at] + lines[at + 1 :]), lines[at]


@pytest.mark.slow  # two full compiles (formatting included) each
@pytest.mark.parametrize(
    "dag",
    [DagOptions("constrained"), DagOptions("random", seed=0)],
    ids=lambda d: d.kind,
)
def test_shuffled_rows_compile_to_the_same_module(tmp_path, dag):
    reference = compiled(BUNDLED / "hermaphrodite.nodes.csv", dag)
    shuffled = compiled(shuffled_copy(tmp_path, "hermaphrodite", seed=7), dag)
    body, line = without_source_hash(shuffled)
    expected_body, expected_line = without_source_hash(reference)
    # The only difference is the provenance comment: the sha256 of the (shuffled) files.
    assert body == expected_body
    assert line != expected_line
    assert line.split("(sha256")[0] == expected_line.split("(sha256")[0]


def test_nodes_within_a_level_are_in_name_order():
    from dagc.compiler.pipeline import run_front_end

    plan = run_front_end("hermaphrodite", PrepareOptions(), DagOptions()).plan
    for start, stop in plan.levels:
        names = [node.name for node in plan.nodes[start:stop]]
        assert names == sorted(names)
