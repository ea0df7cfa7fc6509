"""Legal, unique Python identifiers for neuron names (after torch.fx's namespace idea)."""

from __future__ import annotations

import keyword
import re

# Names the generated forward() uses for itself; a neuron may not shadow them.
RESERVED = frozenset({"self", "x", "w", "source", "torch", "F", "nn", "sink"})


class Namespace:
    def __init__(self, reserved=RESERVED):
        self._taken = set(reserved)

    def create(self, name: str) -> str:
        candidate = re.sub(r"\W", "_", name.strip(), flags=re.ASCII) or "node"
        if candidate[0].isdigit():
            candidate = "n_" + candidate
        if keyword.iskeyword(candidate) or keyword.issoftkeyword(candidate):
            candidate += "_"
        unique, suffix = candidate, 1
        while unique in self._taken:
            unique = f"{candidate}_{suffix}"
            suffix += 1
        self._taken.add(unique)
        return unique
