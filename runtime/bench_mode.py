"""One `dagc bench` mode, timed in its own process: `python -m dagc.runtime.bench_mode SPEC`.

The parent (bench.py) writes the spec and reads back the one line this prints.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from .bench import Mode
from .floor import sync


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_mode(spec: dict) -> dict:
    """Time one mode (in this process); `spec` is what the parent sends."""
    import torch
    import torch.nn.functional as F

    from dagc.runtime.kernels import use_kernels

    from .devices import keep_freed_cpu_memory
    from .graphs import GraphedStep, capture_forward
    from .interpreter import InterpretedNet
    from .loading import build_model, load_generated

    mode = Mode(**spec["mode"])
    device = torch.device(spec["device"])
    # As `dagc train` does (every mode alike).
    malloc_tuned = keep_freed_cpu_memory(device)
    module = load_generated(spec["model_path"])
    start = time.perf_counter()
    # As `dagc train` chooses them; the C++ kernels are built here unless cached.
    use_kernels(
        mode.kernels, module, device, spec["model_path"], precision=mode.precision
    )
    kernel_setup_s = time.perf_counter() - start
    overrides = {"channels": spec["channels"]} if spec["channels"] else {}
    torch.manual_seed(0)
    if mode.layout is None:
        model = InterpretedNet(module, **overrides)
    else:
        model = build_model(module, **overrides)
    memory_format = (
        torch.channels_last if mode.channels_last else torch.contiguous_format
    )
    model = model.to(device)
    if mode.channels_last:  # 4-D weights only: the per-node tables are 5-D
        for parameter in model.parameters():
            if parameter.dim() == 4:
                parameter.data = parameter.data.contiguous(memory_format=memory_format)
    batch = spec["batch_size"]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *module.INPUT_SHAPE, generator=generator)
    x = x.to(device, memory_format=memory_format)
    y = torch.randint(0, module.NUM_CLASSES, (batch,), generator=generator).to(device)
    amp_dtype = torch.bfloat16 if mode.amp == "bf16" else None
    lr = torch.tensor(0.004, device=device) if mode.cuda_graph else 0.004
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, capturable=mode.cuda_graph)
    step_model = torch.compile(model, mode=mode.compile) if mode.compile else model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def eager_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            loss = F.nll_loss(step_model(x).float(), y)
        loss.backward()
        optimizer.step()

    if mode.cuda_graph:
        graphed = GraphedStep(
            step_model,
            optimizer,
            lambda out, t: F.nll_loss(out.float(), t),
            x,
            y,
            amp_dtype,
        )

        def train_step():
            graphed(x, y)

    else:
        train_step = eager_step

    first_steps, times = [], []
    for _ in range(spec["warmup"]):
        start = time.perf_counter()
        if mode.cuda_graph:
            graphed.warmup(x, y)
        else:
            train_step()
        sync(device)
        first_steps.append(time.perf_counter() - start)
    capture_s = None
    if mode.cuda_graph:
        start = time.perf_counter()
        graphed.capture()
        sync(device)
        capture_s = time.perf_counter() - start
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        train_step()
        sync(device)
        times.append(time.perf_counter() - start)
    result = {
        "first_step_s": first_steps[0],
        "warmup_steps_s": first_steps,
        "step_s": times,
        "step_median_s": statistics.median(times),
        "train_images_per_s": batch / statistics.median(times),
    }
    if capture_s is not None:
        result["capture_s"] = capture_s
    if mode.kernels == "triton":
        from dagc.runtime.kernels.triton import compile_seconds

        result["kernel_compile_s"] = dict(compile_seconds)
    if mode.kernels in ("cpp", "engine"):
        result["kernel_build_s"] = kernel_setup_s
    if device.type == "cpu":
        result["malloc_keeps_freed_memory"] = malloc_tuned
    if mode.compile:
        result["compile_s"] = max(first_steps[0] - result["step_median_s"], 0.0)
        result["inductor_cache"] = "cold: a fresh TORCHINDUCTOR_CACHE_DIR (run_child)"
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        result["peak_memory_bytes"] = _peak_rss_bytes()
        result["peak_memory_kind"] = "process peak RSS"

    # Inference: eval mode, no autograd, the same batch.
    model.eval()
    with torch.no_grad():
        if mode.cuda_graph:
            forward = capture_forward(model, x)
        else:

            def forward(batch_x):
                with torch.autocast(
                    device.type, dtype=amp_dtype, enabled=amp_dtype is not None
                ):
                    return step_model(batch_x)

        infer_times = []
        for i in range(1 + spec["steps"]):
            start = time.perf_counter()
            forward(x)
            sync(device)
            if i:
                infer_times.append(time.perf_counter() - start)
    result["infer_median_s"] = statistics.median(infer_times)
    result["infer_images_per_s"] = batch / result["infer_median_s"]
    return result


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = {"ok": True, **run_mode(spec)}
    except Exception as exc:  # reported in the table, the other modes still run
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print("DAGC_BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    child_main(sys.argv[1])
