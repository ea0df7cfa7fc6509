"""WormWiring "MATLAB-ready" connectomes (.mat, MAT v4/v5 and v7.3/HDF5).

Two layouts are read:

- The published one (Premaratne's `GMaleChem.mat`, `GHermChem.mat`): a MATLAB `digraph` object
  whose Nodes table has Name / Group / Subgroup and whose Edges have Weight. `scipy.io` cannot
  decode MATLAB objects, so the file is read with `matio` (PyPI `mat-io`).
- Older or hand-made exports: a square adjacency matrix (variable name starting with 'A', rows =
  presynaptic, sparse or dense) plus a cell array naming every row in matrix order (`Names`...).

Cell types come from dagc's table derived from Cook 2019 SI 4 first, because the MATLAB groups
mix neurons with muscles and end organs (NOTES.md); the groups only type cells the table lacks.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..connectome import (
    Cell,
    Connectome,
    build_connectome,
    normalize_type,
    sha256_of,
)
from ..errors import DagcError

# MATLAB group or subgroup label -> dagc cell type. Subgroups are looked up before their group,
# so e.g. SexSpecificCells_Muscles wins over SexSpecificCells (which alone means nothing).
_GROUP_TYPES = {
    "SensoryNeurons": "sensory",
    "InterNeurons": "interneuron",
    "MotorNeurons": "motor",
    "Pharynx": "pharyngeal",
    "SexSpecificCells_SensoryNeurons": "sex-specific",
    "SexSpecificCells_InterNeurons": "sex-specific",
    "SexSpecificCells_Head": "sex-specific",  # CEM and MCM neurons
    "SexSpecificCells_Muscles": "muscle",
    "SexSpecificCells_BodyWallMuscles": "muscle",
    "BodyWallMuscles": "muscle",
    "SexSpecificCells_OtherEndOrgans": "end-organ",
    "OtherEndOrgans": "end-organ",
}
# Top-level name lists of the WormWiring files. They (and their `X_Y` subgroup lists) are
# never taken as the matrix order: in GMaleChem.mat the matrix order differs from them.
_GROUP_LISTS = {
    "SensoryNeurons",
    "InterNeurons",
    "MotorNeurons",
    "Pharynx",
    "SexSpecificCells",
    "BodyWallMuscles",
    "OtherEndOrgans",
    "IsolatedNeurons",
}
# Variables that, lower-cased, announce "the names of the matrix rows, in order".
_NAME_VARIABLES = ("names", "nodenames", "cellnames", "nodes", "labels")
# The middle of G<Sex>Chem file stems.
_SEX_LABELS = {
    "male": "male",
    "herm": "hermaphrodite",
    "hermaphrodite": "hermaphrodite",
}


class _Graph(NamedTuple):
    """What a layout yields before typing: node order, group labels per node, raw edges."""

    names: list[str]
    labels: dict[str, list[str]]  # cell -> MATLAB group labels, most specific first
    edges: list[tuple[str, str, object]]
    layout: str
    variable: str


def load_matlab(path: Path) -> Connectome:
    """Load a WormWiring-style .mat connectome; any unreadable or unusable file is a DagcError."""
    path = Path(path)
    variables = _read_variables(path)
    try:
        graph = _interpret(variables, path)
    except DagcError:
        raise
    except Exception as exc:  # odd content (a struct where a table was expected, ...)
        raise DagcError(
            f"unexpected MAT-file content ({_describe(exc)})", path
        ) from None
    cells = _typed_cells(graph.names, graph.labels)
    connectome = build_connectome(
        connectome_name(path), path.name, sha256_of(path), cells, graph.edges, path
    )
    return replace(
        connectome, meta={"layout": graph.layout, "variable": graph.variable}
    )


def connectome_name(path: Path) -> str:
    """'GMaleChem' -> 'male', 'GHermChem' -> 'hermaphrodite', anything else -> the file stem."""
    match = re.fullmatch(r"G(.+)Chem", path.stem, flags=re.IGNORECASE)
    label = _SEX_LABELS.get(match.group(1).lower()) if match else None
    return label or path.stem


# --- reading the file ------------------------------------------------------------------------


def _read_variables(path: Path) -> dict[str, object]:
    if not path.exists():
        raise DagcError("file not found", path)
    if not path.is_file():
        raise DagcError("not a file", path)
    # Decoders raise zlib.error, OSError, TypeError, MatReadError, ...: all mean "unreadable".
    try:
        import matio

        _check_v5_structure(path.read_bytes())
        # spmatrix=False: matio would otherwise turn each sparse matrix into COO at once, and
        # scipy's C++ conversion of corrupt index arrays crashes the process (segfault).
        variables = matio.load_from_mat(path, spmatrix=False)
    except Exception as exc:
        raise DagcError(_unreadable_message(path, exc), path) from None
    if not isinstance(variables, dict):
        raise DagcError("not a readable MAT-file (no variables decoded)", path)
    variables = {
        name: value for name, value in variables.items() if not name.startswith("__")
    }
    for name, value in variables.items():
        _check_sparse(value, name, path)
    return variables


# MAT v5 data types (8, 10 and 11 are reserved); the reader indexes tables with them unchecked.
_MI_TYPES = {1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18}
_MI_MATRIX = 14  # data types whose payload is itself a sequence of data elements
_MI_COMPRESSED = 15
_MX_CLASSES = range(1, 18)  # mxCELL_CLASS (1) .. mxOPAQUE_CLASS (17)
# MAT v5 array classes whose element count is bounded by their byte count: cell (each element
# is a tagged matrix), char and the numeric classes (at least one byte per element).
_BOUNDED_CLASSES = {1, 4, *range(6, 16)}


def _check_v5_structure(data: bytes) -> None:
    """Check the MAT v5 element tree before matio decodes it; ValueError if it is corrupt.

    The Cython v5 reader (matio's, like scipy's) trusts the stored sizes: a corrupt byte count
    makes it read past its buffer and crash the whole process (bus error / segfault), and a
    corrupt dimension makes it allocate and loop for a huge array. Compressed elements are
    inflated in full here, so zlib's checksum also rejects any corruption inside them.
    Other versions (v4, v7.3/HDF5) are left to their own readers.
    """
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
        return
    order = "<" if data[126:128] == b"IM" else ">"
    if struct.unpack_from(order + "H", data, 124)[0] != 0x0100:
        return  # not v5 (0x0200 is v7.3)
    _check_elements(data, 128, len(data), order, inflated=False)


def _check_elements(
    data: bytes, start: int, end: int, order: str, inflated: bool
) -> None:
    position = start
    while position < end:
        kind, size, body, position = _element_at(data, position, end, order)
        if kind == _MI_MATRIX:
            _check_matrix(data, body, body + size, order, inflated)
        elif kind == _MI_COMPRESSED and not inflated:
            payload = zlib.decompress(data[body : body + size])
            _check_elements(payload, 0, len(payload), order, inflated=True)


def _element_at(
    data: bytes, position: int, end: int, order: str
) -> tuple[int, int, int, int]:
    """(type, byte count, data offset, next element's offset) of the element at `position`."""
    if end - position < 8:
        raise ValueError(f"data element at byte {position} is cut short")
    first, second = struct.unpack_from(order + "II", data, position)
    kind = first & 0xFFFF
    if kind not in _MI_TYPES:
        raise ValueError(f"data element at byte {position} has unknown type {kind}")
    if (
        first >> 16
    ):  # small element: 2-byte count, 2-byte type, data in the tag's last 4 bytes
        if first >> 16 > 4:
            raise ValueError(
                f"small data element at byte {position} claims {first >> 16} bytes"
            )
        return kind, first >> 16, position + 4, position + 8
    body = position + 8
    if second > end - body:
        raise ValueError(
            f"data element at byte {position} runs {second} bytes past its end"
        )
    # Elements are padded to 8 bytes, except compressed ones.
    padding = 0 if first == _MI_COMPRESSED else -second % 8
    return first, second, body, min(body + second + padding, end)


def _check_matrix(
    data: bytes, start: int, end: int, order: str, inflated: bool
) -> None:
    """Sub-elements fit, and a cell/char/numeric array has no more elements than bytes."""
    _check_elements(data, start, end, order, inflated)
    if start == end:
        return  # MATLAB writes an empty cell slot as an empty matrix element
    _, flags_size, flags_at, dims_position = _element_at(data, start, end, order)
    if flags_size < 4:
        raise ValueError(f"array at byte {start} has malformed flags")
    matrix_class = struct.unpack_from(order + "I", data, flags_at)[0] & 0xFF
    if matrix_class not in _MX_CLASSES:
        raise ValueError(f"array at byte {start} has unknown class {matrix_class}")
    if matrix_class not in _BOUNDED_CLASSES:
        return  # struct, object, sparse, opaque...: their sizes are not bounded this way
    _, dims_size, dims_at, _ = _element_at(data, dims_position, end, order)
    dims = struct.unpack_from(f"{order}{dims_size // 4}i", data, dims_at)
    count = int(
        np.prod(dims, dtype=np.float64)
    )  # float: a corrupt product must not wrap
    if min(dims, default=0) < 0 or count > end - start:
        raise ValueError(
            f"array at byte {start} claims {count} elements in {end - start} bytes"
        )


def _check_sparse(value: object, variable: str, path: Path) -> None:
    """Validate a sparse matrix's index arrays before anything converts or indexes it."""
    check_format = getattr(
        value, "check_format", None
    )  # scipy's compressed (CSC/CSR) arrays
    if check_format is None:
        return
    try:
        check_format(full_check=True)
    except (
        Exception
    ) as exc:  # ValueError / TypeError on out-of-range or unsorted indices
        raise DagcError(
            f"corrupt sparse matrix {variable!r} ({_describe(exc)})", path
        ) from None


def _unreadable_message(path: Path, exc: Exception) -> str:
    if _is_bare_hdf5(path):
        # MATLAB's v7.3 files are HDF5 after a 512-byte user block holding the MAT header;
        # a plain h5py file lacks that header, so it is not a MAT-file.
        return (
            "an HDF5 file without the MAT-file header; save it from MATLAB with "
            "save(..., '-v7.3') or write it with matio.save_to_mat"
        )
    return f"not a readable MAT-file, truncated or corrupt? ({_describe(exc)})"


def _is_bare_hdf5(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _describe(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0]}" if lines else exc.__class__.__name__


def _interpret(variables: dict[str, object], path: Path) -> _Graph:
    digraphs = {name: value for name, value in variables.items() if _is_digraph(value)}
    if digraphs:
        name = _pick(digraphs, path.stem, "digraph objects", path)
        return _read_digraph(digraphs[name], name, path)
    matrices = {
        name: value
        for name, value in variables.items()
        if name.startswith("A") and _is_square_matrix(value)
    }
    if not matrices:
        raise DagcError(
            "no connectome found: expected a MATLAB digraph object or a square adjacency "
            "matrix whose variable name starts with 'A' (e.g. AMaleChem)",
            path,
        )
    name = _pick(matrices, "A" + path.stem[1:], "adjacency matrices", path)
    return _read_adjacency(variables, matrices[name], name, path)


def _pick(candidates: dict[str, object], preferred: str, what: str, path: Path) -> str:
    """The only candidate, else the one named like the file (GMaleChem / AMaleChem)."""
    if len(candidates) == 1:
        return next(iter(candidates))
    if preferred in candidates:
        return preferred
    raise DagcError(
        f"several {what} ({', '.join(sorted(candidates))}); cannot tell which", path
    )


# --- layout 1: the digraph object ------------------------------------------------------------


def _is_digraph(value: object) -> bool:
    return getattr(value, "classname", None) == "digraph"


def _read_digraph(digraph: object, variable: str, path: Path) -> _Graph:
    properties = getattr(digraph, "properties", None)
    if not isinstance(properties, dict):
        raise DagcError(f"digraph {variable!r} could not be decoded", path)
    nodes = properties.get("NodeProperties")
    if not hasattr(nodes, "columns") or "Name" not in nodes.columns:
        raise DagcError(f"digraph {variable!r} has no node names (Nodes.Name)", path)
    names = [
        _required_text(value, f"a node name of {variable!r}", path)
        for value in nodes["Name"]
    ]
    labels = {
        name: [
            label
            for label in (_row_text(nodes, "Subgroup", i), _row_text(nodes, "Group", i))
            if label
        ]
        for i, name in enumerate(names)
    }
    sources, targets = _digraph_endpoints(
        properties.get("Underlying"), len(names), variable, path
    )
    weights = _digraph_weights(
        properties.get("EdgeProperties"), len(targets), variable, path
    )
    edges = [
        (names[source], names[target], weight)
        for source, target, weight in zip(sources, targets, weights)
    ]
    return _Graph(names, labels, edges, "digraph", variable)


def _row_text(table: object, column: str, row: int) -> str:
    if column not in table.columns:
        return ""
    return _text(table[column].iloc[row]) or ""


def _digraph_endpoints(
    underlying: object, node_count: int, variable: str, path: Path
) -> tuple[list[int], list[int]]:
    """(source, target) node indices of every edge, in the digraph's edge order.

    MATLAB keeps a digraph as compressed rows: Jc[i]:Jc[i+1] slices Ir, the 0-based targets of
    source node i; the Edges table follows that order (checked against AMaleChem).
    """
    properties = getattr(underlying, "properties", None)
    if (
        not isinstance(properties, dict)
        or "Ir" not in properties
        or "Jc" not in properties
    ):
        raise DagcError(f"digraph {variable!r} has no decodable edge list", path)
    targets = np.asarray(properties["Ir"]).ravel().astype(np.int64)
    starts = np.asarray(properties["Jc"]).ravel().astype(np.int64)
    counts = np.diff(starts)
    if (
        starts.size != node_count + 1
        or starts[0] != 0
        or starts[-1] != targets.size
        or (counts < 0).any()
        or (targets.size and (targets.min() < 0 or targets.max() >= node_count))
    ):
        raise DagcError(f"digraph {variable!r} has an inconsistent edge list", path)
    sources = np.repeat(np.arange(node_count), counts)
    return sources.tolist(), targets.tolist()


def _digraph_weights(
    edge_table: object, edge_count: int, variable: str, path: Path
) -> list:
    if not hasattr(edge_table, "columns") or "Weight" not in edge_table.columns:
        return [1] * edge_count  # an unweighted digraph: every edge counts once
    weights = edge_table["Weight"].tolist()
    if len(weights) != edge_count:
        raise DagcError(
            f"digraph {variable!r} has {len(weights)} weights for {edge_count} edges",
            path,
        )
    return weights


# --- layout 2: adjacency matrix + names ------------------------------------------------------


def _is_square_matrix(value: object) -> bool:
    import scipy.sparse

    if scipy.sparse.issparse(value):
        shape = value.shape
    elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        shape = value.shape
    else:
        return False
    # 1x1 is excluded: MATLAB scalars are 1x1 matrices, and a one-cell connectome means nothing.
    return len(shape) == 2 and shape[0] == shape[1] and shape[0] > 1


def _read_adjacency(
    variables: dict[str, object], matrix: object, variable: str, path: Path
) -> _Graph:
    lists = {name: _text_list(value) for name, value in variables.items()}
    lists = {name: texts for name, texts in lists.items() if texts is not None}
    names = _node_order(lists, matrix.shape[0], variable, path)
    return _Graph(
        names,
        _labels_from_lists(lists),
        _matrix_edges(matrix, names),
        "adjacency",
        variable,
    )


def _node_order(
    lists: dict[str, list[str]], size: int, variable: str, path: Path
) -> list[str]:
    """The name of each matrix row: a name list of the right length, never a guess.

    The group lists are not used even when their concatenation has the right length: in
    GMaleChem.mat it does (575) and yet the matrix order differs, so it would silently
    mislabel every synapse.
    """
    full = {
        name: texts
        for name, texts in lists.items()
        if len(texts) == size and len(set(texts)) == size and all(texts)
    }
    announced = [name for name in full if name.lower() in _NAME_VARIABLES]
    if len(announced) == 1:
        return full[announced[0]]
    unannounced = [name for name in full if not _is_group_list(name)]
    if len(announced) > 1 or len(unannounced) > 1:
        candidates = announced if len(announced) > 1 else unannounced
        raise DagcError(
            f"several name lists fit the {size} rows of {variable!r} "
            f"({', '.join(sorted(candidates))}); cannot tell which gives the matrix order",
            path,
        )
    if len(unannounced) == 1:
        return full[unannounced[0]]
    raise DagcError(
        f"cannot tell which cell each of the {size} rows of {variable!r} is: add a cell array "
        f"of {size} distinct names in matrix order (e.g. 'Names'); the group lists "
        "(SensoryNeurons, ...) do not give the matrix order",
        path,
    )


def _is_group_list(variable: str) -> bool:
    return variable.split("_", 1)[0] in _GROUP_LISTS


def _labels_from_lists(lists: dict[str, list[str]]) -> dict[str, list[str]]:
    """Cell -> names of the lists holding it, subgroup lists (X_Y) before their groups."""
    labels: dict[str, list[str]] = {}
    for list_name in sorted(lists, key=lambda name: ("_" not in name, name)):
        for cell in lists[list_name]:
            labels.setdefault(cell, []).append(list_name)
    return labels


def _matrix_edges(matrix: object, names: list[str]) -> list[tuple[str, str, object]]:
    """Every stored entry, row (pre) by row; build_connectome drops the zeros."""
    import scipy.sparse

    if scipy.sparse.issparse(matrix):
        coo = scipy.sparse.coo_array(matrix)
        coo.sum_duplicates()  # MATLAB sparse never repeats an entry; summing is the convention
        rows, cols, values = coo.row, coo.col, coo.data
    else:
        dense = np.asarray(matrix)
        rows, cols = np.nonzero(dense)
        values = dense[rows, cols]
    order = np.lexsort((cols, rows))  # deterministic edge order, whatever the storage
    return [(names[rows[i]], names[cols[i]], values[i].item()) for i in order]


# --- MATLAB text -----------------------------------------------------------------------------


def _text(value: object) -> str | None:
    """A MATLAB char array / string / 1-element cell as stripped text; None if not text."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip()
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return ""
        if value.dtype.kind in "US":
            return "".join(_text(item) or "" for item in value.ravel(order="F")).strip()
        if value.dtype.kind == "O" and value.size == 1:
            return _text(value.ravel()[0])
        return None
    if type(value).__name__ == "MatlabCanonicalEmpty":  # MATLAB's [] in a table cell
        return ""
    return None


def _required_text(value: object, what: str, path: Path) -> str:
    text = _text(value)
    if text is None:
        raise DagcError(f"{what} is not text ({type(value).__name__})", path)
    return text


def _text_list(value: object) -> list[str] | None:
    """A cell array of char, a string array or a char matrix (one name per row) as a list."""
    if not isinstance(value, np.ndarray) or value.size == 0:
        return None
    if value.dtype.kind == "O":  # cell array: MATLAB's linear (column-major) order
        texts = [_text(item) for item in value.ravel(order="F")]
        return None if any(text is None for text in texts) else texts
    if value.dtype.kind in "US":  # matio gives a char matrix as one string per row
        return [str(item).strip() for item in value.ravel(order="F")]
    return None


# --- typing ----------------------------------------------------------------------------------


def _typed_cells(names: list[str], labels: dict[str, list[str]]) -> list[Cell]:
    table = _bundled_types()
    cells = []
    for name in names:
        cell_type = normalize_type(table[name]) if name in table else None
        cells.append(Cell(name, cell_type or _group_type(labels.get(name, []))))
    return cells


def _bundled_types() -> dict[str, str]:
    from ..bundled import bundled_cell_types

    try:
        return bundled_cell_types()
    except OSError:  # table not built yet: the MATLAB groups still type most cells
        return {}


def _group_type(labels: list[str]) -> str:
    for label in labels:
        if label in _GROUP_TYPES:
            return _GROUP_TYPES[label]
    return "unknown"
