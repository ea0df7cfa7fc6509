"""Loading MNIST / Fashion-MNIST from local IDX files, layouts, and user errors."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import torch

from dagc.compiler.errors import DagcError
from dagc.runtime import data
from dagc.runtime.data import DATASETS, dataset_info, load_split

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# PROVENANCE.md
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def require(folder: str) -> Path:
    """A shared data folder, or a skip; on CI a missing folder is a failure."""
    path = SHARED_DATA / folder
    if not all((path / name).is_file() for name in MNIST_FILES):
        message = f"shared data missing: {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything asks torchvision to download."""
    import torchvision.datasets

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    for cls in ("MNIST", "FashionMNIST", "KMNIST", "CIFAR10"):
        monkeypatch.setattr(getattr(torchvision.datasets, cls), "download", refuse)
    monkeypatch.setattr(data, "_download", refuse)


def test_mnist_train_and_test():
    require("mnist")
    images, labels = load_split("mnist", True, SHARED_DATA)
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    images, labels = load_split("mnist", False, SHARED_DATA)
    assert images.shape == (10000, 1, 28, 28)
    assert torch.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert 0 < images.float().mean() < 255


def test_fashion_mnist_train():
    require("fashion-mnist")
    images, labels = load_split("fashion-mnist", True, SHARED_DATA)
    assert images.shape == (60000, 1, 28, 28)
    assert torch.bincount(labels, minlength=10).tolist() == [6000] * 10


def test_data_dir_from_environment(monkeypatch):
    require("mnist")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(SHARED_DATA))
    images, labels = load_split("mnist", False)
    assert len(images) == len(labels) == 10000


def test_torchvision_raw_layout(tmp_path, no_download):
    source = require("mnist")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).symlink_to(source / name)
    images, labels = load_split("mnist", False, tmp_path)
    assert images.shape == (10000, 1, 28, 28)
    assert torch.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS


def test_unpacked_files_directly_in_folder(tmp_path, no_download):
    source = require("mnist")
    for name in MNIST_FILES[2:]:
        unpacked = tmp_path / name.removesuffix(".gz")
        unpacked.write_bytes(gzip.decompress((source / name).read_bytes()))
    images, labels = load_split("mnist", False, tmp_path)
    expected_images, expected_labels = load_split("mnist", False, SHARED_DATA)
    assert torch.equal(images, expected_images)
    assert torch.equal(labels, expected_labels)


def test_missing_files_name_them_and_do_not_download(tmp_path, no_download):
    with pytest.raises(DagcError) as caught:
        load_split("mnist", True, tmp_path)
    message = str(caught.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert "train-labels-idx1-ubyte.gz" in message
    assert "--data-dir" in message and "\n" not in message


def test_missing_labels_only(tmp_path, no_download):
    source = require("mnist")
    (tmp_path / "t10k-images-idx3-ubyte.gz").symlink_to(
        source / "t10k-images-idx3-ubyte.gz"
    )
    with pytest.raises(DagcError, match="missing t10k-labels-idx1-ubyte.gz \\("):
        load_split("mnist", False, tmp_path)


def test_truncated_gz(tmp_path, no_download):
    source = require("mnist")
    folder = tmp_path / "mnist"
    folder.mkdir()
    content = (source / "t10k-images-idx3-ubyte.gz").read_bytes()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(content[: len(content) // 2])
    (folder / "t10k-labels-idx1-ubyte.gz").symlink_to(
        source / "t10k-labels-idx1-ubyte.gz"
    )
    with pytest.raises(DagcError, match="t10k-images-idx3-ubyte.gz") as caught:
        load_split("mnist", False, tmp_path)
    assert "corrupt or truncated" in str(caught.value)


def test_wrong_dataset_files(tmp_path, no_download):
    """Fashion-MNIST files where MNIST ones should be: the MD5 says what they are."""
    source = require("fashion-mnist")
    for name in MNIST_FILES[2:]:
        (tmp_path / name).symlink_to(source / name)
    with pytest.raises(DagcError, match="fashion-mnist's t10k-images"):
        load_split("mnist", False, tmp_path)


def test_bad_unpacked_idx(tmp_path, no_download):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(8))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(4))
    with pytest.raises(DagcError, match="t10k-images-idx3-ubyte: not an IDX images"):
        load_split("mnist", False, tmp_path)
    # Right magic, but fewer pixels than the header promises.
    header = b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(header + bytes(28 * 28))
    with pytest.raises(DagcError, match="corrupt or truncated"):
        load_split("mnist", False, tmp_path)


def test_unknown_dataset():
    with pytest.raises(DagcError, match="unknown dataset 'svhn'.*fashion-mnist"):
        load_split("svhn", True)
    with pytest.raises(DagcError, match="known datasets: mnist"):
        dataset_info("imagenet")


def test_dataset_info():
    assert set(DATASETS) == {"mnist", "fashion-mnist", "kmnist", "cifar10"}
    assert dataset_info("Fashion_MNIST") is DATASETS["fashion-mnist"]
    cifar = dataset_info("cifar10")
    assert (cifar.in_channels, cifar.image_size, cifar.num_classes) == (3, 32, 10)
    for info in DATASETS.values():
        assert len(info.class_names) == info.num_classes
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        cifar.name = "x"  # frozen


def test_md5s_come_from_torchvision_for_every_idx_dataset():
    for name in data.IDX_DATASETS:
        files = data.canonical_md5(name)
        assert set(files) == set(MNIST_FILES)
        assert all(len(md5) == 32 for md5 in files.values())
    assert (
        len(
            {
                md5
                for name in data.IDX_DATASETS
                for md5 in data.canonical_md5(name).values()
            }
        )
        == 12
    )


def test_cifar10_missing_is_dagc_error(tmp_path, no_download):
    with pytest.raises(DagcError, match="cifar-10-batches-py"):
        load_split("cifar10", False, tmp_path)
