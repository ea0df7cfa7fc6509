"""The WormWiring MATLAB loader: the genuine GMaleChem.mat, other layouts, and broken files."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from dagc.compiler.bundled import BUNDLED_DIR
from dagc.compiler.connectome import Connectome
from dagc.compiler.errors import DagcError
from dagc.compiler.loaders.matlab import connectome_name, load_matlab

from conftest import RAW, SI5

GENUINE = RAW / "GMaleChem.mat"
GENUINE_SHA256 = (
    "91c4352eb65b7ed477aa00c97ca38e54c9c39e25db77c12ca76d82e27f40b629"  # PROVENANCE.md
)
GROUP_LISTS = (
    "SensoryNeurons",
    "InterNeurons",
    "MotorNeurons",
    "Pharynx",
    "SexSpecificCells",
)


@pytest.fixture(scope="module")
def genuine(shared) -> Connectome:
    return load_matlab(shared(GENUINE))


@pytest.fixture(scope="module")
def genuine_variables(shared) -> dict[str, object]:
    import matio

    return matio.load_from_mat(shared(GENUINE))


@pytest.fixture
def without_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the bundled SI 4 table is not built, so only the MATLAB groups type cells."""

    def missing_table() -> dict[str, str]:
        raise FileNotFoundError("cell_types.csv")

    monkeypatch.setattr("dagc.compiler.bundled.bundled_cell_types", missing_table)


def edge_weights(connectome: Connectome) -> dict[tuple[str, str], float]:
    return {(edge.pre, edge.post): float(edge.weight) for edge in connectome.edges}


def cell_array(names: list[str]) -> np.ndarray:
    """A 1xN object array, which scipy.io.savemat writes as a MATLAB cell array."""
    array = np.empty((1, len(names)), dtype=object)
    array[0, :] = names
    return array


def group_lists(variables: dict[str, object]) -> dict[str, np.ndarray]:
    """The genuine file's group and subgroup name lists, as cell arrays."""
    lists = {}
    for name, value in variables.items():
        if name.split("_", 1)[0] in GROUP_LISTS + ("IsolatedNeurons",):
            lists[name] = cell_array([str(item.ravel()[0]) for item in value.ravel()])
    return lists


# --- the genuine file ------------------------------------------------------------------------


def test_genuine_file_loads(genuine: Connectome) -> None:
    assert genuine.name == "male"
    assert genuine.source == "GMaleChem.mat"
    assert genuine.sha256 == GENUINE_SHA256
    assert len(genuine.cells) == 575
    assert len(genuine.edges) == 5306
    assert genuine.meta["layout"] == "digraph"
    assert all(cell.name == cell.name.strip() for cell in genuine.cells)


def test_genuine_edges_equal_si5_male_chemical(genuine: Connectome, shared) -> None:
    from dagc.compiler.loaders.cook import read_si5_chemical

    names, edges = read_si5_chemical(shared(SI5), "male")
    assert {cell.name for cell in genuine.cells} == set(names)
    expected = {(pre, post): float(value) for pre, post, value in edges}
    assert len(expected) == len(edges) == 5306
    assert edge_weights(genuine) == expected


def test_genuine_cell_types(genuine: Connectome) -> None:
    types = {cell.name: cell.type for cell in genuine.cells}
    assert types["ASHL"] == types["ASHR"] == "sensory"
    assert types["dBWML1"] == types["vBWMR4"] == "muscle"
    assert types["RIPL"] == "interneuron"
    assert types["I2L"] == "pharyngeal"
    if (BUNDLED_DIR / "cell_types.csv").exists():
        # SI 4 types CANL/CANR as neurons ("other"); the MATLAB groups call them end organs.
        assert types["CANL"] == types["CANR"] == "other"


