#!/usr/bin/env python3
"""Time torch.compile (default mode, Inductor) on a generated module: the first training step
(forward + backward, where compilation happens) against an eager step, on the CPU. Inductor
starts from an empty cache (a temporary TORCHINDUCTOR_CACHE_DIR) unless --warm-cache; after
the first compiled step, eager and compiled steps alternate --steps times, in one process, so
that the machine's drift hits both alike.

    python scripts/measure_compile.py generated/hermaphrodite_net.py --steps 5 --json out.json
    # the alternative to one opaque DAG op: per-node modules (--backward autograd) whose
    # node body (conv + BatchNorm) is one nested compile region, the sums left to Inductor
    python scripts/measure_compile.py NET_AUTOGRAD.py --nested-region --channels 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from dagc.runtime import kernels
from dagc.runtime.devices import keep_freed_cpu_memory
from dagc.runtime.loading import build_model, load_generated


def step(model, x, y):
    loss = F.nll_loss(model(x), y)
    loss.backward()
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--channels", type=int, help="default: the model's")
    parser.add_argument(
        "--nested-region",
        action="store_true",
        help="compile each node's body once (torch.compiler.nested_compile_region); "
        "needs a module compiled with --backward autograd",
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="alternating steps of each"
    )
    parser.add_argument(
        "--warm-cache", action="store_true", help="keep Inductor's cache"
    )
    parser.add_argument(
        "--kernels",
        choices=["torch", "cpp"],
        default="torch",
        help="cpp: dagc's C++ kernels inside the op (dagc.runtime.kernels.cpu)",
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    # as dagc train and dagc bench do on a CPU
    malloc_tuned = keep_freed_cpu_memory(torch.device("cpu"))
    if not args.warm_cache:  # read by Inductor when it first compiles, after this
        cache = tempfile.TemporaryDirectory(prefix="inductor-")  # removed at exit
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    fullgraph = not args.nested_region  # the nested-region variant needs graph breaks
    module = load_generated(args.model)
    if args.kernels == "cpp":
        kernels.install(module, "cpp")
    torch.manual_seed(0)
    overrides = {"channels": args.channels} if args.channels else {}
    model = build_model(module, **overrides)
    if args.nested_region:
        model_class = type(model)
        model_class.node = torch.compiler.nested_compile_region(model_class.node)
    x = torch.randn(args.batch_size, *module.INPUT_SHAPE)
    y = torch.randint(0, module.NUM_CLASSES, (args.batch_size,))
    step(model, x, y)  # warm up the eager kernels
    compiled = torch.compile(model, fullgraph=fullgraph)
    start = time.perf_counter()
    step(compiled, x, y)
    first = time.perf_counter() - start
    eager_steps, compiled_steps = [], []
    for _ in range(args.steps):
        for runner, times in ((model, eager_steps), (compiled, compiled_steps)):
            start = time.perf_counter()
            step(runner, x, y)
            times.append(time.perf_counter() - start)
    eager, steady = statistics.median(eager_steps), statistics.median(compiled_steps)
    result = {
        "model": args.model,
        "layout": module.LAYOUT,
        "backward": getattr(module, "BACKWARD", "autograd"),
        "nested_region": args.nested_region,
        "kernels": args.kernels,
        "malloc_keeps_freed_memory": malloc_tuned,
        "nodes": len(module.NODES),
        "edges": len(module.EDGES),
        "channels": args.channels or module.CHANNELS,
        "batch_size": args.batch_size,
        "eager_step_s": eager,
        "compiled_first_step_s": first,
        "compile_time_s": first - steady,
        "compiled_step_s": steady,
        "eager_steps_s": eager_steps,
        "compiled_steps_s": compiled_steps,
        "inductor_cache": "warm" if args.warm_cache else "cold (empty cache directory)",
        "fullgraph": fullgraph,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
