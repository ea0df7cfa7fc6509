"""The raw connectome as loaded from any file format: cells, types and weighted synapses.

Every loader returns a `Connectome`; nothing downstream knows which format it came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DagcError

# The paper's five neuron types, in the order tables and legends use.
NEURON_TYPES = ("sensory", "interneuron", "motor", "sex-specific", "other")
# Cells that are not neurons of the somatic nervous system; the recipe drops them.
NON_NEURON_TYPES = ("pharyngeal", "muscle", "glia", "end-organ", "unknown")
CELL_TYPES = NEURON_TYPES + NON_NEURON_TYPES

# Spellings met in the Cook spreadsheets, MATLAB groups and user CSVs.
_TYPE_SYNONYMS = {
    "sensory": "sensory",
    "sensory neuron": "sensory",
    "sensoryneurons": "sensory",
    "sensory neurons": "sensory",
    "interneuron": "interneuron",
    "interneurons": "interneuron",
    "inter": "interneuron",
    "motor": "motor",
    "motorneuron": "motor",
    "motor neuron": "motor",
    "motorneurons": "motor",
    "motor neurons": "motor",
    "sex-specific": "sex-specific",
    "sex specific": "sex-specific",
    "sexspecific": "sex-specific",
    "other": "other",
    "neuron": "other",
    "pharyngeal": "pharyngeal",
    "pharynx": "pharyngeal",
    "muscle": "muscle",
    "sex muscle": "muscle",
    "bodywallmuscles": "muscle",
    "body wall muscle": "muscle",
    "glia": "glia",
    "glial": "glia",
    "end-organ": "end-organ",
    "endorgan": "end-organ",
    "end organ": "end-organ",
    "otherendorgans": "end-organ",
    "unknown": "unknown",
}


def normalize_type(raw: str) -> str | None:
    """Map a type spelling to one of CELL_TYPES; None when it is not recognised."""
    key = " ".join(str(raw).strip().lower().replace("_", " ").split())
    return _TYPE_SYNONYMS.get(key) or _TYPE_SYNONYMS.get(key.replace(" ", ""))


@dataclass(frozen=True)
class Cell:
    name: str
    type: str  # one of CELL_TYPES
    neurotransmitter: str = ""  # e.g. "ACh", "Glu", "GABA", "ACh+Glu"; "" when unknown
    label: str = ""  # a readable name when `name` is an id (larva: skeleton id -> name)

    @property
    def is_neuron(self) -> bool:
        return self.type in NEURON_TYPES


@dataclass(frozen=True)
class Edge:
    pre: str
    post: str
    weight: float


@dataclass(frozen=True)
class Connectome:
    """Cells and chemical synapses exactly as the source file has them (non-neurons included)."""

    name: str  # short label, e.g. "hermaphrodite" or the file's stem
    source: str  # file name without directories, so outputs never leak local paths
    sha256: str  # of the source file's bytes (or of the concatenated pair)
    cells: tuple[Cell, ...]
    edges: tuple[Edge, ...]
    meta: dict = field(default_factory=dict, compare=False)
    # The file that lists the cells, with its directories: for error messages only.
    path: str = field(default="", compare=False)

    def cell_map(self) -> dict[str, Cell]:
        return {cell.name: cell for cell in self.cells}


def sha256_of(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Origin:
    """Where a loader found one cell or edge: a file and, when it has them, a line or row."""

    path: object
    line: int | str | None = None


def build_connectome(
    name: str,
    source: str,
    sha256: str,
    cells: list[Cell],
    edges: list[tuple[str, str, object]],
    path: object,
    *,
    cell_origins: list[Origin] | None = None,
    edge_origins: list[Origin] | None = None,
) -> Connectome:
    """Validate loader output in one place: unique names, known endpoints, numeric weights >= 0.

    Zero-weight entries are dropped (a matrix cell of 0 is no synapse); parallel entries of the
    same (pre, post) pair are an error because their meaning (sum? max?) would be a guess.
    `path` is the file that lists the cells; `cell_origins` and `edge_origins` (one per cell,
    per edge) say where each came from, so that an error names the file and line holding the
    problem; without them, `path`.
    """
    cell_at = cell_origins or [Origin(path)] * len(cells)
    edge_at = edge_origins or [Origin(path)] * len(edges)
    first_seen: dict[str, Origin] = {}
    for cell, at in zip(cells, cell_at):
        if not cell.name:
            raise DagcError("a cell has an empty name", at.path, at.line)
        if cell.name in first_seen:
            first = first_seen[cell.name]
            earlier = (
                f" (first on line {first.line})" if isinstance(first.line, int) else ""
            )
            raise DagcError(
                f"duplicate node name {cell.name!r}{earlier}", at.path, at.line
            )
        first_seen[cell.name] = at
    checked: list[Edge] = []
    pairs: dict[tuple[str, str], Origin] = {}
    for (pre, post, raw_weight), at in zip(edges, edge_at):
        for end in (pre, post):
            if end not in first_seen:
                raise DagcError(
                    f"edge {pre} -> {post} names unknown node {end!r}", at.path, at.line
                )
        weight = _as_weight(raw_weight, pre, post, at)
        if weight == 0:
            continue
        if (pre, post) in pairs:
            first = pairs[(pre, post)]
            earlier = (
                f" (first on line {first.line})" if isinstance(first.line, int) else ""
            )
            raise DagcError(
                f"duplicate edge {pre} -> {post}{earlier}", at.path, at.line
            )
        pairs[(pre, post)] = at
        checked.append(Edge(pre, post, weight))
    return Connectome(
        name, source, sha256, tuple(cells), tuple(checked), path=str(path or "")
    )


def _as_weight(raw: object, pre: str, post: str, at: Origin) -> float:
    try:
        weight = float(raw)
    except (TypeError, ValueError):
        raise DagcError(
            f"edge {pre} -> {post} has non-numeric weight {raw!r}", at.path, at.line
        ) from None
    if weight != weight or weight in (float("inf"), float("-inf")):
        raise DagcError(
            f"edge {pre} -> {post} has non-finite weight {raw!r}", at.path, at.line
        )
    if weight < 0:
        raise DagcError(
            f"edge {pre} -> {post} has negative weight {raw!r}", at.path, at.line
        )
    # Whole numbers stay ints so tables and generated files print "12", not "12.0".
    return int(weight) if weight.is_integer() else weight
