"""The raw connectome as loaded from any file format: cells, types and weighted synapses.

Every loader returns a `Connectome`; nothing downstream knows which format it came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from dagc.compiler.errors import DagcError

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

    def cell_map(self) -> dict[str, Cell]:
        return {cell.name: cell for cell in self.cells}


def sha256_of(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def build_connectome(
    name: str,
    source: str,
    sha256: str,
    cells: list[Cell],
    edges: list[tuple[str, str, object]],
    path: object,
) -> Connectome:
    """Validate loader output in one place: unique names, known endpoints, numeric weights >= 0.

    Zero-weight entries are dropped (a matrix cell of 0 is no synapse); parallel entries of the
    same (pre, post) pair are an error because their meaning (sum? max?) would be a guess.
    """
    names = [cell.name for cell in cells]
    seen: set[str] = set()
    for cell_name in names:
        if not cell_name:
            raise DagcError("a cell has an empty name", path)
        if cell_name in seen:
            raise DagcError(f"duplicate node name {cell_name!r}", path)
        seen.add(cell_name)
    checked: list[Edge] = []
    pairs: set[tuple[str, str]] = set()
    for pre, post, raw_weight in edges:
        for end in (pre, post):
            if end not in seen:
                raise DagcError(
                    f"edge {pre} -> {post} names unknown node {end!r}", path
                )
        weight = _as_weight(raw_weight, pre, post, path)
        if weight == 0:
            continue
        if (pre, post) in pairs:
            raise DagcError(f"duplicate edge {pre} -> {post}", path)
        pairs.add((pre, post))
        checked.append(Edge(pre, post, weight))
    return Connectome(name, source, sha256, tuple(cells), tuple(checked))


def _as_weight(raw: object, pre: str, post: str, path: object) -> float:
    try:
        weight = float(raw)
    except (TypeError, ValueError):
        raise DagcError(
            f"edge {pre} -> {post} has non-numeric weight {raw!r}", path
        ) from None
    if weight != weight or weight in (float("inf"), float("-inf")):
        raise DagcError(f"edge {pre} -> {post} has non-finite weight {raw!r}", path)
    if weight < 0:
        raise DagcError(f"edge {pre} -> {post} has negative weight {raw!r}", path)
    # Whole numbers stay ints so tables and generated files print "12", not "12.0".
    return int(weight) if weight.is_integer() else weight
