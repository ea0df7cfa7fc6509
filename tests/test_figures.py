"""Each figure writes an image PIL can open, from tiny synthetic inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dagc.runtime.figures import plot_accuracy, plot_confusion, plot_examples

CLASSES = tuple(str(i) for i in range(10))


def check_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_accuracy(tmp_path):
    path = tmp_path / "acc.png"
    plot_accuracy([(0, 10.0), (100, 80.5), (200, 91.2)], path, "MNIST", 97.6)
    check_png(path)
    plot_accuracy([], tmp_path / "empty.png", "nothing yet")
    check_png(tmp_path / "empty.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_examples(tmp_path, channels):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, channels, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (20,), generator=generator)
    predictions = labels.clone()
    predictions[:3] = (labels[:3] + 1) % 10  # three wrong, fewer than per_side
    path = tmp_path / "examples.png"
    plot_examples(images, labels, predictions, CLASSES, path, per_side=8)
    check_png(path)


def test_examples_without_errors(tmp_path):
    images = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    path = tmp_path / "sub" / "examples.png"
    plot_examples(images, labels, labels, ["zero", "one", "two", "three"], path)
    check_png(path)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_confusion(tmp_path, as_numpy):
    matrix = torch.tensor([[5, 1, 0], [0, 7, 2], [1, 0, 9]])
    if as_numpy:
        matrix = matrix.numpy()
    path = tmp_path / "confusion.png"
    plot_confusion(matrix, ["cat", "dog", "bird"], path, "toy")
    check_png(path)
    plot_confusion(matrix, ["cat", "dog", "bird"], path, "again")  # replaces it
    check_png(path)
