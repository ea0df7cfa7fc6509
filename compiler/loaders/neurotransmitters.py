"""Neurotransmitter identity per neuron from the Wang et al. 2024 eLife atlas (RP95402).

Supplementary File 2 covers the hermaphrodite (sex-shared and hermaphrodite-specific neurons),
Supplementary File 3 the male-specific neurons. Both sheets have their header on row 4; the
header `Neurotransmitter(s)` is a merged cell over three columns, each holding one transmitter
(or none), and the `Comments` column follows them.

`read_neurotransmitters` returns one dict keyed by Cook 2019 cell names, so a male sex-shared
neuron simply takes the hermaphrodite table's entry (the atlas has no male table for them).

Labels are the transmitters joined by '+' in `TRANSMITTER_ORDER`, e.g. 'ACh', 'Glu+Betaine',
'ACh+GABA+5-HT'; '' means the atlas names no transmitter ("unknown (orphan)").
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

from ..errors import DagcError

# Fixed output order: the classical fast transmitters first, then monoamines, then the rest.
TRANSMITTER_ORDER = (
    "ACh",
    "Glu",
    "GABA",
    "5-HT",
    "5-HTP",
    "DA",
    "Tyr",
    "Oct",
    "PEOH",
    "Betaine",
)

# The atlas's words for each transmitter, matched case-insensitively after markers are gone.
# 5-HTP (5-hydroxytryptophan, the serotonin precursor) and PEOH (phenylethanolamine) are listed
# by the atlas as identities of their own, so they keep the atlas's abbreviations.
_TRANSMITTER_WORDS = {
    "ach": "ACh",
    "acetylcholine": "ACh",
    "glu": "Glu",
    "glutamate": "Glu",
    "gaba": "GABA",
    "5-ht": "5-HT",
    "serotonin": "5-HT",
    "5-htp": "5-HTP",
    "da": "DA",
    "dopamine": "DA",
    "tyramine": "Tyr",
    "octopamine": "Oct",
    "peoh": "PEOH",
    "betaine": "Betaine",
}

# Cook 2019 zero-pads the numbers of the ventral-cord motor neuron classes (and the male CA/CP
# classes) to two digits: DA9 -> DA09, VC4 -> VC04, CP0 -> CP00. Other numbered names are not
# padded in Cook (DX1, EF3, I1L, M2R, IL1DL, R1AL), so the rule is limited to these classes.
_PADDED_CLASSES = frozenset(
    {"AS", "DA", "DB", "DD", "VA", "VB", "VC", "VD", "CA", "CP"}
)

# A data row's `Neuron` cell: a single neuron (ASHL, DA9, I1L) or an ambiguous pair (DB1/3).
# Section headers ('HEAD') sit in the Class column, and legend rows hold prose, so neither matches.
_NEURON_CELL = re.compile(r"^[A-Z][A-Z0-9]*(/[0-9]+)?$")
_PAIR_CELL = re.compile(r"^([A-Z]+)([0-9]+)/([0-9]+)$")
_NUMBERED_NAME = re.compile(r"^([A-Z]+)([0-9]+)$")

_HEADER_ROWS_SEARCHED = 10
_TRANSMITTER_HEADER = "Neurotransmitter(s)"


def read_neurotransmitters(supp2: Path, supp3: Path) -> dict[str, str]:
    """Cook cell name -> normalised transmitter label, for every neuron in both atlas tables.

    The result also holds atlas neurons missing from the SI 5 sheets (DX4, EF4, CP00).
    """
    labels = _labels_by_cook_name(_read_rows(supp2), supp2)
    male_specific = _labels_by_cook_name(_read_rows(supp3), supp3)
    overlap = labels.keys() & male_specific.keys()
    if overlap:
        raise DagcError(f"male-specific table repeats neurons {sorted(overlap)}", supp3)
    labels.update(male_specific)
    return labels


def cook_name(atlas_name: str) -> str:
    """The atlas's unpadded name as Cook 2019 spells it: DA9 -> DA09, AS1 -> AS01, ASHL -> ASHL."""
    match = _NUMBERED_NAME.match(atlas_name)
    if match and match.group(1) in _PADDED_CLASSES:
        return f"{match.group(1)}{int(match.group(2)):02d}"
    return atlas_name


def normalise_label(entries: list[str]) -> str:
    """The transmitter cells of one row -> one label ('' when none is named)."""
    found: set[str] = set()
    for entry in entries:
        found.update(_transmitters_in(entry))
    return "+".join(name for name in TRANSMITTER_ORDER if name in found)