def test_groups_type_cells_when_the_table_is_missing(
    without_table: None, shared
) -> None:
    types = {cell.name: cell.type for cell in load_matlab(shared(GENUINE)).cells}
    assert types["ASHL"] == "sensory"
    assert (
        types["RIPL"] == "interneuron"
    )  # group InterNeurons although listed among pharynx
    assert types["DA01"] == "motor"
    assert types["I2L"] == "pharyngeal"
    assert types["CEMDL"] == "sex-specific"  # subgroup SexSpecificCells_Head
    assert types["dBWML1"] == "muscle"  # subgroup SexSpecificCells_BodyWallMuscles
    assert types["CANL"] == "end-organ"  # subgroup SexSpecificCells_OtherEndOrgans
    assert types["gonad"] == "unknown"  # subgroup SexSpecificCells_Other


# --- adjacency + names layout ----------------------------------------------------------------


def test_adjacency_only_v5_file_matches_the_digraph(
    genuine: Connectome,
    genuine_variables: dict[str, object],
    tmp_path: Path,
    without_table: None,
) -> None:
    by_digraph = load_matlab(GENUINE)  # typed by groups too (the table is patched away)
    path = tmp_path / "GMaleChem.mat"
    variables = {
        "AMaleChem": scipy.sparse.csc_matrix(genuine_variables["AMaleChem"]),
        "Names": cell_array([cell.name for cell in genuine.cells]),
        **group_lists(genuine_variables),
    }
    scipy.io.savemat(path, variables)
    loaded = load_matlab(path)
    assert loaded.name == "male"
    assert loaded.meta == {"layout": "adjacency", "variable": "AMaleChem"}
    assert [cell.name for cell in loaded.cells] == [cell.name for cell in genuine.cells]
    assert edge_weights(loaded) == edge_weights(genuine)
    # Group-list membership types cells exactly as the digraph's Group/Subgroup do.
    assert loaded.cells == by_digraph.cells


def test_dense_matrix_with_padded_names(tmp_path: Path, without_table: None) -> None:
    path = tmp_path / "toy.mat"
    matrix = np.array([[0, 2, 0], [0, 0, 1.5], [4, 0, 3]])
    names = [
        " ASHL",
        "AIBL ",
        "dBWML1",
    ]  # savemat pads char rows; cells may carry spaces
    scipy.io.savemat(
        path, {"A": matrix, "Names": names, "SensoryNeurons": cell_array(["ASHL"])}
    )
    loaded = load_matlab(path)
    assert loaded.name == "toy"
    assert [(edge.pre, edge.post, edge.weight) for edge in loaded.edges] == [
        ("ASHL", "AIBL", 2),
        ("AIBL", "dBWML1", 1.5),
        ("dBWML1", "ASHL", 4),
        ("dBWML1", "dBWML1", 3),  # self-loops are kept
    ]
    assert [cell.type for cell in loaded.cells] == ["sensory", "unknown", "unknown"]


def test_group_lists_alone_do_not_give_the_matrix_order(
    genuine_variables: dict[str, object], tmp_path: Path
) -> None:
    # Concatenated, the five group lists have exactly 575 names, but not in AMaleChem's row
    # order: guessing from them would mislabel every synapse, so the loader refuses.
    path = tmp_path / "GMaleChem.mat"
    variables = {
        "AMaleChem": genuine_variables["AMaleChem"],
        **group_lists(genuine_variables),
    }
    scipy.io.savemat(path, variables)
    with pytest.raises(DagcError, match="matrix order"):
        load_matlab(path)


def test_several_matrices_need_one_named_like_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pair.mat"
    scipy.io.savemat(path, {"AChem": np.eye(2), "AGap": np.eye(2), "Names": ["a", "b"]})
    with pytest.raises(DagcError, match="several adjacency matrices"):
        load_matlab(path)


@pytest.mark.parametrize(
    "stem, expected",
    [
        ("GMaleChem", "male"),
        ("GHermChem", "hermaphrodite"),
        ("GFooChem", "GFooChem"),
        ("x", "x"),
    ],
)
def test_connectome_name(stem: str, expected: str) -> None:
    assert connectome_name(Path(f"/data/{stem}.mat")) == expected


