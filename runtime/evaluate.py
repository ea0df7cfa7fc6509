"""Evaluation: a model's accuracy on a whole split, and `dagc eval` of a saved model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dagc.compiler.errors import DagcError
from dagc.runtime.kernels import use_kernels

from .checkpoint import latest_checkpoint, load_weights, network_fingerprint
from .data import check_model_fits, dataset_info, load_split, normalise
from .devices import device_kind, keep_freed_cpu_memory
from .loading import build_model, load_generated
from .run_dir import read_summary


@torch.no_grad()
def evaluate(
    model, images, labels, num_classes: int, amp_dtype=None, batch: int = 1000
):
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


def locate(target: Path, model: Path | None) -> tuple[Path, Path]:
    """(weights file, model file) for a run folder or a .safetensors file."""
    if not target.exists():
        raise DagcError("not found", target)
    if target.is_dir():
        found = latest_checkpoint(target)
        if found is None:
            raise DagcError(
                "no checkpoint in this folder (is it a dagc run folder?)", target
            )
        weights, run_dir = found[0], target
    elif target.suffix == ".safetensors":
        weights, run_dir = target, target.parent
    else:
        raise DagcError("expected a run folder or a .safetensors weights file", target)
    model = model or run_dir / "model.py"
    if not model.exists():
        raise DagcError("no model.py beside the weights: pass --model MODEL.py", target)
    return weights, model


def run_kernels(weights: Path, device: str) -> tuple[str, str]:
    """The --kernels choice and precision a run trained with (its summary.json beside the
    weights), for `dagc eval` and the lesion scans to compute exactly what training did:
    near-tie images then get the same prediction. Kernels that cannot run on `device`, or a
    run without a summary, give ("auto", the run's precision or fp32)."""
    summary = read_summary(weights.parent)
    if summary is None:
        return "auto", "fp32"
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    precision = summary.get("precision") or config.get("precision")
    precision = precision if precision in ("fp32", "bf16") else "fp32"
    kernels = summary.get("kernels")
    usable = ("engine", "cpp", "torch") if device == "cpu" else ("torch",)
    return (kernels if kernels in usable else "auto"), precision


def use_run_kernels(
    module, weights: Path, model_path: Path, device: str, precision: str | None
) -> tuple[str, str]:
    """Swap in the kernels a run trained with, in its precision unless `precision` says
    otherwise (then the kernels that store it); returns (kernels, precision)."""
    choice, trained_in = run_kernels(weights, device)
    if precision not in (None, trained_in):
        choice = "auto"  # another precision than training's: the kernels that store it
    precision = precision or trained_in
    kernels = use_kernels(
        choice, module, torch.device(device), str(model_path), precision=precision
    )
    return kernels, precision


def evaluate_saved(
    target: Path,
    dataset: str,
    data_dir=None,
    device: str = "auto",
    model: Path | None = None,
    precision: str | None = None,
) -> dict:
    weights, model_path = locate(target, model)
    module = load_generated(model_path)
    info = dataset_info(dataset)
    check_model_fits(module, info, model_path)
    device = device_kind(device)
    keep_freed_cpu_memory(torch.device(device))
    # The kernels and precision training used, so the accuracy is the summary's.
    kernels, precision = use_run_kernels(module, weights, model_path, device, precision)
    net = build_model(module).to(device)
    try:
        net.load_state_dict(load_weights(weights, device, network_fingerprint(module)))
    except RuntimeError as exc:
        raise DagcError(
            f"weights do not fit {model_path.name}: {str(exc).splitlines()[0]}", weights
        ) from None
    images, labels = load_split(dataset, False, data_dir)
    accuracy, per_class, _, _ = evaluate(
        net, images.to(device), labels.to(device), info.num_classes, None
    )
    return {
        "weights": str(weights),
        "model": model_path.name,
        "dataset": dataset,
        "test_accuracy": accuracy,
        "per_class_accuracy": dict(zip(info.class_names, per_class)),
        "kernels": kernels,
        "precision": precision,
    }


def format_result(result: dict) -> str:
    lines = [
        f"{result['dataset']} test accuracy: {100 * result['test_accuracy']:.2f} %"
    ]
    for name, value in result["per_class_accuracy"].items():
        lines.append(f"  {name:<12} {100 * value:6.2f} %")
    return "\n".join(lines)


def as_json(result: dict) -> str:
    return json.dumps(result, indent=2)
