"""Check and time dagc.runtime.kernels against the pure-torch primitives, one JSON out.

On a GPU (the measurement docs/kernels.md still needs):
    python scripts/kernels_check.py --device cuda --json out/kernels-h200.json
On this CPU, only that the script works (Triton's interpreter, tiny shapes, no timing value):
    TRITON_INTERPRET=1 python scripts/kernels_check.py --device cpu --shape 2,3,14,14 --reps 1

Each row: one primitive, dtype and fan-in k at the given activation shape; the largest error
against a float64 reference of the stored values (and the torch primitive's error, for scale);
the median time of the Triton kernel and of the torch primitive; the bytes the kernel must move
(its floor: each input read once, the output written once) and the bandwidth that implies.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from dagc.runtime.kernels import triton as kernels


def torch_weighted_relu(w, *inputs):
    out = inputs[0] * w[0]
    for j in range(1, len(inputs)):
        out.addcmul_(inputs[j], w[j])
    return out.relu_()


def torch_gather(w, *grads):
    out = grads[0] * w[0]
    for j in range(1, len(grads)):
        out.addcmul_(grads[j], w[j])
    return out


def torch_dots(h, *inputs):
    return torch.stack([torch.dot(h.flatten(), x.flatten()) for x in inputs]).float()


def timed(fn, device, reps):
    """Median seconds of `reps` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--shape", default="100,78,14,14", help="B,C,H,W of one activation"
    )
    parser.add_argument("--ks", default="1,4,16,80", help="fan-ins to check")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", help="write the rows and the compile times here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    shape = tuple(int(s) for s in args.shape.split(","))
    n = torch.Size(shape).numel()
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        size = torch.tensor([], dtype=dtype).element_size()
        for k in (int(s) for s in args.ks.split(",")):
            g = torch.Generator(device=device).manual_seed(k)
            xs = [
                torch.randn(shape, device=device, generator=g).to(dtype)
                for _ in range(k)
            ]
            h, p = (
                torch.randn(shape, device=device, generator=g).to(dtype)
                for _ in range(2)
            )
            w = torch.randn(k + 3, device=device, generator=g)[
                3:
            ]  # a view, like a slice
            exact = sum(w[j].double() * x.double() for j, x in enumerate(xs))
            hm = torch.where(p > 0, h, torch.zeros_like(h))
            exact_dots = torch.stack([(hm.double() * x.double()).sum() for x in xs])
            cases = {
                "weighted_relu": (
                    lambda: kernels.weighted_relu(w, *xs),
                    lambda: torch_weighted_relu(w, *xs),
                    exact.relu(),
                    (k + 1) * n * size,
                ),
                "gather": (
                    lambda: kernels.gather(w, *xs),
                    lambda: torch_gather(w, *xs),
                    exact,
                    (k + 1) * n * size,
                ),
                "dots": (
                    lambda: kernels.dots(hm, *xs),
                    lambda: torch_dots(hm, *xs),
                    exact_dots,
                    (k + 1) * n * size,
                ),
                "relu_mask_dots": (
                    lambda: kernels.relu_mask_dots(h, p, *xs)[1],
                    lambda: kernels.reference_relu_mask_dots(h, p, *xs)[1],
                    exact_dots,
                    (k + 3) * n * size,
                ),
            }
            for name, (fast, slow, reference, floor_bytes) in cases.items():
                scale = reference.abs().max().item() or 1.0
                t_fast = timed(fast, device, args.reps)
                t_slow = timed(slow, device, args.reps)
                row = {
                    "op": name,
                    "dtype": dtype_name,
                    "k": k,
                    "max_rel_error": (fast().double() - reference).abs().max().item()
                    / scale,
                    "torch_max_rel_error": (slow().double() - reference)
                    .abs()
                    .max()
                    .item()
                    / scale,
                    "triton_ms": t_fast * 1e3,
                    "torch_ms": t_slow * 1e3,
                    "speedup": t_slow / t_fast,
                    "floor_bytes": floor_bytes,
                    "triton_GBps": floor_bytes / t_fast / 1e9,
                }
                rows.append(row)
                print(
                    f"{name:15s} {dtype_name:9s} k={k:3d}  err {row['max_rel_error']:.1e} "
                    f"(torch {row['torch_max_rel_error']:.1e})  triton {row['triton_ms']:8.3f} ms  "
                    f"torch {row['torch_ms']:8.3f} ms  x{row['speedup']:.2f}  "
                    f"{row['triton_GBps']:7.1f} GB/s",
                    flush=True,
                )
    result = {
        "device": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor()
        ),
        "torch": torch.__version__,
        "triton": getattr(kernels.triton, "__version__", None),
        "interpreter": kernels.interpreting(),
        "shape": shape,
        "config": kernels.CONFIG,
        "compile_seconds": kernels.compile_seconds,
        "rows": rows,
    }
    print("first-call seconds (compile + run):", json.dumps(kernels.compile_seconds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
