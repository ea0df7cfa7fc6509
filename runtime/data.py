"""Image data sets for training: MNIST, Fashion-MNIST, KMNIST (IDX files) and CIFAR-10.

`load_split` returns a whole split as tensors: uint8 images (N, C, H, W) and int64
labels (N,). The IDX data sets are parsed here with gzip + numpy (much faster than
torchvision's dataset classes); CIFAR-10 goes through torchvision's `CIFAR10` class.

Where the data is looked for: the `data_dir` argument, else the environment variable
DAGC_DATA_DIR, else the cache root `~/.cache/dagc/data`. Inside that folder an IDX data
set may lie in dagc's layout `<dir>/<name>/` (e.g. `<dir>/fashion-mnist/`), in
torchvision's `<dir>/<Class>/raw/` (e.g. `<dir>/FashionMNIST/raw/`, `.gz` or unpacked),
or directly in `<dir>`. Only when no folder was chosen (neither argument nor variable)
are missing files downloaded, through torchvision, into the cache root.

Every `.gz` file is checked against the MD5 that torchvision lists for it (its dataset
class's `resources`). A file that passed is remembered for the process, keyed on
its path, size and modification time, so loading it again does not hash it again.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dagc.compiler.errors import DagcError

DATA_DIR_ENV = "DAGC_DATA_DIR"
DEFAULT_CACHE_ROOT = Path("~/.cache/dagc/data")
DOWNLOAD_TIMEOUT_S = 60.0

HOW_TO_GET = (
    f"pass --data-dir (or set {DATA_DIR_ENV}) to a folder holding the canonical .gz "
    "files, or run once with network access"
)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set."""

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    class_names: tuple[str, ...]
    torchvision_class: str


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        in_channels=1,
        image_size=28,
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        torchvision_class="MNIST",
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        in_channels=1,
        image_size=28,
        num_classes=10,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        torchvision_class="FashionMNIST",
    ),
    "kmnist": DatasetInfo(
        name="kmnist",
        in_channels=1,
        image_size=28,
        num_classes=10,
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        torchvision_class="KMNIST",
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        in_channels=3,
        image_size=32,
        num_classes=10,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        torchvision_class="CIFAR10",
    ),
}

# Other spellings users type for the same data sets.
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}

# The data sets whose files are IDX (`.gz`); their canonical MD5s are torchvision's own
# `<Class>.resources` (see `canonical_md5`), not a copy.
IDX_DATASETS = ("mnist", "fashion-mnist", "kmnist")

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# (resolved path, size, mtime_ns) of .gz files whose MD5 matched.
_VERIFIED: set[tuple[str, int, int]] = set()


def canonical_md5(name: str) -> dict[str, str]:
    """{file name: md5} of an IDX data set's `.gz` files, from torchvision's `resources`."""
    import torchvision.datasets

    return dict(
        getattr(torchvision.datasets, DATASETS[name].torchvision_class).resources
    )


def _known_md5() -> dict[str, tuple[str, str]]:
    """md5 -> (data set, file name), to say what a wrong file actually is."""
    return {md5: (dataset, filename) for dataset in IDX_DATASETS
            for filename, md5 in canonical_md5(dataset).items()}  # fmt: skip


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo for `name` ("mnist", "fashion-mnist", "kmnist", "cifar10")."""
    key = name.strip().lower() if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DagcError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
        )
    return DATASETS[key]


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> (x - 0.5) / 1 with x in [0, 1], the paper's input scaling."""
    return images.float().div_(255.0).sub_(0.5)


def check_model_fits(module, info: DatasetInfo, path) -> None:
    """A DagcError unless the generated module takes this data set's images and classes."""
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


