"""`dagc train`: the paper's protocol for any generated module, on CPU, one GPU or many (DDP).

Protocol (Park & Kim 2023): batch 100, Adam, lr 0.004 x 0.1 every 10,000 iterations, 15,000
iterations, inputs (x - 0.5) / 1, no augmentation, training set reshuffled every epoch, NLL
loss. The whole data set lives on the device as one uint8 tensor and batches are sliced
from it. Under `torchrun`, --batch-size stays the global batch: each of the N processes takes
batch/N images of every step, so the protocol does not change with the number of GPUs.
"""

from __future__ import annotations

import json
import math
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
from dagc.compiler.output import write_atomic
from dagc.runtime.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    save_checkpoint,
)
from dagc.runtime.data import DatasetInfo, dataset_info, load_split
from dagc.runtime.loading import build_model, load_generated

PAPER_ACCURACY = {  # Park & Kim 2023, Table 1 (single runs), percent
    ("hermaphrodite", "mnist"): 99.6,
    ("male", "mnist"): 99.5,
    ("hermaphrodite", "fashion-mnist"): 92.7,
    ("male", "fashion-mnist"): 92.6,
}


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
    cuda_graphs: bool | None = None  # None: on for one CUDA process without --compile
    amp: str = "off"
    out: str | None = None
    resume: bool = False
    quiet: bool = False
    command: str = field(default_factory=lambda: shlex.join(["dagc", *sys.argv[1:]]))


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    import torch.distributed as dist

    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Distributed(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def device_kind(requested: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; explicit choices stay."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def pick_device(kind: str, dist: Distributed) -> torch.device:
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DagcError(
                "--device cuda: no CUDA device is available (try --device cpu)"
            )
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def default_run_dir(config: TrainConfig) -> Path:
    return Path("runs") / f"{Path(config.model).stem}-{config.dataset}-{config.seed}"


def check_config(config: TrainConfig, dist: Distributed) -> None:
    for name in ("iterations", "batch_size", "lr_step", "eval_every", "log_every"):
        if getattr(config, name) < 1:
            raise DagcError(f"--{name.replace('_', '-')} must be at least 1")
    if config.lr <= 0 or not 0 < config.lr_gamma <= 1:
        raise DagcError("--lr must be positive and --lr-gamma in (0, 1]")
    if config.batch_size % dist.world:
        raise DagcError(
            f"--batch-size {config.batch_size} (the global batch) must divide evenly among "
            f"{dist.world} processes"
        )
    if config.amp not in ("off", "bf16", "fp16"):
        raise DagcError("--amp must be off, bf16 or fp16")


def check_model_fits(module, info: DatasetInfo, path) -> None:
    channels, height, width = module.INPUT_SHAPE
    if channels != info.in_channels or height != info.image_size:
        raise DagcError(
            f"model expects {channels}x{height}x{width} images but {info.name} has "
            f"{info.in_channels}x{info.image_size}x{info.image_size}; recompile with "
            f"--in-channels {info.in_channels} --input-size {info.image_size}",
            path,
        )
    if module.NUM_CLASSES != info.num_classes:
        raise DagcError(
            f"model has {module.NUM_CLASSES} classes but {info.name} has {info.num_classes}; "
            f"recompile with --num-classes {info.num_classes}",
            path,
        )


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> (x - 0.5) / 1 with x in [0, 1], the paper's input scaling."""
    return images.float().div_(255.0).sub_(0.5)


def epoch_order(epoch: int, config: TrainConfig, size: int) -> torch.Tensor:
    """Each epoch's order is a seeded permutation computed from (seed, epoch) alone, so a
    resumed run sees exactly the batches an uninterrupted one would, with no RNG state.
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)


def batch_indices(
    step: int, config: TrainConfig, dist: Distributed, order: torch.Tensor
):
    """This process's slice of the global batch number `step` of an epoch in `order`."""
    share = config.batch_size // dist.world
    start = step * config.batch_size + dist.rank * share
    return order[start : start + share]


@torch.no_grad()
def evaluate(model, images, labels, num_classes: int, amp_dtype, batch: int = 1000):
    """Accuracy, per-class accuracy, predictions and the confusion matrix on a whole split."""
    was_training = model.training
    model.eval()
    predictions = []
    for start in range(0, len(images), batch):
        x = normalise(images[start : start + batch])
        with torch.autocast(
            x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            predictions.append(model(x).argmax(1))
    model.train(was_training)
    predicted = torch.cat(predictions)
    confusion = torch.bincount(
        labels * num_classes + predicted, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    per_class = confusion.diag().double() / confusion.sum(1).clamp_min(1)
    accuracy = confusion.diag().sum().item() / len(labels)
    return accuracy, per_class.tolist(), predicted, confusion


def amp_settings(config: TrainConfig, device: torch.device):
    if config.amp == "off":
        return None, None
    if config.amp == "fp16":
        if device.type != "cuda":
            raise DagcError(
                "--amp fp16 needs a CUDA device (use bf16 or off on the CPU)"
            )
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


GRAPH_WARMUP_STEPS = 3  # eager steps before a CUDA-graph capture (they train as usual)


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        kind = device_kind(config.device)
        self.dist = setup_distributed(kind)
        check_config(config, self.dist)
        if config.cuda_graphs and (kind != "cuda" or self.dist.world > 1):
            raise DagcError("--cuda-graphs needs one CUDA process (no torchrun)")
        self.device = pick_device(kind, self.dist)
        self.module = load_generated(config.model)
        self.info = dataset_info(config.dataset)
        check_model_fits(self.module, self.info, config.model)
        self.run_dir = Path(config.out) if config.out else default_run_dir(config)
        self.amp_dtype, self.scaler = amp_settings(config, self.device)
        self.use_graphs = config.cuda_graphs
        if self.use_graphs is None:
            self.use_graphs = (
                self.device.type == "cuda"
                and self.dist.world == 1
                and not config.compile
            )
        if self.use_graphs and self.scaler is not None:
            raise DagcError(
                "--amp fp16 cannot be captured; use bf16 or --no-cuda-graphs"
            )
        self.train_images, self.train_labels = self._on_device(True)
        self.test_images, self.test_labels = self._on_device(False)
        torch.manual_seed(config.seed)
        self.model = build_model(self.module).to(self.device)
        self.parameters = sum(p.numel() for p in self.model.parameters())
        # A captured step reads the learning rate from device memory, so it is a tensor there.
        lr = (
            torch.tensor(config.lr, device=self.device)
            if self.use_graphs
            else config.lr
        )
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=lr, capturable=self.use_graphs
        )
        self.graphed = None
        self.order = None  # (epoch, that epoch's permutation on the device)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=config.lr_step, gamma=config.lr_gamma
        )
        self.metrics: list[dict] = []
        self.start_iteration = 0
        self.elapsed = 0.0  # training wall time (steps only) of this run so far
        self.wall_before = (
            0.0  # whole wall time of earlier sessions (evaluations included)
        )
        self.session_start = time.perf_counter()
        self.last_eval = (
            None  # (accuracy, per-class, predictions, confusion) of the newest eval
        )
        self.step_model = self._wrap(self.model)

    def _on_device(self, train: bool):
        images, labels = load_split(self.config.dataset, train, self.config.data_dir)
        return images.to(self.device), labels.to(self.device)

    def _wrap(self, model):
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if self.config.compile else model

    # --- run directory ------------------------------------------------------------------------

    def prepare_run_dir(self) -> None:
        run_dir = self.run_dir
        if self.dist.main:
            if run_dir.exists() and not self.config.resume and any(run_dir.iterdir()):
                raise DagcError(
                    "run folder is not empty: pass --resume to continue it or --out for a new one",
                    run_dir,
                )
            if not run_dir.parent.is_dir():
                raise DagcError("parent folder does not exist", run_dir.parent)
            run_dir.mkdir(exist_ok=True)
            model_copy = run_dir / "model.py"
            source = Path(self.config.model).read_text(encoding="utf-8")
            if model_copy.exists() and model_copy.read_text(encoding="utf-8") != source:
                raise DagcError(
                    "this run was started with a different model file", run_dir
                )
            write_atomic(model_copy, source)  # makes the run folder self-contained
        if self.config.resume:
            self._restore()

    def _restore(self) -> None:
        found = latest_checkpoint(self.run_dir)
        if found is None:
            return  # nothing saved yet: start from scratch
        weights, state_path = found
        self.model.load_state_dict(load_weights(weights, self.device))
        state = load_trainer_state(state_path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.use_graphs:  # the saved groups may come from an uncaptured run
            for group in self.optimizer.param_groups:
                group["capturable"] = True
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            for param_state in self.optimizer.state.values():
                param_state["step"] = torch.as_tensor(
                    param_state["step"], dtype=torch.float32, device=self.device
                )
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.metrics = state["metrics"]
        self.start_iteration = state["iteration"]
        self.elapsed = state.get("elapsed", 0.0)
        self.wall_before = state.get("wall", 0.0)
        if (
            self.dist.main
        ):  # lines logged after the checkpoint are replayed, so drop them
            self._write_metrics()

    def _write_metrics(self) -> None:
        lines = "".join(json.dumps(row) + "\n" for row in self.metrics)
        write_atomic(self.run_dir / "metrics.jsonl", lines)

    def _append_metric(self, row: dict) -> None:
        self.metrics.append(row)
        if self.dist.main:
            with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def _checkpoint(self, iteration: int) -> None:
        if self.dist.main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "metrics": self.metrics,
                "elapsed": self.elapsed,
                "wall": self.wall_before + time.perf_counter() - self.session_start,
                "config": asdict(self.config),
            }
            save_checkpoint(self.run_dir, iteration, self.model, state)
        self._barrier()

    def _barrier(self) -> None:
        if self.dist.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # --- the loop -----------------------------------------------------------------------------

    def train_step(self, iteration: int) -> torch.Tensor:
        size = len(self.train_labels)
        epoch, step = divmod(iteration, size // self.config.batch_size)
        # The epoch's permutation goes to the device once per epoch, not once per step.
        if self.order is None or self.order[0] != epoch:
            self.order = (epoch, epoch_order(epoch, self.config, size).to(self.device))
        index = batch_indices(step, self.config, self.dist, self.order[1])
        x = normalise(self.train_images[index])
        y = self.train_labels[index]
        if self.use_graphs:
            loss = self._graphed_step(x, y)
            self.scheduler.step()
            return loss
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            loss = F.nll_loss(self.step_model(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def _graphed_step(self, x, y) -> torch.Tensor:
        """Eager warm-up steps on a side stream, then one capture, then replays."""
        if self.graphed is None:
            from dagc.runtime.graphs import GraphedStep

            self.graphed = GraphedStep(
                self.model,
                self.optimizer,
                lambda out, target: F.nll_loss(out.float(), target),
                x,
                y,
                self.amp_dtype,
                warmup_steps=GRAPH_WARMUP_STEPS,
            )
        return self.graphed(x, y)

    def run(self) -> dict:
        from tqdm import tqdm

        self.prepare_run_dir()
        config = self.config
        bar = tqdm(
            total=config.iterations,
            initial=self.start_iteration,
            disable=config.quiet or not self.dist.main,
            unit="it",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        loss_sum = torch.zeros((), device=self.device)
        since_log, clock = 0, time.perf_counter()
        last_accuracy = self.metrics[-1]["test_accuracy"] if self.metrics else None
        self.model.train()
        for iteration in range(self.start_iteration, config.iterations):
            try:
                loss_sum += self.train_step(iteration)  # no host sync per step
            except RuntimeError as exc:
                if "overflow" not in str(exc):
                    raise
                bar.close()
                raise DagcError(
                    f"training diverged at iteration {iteration + 1}: an update overflowed "
                    "float32; the last good checkpoint is kept (try a lower --lr)",
                    self.run_dir,
                ) from None
            since_log += 1
            done = iteration + 1
            at_eval = done % config.eval_every == 0 or done == config.iterations
            if done % config.log_every and not at_eval:
                continue
            mean_loss = (loss_sum / since_log).item()  # one sync per log interval
            seconds = time.perf_counter() - clock
            self.elapsed += seconds
            if not math.isfinite(mean_loss):
                bar.close()
                raise DagcError(
                    f"training diverged: the mean loss of iterations {done - since_log + 1}-"
                    f"{done} is {mean_loss}; the last good checkpoint is kept in the run folder "
                    "(try a lower --lr or --amp off)",
                    self.run_dir,
                )
            row = {
                "iteration": done,
                "loss": mean_loss,
                "lr": float(self.optimizer.param_groups[0]["lr"]),
                "images_per_s": since_log * config.batch_size / max(seconds, 1e-9),
            }
            if at_eval:
                if self.dist.main:
                    self.last_eval = self.evaluate_test()
                    row["test_accuracy"] = last_accuracy = self.last_eval[0]
                self._append_metric(row)
                self._checkpoint(done)
            else:
                self._append_metric(row)
            bar.update(done - bar.n)
            bar.set_postfix(
                loss=f"{mean_loss:.4f}",
                acc="-" if last_accuracy is None else f"{100 * last_accuracy:.2f}%",
                img_s=f"{row['images_per_s']:.0f}",
            )
            loss_sum.zero_()
            since_log, clock = 0, time.perf_counter()
        bar.close()
        summary = self.finish() if self.dist.main else {}
        self._barrier()
        return summary

    # --- the end ------------------------------------------------------------------------------

    def evaluate_test(self):
        return evaluate(
            self.model,
            self.test_images,
            self.test_labels,
            self.info.num_classes,
            self.amp_dtype,
        )

    def finish(self) -> dict:
        from dagc.runtime import figures

        # The loop always evaluates at the last iteration; a run resumed after it has not.
        accuracy, per_class, predicted, confusion = (
            self.last_eval or self.evaluate_test()
        )
        evaluated = [row for row in self.metrics if "test_accuracy" in row]
        best = (
            max(evaluated, key=lambda row: row["test_accuracy"]) if evaluated else None
        )
        speeds = [row["images_per_s"] for row in self.metrics]
        connectome = getattr(self.module, "CONNECTOME", "")
        summary = {
            "model": Path(self.config.model).name,
            "model_class": self.module.MODEL_CLASS,
            "connectome": connectome,
            "dag": getattr(self.module, "DAG_KIND", ""),
            "dataset": self.config.dataset,
            "final_test_accuracy": accuracy,
            "best_test_accuracy": best["test_accuracy"] if best else accuracy,
            "best_iteration": best["iteration"] if best else self.config.iterations,
            "per_class_accuracy": dict(zip(self.info.class_names, per_class)),
            "iterations": self.config.iterations,
            "batch_size": self.config.batch_size,
            "parameters": self.parameters,
            "channels": self.module.CHANNELS,
            "train_wall_time_s": self.elapsed,
            "wall_time_s": self.wall_before + time.perf_counter() - self.session_start,
            "median_images_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
            "device": device_name(self.device),
            "processes": self.dist.world,
            "amp": self.config.amp,
            "compile": self.config.compile,
            "cuda_graphs": self.use_graphs,
            "torch": torch.__version__,
            "dagc": __version__,
            "seed": self.config.seed,
            "command": self.config.command,
            "config": asdict(self.config),
        }
        write_atomic(
            self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n"
        )
        points = [(row["iteration"], 100 * row["test_accuracy"]) for row in evaluated]
        title = f"{connectome or summary['model']} on {self.config.dataset}"
        figures.plot_accuracy(
            points, self.run_dir / "accuracy.png", title,
            paper_accuracy=PAPER_ACCURACY.get((connectome, self.config.dataset))
            if summary["dag"] == "constrained" else None,
        )  # fmt: skip
        figures.plot_examples(
            self.test_images.cpu(), self.test_labels.cpu(), predicted.cpu(),
            self.info.class_names, self.run_dir / "examples.png",
        )  # fmt: skip
        figures.plot_confusion(
            confusion.cpu(), self.info.class_names, self.run_dir / "confusion.png",
            f"{title}: confusion matrix",
        )  # fmt: skip
        return summary


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def train(config: TrainConfig) -> dict:
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        if trainer.dist.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
