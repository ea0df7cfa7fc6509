"""The bundled C. elegans chemical connectomes (Cook et al. 2019), stored as CSV pairs.

Built from the published spreadsheets by `scripts/build_bundled.py`; see README.md here.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from ..connectome import Connectome

BUNDLED_DIR = Path(__file__).resolve().parent
BUNDLED_NAMES = ("hermaphrodite", "male")


def load_bundled(name: str) -> Connectome:
    from ..loaders.tables import load_csv_pair

    return load_csv_pair(BUNDLED_DIR / f"{name}.nodes.csv", name=name)


@lru_cache(maxsize=1)
def bundled_cell_types() -> dict[str, str]:
    """Name -> cell type for every cell in Cook 2019 SI 4 (both sexes), as derived by the build."""
    with (BUNDLED_DIR / "cell_types.csv").open(newline="", encoding="utf-8") as handle:
        return {row["name"]: row["type"] for row in csv.DictReader(handle)}
