"""Dale's law: each neuron's outgoing synapses share one sign, given by its transmitter.

Default mapping: GABA is inhibitory; acetylcholine, glutamate, the monoamines and the rest are
excitatory, and so is a neuron whose transmitter is unknown. A neuron is inhibitory when any of
its transmitters is. Users can override the mapping with a CSV of `transmitter,sign` rows
(sign +1 or -1), e.g. to treat glutamate as inhibitory (through GluCl channels).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import DagcError
from .plan import NetworkPlan

DEFAULT_SIGNS = {"GABA": -1}


def read_sign_table(path: Path) -> dict[str, int]:
    """`transmitter,sign` rows -> {transmitter: +1 | -1}, merged over the default mapping."""
    signs = dict(DEFAULT_SIGNS)
    if not path.exists():
        raise DagcError("file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DagcError("not a UTF-8 text file", path) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [column.strip().lower() for column in next(reader, [])]
    if header[:2] != ["transmitter", "sign"]:
        raise DagcError("expected the columns transmitter,sign", path, 1)
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        transmitter = row[0].strip()
        raw_sign = row[1].strip() if len(row) > 1 else ""
        if raw_sign not in ("1", "+1", "-1"):
            raise DagcError(
                f"sign of {transmitter!r} must be +1 or -1, not {raw_sign!r}",
                path,
                reader.line_num,
            )
        signs[transmitter] = int(raw_sign)
    return signs


def neuron_sign(transmitter: str, signs: dict[str, int] = DEFAULT_SIGNS) -> int:
    return -1 if any(signs.get(t, 1) < 0 for t in transmitter.split("+") if t) else 1


def edge_signs(plan: NetworkPlan, signs: dict[str, int] = DEFAULT_SIGNS) -> list[int]:
    """The sign of every plan edge: its presynaptic neuron's."""
    if not any(node.transmitter for node in plan.nodes):
        raise DagcError(
            "--edge-weights dale needs neurotransmitters, and this graph has none "
            "(bundled connectomes and CSV/GraphML files with a 'neurotransmitter' column do)"
        )
    return [neuron_sign(plan.nodes[pre].transmitter, signs) for pre, _ in plan.edges]
