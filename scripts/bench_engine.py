"""Temporary benchmark of the native CPU engine (issue 21) until `dagc bench` has its modes.

Times full training steps (forward, NLL loss, backward, Adam) of a generated network with
the engine (fp32, bf16) against the C++ kernels (`generated+cpp`), alternating the modes
step by step in one process so that a shared machine's drift hits them alike, then eval-mode
forward passes (images/s), also alternating. glibc's malloc thresholds are set as
`dagc bench` sets them (runtime.devices.keep_freed_cpu_memory).

    python scripts/bench_engine.py generated/hermaphrodite_net.py --batch 100 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from dagc.runtime import cpu_kernels, engine
from dagc.runtime.devices import keep_freed_cpu_memory
from dagc.runtime.loading import build_model, load_generated

MODES = ("cpp", "engine", "engine-bf16")


def use(module, mode: str) -> None:
    engine.uninstall(module)
    cpu_kernels.install(module)  # the fallback's primitives, and the cpp mode itself
    if mode.startswith("engine"):
        engine.install(module, "bf16" if mode.endswith("bf16") else "fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", nargs="?", default="generated/hermaphrodite_net.py")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--channels", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    parser.add_argument("--eval-passes", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    malloc_tuned = keep_freed_cpu_memory(torch.device("cpu"))
    module = load_generated(args.network)
    overrides = {"channels": args.channels} if args.channels else {}
    torch.manual_seed(0)
    models = {mode: build_model(module, **overrides) for mode in modes}
    state = models[modes[0]].state_dict()
    for model in models.values():
        model.load_state_dict(state)
    optimizers = {m: torch.optim.Adam(models[m].parameters(), lr=1e-3) for m in modes}
    x = torch.randn(args.batch, *module.INPUT_SHAPE)
    y = torch.randint(0, module.NUM_CLASSES, (args.batch,))

    def train_step(mode: str) -> tuple[float, float, float]:
        use(module, mode)
        model, optimizer = models[mode], optimizers[mode]
        model.train()
        start, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start, time.process_time() - cpu, loss.item()

    times = {m: [] for m in modes}
    cpu_times = {m: [] for m in modes}
    losses = {m: [] for m in modes}
    for m in modes:  # warm-up: builds, first-touch pages
        train_step(m)
    for _ in range(args.steps):
        for m in modes:
            seconds, cpu, loss = train_step(m)
            times[m].append(seconds)
            cpu_times[m].append(cpu)
            losses[m].append(loss)
            print(
                f"  {m:12s} step {seconds:6.3f} s (cpu {cpu:6.3f} s)  loss {loss:.5f}",
                flush=True,
            )

    eval_times = {m: [] for m in modes}
    with torch.no_grad():
        for m in modes:
            use(module, m)
            models[m].eval()
            models[m](x)
        for _ in range(args.eval_passes):
            for m in modes:
                use(module, m)
                start = time.perf_counter()
                models[m](x)
                eval_times[m].append(time.perf_counter() - start)

    base = statistics.median(times[modes[0]])
    report = {
        "network": args.network,
        "batch": args.batch,
        "channels": args.channels or module.CHANNELS,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "malloc_tuned": malloc_tuned,
        "peak_rss_gib_all_modes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        / 2**20,
        "modes": {},
    }
    print(f"\n{'mode':12s} {'median s/step':>14s} {'range':>17s} {'x ' + modes[0]:>8s} "
          f"{'cpu s/step':>11s} {'eval img/s':>11s}")  # fmt: skip
    for m in modes:
        median = statistics.median(times[m])
        images = args.batch / statistics.median(eval_times[m])
        report["modes"][m] = {
            "step_s": times[m],
            "step_cpu_s": cpu_times[m],
            "median_step_cpu_s": statistics.median(cpu_times[m]),
            "median_step_s": median,
            "ratio": median / base,
            "losses": losses[m],
            "eval_s": eval_times[m],
            "eval_images_per_s": images,
        }
        print(f"{m:12s} {median:14.3f} {min(times[m]):8.3f}-{max(times[m]):<8.3f} "
              f"{median / base:8.3f} {statistics.median(cpu_times[m]):11.3f} "
              f"{images:11.1f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
