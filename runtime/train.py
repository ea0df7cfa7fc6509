"""`dagc train`: the paper's protocol for any generated module, on CPU, one GPU or many (DDP).

Protocol (Park & Kim 2023): batch 100, Adam, lr 0.004 x 0.1 every 10,000 iterations, 15,000
iterations, inputs (x - 0.5) / 1, no augmentation, training set reshuffled every epoch, NLL
loss. The whole data set lives on the device as one uint8 tensor and batches are sliced
from it. Under `torchrun`, --batch-size stays the global batch: each of the N processes takes
batch/N images of every step, so the protocol does not change with the number of GPUs.

The rooms: devices.py (device, processes, precision), run_dir.py (checkpoints, resume,
summary), stopping.py (time limit and signals), evaluate.py; this file is the loop.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dagc import __version__
from dagc.compiler.errors import DagcError
from dagc.runtime.kernels import engine_hint, use_kernels

from .checkpoint import network_fingerprint
from .data import check_model_fits, dataset_info, load_split, normalise
from .devices import (
    amp_settings,
    device_kind,
    device_name,
    keep_freed_cpu_memory,
    pick_device,
    setup_distributed,
    use_cuda_graphs,
    wrap_model,
)
from .evaluate import evaluate
from .loading import build_model, load_generated
from .memory import check_training_memory, dataset_bytes
from .run_dir import Progress, RunDir
from .stopping import StopRequest

GRAPH_WARMUP_STEPS = 3  # eager steps before a CUDA-graph capture (they train as usual)


@dataclass
class TrainConfig:
    model: str
    dataset: str = "mnist"
    data_dir: str | None = None
    iterations: int = 15000
    batch_size: int = 100
    lr: float = 0.004
    lr_step: int = 10000
    lr_gamma: float = 0.1
    eval_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    compile: bool = (
        False  # Inductor's warm-up is minutes for this graph (docs/performance.md)
    )
    # "auto": the CPU engine (runtime/kernels/engine.py) on a CPU when it builds, else
    # torch's ops; "engine" insists on it; "cpp": the C++ kernels per neuron
    # (runtime/kernels/cpu.py); "triton": runtime/kernels/triton.py (CUDA); "torch": torch's
    kernels: str = "auto"
    # Activation storage: "fp32", or "bf16" (the CPU engine; checkpoints stay fp32, so a
    # run may switch on --resume)
    precision: str = "fp32"
    cuda_graphs: bool | None = None  # None: on for one CUDA process without --compile
    amp: str = "off"
    out: str | None = None
    resume: bool = False
    quiet: bool = False
    time_limit: float | None = None  # seconds of wall time for this session, then pause
    # A published test accuracy (%) for this network and data set, drawn as a line on
    # accuracy.png; the caller looks it up (dagc.runtime.studies.paper), the core never does.
    reference_accuracy: float | None = None
    command: str = field(default_factory=lambda: shlex.join(["dagc", *sys.argv[1:]]))


def train(config: TrainConfig) -> dict:
    """Train (or continue) a run; its summary, with "status" "complete" or "paused"."""
    stop = StopRequest(config.time_limit)  # the clock starts now: loading data counts
    check_config(config)
    dist = setup_distributed(device_kind(config.device))
    try:
        with stop:
            return _train(config, dist, stop)
    finally:
        dist.close()


def _train(config: TrainConfig, dist, stop: StopRequest) -> dict:
    from tqdm import tqdm

    # --- setup: device, data, model, optimizer, run folder ---------------------------------
    device = pick_device(device_kind(config.device), dist)
    keep_freed_cpu_memory(device)
    module, info = load_generated(config.model), dataset_info(config.dataset)
    check_model_fits(module, info, config.model)
    kernels = use_kernels(
        config.kernels, module, device, config.model, dist.main, config.precision
    )
    memory = check_training_memory(module, config.batch_size // dist.world, device,
                                   config.model, data_bytes=dataset_bytes(info),
                                   kernels=kernels, precision=config.precision)  # fmt: skip
    amp_dtype, scaler = amp_settings(config.amp, device)
    graphs = use_cuda_graphs(config.cuda_graphs, device, dist, config.compile, scaler)
    train_x, train_y = (
        t.to(device) for t in load_split(config.dataset, True, config.data_dir)
    )
    test_x, test_y = (
        t.to(device) for t in load_split(config.dataset, False, config.data_dir)
    )
    torch.manual_seed(config.seed)
    model = build_model(module).to(device)
    fingerprint = network_fingerprint(module)
    # A captured step reads the learning rate from device memory, so it is a tensor there.
    lr = torch.tensor(config.lr, device=device) if graphs else config.lr
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, capturable=graphs)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, config.lr_step, config.lr_gamma
    )
    run = RunDir(Path(config.out) if config.out else default_run_dir(config), dist.main)
    run.prepare(config.model, config.resume)
    hint = engine_hint(config.kernels, module, device, config.model)
    if hint and dist.main:  # once every input is checked: an error stays one line
        print(hint, file=sys.stderr)
    progress = Progress()
    if config.resume:
        progress = run.restore(model, optimizer, scheduler, scaler, device, fingerprint)
    step = make_step(wrap_model(model, device, dist, config.compile), optimizer, scaler,
                     amp_dtype, graphs)  # fmt: skip
    session_start = time.perf_counter()

    def save(iteration: int) -> None:
        progress.iteration = iteration
        progress.wall = wall_before + time.perf_counter() - session_start
        run.save(
            progress, model, optimizer, scheduler, scaler, asdict(config), fingerprint
        )
        dist.barrier()

    # --- the loop ---------------------------------------------------------------------------
    wall_before, last_eval = progress.wall, None
    loss_sum = torch.as_tensor(progress.loss_sum, dtype=torch.float32).to(device)
    since_log, timed, clock = progress.since_log, 0, time.perf_counter()
    batches = Batches(train_x, train_y, config, dist, device)
    bar = tqdm(total=config.iterations, initial=progress.iteration, unit="it",
               disable=config.quiet or not dist.main, dynamic_ncols=True, file=sys.stderr)  # fmt: skip
    model.train()
    done = progress.iteration
    for iteration in range(progress.iteration, config.iterations):
        x, y = batches(iteration)
        loss_sum += step(x, y)  # no host sync per step
        scheduler.step()
        since_log, timed, done = since_log + 1, timed + 1, iteration + 1
        at_eval = done % config.eval_every == 0 or done == config.iterations
        at_log = at_eval or done % config.log_every == 0
        # One process decides alone; a torchrun job agrees at log intervals (a collective).
        stopping = stop.requested() if dist.world == 1 else at_log and dist.any(
            stop.requested(), device)  # fmt: skip
        if not (at_log or stopping):
            continue
        seconds, clock = time.perf_counter() - clock, time.perf_counter()
        progress.elapsed += seconds
        if not torch.isfinite(loss_sum).item():  # one host sync per log interval
            bar.close()
            raise DagcError(
                f"training diverged: the loss of iterations {done - since_log + 1}-{done} "
                "is not finite; the last good checkpoint is kept in the run folder (try a "
                "lower --lr or --amp off)",
                run.path,
            )
        if at_log:
            row = {"iteration": done, "loss": (loss_sum / since_log).item(),
                   "lr": float(optimizer.param_groups[0]["lr"]),
                   "images_per_s": timed * config.batch_size / max(seconds, 1e-9)}  # fmt: skip
            if at_eval and dist.main:
                last_eval = evaluate(model, test_x, test_y, info.num_classes, amp_dtype,
                                     memory.eval_batch)  # fmt: skip
                row["test_accuracy"] = last_eval[0]
                # A deadline passed during the evaluation pauses here, not one step later.
                stopping = stopping or (dist.world == 1 and stop.requested())
            progress.metrics.append(row)
            run.append_metric(row)
            loss_sum.zero_()
            since_log = 0
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}",
                            acc=accuracy_text(progress.metrics))  # fmt: skip
        timed = 0
        progress.loss_sum, progress.since_log = loss_sum, since_log
        if at_eval or stopping:
            save(done)
        if stopping:
            break
        clock = time.perf_counter()  # evaluations and checkpoints are not training time
    bar.close()
    progress.iteration = done
    progress.wall = wall_before + time.perf_counter() - session_start
    if done < config.iterations:
        summary = paused_summary(config, progress, stop.reason)
        summary.update(device=device_name(device), kernels=kernels)
        run.write_summary(summary)
        return summary
    if not dist.main:
        return {"status": "complete"}
    # The loop always evaluates at the last iteration; a run resumed after it has not.
    last_eval = last_eval or evaluate(
        model, test_x, test_y, info.num_classes, amp_dtype, memory.eval_batch
    )
    summary = complete_summary(config, module, info, progress, last_eval, device, dist,
                               graphs, model)  # fmt: skip
    summary["kernels"] = kernels
    run.write_summary(summary)
    write_figures(run.path, summary, progress, last_eval, test_x, test_y, info)
    return summary


# --- the pieces the loop uses -----------------------------------------------------------------


def default_run_dir(config: TrainConfig) -> Path:
    return Path("runs") / f"{Path(config.model).stem}-{config.dataset}-{config.seed}"


def check_config(config: TrainConfig) -> None:
    for name in ("iterations", "batch_size", "lr_step", "eval_every", "log_every"):
        if getattr(config, name) < 1:
            raise DagcError(f"--{name.replace('_', '-')} must be at least 1")
    if config.lr <= 0 or not 0 < config.lr_gamma <= 1:
        raise DagcError("--lr must be positive and --lr-gamma in (0, 1]")
    if config.time_limit is not None and config.time_limit <= 0:
        raise DagcError("--time-limit must be positive")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.batch_size % world:
        raise DagcError(
            f"--batch-size {config.batch_size} (the global batch) must divide evenly among "
            f"{world} processes"
        )


def epoch_order(epoch: int, config: TrainConfig, size: int) -> torch.Tensor:
    """Each epoch's order is a seeded permutation computed from (seed, epoch) alone, so a
    resumed run sees exactly the batches an uninterrupted one would, with no RNG state.
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)


