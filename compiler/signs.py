"""Dale's law: each neuron's outgoing synapses share one sign, given by its transmitter."""

from __future__ import annotations

from dagc.compiler.errors import DagcError
from dagc.compiler.plan import NetworkPlan

# GABA is the worm's inhibitory transmitter; a neuron that releases it (alone or with
# others) is treated as inhibitory, every other neuron as excitatory.
INHIBITORY = frozenset({"GABA"})


def neuron_sign(transmitter: str, inhibitory=INHIBITORY) -> int:
    return -1 if inhibitory & set(transmitter.split("+")) else 1


def edge_signs(plan: NetworkPlan, inhibitory=INHIBITORY) -> list[int]:
    if not any(node.transmitter for node in plan.nodes):
        raise DagcError(
            "--edge-weights dale needs neurotransmitters, and this graph has none "
            "(bundled connectomes and CSV/GraphML files with a 'neurotransmitter' column do)"
        )
    return [
        neuron_sign(plan.nodes[pre].transmitter, inhibitory) for pre, _ in plan.edges
    ]
