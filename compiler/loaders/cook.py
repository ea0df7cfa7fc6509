"""Cook et al. 2019 supplementary spreadsheets: SI 5 (adjacency) typed by SI 4 (cell lists).

SI 5 holds both sexes, so the sheet is chosen with a suffix: `SI5.xlsx#male` or
`SI5.xlsx#hermaphrodite`. Types come from an `SI 4 Cell lists.xlsx` beside the SI 5 file when
there is one, else from dagc's own table derived from SI 4 (`bundled/cell_types.csv`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..connectome import (
    Cell,
    Connectome,
    Origin,
    build_connectome,
    sha256_of,
)
from ..errors import DagcError

SEXES = ("hermaphrodite", "male")
SI4_NAME = "SI 4 Cell lists.xlsx"

# SI 4's "cell type" column, per sheet, mapped to dagc's cell types (NOTES.md, recipe step 2).
_SHARED_TYPES = {
    "sensory": "sensory",
    "interneuron": "interneuron",
    "motorneuron": "motor",
    "neuron": "other",  # only CANL and CANR
    "muscle": "muscle",
    "glial": "glia",
}
_SEX_SPECIFIC_NEURON_TYPES = {"motorneuron", "sensory neuron", "interneuron"}


def _open_workbook(path: Path):
    import openpyxl

    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise DagcError(
            f"not a readable .xlsx workbook ({exc.__class__.__name__})", path
        ) from None


def _clean(value: object) -> str:
    return str(value).strip() if value is not None else ""


def read_si4_cell_types(path: Path) -> dict[str, str]:
    """Name -> dagc cell type for every cell listed in SI 4 (both sexes, pharynx included)."""
    workbook = _open_workbook(path)
    types: dict[str, str] = {}
    try:
        for sheet in (
            "pharynx",
            "sex-shared",
            "hermaphrodite specific",
            "male-specific",
        ):
            if sheet not in workbook.sheetnames:
                raise DagcError(f"SI 4 sheet {sheet!r} is missing", path)
            for row in workbook[sheet].iter_rows(values_only=True):
                name, raw_type = _clean(row[0]), _clean(row[1]).lower()
                if not name or raw_type in ("", "cell type"):
                    continue  # blank rows and the header row
                types[name] = _si4_type(sheet, raw_type)
    finally:
        workbook.close()
    return types


def _si4_type(sheet: str, raw_type: str) -> str:
    if sheet == "pharynx":
        return "pharyngeal"
    if sheet == "sex-shared":
        return _SHARED_TYPES.get(raw_type, "end-organ")
    if raw_type in _SEX_SPECIFIC_NEURON_TYPES:
        return "sex-specific"
    return "muscle" if "muscle" in raw_type else "end-organ"


def split_sheet_suffix(spec: str) -> tuple[Path, str | None]:
    """`file.xlsx#male` -> (Path('file.xlsx'), 'male')."""
    if "#" in spec:
        file_part, sex = spec.rsplit("#", 1)
        return Path(file_part), sex.strip().lower()
    return Path(spec), None


def load_cook_si5(path: Path, sex: str | None) -> Connectome:
    from ..bundled import bundled_cell_types

    if sex not in SEXES:
        raise DagcError(
            "SI 5 holds both sexes: add '#hermaphrodite' or '#male' after the file name",
            path,
        )
    si4_path = path.with_name(SI4_NAME)
    cell_types = (
        read_si4_cell_types(si4_path) if si4_path.exists() else bundled_cell_types()
    )
    names, edges, rows = _read_si5(path, sex)
    cells = [Cell(name, cell_types.get(name, "unknown")) for name in names]
    sheet = f"sheet '{sex} chemical'"
    return build_connectome(
        sex,
        path.name,
        sha256_of(path),
        cells,
        edges,
        path,
        edge_origins=[Origin(path, f"{sheet}, row {row}") for row in rows],
    )


def read_si5_chemical(
    path: Path, sex: str
) -> tuple[list[str], list[tuple[str, str, object]]]:
    """Every cell named on either axis of the sex's chemical sheet, and its non-empty entries."""
    names, edges, _ = _read_si5(path, sex)
    return names, edges


def _read_si5(
    path: Path, sex: str
) -> tuple[list[str], list[tuple[str, str, object]], list[int]]:
    """Cells, entries and each entry's spreadsheet row number (from 1, as Excel shows it)."""
    workbook = _open_workbook(path)
    sheet_name = f"{sex} chemical"
    try:
        if sheet_name not in workbook.sheetnames:
            raise DagcError(
                f"sheet {sheet_name!r} not found (is this Cook 2019 SI 5?)", path
            )
        rows = list(workbook[sheet_name].iter_rows(values_only=True))
    finally:
        workbook.close()
    if len(rows) < 4:
        raise DagcError(
            f"sheet {sheet_name!r} is too short to be an adjacency matrix", path
        )
    # Row 3 (index 2) names the postsynaptic cells from column D on; column C names the
    # presynaptic cells from row 4 on.
    post_names = [_clean(value) for value in rows[2][3:]]
    names: list[str] = []
    edges: list[tuple[str, str, object]] = []
    edge_rows: list[int] = []
    for number, row in enumerate(rows[3:], start=4):
        pre = _clean(row[2]) if len(row) > 2 else ""
        if not pre:
            continue
        names.append(pre)
        for post, value in zip(post_names, row[3:]):
            if post and value not in (None, "", 0):
                edges.append((pre, post, value))
                edge_rows.append(number)
    # Cells that only receive (muscles, end organs) appear on the column axis alone.
    names = list(dict.fromkeys(names + [name for name in post_names if name]))
    return names, edges, edge_rows