class Batches:
    """`batches(iteration)` -> this process's (inputs, labels) of global batch `iteration`."""

    def __init__(self, images, labels, config: TrainConfig, dist, device):
        self.images, self.labels, self.config, self.dist = images, labels, config, dist
        self.device = device
        self.order = None  # (epoch, that epoch's permutation on the device)

    def __call__(self, iteration: int):
        size, batch = len(self.labels), self.config.batch_size
        epoch, step = divmod(iteration, size // batch)
        # The epoch's permutation goes to the device once per epoch, not once per step.
        if self.order is None or self.order[0] != epoch:
            order = epoch_order(epoch, self.config, size).to(self.device)
            self.order = (epoch, order)
        share = batch // self.dist.world
        start = step * batch + self.dist.rank * share
        index = self.order[1][start : start + share]
        return normalise(self.images[index]), self.labels[index]


def make_step(model, optimizer, scaler, amp_dtype, graphs: bool):
    """step(x, y) -> the batch's loss (a device tensor): forward, backward, optimizer step."""

    def loss_fn(out, target):
        return F.nll_loss(out.float(), target)

    if graphs:
        from .graphs import GraphedStep

        graphed = None

        def graphed_step(x, y):
            nonlocal graphed  # built on the first batch: it needs example tensors
            if graphed is None:
                graphed = GraphedStep(model, optimizer, loss_fn, x, y, amp_dtype,
                                      warmup_steps=GRAPH_WARMUP_STEPS)  # fmt: skip
            return graphed(x, y)

        return graphed_step

    def eager_step(x, y):
        with torch.autocast(
            x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach()

    return eager_step


def accuracy_text(metrics: list[dict]) -> str:
    evaluated = [row["test_accuracy"] for row in metrics if "test_accuracy" in row]
    return f"{100 * evaluated[-1]:.2f}%" if evaluated else "-"


# --- the summary and figures ------------------------------------------------------------------


def paused_summary(config: TrainConfig, progress: Progress, reason: str | None) -> dict:
    evaluated = [row for row in progress.metrics if "test_accuracy" in row]
    return {
        "status": "paused",
        "iteration": progress.iteration,
        "iterations": config.iterations,
        "stopped_by": reason,
        "last_test_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
        "model": Path(config.model).name,
        "dataset": config.dataset,
        "train_wall_time_s": progress.elapsed,
        "wall_time_s": progress.wall,
        "seed": config.seed,
        "command": config.command,
        "resume_with": "the same command with --resume",
        "config": asdict(config),
    }


def complete_summary(config, module, info, progress, last_eval, device, dist, graphs,
                     model) -> dict:  # fmt: skip
    accuracy, per_class, _, _ = last_eval
    evaluated = [row for row in progress.metrics if "test_accuracy" in row]
    best = max(evaluated, key=lambda row: row["test_accuracy"]) if evaluated else None
    speeds = sorted(row["images_per_s"] for row in progress.metrics)
    return {
        "status": "complete",
        "model": Path(config.model).name,
        "model_class": module.MODEL_CLASS,
        "connectome": getattr(module, "CONNECTOME", ""),
        "dag": getattr(module, "DAG_KIND", ""),
        "dataset": config.dataset,
        "final_test_accuracy": accuracy,
        "best_test_accuracy": best["test_accuracy"] if best else accuracy,
        "best_iteration": best["iteration"] if best else config.iterations,
        "per_class_accuracy": dict(zip(info.class_names, per_class)),
        "iteration": progress.iteration,
        "iterations": config.iterations,
        "batch_size": config.batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "channels": module.CHANNELS,
        "fingerprint": network_fingerprint(module),
        "train_wall_time_s": progress.elapsed,
        "wall_time_s": progress.wall,
        "median_images_per_s": speeds[len(speeds) // 2] if speeds else None,
        "device": device_name(device),
        "processes": dist.world,
        "amp": config.amp,
        "precision": config.precision,
        "compile": config.compile,
        "cuda_graphs": graphs,
        "torch": torch.__version__,
        "dagc": __version__,
        "seed": config.seed,
        "command": config.command,
        "config": asdict(config),
    }


def write_figures(
    folder: Path, summary, progress, last_eval, test_x, test_y, info
) -> None:
    from . import figures

    _, _, predicted, confusion = last_eval
    points = [(r["iteration"], 100 * r["test_accuracy"]) for r in progress.metrics
              if "test_accuracy" in r]  # fmt: skip
    title = f"{summary['connectome'] or summary['model']} on {summary['dataset']}"
    reference = summary["config"]["reference_accuracy"]
    figures.plot_accuracy(
        points, folder / "accuracy.png", title, paper_accuracy=reference
    )
    figures.plot_examples(test_x.cpu(), test_y.cpu(), predicted.cpu(), info.class_names,
                          folder / "examples.png")  # fmt: skip
    figures.plot_confusion(confusion.cpu(), info.class_names, folder / "confusion.png",
                           f"{title}: confusion matrix")  # fmt: skip
