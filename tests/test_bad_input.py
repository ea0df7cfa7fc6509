"""Every user mistake: one line on stderr naming the problem, exit code 2, no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import igraph
import pytest

from dagc.compiler.errors import DagcError
from dagc.compiler.loaders import load_connectome
from dagc.compiler.pipeline import run_front_end
from dagc.compiler.signs import read_sign_table

from conftest import RAW


def write_pair(folder: Path, nodes: str, edges: str) -> Path:
    (folder / "g.nodes.csv").write_text(nodes)
    (folder / "g.edges.csv").write_text(edges)
    return folder / "g.edges.csv"


NODES = "name,type\nA,sensory\nB,interneuron\nC,motor\n"
EDGES = "pre,post,weight\n"


def graphml(folder: Path, types=("sensory", "interneuron", "motor")) -> Path:
    g = igraph.Graph(directed=True)
    g.add_vertices(3)
    g.vs["name"] = ["S", "I", "M"]
    g.vs["type"] = list(types)
    g.add_edges([(0, 1), (1, 2)])
    g.es["weight"] = [3.0, 1.0]
    path = folder / "tiny.graphml"
    g.write_graphml(str(path))
    return path


# Each case: the files to write (name -> text, or bytes), what to load, and where the error
# must point: (file, line) with line None where the problem is the file as a whole, an int for
# a line of a text file, or words for a place that has no lines.
LOADER_ERRORS = {
    "duplicate node": (
        {"g.nodes.csv": NODES + "D,motor\nA,motor\n", "g.edges.csv": EDGES},
        "g.edges.csv",
        ("g.nodes.csv", 6),
        "duplicate node name 'A' (first on line 2)",
    ),
    "unknown type": (
        {"g.nodes.csv": "name,type\nA,sensory\nB,wizard\n", "g.edges.csv": EDGES},
        "g.edges.csv",
        ("g.nodes.csv", 3),
        "node 'B' has unknown type 'wizard'",
    ),
    "empty name": (
        {"g.nodes.csv": NODES + ",motor\n", "g.edges.csv": EDGES},
        "g.nodes.csv",
        ("g.nodes.csv", 5),
        "a cell has an empty name",
    ),
    "missing node column": (
        {"g.nodes.csv": "name,kind\nA,sensory\n", "g.edges.csv": EDGES},
        "g.edges.csv",
        ("g.nodes.csv", 1),
        "missing column(s) type",
    ),
    "missing edge column": (
        {"g.nodes.csv": NODES, "g.edges.csv": "pre,post\nA,B\n"},
        "g.nodes.csv",
        ("g.edges.csv", 1),
        "missing column(s) weight",
    ),
    "non-numeric weight": (
        {"g.nodes.csv": NODES, "g.edges.csv": EDGES + "A,B,1\nB,C,x\n"},
        "g.nodes.csv",
        ("g.edges.csv", 3),
        "edge B -> C has non-numeric weight 'x'",
    ),
    "negative weight": (
        {"g.nodes.csv": NODES, "g.edges.csv": EDGES + "A,B,-2\n"},
        "g.nodes.csv",
        ("g.edges.csv", 2),
        "negative weight '-2'",
    ),
    "infinite weight": (
        {"g.nodes.csv": NODES, "g.edges.csv": EDGES + "A,B,1\nA,C,1\nB,C,inf\n"},
        "g.nodes.csv",
        ("g.edges.csv", 4),
        "non-finite weight 'inf'",
    ),
    "unknown node": (
        {"g.nodes.csv": NODES, "g.edges.csv": EDGES + "A,B,1\n\nA,Z,1\n"},
        "g.nodes.csv",
        ("g.edges.csv", 4),  # the blank line 3 counts
        "edge A -> Z names unknown node 'Z'",
    ),
    "duplicate edge": (
        {"g.nodes.csv": NODES, "g.edges.csv": EDGES + "A,B,1\nB,C,1\nA,B,2\n"},
        "g.nodes.csv",
        ("g.edges.csv", 4),
        "duplicate edge A -> B (first on line 2)",
    ),
    "multi-line quoted field": (
        {
            "g.nodes.csv": 'name,type,neurotransmitter\nA,sensory,"ACh\nGlu"\nB,x,\n',
            "g.edges.csv": EDGES,
        },
        "g.nodes.csv",
        ("g.nodes.csv", 4),  # the quoted field spans lines 2-3
        "node 'B' has unknown type 'x'",
    ),  # fmt: skip
    "not UTF-8": (
        {"g.nodes.csv": NODES.encode() + b"\xff\xfe,motor\n", "g.edges.csv": EDGES},
        "g.edges.csv",
        ("g.nodes.csv", 5),
        "not a UTF-8 text file",
    ),
    "missing twin": (
        {"g.nodes.csv": NODES},
        "g.nodes.csv",
        ("g.edges.csv", None),
        "file not found (the other half of a CSV pair needs it)",
    ),
    "not a pair": (
        {"g.csv": NODES},
        "g.csv",
        ("g.csv", None),
        "a CSV connectome is a pair",
    ),
    "unknown format": (
        {"g.txt": NODES},
        "g.txt",
        ("g.txt", None),
        "unknown connectome format",
    ),
    "missing file": ({}, "nope.mat", ("nope.mat", None), "file not found"),
    "unreadable graphml": (
        {"bad.graphml": "<graphml><oops"},
        "bad.graphml",
        ("bad.graphml", None),
        "not a readable GraphML file",
    ),
    "truncated mat": (
        {"broken.mat": b"MATLAB 5.0 MAT-file" + bytes(40)},
        "broken.mat",
        ("broken.mat", None),
        "not a readable MAT-file",
    ),
    "corrupt xlsx": (
        {"SI5.xlsx": b"PK\x03\x04 not really a zip"},
        "SI5.xlsx#male",
        ("SI5.xlsx", None),
        "not a readable .xlsx workbook",
    ),
}


def write_files(folder: Path, files: dict) -> None:
    for name, text in files.items():
        if isinstance(text, bytes):
            (folder / name).write_bytes(text)
        else:
            (folder / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    "files, spec, where, message", LOADER_ERRORS.values(), ids=LOADER_ERRORS
)
def test_loader_errors_name_the_file_and_line(tmp_path, files, spec, where, message):
    write_files(tmp_path, files)
    with pytest.raises(DagcError) as info:
        load_connectome(tmp_path / spec)
    file, line = where
    assert info.value.path == tmp_path / file
    assert info.value.line == line
    prefix = f"{tmp_path / file}:{line}: " if line else f"{tmp_path / file}: "
    assert str(info.value).startswith(prefix), str(info.value)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_graphml_errors_say_which_node(tmp_path):
    path = graphml(tmp_path, types=("sensory", "wizard", "motor"))
    with pytest.raises(DagcError) as info:
        load_connectome(path)
    assert str(info.value) == f"{path} (node 1): node 'I' has unknown type 'wizard'"


def test_no_sensory_neurons_names_the_nodes_file_with_its_path(tmp_path):
    """Found by a user: this message used to show a bare file name."""
    edges = write_pair(tmp_path, "name,type\nA,motor\nB,motor\n", EDGES + "A,B,1\n")
    with pytest.raises(DagcError) as info:
        run_front_end(str(edges))
    assert str(info.value).startswith(f"{tmp_path / 'g.nodes.csv'}: no sensory neurons")


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("transmitter,sign\nGABA,-1\nGlu,2\n", 3, "sign of 'Glu' must be +1 or -1"),
        ("transmitter,sign\n\nGlu\n", 3, "sign of 'Glu' must be +1 or -1, not ''"),
        ("name,sign\nGlu,-1\n", 1, "expected the columns transmitter,sign"),
    ],
)
def test_sign_table_errors_name_the_line(tmp_path, text, line, message):
    path = tmp_path / "signs.csv"
    path.write_text(text)
    with pytest.raises(DagcError) as info:
        read_sign_table(path)
    assert str(info.value).startswith(f"{path}:{line}: {message}")


def test_duplicate_node_through_the_cli_is_one_line(tmp_path, dagc, clean_error):
    write_pair(tmp_path, NODES + "AVAL,motor\nAVAL,motor\n", EDGES)
    line = clean_error(dagc("inspect", tmp_path / "g.edges.csv"))
    assert line == (
        f"dagc: error: {tmp_path / 'g.nodes.csv'}:6: duplicate node name 'AVAL' "
        "(first on line 5)"
    )


def test_bad_weight_through_the_installed_entry_point(
    tmp_path, dagc_process, clean_error
):
    """The one case run as a real process: `python -m dagc`, exit status 2, no traceback."""
    write_pair(tmp_path, NODES, EDGES + "A,B,1\nB,C,x\n")
    clean_error(
        dagc_process("inspect", tmp_path / "g.nodes.csv"),
        f"{tmp_path / 'g.edges.csv'}:3: edge B -> C has non-numeric weight 'x'",
    )


def test_a_good_csv_pair_works(tmp_path, dagc):
    path = write_pair(tmp_path, NODES, "pre,post,weight\nA,B,2\nB,C,1\n")
    result = dagc("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    assert '"edges": 2' in result.stdout


def test_unknown_bundled_name(dagc, clean_error):
    clean_error(dagc("inspect", "worm"), "unknown bundled connectome 'worm'")


def test_truncated_mat(tmp_path, shared, dagc, clean_error):
    raw = shared(RAW / "GMaleChem.mat").read_bytes()
    broken = tmp_path / "broken.mat"
    broken.write_bytes(raw[: len(raw) // 3])
    clean_error(dagc("inspect", broken), f"{broken}: not a readable MAT-file")


def test_xlsx_needs_a_sex(si5, dagc, clean_error):
    clean_error(dagc("inspect", si5), "#hermaphrodite")


def test_graphml(tmp_path, dagc):
    result = dagc("inspect", graphml(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert '"edges": 2' in result.stdout


def test_compile_into_missing_directory(tmp_path, dagc, clean_error):
    clean_error(
        dagc("compile", "--connectome", "male", "-o", tmp_path / "no" / "net.py"),
        "output directory does not exist",
    )


def test_compile_keeps_an_old_file_on_failure(tmp_path, dagc, clean_error):
    target = tmp_path / "net.py"
    target.write_text("old contents\n")
    clean_error(dagc("compile", "--connectome", "worm", "-o", target), "worm")
    assert target.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == [
        "net.py"
    ]  # no temporary left behind


def test_compile_contradicting_options(tmp_path, dagc, clean_error):
    clean_error(
        dagc("compile", "--connectome", "male", "--seed", "3", "-o", tmp_path / "n.py"),
        "--seed",
    )


def test_compile_channels_below_one(tmp_path, dagc, clean_error):
    result = dagc(
        "compile", "--connectome", "male", "--channels", "0", "-o", tmp_path / "n.py"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--channels" in result.stderr
    assert not (tmp_path / "n.py").exists()


def test_compile_unwritable_directory(tmp_path, dagc, clean_error):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    clean_error(
        dagc("compile", "--connectome", "male", "-o", locked / "n.py"), "not writable"
    )


def test_si5_errors_name_the_sheet_and_row(tmp_path):
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "male chemical"
    # Row 3 names the postsynaptic cells from column D; column C the presynaptic ones from row 4.
    sheet["D3"], sheet["E3"] = "ASHL", "AVAL"
    sheet["C4"], sheet["E4"] = "ASHL", 2
    sheet["C5"], sheet["D5"] = "AVAL", -1
    path = tmp_path / "SI5.xlsx"
    book.save(path)
    with pytest.raises(DagcError) as info:
        load_connectome(f"{path}#male")
    assert str(info.value) == (
        f"{path} (sheet 'male chemical', row 5): edge AVAL -> ASHL has negative weight -1"
    )


@pytest.mark.parametrize(
    "second, message",
    [
        ("ACh", "neuron 'ADAL' appears twice (first on row 3)"),
        ("wizardine", "unrecognised neurotransmitter entry 'wizardine'"),
    ],
)
def test_atlas_errors_name_the_row(tmp_path, second, message):
    import openpyxl

    from dagc.compiler.loaders.neurotransmitters import read_neurotransmitters

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Wang et al. 2024, supplementary table"])
    sheet.append(["Class", "Neuron", "Neurotransmitter(s)"])
    sheet.append(["ADA", "ADAL", "Glu"])
    sheet.append(["ADA", "ADAL" if second == "ACh" else "ADAR", second])
    path = tmp_path / "supp2.xlsx"
    book.save(path)
    with pytest.raises(DagcError) as info:
        read_neurotransmitters(path, tmp_path / "supp3.xlsx")
    assert str(info.value) == f"{path} (row 4): {message}"