def test_load_connectome_dispatches_mat_files(tmp_path: Path) -> None:
    from dagc.compiler.loaders import load_connectome

    path = tmp_path / "GHermChem.mat"
    scipy.io.savemat(
        path, {"AHermChem": np.array([[0, 1], [0, 0]]), "Names": ["AVAL", "AVAR"]}
    )
    loaded = load_connectome(path)
    assert loaded.name == "hermaphrodite"
    assert [(edge.pre, edge.post, edge.weight) for edge in loaded.edges] == [
        ("AVAL", "AVAR", 1)
    ]


# --- MAT v7.3 (HDF5) -------------------------------------------------------------------------


def write_v73(
    path: Path, matrix: scipy.sparse.spmatrix, name_lists: dict[str, list[str]]
) -> None:
    """Write a sparse matrix + 1xN cells of names the way MATLAB's save -v7.3 lays them out.

    matio reads MAT v7.3 through h5py, so this layout is supported: HDF5 after a 512-byte user
    block whose first 128 bytes are the MAT header (text, subsystem offset, version 0x0200, 'IM').
    """
    csc = scipy.sparse.csc_matrix(matrix)
    with h5py.File(path, "w", userblock_size=512) as handle:
        sparse = handle.create_group("AMaleChem")
        sparse.attrs["MATLAB_class"] = np.bytes_("double")
        sparse.attrs["MATLAB_sparse"] = np.uint64(csc.shape[0])
        sparse["data"] = csc.data.astype(np.float64)
        sparse["ir"] = csc.indices.astype(np.uint64)
        sparse["jc"] = csc.indptr.astype(np.uint64)
        refs = handle.create_group("#refs#")
        for variable, names in name_lists.items():
            # MATLAB stores arrays transposed, so a 1xN cell is an HDF5 (N, 1) array of refs.
            cell = handle.create_dataset(
                variable, (len(names), 1), dtype=h5py.ref_dtype
            )
            cell.attrs["MATLAB_class"] = np.bytes_("cell")
            for index, name in enumerate(names):
                chars = refs.create_dataset(
                    f"{variable}_{index}", data=np.array([[ord(c)] for c in name], "u2")
                )
                chars.attrs["MATLAB_class"] = np.bytes_("char")
                chars.attrs["MATLAB_int_decode"] = np.int32(2)  # UTF-16 code units
                cell[index, 0] = chars.ref
    header = b"MATLAB 7.3 MAT-file, written by dagc's tests with h5py".ljust(116, b" ")
    with path.open("r+b") as handle:
        handle.write(header + bytes(8) + b"\x00\x02IM")


def test_v73_hdf5_adjacency_file(
    genuine: Connectome, genuine_variables: dict[str, object], tmp_path: Path
) -> None:
    path = tmp_path / "GMaleChem.mat"
    name_lists = {
        name: [str(item) for item in value.ravel()]
        for name, value in group_lists(genuine_variables).items()
    }
    name_lists["Names"] = [cell.name for cell in genuine.cells]
    write_v73(path, genuine_variables["AMaleChem"], name_lists)
    loaded = load_matlab(path)
    assert loaded.name == "male"
    assert loaded.meta == {"layout": "adjacency", "variable": "AMaleChem"}
    assert edge_weights(loaded) == edge_weights(genuine)
    assert (
        loaded.cells == genuine.cells
    )  # same types: table first, then the group lists


def test_bare_hdf5_without_mat_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.mat"
    with h5py.File(path, "w") as handle:
        handle["A"] = np.eye(3)
    with pytest.raises(DagcError, match="MAT-file header") as caught:
        load_matlab(path)
    assert "plain.mat" in str(caught.value)


# --- broken files ----------------------------------------------------------------------------


def assert_dagc_error(path: Path) -> DagcError:
    with pytest.raises(DagcError) as caught:
        load_matlab(path)
    assert type(caught.value) is DagcError
    assert path.name in str(caught.value)
    return caught.value


def test_truncated_file(tmp_path: Path, shared) -> None:
    path = tmp_path / "GMaleChem_cut.mat"
    path.write_bytes(shared(GENUINE).read_bytes()[:1000])
    assert "truncated or corrupt" in str(assert_dagc_error(path))


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.mat"
    path.write_bytes(random.Random(7).randbytes(4096))
    assert_dagc_error(path)


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file", b"\x00" * 200])
def test_empty_and_header_only_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "stub.mat"
    path.write_bytes(content)
    assert_dagc_error(path)


