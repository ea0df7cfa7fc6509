#!/usr/bin/env python3
"""Build dagc's bundled connectomes from the published raw files.

    python scripts/build_bundled.py --raw ../shared/data/connectome/raw

Reads Cook et al. 2019 SI 5 (chemical sheets) and SI 4 (cell lists), and the Wang et al. 2024
neurotransmitter atlas (eLife supplementary files 2 and 3), and writes into
compiler/bundled/:
  cell_types.csv                        name,type for every SI 4 cell (both sexes)
  hermaphrodite.{nodes,edges}.csv       the full chemical connectome, non-neurons included
  male.{nodes,edges}.csv
The raw spreadsheets themselves are never copied into the repository. The larva is built
by scripts/build_larva.py.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import replace
from pathlib import Path

from dagc.compiler.bundled import BUNDLED_DIR, WORM_NAMES
from dagc.compiler.loaders.cook import SI4_NAME, load_cook_si5, read_si4_cell_types
from dagc.compiler.loaders.neurotransmitters import read_neurotransmitters
from dagc.compiler.loaders.tables import write_csv_pair

SI5_NAME = "SI 5 Connectome adjacency matrices, corrected July 2020.xlsx"
ATLAS_NAMES = ("elife-95402-supp2-v1.xlsx", "elife-95402-supp3-v1.xlsx")


def write_cell_types(cell_types: dict[str, str], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["name", "type"])
        for name, cell_type in sorted(cell_types.items()):
            writer.writerow([name, cell_type])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--raw", type=Path, required=True, help="folder holding the raw files"
    )
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = parser.parse_args()

    write_cell_types(
        read_si4_cell_types(args.raw / SI4_NAME), args.out / "cell_types.csv"
    )
    transmitters = read_neurotransmitters(*(args.raw / name for name in ATLAS_NAMES))
    for sex in WORM_NAMES:
        connectome = load_cook_si5(args.raw / SI5_NAME, sex)
        cells = tuple(
            replace(
                cell,
                neurotransmitter=(
                    transmitters.get(cell.name, "") if cell.is_neuron else ""
                ),
            )
            for cell in connectome.cells
        )
        connectome = replace(connectome, cells=cells)
        write_csv_pair(
            connectome, args.out / f"{sex}.nodes.csv", args.out / f"{sex}.edges.csv"
        )
        print(f"{sex}: {len(cells)} cells, {len(connectome.edges)} edges")


if __name__ == "__main__":
    main()
