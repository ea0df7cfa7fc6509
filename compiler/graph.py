"""Stage 2: the neuron graph the paper works on, prepared from a raw connectome.

The steps follow the recipe in Park & Kim 2023 as pinned down in NOTES.md; each one can be
switched off through `PrepareOptions` for users who want another choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .connectome import Connectome, Edge


@dataclass(frozen=True)
class PrepareOptions:
    # Keep only neurons of the somatic nervous system (drops pharynx, muscles, glia, end organs).
    neurons_only: bool = True
    # Drop neurons left without any synapse once the others are gone.
    drop_isolated: bool = True
    # Drop, in one pass, non-sensory neurons with no input (self-loops ignored). They can never
    # carry information from the senses. The paper does not state this step; it is the one that
    # reproduces the published male numbers, and it changes nothing in the hermaphrodite.
    drop_unfed: bool = True


@dataclass(frozen=True)
class Graph:
    """A directed, weighted, typed neuron graph. Node order follows the source file."""

    name: str
    source: str
    sha256: str
    nodes: tuple[str, ...]
    types: dict[str, str]
    transmitters: dict[str, str]
    edges: tuple[Edge, ...]  # self-loops included: they are real synapses
    dropped: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The file that lists the cells, with its directories: for error messages only.
    path: str = field(default="", compare=False)
    # Readable names of nodes whose name is an id (comments only); most graphs have none.
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def self_loops(self) -> int:
        return sum(1 for edge in self.edges if edge.pre == edge.post)

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in self.nodes:
            counts[self.types[name]] = counts.get(self.types[name], 0) + 1
        return counts


def prepare_graph(
    connectome: Connectome, options: PrepareOptions = PrepareOptions()
) -> Graph:
    cells = connectome.cells
    if options.neurons_only:
        cells = tuple(cell for cell in cells if cell.is_neuron)
    kept = {cell.name for cell in cells}
    edges = tuple(e for e in connectome.edges if e.pre in kept and e.post in kept)
    nodes = tuple(cell.name for cell in cells)
    dropped: dict[str, tuple[str, ...]] = {}
    types = {cell.name: cell.type for cell in cells}

    if options.drop_isolated:
        touched = {e.pre for e in edges} | {e.post for e in edges}
        dropped["isolated"] = tuple(name for name in nodes if name not in touched)
        nodes = tuple(name for name in nodes if name in touched)
    if options.drop_unfed:
        fed = {e.post for e in edges if e.pre != e.post}
        unfed = {n for n in nodes if n not in fed and types[n] != "sensory"}
        dropped["unfed"] = tuple(name for name in nodes if name in unfed)
        nodes = tuple(name for name in nodes if name not in unfed)
        edges = tuple(e for e in edges if e.pre not in unfed and e.post not in unfed)

    node_set = set(nodes)
    return Graph(
        name=connectome.name,
        source=connectome.source,
        sha256=connectome.sha256,
        nodes=nodes,
        types={name: types[name] for name in nodes},
        transmitters={c.name: c.neurotransmitter for c in cells if c.name in node_set},
        edges=edges,
        dropped=dropped,
        path=connectome.path,
        labels={c.name: c.label for c in cells if c.label and c.name in node_set},
    )
