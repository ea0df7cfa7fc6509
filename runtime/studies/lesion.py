"""`dagc lesion`: test accuracy of a trained network with chosen neurons silenced.

A neuron node ends in an eval-mode BatchNorm, `y = (x - mean) / sqrt(var + eps) * scale +
shift`, so with its scale (row i of `node_bn_weight`) and shift (row i of `node_bn_bias`) at
zero its output is exactly zero for every input: the neuron is silenced without touching the
generated code, and every neuron it feeds sees nothing from it.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from dagc.compiler.errors import DagcError
from dagc.runtime.checkpoint import load_weights
from dagc.runtime.data import DatasetInfo, check_model_fits, dataset_info, load_split
from dagc.runtime.devices import device_kind, keep_freed_cpu_memory
from dagc.runtime.evaluate import evaluate, locate, use_run_kernels
from dagc.runtime.loading import build_model, load_generated
from dagc.runtime.run_dir import read_summary

# The locomotion command interneurons (Chalfie et al. 1985), both sides.
COMMAND_INTERNEURONS = (
    "AVAL", "AVAR", "AVBL", "AVBR", "AVDL", "AVDR", "AVEL", "AVER", "PVCL", "PVCR",
)  # fmt: skip


@dataclass
class LoadedRun:
    """A trained network, in eval mode on its device, and where it came from."""

    module: ModuleType
    net: torch.nn.Module
    weights: Path
    model_path: Path
    dataset: str
    info: DatasetInfo
    device: str


def run_dataset(target: Path) -> str:
    """The data set a run folder was trained on (its summary.json), else mnist."""
    folder = target if target.is_dir() else target.parent
    dataset = (read_summary(folder) or {}).get("dataset")
    return dataset if isinstance(dataset, str) else "mnist"


def load_run(
    target: Path,
    dataset: str | None = None,
    device: str = "auto",
    precision: str | None = None,
) -> LoadedRun:
    """The network saved in a run folder (or a .safetensors beside its model.py), computed
    in `precision` (default: the run's own)."""
    weights, model_path = locate(Path(target), None)
    module = load_generated(model_path)
    dataset = dataset or run_dataset(Path(target))
    info = dataset_info(dataset)
    check_model_fits(module, info, model_path)
    device = device_kind(device)
    keep_freed_cpu_memory(torch.device(device))
    # The kernels and precision training used, so the scans compute what it did.
    use_run_kernels(module, weights, model_path, device, precision)
    net = build_model(module).to(device)
    try:
        net.load_state_dict(load_weights(weights, device))
    except RuntimeError as exc:
        raise DagcError(
            f"weights do not fit {model_path.name}: {str(exc).splitlines()[0]}", weights
        ) from None
    for name in ("node_bn_weight", "node_bn_bias"):
        if not isinstance(getattr(net, name, None), torch.Tensor):
            raise DagcError(
                f"the model has no {name}: regenerate it with this dagc", model_path
            )
    net.eval()
    return LoadedRun(module, net, weights, model_path, dataset, info, device)


def split_names(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def resolve(module: ModuleType, neurons: list[str], types: list[str]) -> list[int]:
    """Node indices for neuron names (case-insensitive) and whole neuron types, sorted.

    An unknown name is a DagcError naming the closest known ones.
    """
    by_name = {name.upper(): i for i, name in enumerate(module.NODES)}
    chosen: set[int] = set()
    for name in neurons:
        if name.upper() not in by_name:
            close = difflib.get_close_matches(
                name.upper(), list(by_name), n=4, cutoff=0.5
            )
            close = [module.NODES[by_name[c]] for c in close]
            hint = f"; close: {', '.join(close)}" if close else ""
            pruned = [
                p
                for p in getattr(module, "PRUNED_NODES", ())
                if p.upper() == name.upper()
            ]
            if pruned:
                hint = " (it was pruned: unreachable from the input)"
            raise DagcError(f"no neuron {name!r} in this network{hint}")
        chosen.add(by_name[name.upper()])
    known_types = sorted(set(module.NODE_TYPES))
    for kind in types:
        if kind.lower() not in known_types:
            close = difflib.get_close_matches(
                kind.lower(), known_types, n=3, cutoff=0.4
            )
            hint = f"close: {', '.join(close)}; " if close else ""
            raise DagcError(
                f"no neuron type {kind!r} in this network ({hint}types: "
                f"{', '.join(known_types)})"
            )
        chosen.update(i for i, t in enumerate(module.NODE_TYPES) if t == kind.lower())
    return sorted(chosen)


@contextmanager
def silenced(net: torch.nn.Module, indices):
    """Hold the outputs of nodes `indices` at zero (eval mode) inside the block."""
    index = torch.as_tensor(
        list(indices), dtype=torch.long, device=net.node_bn_weight.device
    )
    if index.numel() == 0:
        yield
        return
    with torch.no_grad():
        scale, shift = (
            net.node_bn_weight[index].clone(),
            net.node_bn_bias[index].clone(),
        )
        net.node_bn_weight[index] = 0.0
        net.node_bn_bias[index] = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            net.node_bn_weight[index] = scale
            net.node_bn_bias[index] = shift


def accuracy_on(run: LoadedRun, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The same evaluation as `dagc eval`: accuracy, per-class accuracy and predictions."""
    with torch.inference_mode():
        accuracy, per_class, predicted, _ = evaluate(
            run.net, images, labels, run.info.num_classes, None
        )
    return {"accuracy": accuracy, "per_class": per_class, "predicted": predicted}


def test_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of `size` test images drawn with `seed` (all of them when size is 0)."""
    n = len(labels)
    if size <= 0 or size >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values


def lesion(
    target: Path,
    neurons: list[str],
    types: list[str],
    dataset: str | None = None,
    data_dir=None,
    device: str = "auto",
    subset: int = 0,
    seed: int = 0,
    precision: str | None = None,
) -> dict:
    """Test accuracy, overall and per class, intact and with the chosen neurons silenced.

    `subset` > 0 evaluates that many test images drawn with `seed` (as `dagc analyze` does)
    instead of the whole test set.
    """
    if not neurons and not types:
        raise DagcError(
            "name the neurons to silence: --neurons AVAL,AVAR and/or --types TYPE"
        )
    if subset < 0:
        raise DagcError("--subset must be 0 (the whole test set) or more")
    run = load_run(Path(target), dataset, device, precision)
    indices = resolve(run.module, neurons, types)
    images, labels = load_split(run.dataset, False, data_dir)
    total = len(labels)
    chosen = test_subset(labels, subset, seed)
    if len(chosen) < total:
        images, labels = images[chosen], labels[chosen]
    images, labels = images.to(run.device), labels.to(run.device)
    intact = accuracy_on(run, images, labels)
    with silenced(run.net, indices):
        lesioned = accuracy_on(run, images, labels)
    classes = run.info.class_names
    outputs = set(run.module.OUTPUT_NODES)
    return {
        "weights": str(run.weights),
        "model": run.model_path.name,
        "dataset": run.dataset,
        "images": len(labels),
        "test_set_images": total,
        "seed": seed if len(labels) < total else None,
        "silenced": [run.module.NODES[i] for i in indices],
        "silenced_types": {
            t: sum(run.module.NODE_TYPES[i] == t for i in indices)
            for t in sorted({run.module.NODE_TYPES[i] for i in indices})
        },
        "silenced_outputs": sum(i in outputs for i in indices),
        "output_nodes": len(outputs),
        "intact": {
            "accuracy": intact["accuracy"],
            "per_class": dict(zip(classes, intact["per_class"])),
        },
        "lesioned": {
            "accuracy": lesioned["accuracy"],
            "per_class": dict(zip(classes, lesioned["per_class"])),
        },
        "changed_predictions": int(
            (intact["predicted"] != lesioned["predicted"]).sum()
        ),
    }


def _images(result: dict) -> str:
    if result["images"] == result["test_set_images"]:
        return f"{result['images']} images"
    return f"{result['images']} of {result['test_set_images']} images (seed {result['seed']})"


def format_lesion(result: dict) -> str:
    names = result["silenced"]
    shown = ", ".join(names) if len(names) <= 12 else ", ".join(names[:12]) + ", ..."
    kinds = ", ".join(f"{n} {t}" for t, n in result["silenced_types"].items())
    lines = [
        f"silenced {len(names)} neuron(s) ({kinds}): {shown}",
        f"{result['dataset']} test set, {_images(result)}; "
        f"{result['changed_predictions']} predictions changed",
        f"{'class':<12} {'intact':>8} {'silenced':>9} {'change':>8}",
    ]
    rows = [("all", result["intact"]["accuracy"], result["lesioned"]["accuracy"])]
    rows += [
        (name, value, result["lesioned"]["per_class"][name])
        for name, value in result["intact"]["per_class"].items()
    ]
    for name, before, after in rows:
        lines.append(
            f"{name:<12} {100 * before:7.2f}% {100 * after:8.2f}% {100 * (after - before):+8.2f}"
        )
    return "\n".join(lines)
