"""One entry point, `load_connectome`, that picks the format from the name or file."""

from __future__ import annotations

from pathlib import Path

from ..connectome import Connectome
from ..errors import DagcError

FORMATS_HELP = (
    "a bundled name (hermaphrodite, male, larva), a WormWiring .mat file, Cook 2019 SI 5 "
    ".xlsx (with #hermaphrodite or #male), a CSV pair (NAME.nodes.csv/NAME.edges.csv, "
    "optionally .gz), the larva pair (PREFIX_nodes.csv/PREFIX_edgelist.csv) or .graphml"
)


def load_connectome(spec: str | Path) -> Connectome:
    """Load a connectome from a bundled name or a file path; the format follows the file."""
    from ..bundled import BUNDLED_NAMES, load_bundled
    from .cook import load_cook_si5, split_sheet_suffix
    from .larva import is_larva_pair, load_larva_pair
    from .tables import load_csv_pair, load_graphml

    spec = str(spec)
    if spec in BUNDLED_NAMES:
        return load_bundled(spec)
    path, sheet = split_sheet_suffix(spec)
    suffix = path.suffix.lower()
    if not path.exists():
        if "/" not in spec and "." not in spec:
            raise DagcError(
                f"unknown bundled connectome {spec!r} (bundled: {', '.join(BUNDLED_NAMES)})"
            )
        raise DagcError("file not found", path)
    if path.is_dir():
        raise DagcError("is a directory; expected " + FORMATS_HELP, path)
    if suffix == ".xlsx":
        return load_cook_si5(path, sheet)
    if sheet is not None:
        raise DagcError("a '#sheet' suffix only applies to SI 5 .xlsx files", path)
    if suffix == ".mat":
        from .matlab import load_matlab

        return load_matlab(path)
    if suffix == ".csv" and is_larva_pair(path):
        return load_larva_pair(path)
    if suffix == ".csv" or path.name.endswith(".csv.gz"):
        return load_csv_pair(path)
    if suffix in (".graphml", ".xml"):
        return load_graphml(path)
    raise DagcError("unknown connectome format; expected " + FORMATS_HELP, path)
