"""Figures of a training run: accuracy curve, example predictions, confusion matrix.

Each figure is written atomically (to a temporary file in the same folder, then
`os.replace`), so a reader never sees half a PNG, and closed afterwards. The output
format follows the path's suffix (PNG when it has none that matplotlib knows).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dagc.compiler.errors import DagcError  # noqa: E402
from dagc.compiler.output import write_atomic  # noqa: E402

DPI = 150
WRONG_COLOR = "#c62828"
RIGHT_COLOR = "#1b5e20"


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _save(fig, path: str | Path) -> Path:
    """Write `fig` to `path` atomically and close it; a DagcError if that fails."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in fig.canvas.get_supported_filetypes():
        fmt = "png"
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt, dpi=DPI)
    finally:
        plt.close(fig)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise DagcError(f"cannot write figure: {exc.strerror or exc}", path) from None
    return path


def plot_accuracy(
    points: list[tuple[int, float]],
    path: str | Path,
    title: str,
    paper_accuracy: float | None = None,
) -> Path:
    """Test accuracy (percent) against training iteration, as in Park & Kim 2023 Fig. 3A/B.

    `paper_accuracy` (percent), when given, is drawn as a dashed horizontal line.
    """
    paper = {"paper": paper_accuracy} if paper_accuracy is not None else {}
    return plot_accuracy_series({"dagc": points}, path, title, paper)


SERIES_COLOURS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f")


