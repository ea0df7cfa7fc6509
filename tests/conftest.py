"""Shared fixtures: the real data beside the checkout, the `dagc` command (in this process or
in a child process), and small compiled networks."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# The test networks are tiny: one intra-op thread is faster for them and immune to the OpenMP
# stalls that a second busy process causes on a 2-core machine (a BatchNorm call went from
# 0.01 ms to 20 ms with two threads and a contended core).
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RAW = SHARED / "data" / "connectome" / "raw"
SI5 = RAW / "SI 5 Connectome adjacency matrices, corrected July 2020.xlsx"


def require_shared(*paths: Path) -> Path:
    """The (first) file from ../shared, or a skip; under CI a missing file fails loudly."""
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        message = f"shared data missing: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return paths[0]


@pytest.fixture(scope="session")
def shared():
    """shared(*paths) -> the first path, once all exist; else a skip (a failure under CI)."""
    return require_shared


@pytest.fixture(scope="session")
def si5() -> Path:
    return require_shared(SI5)


@dataclass
class CliResult:
    """What one `dagc` command did, in the shape of subprocess.run's result."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def dagc(capsys):
    """dagc(*args) -> CliResult: runs `dagc ARGS` in this process through `main([...])`."""
    from dagc.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                main([str(arg) for arg in args])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


@pytest.fixture(scope="session")
def dagc_process():
    """dagc_process(*args, **run_kwargs) -> CompletedProcess of `python -m dagc ARGS`.

    For what only a separate process shows: the real entry point, signals, torchrun."""

    def run(*args, **kwargs) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [sys.executable, "-m", "dagc", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            **kwargs,
        )

    return run


def _assert_clean_error(result, *needles: str) -> str:
    """Exit code 2, nothing on stdout, one line on stderr holding every needle; the line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="session")
def clean_error():
    """clean_error(result, *needles) -> the one error line, after checking it is one."""
    return _assert_clean_error


@pytest.fixture(scope="session")
def compile_to(tmp_path_factory):
    """compile_to(spec, **options) -> (front end, path of the generated file), cached."""
    from dagc.compiler.build import compile_network
    from dagc.compiler.dag import DagOptions
    from dagc.compiler.graph import PrepareOptions
    from dagc.compiler.render import CompileOptions

    cache: dict = {}
    folder = tmp_path_factory.mktemp("generated")

    def build(
        spec: str, kind: str = "constrained", seed: int = 0, nodes: int = 0, **options
    ):
        key = (spec, kind, seed, nodes, tuple(sorted(options.items())))
        if key not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                front, source = compile_network(
                    spec,
                    PrepareOptions(),
                    DagOptions(kind, seed, nodes=nodes, edges=2 * nodes),
                    CompileOptions(**options),
                )
            path = folder / f"net{len(cache)}.py"
            path.write_text(source, encoding="utf-8")
            cache[key] = (front, path)
        return cache[key]

    return build
