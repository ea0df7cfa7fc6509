"""`dagc bench`: every way of running one network, timed the same way, side by side.

Each mode runs in its own child process (clean peak-memory figures, a timeout that can stop a
runaway compile, no allocator state carried from one mode to the next). A mode builds the
model with seed 0, takes `warmup` training steps, then times `steps` more one by one
(synchronising the GPU after each) and reports the median; inference is timed the same way
on the same batch in eval mode. The reference interpreter in eager mode is the baseline
every ratio divides by.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dagc import __version__
from dagc.compiler.errors import DagcError
from dagc.compiler.output import write_atomic


@dataclass(frozen=True)
class Mode:
    name: str
    layout: str | None  # None: the reference interpreter (walks the graph at run time)
    backward: str = (
        "autograd"  # or "generated": the whole DAG as one op, reverse pass rendered
    )
    compile: str | None = None  # torch.compile mode
    cuda_graph: bool = False  # capture the whole step as one CUDA graph
    amp: str = "off"  # "bf16": autocast
    # "triton": dagc.runtime.kernels replaces the per-node sums (CUDA); "cpp":
    # dagc.runtime.cpu_kernels replaces the sums and the node convolutions (CPU)
    kernels: str = "torch"
    channels_last: bool = False
    about: str = ""


MODES = {
    mode.name: mode
    for mode in (
        Mode("interpreter", None, about="reference: Kahn walk + stack per node, eager"),
        Mode("flat", "flat", about="one statement per node, autograd backward, eager"),
        Mode("levels", "levels", about="one op per level, autograd backward, eager"),
        Mode(
            "generated",
            "flat",
            backward="generated",
            about="flat, DAG as one op with the generated reverse pass, eager",
        ),
        Mode(
            "generated+compile",
            "flat",
            backward="generated",
            compile="default",
            about="torch.compile around the one DAG op",
        ),
        Mode(
            "generated+cpp",
            "flat",
            backward="generated",
            kernels="cpp",
            about="C++ sums, gathers, dots and node convolutions, eager (CPU)",
        ),
        Mode(
            "generated+cpp+compile",
            "flat",
            backward="generated",
            kernels="cpp",
            compile="default",
            about="the C++ kernels inside the one DAG op, torch.compile around it (CPU)",
        ),
        Mode(
            "generated+cudagraph",
            "flat",
            backward="generated",
            cuda_graph=True,
            about="generated reverse pass, whole step replayed",
        ),
        Mode(
            "generated+triton+cudagraph",
            "flat",
            backward="generated",
            kernels="triton",
            cuda_graph=True,
            about="Triton sums, gathers and dots, whole step replayed",
        ),
        Mode("flat+bf16", "flat", amp="bf16", about="bf16 autocast"),
        Mode("flat+channels_last", "flat", channels_last=True),
        Mode("flat+compile", "flat", compile="default", about="torch.compile"),
        Mode("levels+compile", "levels", compile="default", about="torch.compile"),
        Mode("flat+cudagraph", "flat", cuda_graph=True, about="whole step replayed"),
        Mode("levels+cudagraph", "levels", cuda_graph=True),
        Mode("flat+bf16+cudagraph", "flat", amp="bf16", cuda_graph=True),
        Mode(
            "levels+compile-reduce-overhead",
            "levels",
            compile="reduce-overhead",
            about="torch.compile with CUDA graphs",
        ),
    )
}
DEFAULT_MODES = {
    # torch.compile of the per-node modules warms up for 8-18 minutes on a 2-core CPU and
    # did not end within 150 s on an H100; with the generated backward the DAG is one opaque
    # op and compiles in seconds. bf16 and channels_last measured slower on the CPU
    # (docs/performance.md): opt in with --modes.
    "cpu": (
        "interpreter",
        "flat",
        "levels",
        "generated",
        "generated+compile",
        "generated+cpp",
        "generated+cpp+compile",
    ),
    "cuda": (
        "interpreter",
        "flat",
        "levels",
        "generated",
        "flat+cudagraph",
        "levels+cudagraph",
        "flat+bf16+cudagraph",
        "generated+cudagraph",
        "generated+triton+cudagraph",
        "generated+compile",
    ),
}
BASELINE = "interpreter"


@dataclass
class BenchConfig:
    model: str
    device: str = "auto"
    batch_size: int = 100
    steps: int = 5
    warmup: int = 2
    modes: tuple[str, ...] = ()
    channels: int | None = None
    mode_timeout: float = 1800.0
    json_out: str | None = None


# --- the child: one mode ------------------------------------------------------------------


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(spec: dict) -> dict:
    """Time one mode (in this process); `spec` is what the parent sends."""
    import torch
    import torch.nn.functional as F

    from .devices import keep_freed_cpu_memory
    from .graphs import GraphedStep, capture_forward
    from .interpreter import InterpretedNet
    from .loading import build_model, load_generated
    from .primitives import use_kernels

    mode = Mode(**spec["mode"])
    device = torch.device(spec["device"])
    # As `dagc train` does (every mode alike).
    malloc_tuned = keep_freed_cpu_memory(device)
    module = load_generated(spec["model_path"])
    start = time.perf_counter()
    # As `dagc train` chooses them; the C++ kernels are built here unless cached.
    use_kernels(mode.kernels, module, device, spec["model_path"])
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
        _sync(device)
        first_steps.append(time.perf_counter() - start)
    capture_s = None
    if mode.cuda_graph:
        start = time.perf_counter()
        graphed.capture()
        _sync(device)
        capture_s = time.perf_counter() - start
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        train_step()
        _sync(device)
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
        from .kernels import compile_seconds

        result["kernel_compile_s"] = dict(compile_seconds)
    if mode.kernels == "cpp":
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
            _sync(device)
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


# --- the floor: what one training step must at least move and compute --------------------


def step_floor_counts(module, channels: int, batch: int) -> dict:
    """Bytes and FLOPs of one training step at two floors (float32).

    Unit: one activation pass, batch x channels x (input/2)^2 floats read or written once.

    `activation_passes`, every op ideally fused but each op on its own (the floor before the
    generated reverse pass): per node with k inputs, forward: read k inputs and write the
    sum, ReLU fused into it (k + 1); depthwise conv (read 1, write 1); BatchNorm (statistics
    read 1, normalise read 1 and write 1). Backward: BatchNorm (read grad and input, reduce
    and write: 5); conv (input grad read 1 write 1, weight grad read 2); ReLU mask (read 2,
    write 1); per input edge, the weight's gradient reads the input once and the input's
    gradient is read and written once (3 per edge; the node's own gradient stays in cache).
    So 18 + 4k per node.

    `fused_passes`, a node's work fused into few kernels and each input read once forward,
    once by its consumers' gradient gather and once for the edge-weight gradients: 3 per
    edge; per node, forward: write the sum (1), conv fused with the BatchNorm statistics
    (read 1, write 1), normalise (read 1, write 1); backward: the gather writes the output
    gradient while reducing it against the conv output for BatchNorm (write 1, read 1), then
    one pass for BatchNorm's input gradient, the conv's input and weight gradients and the
    ReLU mask (read gradient, conv output and conv input, write 1: 4). So 11 + 3k per node.

    Stem, sink and the optimizer are under 1 % and left out.
    """
    size = module.INPUT_SHAPE[1]
    spatial = ((size + 1) // 2) ** 2  # the stem's stride-2 conv
    elements = batch * channels * spatial
    nodes, edges = len(module.NODES), len(module.EDGES)
    passes = 18 * nodes + 4 * edges
    fused = 11 * nodes + 3 * edges
    flops = elements * (
        nodes * (2 * 9 * 3 + 10) + edges * 6
    )  # conv fwd+2 bwd, BN, edges
    return {
        "activation_bytes": 4 * elements,
        "activation_passes": passes,
        "bytes": 4 * elements * passes,
        "fused_passes": fused,
        "fused_bytes": 4 * elements * fused,
        "flops": flops,
    }


def measure_machine(device_kind: str) -> dict:
    """Streaming bandwidth (a copy far larger than the caches) and float32 matmul rate."""
    import torch

    device = torch.device("cuda" if device_kind == "cuda" else "cpu")
    n = (1 << 30) // 4  # 1 GiB per side: far beyond any cache
    source = torch.ones(n, device=device)
    target = torch.empty_like(source)

    def timed(fn, repeat):
        fn()
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        _sync(device)
        return (time.perf_counter() - start) / repeat

    copy_s = timed(lambda: target.copy_(source), 10 if device_kind == "cuda" else 3)  # noqa: F821
    m = 4096 if device_kind == "cuda" else 1024
    a = torch.randn(m, m, device=device)
    matmul_s = timed(lambda: a @ a, 10 if device_kind == "cuda" else 3)
    del source, target
    return {
        "copy_bandwidth_bytes_per_s": 2 * 4 * n / copy_s,  # read + write
        "fp32_matmul_flops_per_s": 2 * m**3 / matmul_s,
    }


def step_floor(module, channels: int, batch: int, machine: dict) -> dict:
    """The counts and the best possible step time on a machine `measure_machine` measured."""
    counts = step_floor_counts(module, channels, batch)
    compute_s = counts["flops"] / machine["fp32_matmul_flops_per_s"]
    bandwidth = machine["copy_bandwidth_bytes_per_s"]
    return {
        **counts,
        "step_s": max(counts["bytes"] / bandwidth, compute_s),
        "fused_step_s": max(counts["fused_bytes"] / bandwidth, compute_s),
    }


# --- the parent: all modes ----------------------------------------------------------------


def machine_info(device_kind: str) -> dict:
    import torch

    info = {
        "dagc": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device_kind == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def resolve_modes(requested: tuple[str, ...], device_kind: str) -> list[Mode]:
    names = list(requested) or list(DEFAULT_MODES[device_kind])
    if names == ["all"]:
        names = list(MODES)
    unknown = [name for name in names if name not in MODES]
    if unknown:
        raise DagcError(
            f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)} or 'all'"
        )
    if BASELINE not in names:
        names.insert(0, BASELINE)
    modes = [MODES[name] for name in names]
    if device_kind == "cuda":
        wrong = [m.name for m in modes if m.kernels == "cpp"]
        needs = "the CPU"
    else:
        wrong = [m.name for m in modes if m.cuda_graph or m.kernels == "triton"]
        needs = "CUDA"
    if wrong and requested != ("all",):  # "all": every mode this device can run
        raise DagcError(
            f"mode(s) {', '.join(wrong)} need {needs} (device: {device_kind})"
        )
    return [m for m in modes if m.name not in wrong]


def run_child(spec: dict, timeout: float, workdir: Path) -> dict:
    slug = spec["mode"]["name"].replace("+", "_")
    spec_path = workdir / f"{slug}.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "dagc.runtime.bench", str(spec_path)]
    env = dict(os.environ)
    if spec["mode"]["compile"]:
        # A cold cache: the warm-up a first run pays, not a rerun's cache hit (which
        # skips code generation and the C++ compiler).
        cache = workdir / f"inductor-cache-{slug}"
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
        env["TRITON_CACHE_DIR"] = str(cache / "triton")
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("DAGC_BENCH_RESULT "):
            result = json.loads(line.split(" ", 1)[1])
            result["wall_s"] = time.perf_counter() - start
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"ok": False, "error": f"exit {done.returncode}: {tail[0][:300]}"}


def bench(config: BenchConfig, echo=print) -> dict:
    from .devices import device_kind
    from .loading import load_generated
    from .variants import render_layout

    kind = device_kind(config.device)
    if config.steps < 1 or config.warmup < 1:
        raise DagcError("--steps and --warmup must be at least 1")
    if config.batch_size < 2:
        raise DagcError("--batch-size must be at least 2 (BatchNorm needs two images)")
    if config.channels is not None and config.channels < 1:
        raise DagcError("--channels must be at least 1")
    module = load_generated(config.model)
    modes = resolve_modes(config.modes, kind)
    channels = config.channels or module.CHANNELS
    report = {
        "model": Path(config.model).name,
        "network": {
            "connectome": module.CONNECTOME,
            "dag": module.DAG_KIND,
            "nodes": len(module.NODES),
            "edges": len(module.EDGES),
            "levels": len(module.LEVELS),
            "channels": channels,
        },
        "device": kind,
        "batch_size": config.batch_size,
        "steps": config.steps,
        "warmup": config.warmup,
        "machine": machine_info(kind),
        "date": time.strftime("%Y-%m-%d"),
        "machine_measured": measure_machine(kind),
        "modes": {},
    }
    report["floor"] = step_floor(
        module, channels, config.batch_size, report["machine_measured"]
    )
    with tempfile.TemporaryDirectory(prefix="dagc-bench-") as tmp:
        workdir = Path(tmp)
        # The file itself serves its own variant; the others are rendered from its tables.
        own = (module.LAYOUT, getattr(module, "BACKWARD", "autograd"))
        variant_files = {own: Path(config.model).resolve()}
        for layout, backward in {(m.layout, m.backward) for m in modes} - {own}:
            if layout is None:
                continue
            path = workdir / f"{layout}_{backward}_net.py"
            path.write_text(render_layout(module, layout, backward))
            variant_files[(layout, backward)] = path
        for mode in modes:
            echo(f"[{mode.name}] ...")
            variant = (mode.layout, mode.backward) if mode.layout else own
            spec = {
                "mode": asdict(mode),
                "device": "cuda" if kind == "cuda" else "cpu",
                "model_path": str(variant_files[variant]),
                "channels": channels,
                "batch_size": config.batch_size,
                "steps": config.steps,
                "warmup": config.warmup,
            }
            result = run_child(spec, config.mode_timeout, workdir)
            if result.get("ok"):
                floor = report["floor"]
                result["step_vs_floor"] = result["step_median_s"] / floor["step_s"]
                result["step_vs_fused_floor"] = (
                    result["step_median_s"] / floor["fused_step_s"]
                )
            report["modes"][mode.name] = {"about": mode.about, **result}
            echo(f"[{mode.name}] " + _one_line(result))
            add_ratios(report)
            # After every mode, so that a stopped bench keeps what it measured.
            if config.json_out:
                write_atomic(Path(config.json_out), json.dumps(report, indent=2) + "\n")
    return report


def _one_line(result: dict) -> str:
    if not result.get("ok"):
        return "failed: " + result.get("error", "?")
    return (
        f"train {result['train_images_per_s']:.0f} img/s "
        f"({result['step_median_s'] * 1000:.1f} ms/step), "
        f"infer {result['infer_images_per_s']:.0f} img/s"
    )


def add_ratios(report: dict) -> None:
    base = report["modes"].get(BASELINE, {})
    best = None
    for name, result in report["modes"].items():
        if not result.get("ok") or not base.get("ok"):
            continue
        result["train_vs_interpreter"] = (
            result["train_images_per_s"] / base["train_images_per_s"]
        )
        result["infer_vs_interpreter"] = (
            result["infer_images_per_s"] / base["infer_images_per_s"]
        )
        flat = report["modes"].get("flat", {})
        if flat.get("ok"):  # the per-node autograd module the targets are set against
            result["train_vs_flat"] = (
                result["train_images_per_s"] / flat["train_images_per_s"]
            )
        if best is None or result["train_images_per_s"] > best[1]:
            best = (name, result["train_images_per_s"])
    if best:
        report["best_train_mode"] = best[0]
        report["best_train_vs_interpreter"] = report["modes"][best[0]][
            "train_vs_interpreter"
        ]


def format_table(report: dict) -> str:
    header = ("mode", "train img/s", "ms/step", "x interp", "x flat", "x floor", "x fused",
              "infer img/s", "x interp", "peak mem", "compile s")  # fmt: skip
    rows, failures = [header], []
    for name, r in report["modes"].items():
        if not r.get("ok"):
            failures.append(f"{name}: failed: {r.get('error', '?')}")
            continue
        rows.append(
            (
                name,
                f"{r['train_images_per_s']:.0f}",
                f"{r['step_median_s'] * 1000:.1f}",
                f"{r.get('train_vs_interpreter', float('nan')):.2f}",
                f"{r.get('train_vs_flat', float('nan')):.2f}",
                f"{r.get('step_vs_floor', float('nan')):.1f}",
                f"{r.get('step_vs_fused_floor', float('nan')):.1f}",
                f"{r['infer_images_per_s']:.0f}",
                f"{r.get('infer_vs_interpreter', float('nan')):.2f}",
                f"{r['peak_memory_bytes'] / 2**30:.2f} GiB",
                f"{r['compile_s']:.0f}" if "compile_s" in r else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        )
        for row in rows
    ]
    if "floor" in report:
        floor = report["floor"]
        lines.append(
            f"floor: {floor['bytes'] / 1e9:.1f} GB and {floor['flops'] / 1e9:.0f} GFLOP per "
            f"step -> {floor['step_s'] * 1000:.1f} ms at the measured "
            f"{report['machine_measured']['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s"
        )
        if "fused_bytes" in floor:
            lines.append(
                f"fused floor (each input read once per pass): "
                f"{floor['fused_bytes'] / 1e9:.1f} GB per step -> "
                f"{floor['fused_step_s'] * 1000:.1f} ms"
            )
    return "\n".join(lines + failures)


if __name__ == "__main__":
    child_main(sys.argv[1])
