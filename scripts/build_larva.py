#!/usr/bin/env python3
"""Build dagc's bundled Drosophila larva connectome from the processed release.

    python scripts/build_larva.py --raw ../shared/data/connectome/larva

Reads `unmatched_full_nodes.csv` and `unmatched_full_edgelist.csv` (Winding et al. 2023 as
processed by Pedigo et al. 2023, neurodata/bilateral-connectome `data/processed-elife/`, MIT
licence) and writes into compiler/bundled/:
  larva.nodes.csv.gz   name (skeleton id), type (from io), neurotransmitter (empty), label
  larva.edges.csv.gz   pre, post, weight (synapse count), in the raw file's order
gzip-compressed reproducibly (same bytes on every build). The type mapping is the loader's
(compiler/loaders/larva.py, docs/recipe.md). The raw files are never copied into the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dagc.compiler.bundled import BUNDLED_DIR
from dagc.compiler.loaders.larva import NODES_SUFFIX, load_larva_pair
from dagc.compiler.loaders.tables import write_csv_pair

RAW_PREFIX = "unmatched_full"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--raw", type=Path, required=True, help="folder holding the raw pair"
    )
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = parser.parse_args()
    connectome = load_larva_pair(args.raw / (RAW_PREFIX + NODES_SUFFIX))
    write_csv_pair(
        connectome, args.out / "larva.nodes.csv.gz", args.out / "larva.edges.csv.gz"
    )
    print(f"larva: {len(connectome.cells)} cells, {len(connectome.edges)} edges")


if __name__ == "__main__":
    main()