def resolve_data_dir(data_dir: str | Path | None = None) -> tuple[Path, bool]:
    """The folder to read from, and whether the user chose it (argument or variable)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), True
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser(), True
    return DEFAULT_CACHE_ROOT.expanduser(), False


def load_split(
    name: str, train: bool, data_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a data set: uint8 images (N, C, H, W) and int64 labels (N,).

    Missing data is downloaded (through torchvision, into `~/.cache/dagc/data`) only
    when neither `data_dir` nor DAGC_DATA_DIR names a folder; otherwise, and when the
    download fails, a DagcError names the missing files. Corrupt files give a
    DagcError naming the file.
    """
    info = dataset_info(name)
    root, explicit = resolve_data_dir(data_dir)
    if root.exists() and not root.is_dir():
        raise DagcError(f"the data folder is not a folder; {HOW_TO_GET}", root)
    if info.name == "cifar10":
        return _load_cifar10(info, root, explicit, train)
    return _load_idx(info, root, explicit, train)


# --- IDX data sets ------------------------------------------------------------------


def _split_files(train: bool) -> tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _candidate_dirs(info: DatasetInfo, root: Path) -> list[Path]:
    """The folders an IDX data set may lie in, in the order they are searched."""
    return [root / info.name, root / info.torchvision_class / "raw", root]


def _find(info: DatasetInfo, root: Path, gz_name: str) -> Path | None:
    """The first `.gz` or unpacked copy of `gz_name`, searching each folder in turn."""
    unpacked = gz_name[: -len(".gz")]
    for folder in _candidate_dirs(info, root):
        for candidate in (folder / gz_name, folder / unpacked):
            if candidate.is_file():
                return candidate
    return None


def _load_idx(
    info: DatasetInfo, root: Path, explicit: bool, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    names = _split_files(train)
    found = [_find(info, root, n) for n in names]
    if any(p is None for p in found) and not explicit:
        reason = _download(info, root, train)
        found = [_find(info, root, n) for n in names]
        if any(p is None for p in found):
            _raise_missing(info, root, names, found, train, reason)
    elif any(p is None for p in found):
        _raise_missing(info, root, names, found, train, None)

    images_path, labels_path = found
    images = _read_idx(info, images_path, _IDX_IMAGES_MAGIC)
    labels = _read_idx(info, labels_path, _IDX_LABELS_MAGIC)
    if images.shape[1:] != (info.image_size, info.image_size):
        raise DagcError(
            f"images are {images.shape[1]}x{images.shape[2]}, expected "
            f"{info.image_size}x{info.image_size} for {info.name}",
            images_path,
        )
    if images.shape[0] != labels.shape[0]:
        raise DagcError(
            f"{images.shape[0]} images but {labels.shape[0]} labels in "
            f"{labels_path.name}; the two files do not belong together",
            images_path,
        )
    if labels.size and int(labels.max()) >= info.num_classes:
        raise DagcError(
            f"label {int(labels.max())} out of range for {info.num_classes} classes",
            labels_path,
        )
    image_tensor = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W)
    label_tensor = torch.from_numpy(labels.astype(np.int64))
    return image_tensor, label_tensor


def _raise_missing(
    info: DatasetInfo,
    root: Path,
    names: tuple[str, ...],
    found: list[Path | None],
    train: bool,
    download_failure: str | None,
) -> None:
    missing = ", ".join(n for n, p in zip(names, found) if p is None)
    where = ", ".join(str(d) for d in _candidate_dirs(info, root))
    split = "train" if train else "test"
    note = "" if root.is_dir() else " (the folder does not exist)"
    tried = f"; download failed: {download_failure}" if download_failure else ""
    raise DagcError(
        f"{info.name} {split} data not found: missing {missing} (looked in {where})"
        f"{note}{tried}; {HOW_TO_GET}",
        root,
    )


def _download(info: DatasetInfo, root: Path, train: bool) -> str | None:
    """Let torchvision fetch the files into `root/<Class>/raw/`; None or why it failed."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, info.torchvision_class)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            dataset_class(root=str(root), train=train, download=True)
        finally:
            socket.setdefaulttimeout(previous)
    except Exception as exc:  # offline, a mirror down, disk full: all reported alike
        return _one_line(exc)
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_bytes(info: DatasetInfo, path: Path) -> bytes:
    """The unpacked content of an IDX file; a `.gz` is MD5-checked first."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DagcError(f"cannot read: {exc.strerror or exc}", path) from exc
    if path.suffix != ".gz":
        return raw
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        expected = canonical_md5(info.name).get(path.name)
        if expected is not None:
            actual = hashlib.md5(raw).hexdigest()
            if actual != expected:
                raise DagcError(_md5_message(info, path, expected, actual), path)
            _VERIFIED.add(key)
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DagcError(
            f"not a valid gzip file ({_one_line(exc)}); replace it with the "
            f"canonical {path.name}",
            path,
        ) from exc