def plot_accuracy_series(
    series: dict[str, list[tuple[int, float]]],
    path: str | Path,
    title: str,
    paper: dict[str, float] | None = None,
) -> Path:
    """Several accuracy curves (percent) on one axes; `paper` values as dashed lines."""
    paper = paper or {}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    values: list[float] = []
    for number, (label, points) in enumerate(series.items()):
        points = sorted((int(i), float(a)) for i, a in points)
        if not points:
            continue
        xs, ys = zip(*points)
        values += ys
        ax.plot(
            xs,
            ys,
            marker="o" if len(points) <= 40 else None,
            markersize=4,
            linewidth=1.6,
            color=SERIES_COLOURS[number % len(SERIES_COLOURS)],
            label=f"{label} ({ys[-1]:.2f}% at {xs[-1]:,})",
        )
    if not values:
        ax.text(
            0.5,
            0.5,
            "no evaluations yet",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    for number, (label, accuracy) in enumerate(paper.items()):
        ax.axhline(
            float(accuracy),
            color=(
                SERIES_COLOURS[number % len(SERIES_COLOURS)]
                if len(paper) > 1
                else "0.3"
            ),
            linestyle="--",
            linewidth=1.2,
            label=f"{label}: {float(accuracy):.2f}%",
        )
        values.append(float(accuracy))
    if values:
        low, high = min(values), max(values)
        margin = max(1.0, 0.05 * (high - low))
        ax.set_ylim(max(0.0, low - margin), min(100.0, high + margin) + 0.5)
    else:
        ax.set_ylim(0, 100)
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if values:
        ax.legend(loc="best")
    return _save(fig, path)


def _image_hwc(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """One (C, H, W) image as something imshow draws, and the colour map it needs."""
    if image.ndim == 2:
        image = image[None]
    if image.dtype != np.uint8:
        image = image.astype(np.float64)
        if image.max(initial=0.0) <= 1.0:  # floats in [0, 1]
            image = image * 255.0
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape[0] == 1:
        return image[0], "gray"
    return np.transpose(image[:3], (1, 2, 0)), None


def _class_name(class_names: Sequence[str], index: int) -> str:
    return str(class_names[index]) if 0 <= index < len(class_names) else str(index)


def _example_title(predicted: str, true: str) -> str:
    title = f"pred {predicted} / true {true}"
    if len(title) > 18:  # long class names: one per line keeps the titles apart
        title = f"pred {predicted} /\ntrue {true}"
    return title


def _draw_grid(
    subfig,
    images,
    labels,
    predictions,
    indices,
    class_names,
    wrong: bool,
    header: str,
    shape: tuple[int, int],
) -> None:
    """One grid of examples, `shape` (rows, columns) cells, in a subfigure."""
    color = WRONG_COLOR if wrong and len(indices) else RIGHT_COLOR
    subfig.suptitle(header, fontsize=11, color=color)
    if not len(indices):
        ax = subfig.add_subplot(1, 1, 1)
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            "no errors" if wrong else "no correct predictions",
            ha="center",
            va="center",
            fontsize=14,
            color="0.35",
            transform=ax.transAxes,
        )
        return
    axes = np.atleast_1d(subfig.subplots(*shape, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, index in zip(axes, indices):
        image, cmap = _image_hwc(images[index])
        ax.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        title = _example_title(
            _class_name(class_names, int(predictions[index])),
            _class_name(class_names, int(labels[index])),
        )
        ax.set_title(title, fontsize=8, color=WRONG_COLOR if wrong else "black")


def plot_examples(
    images,
    labels,
    predictions,
    class_names: Sequence[str],
    path: str | Path,
    per_side: int = 8,
) -> Path:
    """Correctly and wrongly classified test images, two grids side by side.

    `images` is (N, C, H, W) uint8 with C 1 or 3; `labels` and `predictions` hold N
    class indices. The first `per_side` of each kind are shown, titled
    "pred X / true Y" (red for wrong ones); with no wrong ones the right grid says so.
    """
    images = _as_numpy(images)
    labels = _as_numpy(labels).astype(np.int64).reshape(-1)
    predictions = _as_numpy(predictions).astype(np.int64).reshape(-1)
    if images.ndim == 3:  # (N, H, W): one channel
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be (N, C, H, W) with C 1 or 3, not {images.shape}"
        )
    if not len(images) == len(labels) == len(predictions):
        raise ValueError(
            f"{len(images)} images, {len(labels)} labels and "
            f"{len(predictions)} predictions; they must be equally many"
        )
    per_side = max(1, int(per_side))
    correct = np.flatnonzero(labels == predictions)
    wrong = np.flatnonzero(labels != predictions)
    shown_right, shown_wrong = correct[:per_side], wrong[:per_side]

    columns = 4 if per_side > 4 else per_side
    rows = -(-per_side // columns)
    long_names = any(len(str(n)) > 4 for n in class_names)
    cell_h = 1.75 if long_names else 1.55
    fig = plt.figure(
        figsize=(2 * columns * 1.45 + 0.4, rows * cell_h + 0.6), layout="constrained"
    )
    left, right = fig.subfigures(1, 2, wspace=0.04)
    total = len(labels)
    _draw_grid(
        left,
        images,
        labels,
        predictions,
        shown_right,
        class_names,
        False,
        f"correct: {len(correct)} of {total} (first {len(shown_right)} shown)",
        (rows, columns),
    )
    _draw_grid(
        right,
        images,
        labels,
        predictions,
        shown_wrong,
        class_names,
        True,
        f"wrong: {len(wrong)} of {total}"
        + (f" (first {len(shown_wrong)} shown)" if len(wrong) else ""),
        (rows, columns),
    )
    return _save(fig, path)


def plot_confusion(
    matrix,
    class_names: Sequence[str],
    path: str | Path,
    title: str,
) -> Path:
    """A confusion matrix of counts: rows are true classes, columns predicted ones.

    Cells are coloured by the share of their row (so a rare class's errors show as
    clearly as a common one's) and labelled with the count.
    """
    counts = _as_numpy(matrix).astype(np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, not {counts.shape}")
    k = counts.shape[0]
    names = [_class_name(class_names, i) for i in range(k)]
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(
        counts, row_sums, out=np.zeros(counts.shape, dtype=float), where=row_sums > 0
    )
    size = max(4.5, 0.6 * k + 2.2)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), layout="constrained")
    shown = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = fig.colorbar(shown, ax=ax, shrink=0.8)
    colorbar.set_label("share of the true class")
    fontsize = 9 if k <= 10 else max(5, int(90 / k))
    for i in range(k):
        for j in range(k):
            value = counts[i, j]
            if value == 0:
                color = "0.75"
            elif shares[i, j] > 0.5:
                color = "white"
            else:
                color = "black"
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=fontsize,
                color=color,
            )
    ax.set_xticks(
        range(k),
        names,
        rotation=45 if max(map(len, names), default=0) > 2 else 0,
        ha="right" if max(map(len, names), default=0) > 2 else "center",
    )
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(counts.sum())
    correct = int(np.trace(counts))
    accuracy = (
        f"accuracy {100.0 * correct / total:.2f}% of {total}" if total else "empty"
    )
    ax.set_title(f"{title}\n{accuracy}", fontsize=11)
    return _save(fig, path)
