"""Write outputs atomically: a reader sees the old file or the whole new one, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import DagcError


def check_writable_dir(path: Path) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise DagcError("output directory does not exist", directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DagcError("output directory is not writable", directory)
    if path.is_dir():
        raise DagcError("output path is a directory", path)


def write_atomic(path: Path, data: str | bytes) -> None:
    path = Path(path)
    check_writable_dir(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