def _transmitters_in(entry: str) -> set[str]:
    """The transmitters one cell names, after dropping the atlas's markers and qualifiers.

    What is dropped, and why:
    - a leading '*': the legend's "dim and variable expression"; the atlas still assigns the
      identity, so the transmitter is kept (ASI's '*betaine (uptake) - NEW' -> Betaine).
    - '- NEW', '(new)': the identity is newly found in this study; it is still an identity.
    - '?': the atlas's uncertainty mark (PEOH? -> PEOH); the identity is still listed.
    - parenthesised mechanisms '(uptake)', '(synthesis + uptake)', '(alternative synthesis/uptake
      mechanism)': how the neuron gets the transmitter, not which one it is. Uptake-only
      identities (AVF 'GABA (uptake)', AIM '5-HT (uptake)') are therefore kept.
    - 'unknown (orphan ...)' and '(bas-1-depen) unknown monoamine?': no transmitter is named,
      so they add nothing; a row with only these gets '' (AVH, PVQ, RID, DVE, ...).
    - 'male - ...' entries in the hermaphrodite table (PVW): a male-only identity. The one dict
      serves both sexes and the hermaphrodite table describes the hermaphrodite, so it is dropped.
    Anything else that is not a known transmitter word raises, so new wording is not lost.
    """
    text = entry.strip()
    if not text or text.lower().startswith("male -"):
        return set()
    text = text.replace("*", "").replace("?", "")
    text = re.sub(r"\s*-\s*NEW\b", "", text, flags=re.IGNORECASE)
    text = re.sub(r"\([^)]*\)", "", text)  # '(new)', '(uptake)', '(orphan, ...)'
    found: set[str] = set()
    # One cell may name two: '5-HTP (synthesis) and 5-HT (uptake) (new)'.
    for part in re.split(r"\band\b", text):
        word = " ".join(part.split()).lower()
        if not word or "unknown" in word:
            continue
        if word not in _TRANSMITTER_WORDS:
            raise DagcError(f"unrecognised neurotransmitter entry {entry!r}")
        found.add(_TRANSMITTER_WORDS[word])
    return found


def _read_rows(path: Path) -> list[tuple[str, list[str], int]]:
    """(Neuron cell, transmitter cells, row number from 1) for every data row of the sheet."""
    rows = _sheet_rows(path)
    header_index = _header_row_index(rows, path)
    header = [_text(value) for value in rows[header_index]]
    neuron_column = header.index(
        "Neuron"
    )  # the first one; the sheet repeats it on the right
    first = header.index(_TRANSMITTER_HEADER)
    # The merged header leaves blank cells over its extra columns, up to the next header.
    last = first + 1
    while last < len(header) and header[last] == "":
        last += 1
    data: list[tuple[str, list[str], int]] = []
    for number, row in enumerate(rows[header_index + 1 :], start=header_index + 2):
        neuron = _text(row[neuron_column]) if neuron_column < len(row) else ""
        if _NEURON_CELL.match(neuron):
            data.append((neuron, [_text(value) for value in row[first:last]], number))
    if not data:
        raise DagcError("no neuron rows found under the header", path)
    return data


def _sheet_rows(path: Path) -> list[tuple[object, ...]]:
    # The eLife sheets carry an Excel extension openpyxl cannot read and drops with a warning
    # while rows are read (read-only mode is lazy); it says nothing about the data.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unknown extension", UserWarning)
        workbook = _open_workbook(path)
        try:
            return list(workbook.worksheets[0].iter_rows(values_only=True))
        finally:
            workbook.close()


def _open_workbook(path: Path):
    import openpyxl

    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise DagcError(
            f"not a readable .xlsx workbook ({exc.__class__.__name__})", path
        ) from None


def _header_row_index(rows: list[tuple[object, ...]], path: Path) -> int:
    # The header is on row 4 in both files; searching a few rows tolerates an extra title line.
    for index, row in enumerate(rows[:_HEADER_ROWS_SEARCHED]):
        cells = [_text(value) for value in row]
        if _TRANSMITTER_HEADER in cells and "Neuron" in cells:
            return index
    raise DagcError(
        f"no {_TRANSMITTER_HEADER!r} header (is this eLife 95402 supp 2/3?)", path
    )


def _labels_by_cook_name(
    rows: list[tuple[str, list[str], int]], path: Path
) -> dict[str, str]:
    """Labels of single-neuron rows, then of ambiguous pair rows for neurons still unlabelled.

    Every row of both sheets names one neuron or one ambiguous pair; no row stands for a whole
    class, so no class expansion (ADA -> ADAL/ADAR) is needed.

    Pairs: 'DB1/3' and 'DB3/1' are DB1 and DB3, which the atlas could not tell apart; likewise the
    two 'DX1/2', 'DX3/4', 'EF1/2' and 'EF3/4' rows of the male table. Each member gets the pair
    rows' label when all rows naming it agree (true for every pair in the atlas: DB ACh, DX ACh,
    EF GABA). If they disagreed, each member would hold one of the labels but we could not say
    which, so the member is left '' rather than given a union that over-claims.
    """
    labels: dict[str, str] = {}
    pair_labels: dict[str, set[str]] = {}
    first_row: dict[str, int] = {}
    for neuron, entries, number in rows:
        try:
            label = normalise_label(entries)
        except DagcError as exc:
            raise DagcError(str(exc), path, f"row {number}") from None
        pair = _PAIR_CELL.match(neuron)
        if pair is None:
            name = cook_name(neuron)
            if name in labels:
                raise DagcError(
                    f"neuron {neuron!r} appears twice (first on row {first_row[name]})",
                    path,
                    f"row {number}",
                )
            labels[name] = label
            first_row[name] = number
            continue
        for number in (pair.group(2), pair.group(3)):
            name = cook_name(pair.group(1) + number)
            pair_labels.setdefault(name, set()).add(label)
    for name, candidates in pair_labels.items():
        if (
            name not in labels
        ):  # a row naming the neuron alone is more specific than a pair row
            labels[name] = candidates.pop() if len(candidates) == 1 else ""
    return labels


def _text(value: object) -> str:
    return str(value).strip() if value is not None else ""
