"""The bundled connectomes, stored as CSV pairs: the C. elegans chemical connectomes (Cook et
al. 2019; built from the published spreadsheets by `scripts/build_bundled.py`) and the
Drosophila larva brain (Winding et al. 2023, gzip-compressed; built from the processed release
by `scripts/build_larva.py`). Sources, licences and citations: README.md here.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from ..connectome import Connectome

BUNDLED_DIR = Path(__file__).resolve().parent
WORM_NAMES = ("hermaphrodite", "male")
BUNDLED_NAMES = WORM_NAMES + ("larva",)
# Bundled pairs stored gzip-compressed (the larva's edges are 2.3 MB as plain CSV).
COMPRESSED = ("larva",)


def bundled_nodes_path(name: str) -> Path:
    return BUNDLED_DIR / (f"{name}.nodes.csv" + ".gz" * (name in COMPRESSED))


def load_bundled(name: str) -> Connectome:
    from ..loaders.tables import load_csv_pair

    return load_csv_pair(bundled_nodes_path(name), name=name)


@lru_cache(maxsize=1)
def bundled_cell_types() -> dict[str, str]:
    """Name -> cell type for every cell in Cook 2019 SI 4 (both sexes), as derived by the build."""
    with (BUNDLED_DIR / "cell_types.csv").open(newline="", encoding="utf-8") as handle:
        return {row["name"]: row["type"] for row in csv.DictReader(handle)}
