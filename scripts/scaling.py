"""How step time grows with the network's size: `dagc bench` on random (ER) DAGs.

    python scripts/scaling.py --nodes 100 250 500 1000 --channels 16 --json docs/results/x.json

Each graph has the hermaphrodite's edge density (2,260 edges / 282 nodes = 8 per node) and is
compiled from the bundled hermaphrodite connectome's cells with `--dag er --seed 0`; every size
is timed by `dagc bench` (the interpreter and the flat layout, eager).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

from dagc.compiler.build import compile_network
from dagc.compiler.dag import DagOptions
from dagc.compiler.graph import PrepareOptions
from dagc.compiler.output import write_atomic
from dagc.compiler.render import CompileOptions
from dagc.runtime.bench import BenchConfig, bench

EDGES_PER_NODE = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nodes in args.nodes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                front, source = compile_network(
                    "hermaphrodite",
                    PrepareOptions(),
                    DagOptions("er", 0, nodes=nodes, edges=EDGES_PER_NODE * nodes),
                    CompileOptions(channels=args.channels),
                )
            path = Path(tmp) / f"er{nodes}.py"
            path.write_text(source)
            config = BenchConfig(
                model=str(path), device=args.device, steps=args.steps, warmup=1,
                modes=("flat",),
            )  # fmt: skip
            report = bench(config, echo=lambda line: print(line, file=sys.stderr))
            plan = front.plan
            rows.append(
                {
                    "nodes": len(plan.nodes),
                    "edges": len(plan.edges),
                    "levels": plan.depth,
                    "channels": args.channels,
                    "interpreter_step_s": report["modes"]["interpreter"].get(
                        "step_median_s"
                    ),
                    "flat_step_s": report["modes"]["flat"].get("step_median_s"),
                    "floor_step_s": report["floor"]["step_s"],
                    "machine": report["machine"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            write_atomic(args.json, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