def test_mat_file_without_a_connectome(tmp_path: Path) -> None:
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"x": 1.0, "Names": ["a", "b"], "Alpha": np.ones((2, 3))})
    assert "no connectome found" in str(assert_dagc_error(path))


def test_missing_file(tmp_path: Path) -> None:
    assert "file not found" in str(assert_dagc_error(tmp_path / "absent.mat"))


def test_every_truncation_and_some_corruptions_give_dagc_error(
    tmp_path: Path, shared, genuine: Connectome
) -> None:
    """Every truncated copy fails with a DagcError naming the file; a corrupted copy either
    fails the same way or, if the damage missed the data, loads the genuine connectome."""
    data = shared(GENUINE).read_bytes()
    path = tmp_path / "damaged.mat"

    def outcome(content: bytes) -> Connectome | DagcError:
        path.write_bytes(content)
        try:
            return load_matlab(path)
        except DagcError as error:
            return error

    truncated = [outcome(data[:cut]) for cut in range(0, len(data), 997)]
    assert len(truncated) == 42
    for result in truncated:
        assert isinstance(result, DagcError)
        assert str(result).startswith(f"{path}: ")
    rng = random.Random(2024)
    for _ in range(40):
        copy = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            position = (
                rng.randrange(len(copy)) if rng.random() < 0.7 else rng.randrange(300)
            )
            copy[position] ^= 0xFF
        result = outcome(bytes(copy))
        if isinstance(result, DagcError):
            assert str(result).startswith(f"{path}: ")
        else:
            assert (result.cells, result.edges) == (genuine.cells, genuine.edges)


# Uncompressed MAT v5 (scipy.io.savemat's default) goes straight to matio's Cython reader,
# which trusts stored types and sizes. Fuzzing found damage that crashed the Python process
# (bus error / segfault; the unknown-type case below does) or made it loop for 20 s over a
# billion cells (the dimensions case). These tests pin the checks that make them DagcErrors.


def small_v5_file(path: Path) -> bytes:
    matrix = scipy.sparse.csc_matrix(np.array([[0, 2, 0], [0, 0, 1], [4, 0, 0]]))
    scipy.io.savemat(path, {"A": matrix, "Names": cell_array(["AVAL", "AVAR", "ASHL"])})
    assert load_matlab(path).edges  # the undamaged file loads
    return path.read_bytes()


def damage(path: Path, data: bytes, pattern: bytes, replacement: bytes) -> None:
    at = data.index(pattern, 128)
    path.write_bytes(data[:at] + replacement + data[at + len(replacement) :])


def test_v5_element_of_unknown_type(tmp_path: Path) -> None:
    path = tmp_path / "broken.mat"
    data = small_v5_file(path)
    ir_tag = struct.pack("<II", 5, 3 * 4)  # int32 row indices of the 3 non-zeros
    damage(path, data, ir_tag, struct.pack("<I", 0x3A05))
    assert "unknown type" in str(assert_dagc_error(path))


def test_v5_element_longer_than_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.mat"
    data = small_v5_file(path)
    ir_tag = struct.pack("<II", 5, 3 * 4)
    damage(path, data, ir_tag, struct.pack("<II", 5, 0x3A0000))
    assert "past its end" in str(assert_dagc_error(path))


def test_v5_cell_with_absurd_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "broken.mat"
    data = small_v5_file(path)
    names_dims = struct.pack("<IIii", 5, 8, 1, 3)  # the 1x3 cell of names
    damage(path, data, names_dims, struct.pack("<IIii", 5, 8, 1, 1 << 30))
    assert "claims" in str(assert_dagc_error(path))


def test_v5_sparse_index_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "broken.mat"
    data = small_v5_file(path)
    ir_tag = struct.pack("<II", 5, 3 * 4)
    at = data.index(ir_tag, 128) + len(ir_tag)
    path.write_bytes(data[:at] + struct.pack("<i", 999) + data[at + 4 :])
    assert "corrupt sparse matrix 'A'" in str(assert_dagc_error(path))
