#!/usr/bin/env python3
"""Regenerate every committed file in generated/ (a test checks they are fresh).

python scripts/regenerate.py          # rewrite generated/*.py
python scripts/regenerate.py --check  # exit 1 if any file differs from a fresh compile
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from dagc.compiler.build import compile_network
from dagc.compiler.dag import DagOptions
from dagc.compiler.graph import PrepareOptions
from dagc.compiler.output import write_atomic
from dagc.compiler.render import CompileOptions

GENERATED_DIR = Path(__file__).resolve().parents[1] / "generated"

# file name -> (connectome, DAG options); all at the paper's 78 channels, flat layout.
TARGETS = {
    "hermaphrodite_net.py": ("hermaphrodite", DagOptions("constrained")),
    "male_net.py": ("male", DagOptions("constrained")),
    "hermaphrodite_random_seed0_net.py": (
        "hermaphrodite",
        DagOptions("random", seed=0),
    ),
}


def fresh_source(file_name: str) -> str:
    connectome, dag_options = TARGETS[file_name]
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the male's pruned CANL/CANR are listed in the file
        _, source = compile_network(
            connectome, PrepareOptions(), dag_options, CompileOptions()
        )
    return source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only compare, write nothing"
    )
    args = parser.parse_args()
    stale = []
    for file_name in TARGETS:
        path = GENERATED_DIR / file_name
        source = fresh_source(file_name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != source:
                stale.append(file_name)
        else:
            write_atomic(path, source)
            print(f"wrote {path.relative_to(GENERATED_DIR.parent)}")
    if stale:
        print("stale: " + ", ".join(stale) + " (run python scripts/regenerate.py)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
