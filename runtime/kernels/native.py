"""dagc's C++ sources built with the system compiler and loaded with ctypes, once per process.

A library is compiled on first use (`$CXX`, else `c++`, `g++` or `clang++`; OpenMP for the
threads) into a cache folder (`$DAGC_KERNEL_CACHE`, else `~/.cache/dagc/kernels`) under a
name keyed by the source, the compiler, the flags and this CPU (-march=native), written under
a temporary name and renamed, so a concurrent or interrupted build never leaves a
half-written library behind. Nothing to install: the C++ backend (`cpu.py`) and the engine
(`engine.py`) each hold one `NativeLibrary`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["FLAGS", "KernelBuildError", "NativeLibrary", "cache_dir", "find_compiler"]

FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")


class KernelBuildError(RuntimeError):
    """A C++ library could not be built or loaded (no compiler, or it failed)."""


def find_compiler() -> str | None:
    """The C++ compiler to use: $CXX, else the first of c++, g++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"]) or os.environ["CXX"]
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def cache_dir() -> Path:
    if os.environ.get("DAGC_KERNEL_CACHE"):
        return Path(os.environ["DAGC_KERNEL_CACHE"])
    return Path.home() / ".cache" / "dagc" / "kernels"


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags (Linux), else the
    machine name, so a cache shared between different CPUs never loads a foreign build."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


class NativeLibrary:
    """One C++ source file: built into the cache on first use, then loaded once."""

    def __init__(self, source: Path, stem: str, signatures: dict, what: str):
        self.source, self.stem, self.what = source, stem, what
        self.signatures = signatures  # function name -> ctypes argument types
        self._library: ctypes.CDLL | None = None
        self._failure: str | None = None

    def _build_key(self, compiler: str) -> str:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, check=False
        ).stdout
        digest = hashlib.sha256()
        for part in (self.source.read_bytes(), compiler.encode(), version.encode()):
            digest.update(part)
        digest.update(" ".join(FLAGS).encode())
        digest.update(_cpu_identity().encode())
        return digest.hexdigest()[:16]

    def build(self) -> Path:
        """Compile the source into the cache unless it is there already; return the shared
        library's path. Raises KernelBuildError with the reason."""
        compiler = find_compiler()
        if compiler is None:
            raise KernelBuildError("no C++ compiler found (set CXX, or install g++)")
        target = cache_dir() / f"{self.stem}_{self._build_key(compiler)}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(handle)
        try:
            result = subprocess.run(
                [compiler, *FLAGS, str(self.source), "-o", partial],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                message = (result.stderr or result.stdout).strip().splitlines()
                raise KernelBuildError(
                    f"{Path(compiler).name} failed to build {self.what}: "
                    + (message[-1] if message else f"exit code {result.returncode}")
                )
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return target

    def load(self) -> ctypes.CDLL:
        """The loaded library (built on the first call); KernelBuildError if impossible.
        A failure is remembered: the process does not try again."""
        if self._library is not None:
            return self._library
        if self._failure is not None:
            raise KernelBuildError(self._failure)
        try:
            library = ctypes.CDLL(str(self.build()))
            for name, argtypes in self.signatures.items():
                function = getattr(library, name)
                function.argtypes, function.restype = argtypes, None
        except (KernelBuildError, OSError, AttributeError) as error:
            self._failure = str(error)
            raise KernelBuildError(self._failure) from None
        self._library = library
        return library

    def unavailable_reason(self) -> str | None:
        """Why the library cannot be used here, or None when it can."""
        try:
            self.load()
        except KernelBuildError as error:
            return str(error)
        return None
