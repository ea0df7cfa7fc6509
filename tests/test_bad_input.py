"""Every user mistake: one line on stderr naming the problem, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RAW, require_shared


def dagc(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dagc", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def assert_clean_error(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert result.stdout == ""


def write_pair(folder: Path, nodes: str, edges: str) -> Path:
    (folder / "g.nodes.csv").write_text(nodes)
    (folder / "g.edges.csv").write_text(edges)
    return folder / "g.edges.csv"


NODES = "name,type\nA,sensory\nB,interneuron\nC,motor\n"


@pytest.mark.parametrize(
    "nodes, edges, needle",
    [
        (NODES, "pre,post,weight\nA,B,x\n", "non-numeric weight"),
        (NODES, "pre,post,weight\nA,B,-2\n", "negative weight"),
        (NODES + "A,motor\n", "pre,post,weight\nA,B,1\n", "duplicate node name 'A'"),
        (NODES, "pre,post,weight\nA,Z,1\n", "unknown node 'Z'"),
        (NODES, "pre,post\nA,B\n", "missing column(s) weight"),
        (
            "name,type\nA,motor\nB,motor\n",
            "pre,post,weight\nA,B,1\n",
            "no sensory neurons",
        ),
        ("name,type\nA,wizard\n", "pre,post,weight\n", "unknown type 'wizard'"),
    ],
)
def test_bad_csv_pairs(tmp_path, nodes, edges, needle):
    path = write_pair(tmp_path, nodes, edges)
    assert_clean_error(dagc("inspect", path), needle)


def test_a_good_csv_pair_works(tmp_path):
    path = write_pair(tmp_path, NODES, "pre,post,weight\nA,B,2\nB,C,1\n")
    result = dagc("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    assert '"edges": 2' in result.stdout


def test_missing_file(tmp_path):
    assert_clean_error(dagc("inspect", tmp_path / "nope.mat"), "nope.mat", "not found")


def test_unknown_format():
    assert_clean_error(
        dagc("inspect", "/etc/hostname"), "/etc/hostname", "unknown connectome format"
    )


def test_unknown_bundled_name():
    assert_clean_error(dagc("inspect", "worm"), "unknown bundled connectome 'worm'")


def test_truncated_mat(tmp_path):
    raw = require_shared(RAW / "GMaleChem.mat").read_bytes()
    broken = tmp_path / "broken.mat"
    broken.write_bytes(raw[: len(raw) // 3])
    assert_clean_error(dagc("inspect", broken), "broken.mat")


def test_corrupt_xlsx(tmp_path):
    broken = tmp_path / "SI5.xlsx"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert_clean_error(dagc("inspect", f"{broken}#male"), "SI5.xlsx")


def test_xlsx_needs_a_sex(si5):
    assert_clean_error(dagc("inspect", si5), "#hermaphrodite")


def test_graphml(tmp_path):
    import igraph

    g = igraph.Graph(directed=True)
    g.add_vertices(3)
    g.vs["name"] = ["S", "I", "M"]
    g.vs["type"] = ["sensory", "interneuron", "motor"]
    g.add_edges([(0, 1), (1, 2)])
    g.es["weight"] = [3.0, 1.0]
    path = tmp_path / "tiny.graphml"
    g.write_graphml(str(path))
    result = dagc("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    assert '"edges": 2' in result.stdout
    (tmp_path / "bad.graphml").write_text("<graphml><oops")
    assert_clean_error(dagc("inspect", tmp_path / "bad.graphml"), "bad.graphml")


def test_compile_into_missing_directory(tmp_path):
    assert_clean_error(
        dagc("compile", "--connectome", "male", "-o", tmp_path / "no" / "net.py"),
        "output directory does not exist",
    )


def test_compile_keeps_an_old_file_on_failure(tmp_path):
    target = tmp_path / "net.py"
    target.write_text("old contents\n")
    assert_clean_error(dagc("compile", "--connectome", "worm", "-o", target), "worm")
    assert target.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == [
        "net.py"
    ]  # no temporary left behind


def test_compile_contradicting_options(tmp_path):
    assert_clean_error(
        dagc("compile", "--connectome", "male", "--seed", "3", "-o", tmp_path / "n.py"),
        "--seed",
    )


def test_compile_channels_below_one(tmp_path):
    result = dagc(
        "compile", "--connectome", "male", "--channels", "0", "-o", tmp_path / "n.py"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--channels" in result.stderr
    assert not (tmp_path / "n.py").exists()


def test_compile_unwritable_directory(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert_clean_error(
        dagc("compile", "--connectome", "male", "-o", locked / "n.py"), "not writable"
    )
