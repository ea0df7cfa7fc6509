"""Dale's law: each neuron's outgoing synapses share one sign, given by its transmitter.

Default mapping: GABA is inhibitory; acetylcholine, glutamate, the monoamines and the rest are
excitatory, and so is a neuron whose transmitter is unknown. A neuron is inhibitory when any of
its transmitters is. Users can override the mapping with a CSV of `transmitter,sign` rows
(sign +1 or -1), e.g. to treat glutamate as inhibitory (through GluCl channels).
"""

from __future__ import annotations

import csv
from pathlib import Path

from dagc.compiler.errors import DagcError
from dagc.compiler.plan import NetworkPlan

DEFAULT_SIGNS = {"GABA": -1}


def read_sign_table(path: Path) -> dict[str, int]:
    """`transmitter,sign` rows -> {transmitter: +1 | -1}, merged over the default mapping."""
    signs = dict(DEFAULT_SIGNS)
    if not path.exists():
        raise DagcError("file not found", path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if [c.strip().lower() for c in reader.fieldnames or []][:2] != [
            "transmitter",
            "sign",
        ]:
            raise DagcError("expected the columns transmitter,sign", path)
        for row in reader:
            values = [value.strip() for value in row.values()]
            transmitter, raw_sign = values[0], values[1]
            if raw_sign not in ("1", "+1", "-1"):
                raise DagcError(
                    f"sign of {transmitter!r} must be +1 or -1, not {raw_sign!r}", path
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
