"""The Drosophila larva brain connectome (Winding et al. 2023) as Pedigo et al. 2023 processed
it (github.com/neurodata/bilateral-connectome, `data/processed-elife/`, MIT licence).

The raw pair is `PREFIX_nodes.csv` (first column, unnamed: the CATMAID skeleton id; then
`name`, `io`, ... 107 columns) and `PREFIX_edgelist.csv` (no header: source, target,
weight = synapse count, skeleton ids). Either file may be given; its twin is found beside it.

Neurons are identified by skeleton id: names are not unique (2,944 distinct names for 3,013
neurons). The readable name rides along as the cell's label (comments of generated files).
Types (docs/recipe.md): `io` input -> sensory (the 431 sensory neurons and 32 ascending
neurons of the nerve cord: the brain's inputs), output -> motor (the descending and
ring-gland neurons: the brain's outputs), inter -> interneuron.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..connectome import Cell, Connectome, Origin, build_connectome, sha256_of
from ..errors import DagcError

NODES_SUFFIX = "_nodes.csv"
EDGES_SUFFIX = "_edgelist.csv"
IO_TYPES = {"input": "sensory", "output": "motor", "inter": "interneuron"}


def is_larva_pair(path: Path) -> bool:
    return path.name.endswith((NODES_SUFFIX, EDGES_SUFFIX))


def larva_pair_paths(path: Path) -> tuple[Path, Path]:
    """The (nodes, edge list) files of a raw pair, given either one of them."""
    for suffix in (NODES_SUFFIX, EDGES_SUFFIX):
        if path.name.endswith(suffix):
            stem = path.name[: -len(suffix)]
            return (
                path.with_name(stem + NODES_SUFFIX),
                path.with_name(stem + EDGES_SUFFIX),
            )
    raise DagcError(
        f"a larva pair is PREFIX{NODES_SUFFIX} + PREFIX{EDGES_SUFFIX}", path
    )


def _text(path: Path) -> str:
    if not path.exists():
        raise DagcError("file not found (the other half of the pair needs it)", path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DagcError("not a UTF-8 text file", path, line) from None


def clean_label(name: str) -> str:
    """A readable name on one line (it goes into comments)."""
    return " ".join(name.split())


def read_larva_cells(path: Path) -> list[Cell]:
    rows = csv.reader(io.StringIO(_text(path), newline=""))
    try:
        header = next(rows, [])
        columns = {column.strip(): i for i, column in enumerate(header)}
        if not header or header[0].strip() or "io" not in columns:
            raise DagcError(
                "expected the larva nodes table: an unnamed first column (skeleton id) "
                "and an 'io' column",
                path,
                1,
            )
        io_column, name_column = columns["io"], columns.get("name")
        cells = []
        for row in rows:
            if not row:
                continue
            line = rows.line_num
            if len(row) != len(header):
                raise DagcError(
                    f"{len(row)} fields where the header has {len(header)}", path, line
                )
            cell_type = IO_TYPES.get(row[io_column].strip())
            if cell_type is None:
                raise DagcError(
                    f"neuron {row[0]} has io {row[io_column]!r} "
                    f"(expected one of {', '.join(IO_TYPES)})",
                    path,
                    line,
                )
            label = clean_label(row[name_column]) if name_column is not None else ""
            cells.append(Cell(row[0].strip(), cell_type, label=label))
        return cells
    except csv.Error as exc:
        raise DagcError(f"malformed CSV ({exc})", path, rows.line_num) from None


def read_larva_edges(path: Path) -> tuple[list[tuple[str, str, str]], list[int]]:
    """(source, target, weight) per row, and each row's line number."""
    rows = csv.reader(io.StringIO(_text(path), newline=""))
    edges, lines = [], []
    try:
        for row in rows:
            if not row:
                continue
            if len(row) != 3:
                raise DagcError(
                    f"expected 3 fields (source, target, weight), got {len(row)}",
                    path,
                    rows.line_num,
                )
            edges.append((row[0].strip(), row[1].strip(), row[2].strip()))
            lines.append(rows.line_num)
    except csv.Error as exc:
        raise DagcError(f"malformed CSV ({exc})", path, rows.line_num) from None
    return edges, lines


def load_larva_pair(path: Path, name: str = "larva") -> Connectome:
    nodes_path, edges_path = larva_pair_paths(Path(path))
    cells = read_larva_cells(nodes_path)
    edges, lines = read_larva_edges(edges_path)
    return build_connectome(
        name,
        nodes_path.name,
        sha256_of(nodes_path, edges_path),
        cells,
        edges,
        nodes_path,
        edge_origins=[Origin(edges_path, line) for line in lines],
    )
