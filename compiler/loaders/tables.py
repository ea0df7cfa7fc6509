"""Plain-table formats: a CSV pair (nodes + edges) and GraphML.

These let users bring any connectome (fly, mouse, ...). The bundled worm connectomes are
stored as CSV pairs too, so they go through exactly the same code.

CSV pair: `NAME.nodes.csv` with columns `name,type[,neurotransmitter][,label]` and
`NAME.edges.csv` with columns `pre,post,weight`. Either file may be given; its twin is found
beside it. Both may be gzip-compressed (`NAME.nodes.csv.gz` + `NAME.edges.csv.gz`). `label`
is a readable name for nodes whose `name` is an id; it only appears in comments.
GraphML: a directed graph whose vertices carry `name` (or `id`) and `type`, and whose edges
carry `weight` (1 when absent).
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from ..connectome import (
    Cell,
    Connectome,
    Origin,
    build_connectome,
    normalize_type,
    sha256_of,
)
from ..errors import DagcError

NODE_COLUMNS = ("name", "type")
EDGE_COLUMNS = ("pre", "post", "weight")


def csv_pair_paths(path: Path) -> tuple[Path, Path]:
    """The (nodes, edges) files of a pair, given either one of them."""
    name = path.name
    for compressed in (".gz", ""):
        for suffix in (".nodes.csv", ".edges.csv"):
            if name.endswith(suffix + compressed):
                stem = name[: -len(suffix + compressed)]
                return path.with_name(stem + ".nodes.csv" + compressed), path.with_name(
                    stem + ".edges.csv" + compressed
                )
    if name in ("nodes.csv", "edges.csv"):
        return path.with_name("nodes.csv"), path.with_name("edges.csv")
    raise DagcError(
        "a CSV connectome is a pair NAME.nodes.csv + NAME.edges.csv (or nodes.csv + edges.csv)",
        path,
    )


def _read_rows(
    path: Path, required: tuple[str, ...]
) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for every data row; the header is line 1."""
    if not path.exists():
        raise DagcError("file not found (the other half of a CSV pair needs it)", path)
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DagcError(f"not a readable gzip file ({exc})", path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DagcError("not a UTF-8 text file", path, line) from None
    # csv.reader rather than DictReader (same rows, a third of the time on the larva's
    # 111k edges): blank lines skipped, short rows padded with "", extra fields dropped.
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, [])
        columns = [column.strip().lower() for column in header]
        missing = [column for column in required if column not in columns]
        if missing:
            raise DagcError(f"missing column(s) {', '.join(missing)}", path, 1)
        padding = [""] * len(columns)
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) < len(columns):
                row += padding[len(row) :]
            values = {key: value.strip() for key, value in zip(columns, row) if key}
            # line_num is the row's last physical line (a quoted field may span several).
            rows.append((reader.line_num, values))
        return rows
    except csv.Error as exc:
        raise DagcError(f"malformed CSV ({exc})", path, reader.line_num) from None


def load_csv_pair(path: Path, name: str | None = None) -> Connectome:
    nodes_path, edges_path = csv_pair_paths(path)
    cells, cell_origins = [], []
    for line, row in _read_rows(nodes_path, NODE_COLUMNS):
        cell_type = normalize_type(row["type"])
        if cell_type is None:
            raise DagcError(
                f"node {row['name']!r} has unknown type {row['type']!r}",
                nodes_path,
                line,
            )
        cells.append(
            Cell(
                row["name"],
                cell_type,
                row.get("neurotransmitter", ""),
                row.get("label", ""),
            )
        )
        cell_origins.append(Origin(nodes_path, line))
    edges, edge_origins = [], []
    for line, row in _read_rows(edges_path, EDGE_COLUMNS):
        edges.append((row["pre"], row["post"], row["weight"]))
        edge_origins.append(Origin(edges_path, line))
    stem = nodes_path.name.removesuffix(".gz")
    label = name or stem[: -len("nodes.csv")].rstrip(".") or nodes_path.parent.name
    return build_connectome(
        label,
        nodes_path.name,
        sha256_of(nodes_path, edges_path),
        cells,
        edges,
        nodes_path,
        cell_origins=cell_origins,
        edge_origins=edge_origins,
    )


def load_graphml(path: Path) -> Connectome:
    import igraph

    try:
        graph = igraph.Graph.Read_GraphML(str(path))
    except (
        Exception
    ) as exc:  # igraph raises InternalError/OSError with C-level messages
        raise DagcError(
            f"not a readable GraphML file ({str(exc).splitlines()[0]})", path
        ) from None
    if not graph.is_directed():
        raise DagcError(
            "the graph is undirected; a connectome needs pre -> post direction", path
        )
    attributes = graph.vs.attributes()
    name_key = "name" if "name" in attributes else "id" if "id" in attributes else None
    if name_key is None or "type" not in attributes:
        raise DagcError("vertices need 'name' (or 'id') and 'type' attributes", path)
    cells = []
    for vertex in graph.vs:
        cell_type = normalize_type(vertex["type"] or "")
        if cell_type is None:
            raise DagcError(
                f"node {vertex[name_key]!r} has unknown type {vertex['type']!r}",
                path,
                f"node {vertex.index}",
            )
        transmitter = (
            vertex["neurotransmitter"] if "neurotransmitter" in attributes else ""
        )
        cells.append(Cell(str(vertex[name_key]), cell_type, transmitter or ""))
    has_weight = "weight" in graph.es.attributes()
    edges = [
        (
            cells[edge.source].name,
            cells[edge.target].name,
            edge["weight"] if has_weight else 1,
        )
        for edge in graph.es
    ]
    # igraph does not keep XML line numbers; the n-th node or edge (from 0) is the next best.
    return build_connectome(
        path.stem,
        path.name,
        sha256_of(path),
        cells,
        edges,
        path,
        cell_origins=[Origin(path, f"node {i}") for i in range(len(cells))],
        edge_origins=[Origin(path, f"edge {i}") for i in range(len(edges))],
    )


def write_csv_pair(connectome: Connectome, nodes_path: Path, edges_path: Path) -> None:
    """Write a connectome as a CSV pair (used to build the bundled files and by users).

    A `label` column is written when some cell has a label. Paths ending in `.gz` are
    gzip-compressed reproducibly (no file name, no time stamp: the same bytes every build).
    """
    labelled = any(cell.label for cell in connectome.cells)
    nodes = io.StringIO(newline="")
    writer = csv.writer(nodes, lineterminator="\n")
    writer.writerow(["name", "type", "neurotransmitter"] + ["label"] * labelled)
    for cell in connectome.cells:
        row = [cell.name, cell.type, cell.neurotransmitter]
        writer.writerow(row + [cell.label] * labelled)
    edges = io.StringIO(newline="")
    writer = csv.writer(edges, lineterminator="\n")
    writer.writerow(["pre", "post", "weight"])
    for edge in connectome.edges:
        writer.writerow([edge.pre, edge.post, edge.weight])
    for path, text in ((nodes_path, nodes.getvalue()), (edges_path, edges.getvalue())):
        data = text.encode("utf-8")
        if Path(path).name.endswith(".gz"):
            data = gzip.compress(data, compresslevel=9, mtime=0)
        Path(path).write_bytes(data)
