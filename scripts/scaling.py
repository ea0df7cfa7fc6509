"""How dagc grows with the network: compile, import, a training step and its memory, from the
worm to ten times the larva brain.

    python scripts/scaling.py --json docs/results/cpu-scaling.json --plot docs/scaling.png

Networks: the bundled hermaphrodite and larva (constrained DAGs) and Erdos-Renyi DAGs
(`--dag er --seed 0`) of 300 to 10,000 nodes at 30 edges per node (the larva has 24), so the
largest has 300,000 edges. For each:
- compile_s: `compile_network` in this process (load, DAG, plan, render, black), the
  interpreter's start-up excluded; file size and lines of the module;
- import_s: `load_generated` of the written file in a fresh process (torch already imported),
  first from source, then again from the bytecode cache (import_cached_s);
- step_s, peak RSS: one training step with the CPU engine (`dagc bench`'s own timing child,
  generated+engine mode) at a width every size can afford (--channels, --batch-size).
Sizes run smallest first, each row is written as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from dagc.compiler.build import compile_network
from dagc.compiler.dag import DagOptions
from dagc.compiler.graph import PrepareOptions
from dagc.compiler.output import write_atomic
from dagc.compiler.render import CompileOptions
from dagc.runtime.bench import MODES, run_child
from dagc.runtime.floor import machine_info

EDGES_PER_NODE = 30
IMPORT_PROBE = (
    "import sys, time, torch\n"
    "from dagc.runtime.loading import load_generated\n"
    "start = time.perf_counter()\n"
    "load_generated(sys.argv[1])\n"
    "print(time.perf_counter() - start)\n"
)


def networks(er_nodes: list[int]) -> list[tuple[str, str, DagOptions]]:
    """(label, connectome, DAG options), smallest first."""
    rows = [
        ("hermaphrodite", "hermaphrodite", DagOptions()),
        ("larva", "larva", DagOptions()),
    ]
    for n in er_nodes:
        rows.append(
            (f"er{n}", "hermaphrodite", DagOptions("er", 0, n, EDGES_PER_NODE * n))
        )
    return rows


def measure(label, connectome, dag_options, args, folder: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        front, source = compile_network(
            connectome,
            PrepareOptions(),
            dag_options,
            CompileOptions(channels=args.channels),
        )
        compile_s = time.perf_counter() - start
    path = folder / f"{label}.py"
    path.write_text(source)
    # Twice: the first import compiles the source to bytecode, the second reads __pycache__.
    imports = [
        subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE, str(path)],
            capture_output=True, text=True, check=True,
        ).stdout.split()[-1]
        for _ in range(2)
    ]  # fmt: skip
    spec = {
        "mode": asdict(MODES["generated+engine"]),
        "device": "cpu",
        "model_path": str(path),
        "channels": args.channels,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": 1,
    }
    step = run_child(spec, args.timeout, folder)
    plan = front.plan
    return {
        "network": label,
        "nodes": len(plan.nodes),
        "edges": len(plan.edges),
        "levels": plan.depth,
        "compile_s": round(compile_s, 3),
        "module_bytes": len(source.encode()),
        "module_lines": source.count("\n"),
        "import_s": round(float(imports[0]), 3),
        "import_cached_s": round(float(imports[1]), 3),
        "step_s": step.get("step_median_s"),
        "first_step_s": step.get("first_step_s"),
        "kernel_build_s": step.get("kernel_build_s"),
        "peak_rss_bytes": step.get("peak_memory_bytes"),
        "error": step.get("error"),
    }


def plot(rows: list[dict], path: Path, width: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = [row["nodes"] + row["edges"] for row in rows]
    panels = (
        ("compile_s", "compile (s)"),
        ("import_s", "import (s)"),
        ("step_s", f"training step (s), {width}"),
        ("peak_rss_bytes", "peak RSS of the step (GiB)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(16, 3.8))
    for axis, (key, title) in zip(axes, panels):
        scale = 2**30 if key == "peak_rss_bytes" else 1
        points = [
            (s, row[key] / scale) for s, row in zip(size, rows) if row[key] is not None
        ]
        axis.loglog(*zip(*points), "o-", color="tab:blue")
        for s, row in zip(size, rows):
            if row[key] is not None and not row["network"].startswith("er"):
                axis.annotate(row["network"], (s, row[key] / scale), fontsize=8,
                              xytext=(4, -10), textcoords="offset points")  # fmt: skip
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("nodes + edges")
        axis.grid(alpha=0.3, which="both")
    figure.suptitle(
        "dagc at scale: worm (282 nodes), larva (3,012), ER DAGs up to 10k / 300k"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| network | nodes | edges | levels | compile | module | import (cached) | step | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        step = f"{row['step_s']:.3f} s" if row["step_s"] is not None else row["error"]
        peak = row["peak_rss_bytes"]
        peak = f"{peak / 2**30:.2f} GiB" if peak else "-"
        lines.append(
            f"| {row['network']} | {row['nodes']:,} | {row['edges']:,} | {row['levels']:,} "
            f"| {row['compile_s']:.1f} s | {row['module_bytes'] / 1e6:.1f} MB, "
            f"{row['module_lines']:,} lines | {row['import_s']:.2f} s "
            f"({row['import_cached_s']:.2f} s) | {step} | {peak} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--er-nodes", type=int, nargs="+", default=[300, 1000, 3000, 10000]
    )
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    width = f"{args.channels} channels, batch {args.batch_size}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, connectome, dag_options in networks(args.er_nodes):
            print(f"[{label}] ...", file=sys.stderr, flush=True)
            rows.append(measure(label, connectome, dag_options, args, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            rows.sort(key=lambda row: row["nodes"] + row["edges"])
            report = {"width": width, "machine": machine_info("cpu"), "rows": rows}
            write_atomic(args.json, json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot, width)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