def _md5_message(info: DatasetInfo, path: Path, expected: str, actual: str) -> str:
    known = _known_md5().get(actual)
    if known is not None:
        what = f"it is {known[0]}'s {known[1]}, not {info.name}'s {path.name}"
    else:
        what = "the file is corrupt or truncated"
    return (
        f"MD5 {actual} does not match the canonical {expected} ({what}); "
        f"replace it with the canonical {info.name} {path.name}"
    )


def _read_idx(info: DatasetInfo, path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes as a numpy array, with its header checked."""
    data = _read_bytes(info, path)
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    kind = "images" if ndim == 3 else "labels"
    if len(data) < 4:
        raise DagcError(f"too short for an IDX {kind} file ({len(data)} bytes)", path)
    (found_magic,) = struct.unpack_from(">I", data, 0)
    if found_magic != magic:
        raise DagcError(
            f"not an IDX {kind} file: magic number 0x{found_magic:08x}, "
            f"expected 0x{magic:08x}",
            path,
        )
    if len(data) < header_size:
        raise DagcError(f"too short for an IDX {kind} file ({len(data)} bytes)", path)
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    expected_size = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected_size:
        raise DagcError(
            f"IDX header says shape {tuple(shape)} ({expected_size} bytes) but the "
            f"data has {len(data)} bytes; the file is corrupt or truncated",
            path,
        )
    # Copy, so that the tensor owns writable memory rather than the read-only bytes.
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()


# --- CIFAR-10 -----------------------------------------------------------------------

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"


def _load_cifar10(
    info: DatasetInfo, root: Path, explicit: bool, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # torchvision's layout is `<root>/cifar-10-batches-py/`; dagc's own is
    # `<root>/cifar10/cifar-10-batches-py/`.
    candidates = [root / info.name, root]
    base = next((c for c in candidates if (c / _CIFAR_FOLDER).is_dir()), None)
    archive_only = False
    if base is None:
        # The archive alone is enough: torchvision verifies and unpacks it offline.
        base = next((c for c in candidates if (c / _CIFAR_ARCHIVE).is_file()), None)
        archive_only = base is not None
    try:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, info.torchvision_class)
        if archive_only:
            archive = base / _CIFAR_ARCHIVE
            if hashlib.md5(archive.read_bytes()).hexdigest() != dataset_class.tgz_md5:
                raise DagcError(
                    "MD5 does not match the canonical "
                    f"{dataset_class.tgz_md5} (the file is corrupt or truncated); "
                    f"replace it with the canonical {_CIFAR_ARCHIVE}",
                    archive,
                )
        # torchvision's download=True downloads only what is missing or corrupt; with
        # a verified archive at hand it merely unpacks it, offline.
        download = archive_only or not explicit
        if base is None:
            base = root
            if download:
                root.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            dataset = dataset_class(root=str(base), train=train, download=download)
        finally:
            socket.setdefaulttimeout(previous)
    except DagcError:
        raise
    except Exception as exc:  # not found, corrupt, offline: torchvision says which
        split = "train" if train else "test"
        where = ", ".join(str(c / _CIFAR_FOLDER) for c in candidates)
        raise DagcError(
            f"cifar10 {split} data not found or corrupt ({_one_line(exc)}); expected "
            f"{_CIFAR_FOLDER}/ (or {_CIFAR_ARCHIVE}) in one of: {where}; "
            f"pass --data-dir (or set {DATA_DIR_ENV}) to a folder holding it, "
            "or run once with network access",
            root,
        ) from exc
    data = np.asarray(dataset.data, dtype=np.uint8)  # (N, 32, 32, 3)
    images = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return images, labels
