"""Shared fixtures: the real data beside the checkout, and small compiled networks."""

from __future__ import annotations

import os
import warnings
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


def require_shared(path: Path) -> Path:
    """A file from ../shared, or a skip; under CI a missing file fails loudly instead."""
    if not path.exists():
        message = f"shared data missing: {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def si5() -> Path:
    return require_shared(SI5)


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
