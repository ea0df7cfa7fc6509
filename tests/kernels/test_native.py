"""Building dagc's C++ libraries (runtime/kernels/native.py): cached, never half-written,
and one clear error when the compiler fails or is missing, for both of them."""

from __future__ import annotations

import pytest

from dagc.runtime.kernels import cpu, engine
from dagc.runtime.kernels.native import KernelBuildError


@pytest.mark.parametrize(
    "library, what",
    [(cpu, "the kernels"), (engine, "the engine")],
    ids=["cpp", "engine"],
)
def test_a_build_is_cached_and_fails_in_one_clear_error(
    tmp_path, monkeypatch, library, what
):
    monkeypatch.setenv("DAGC_KERNEL_CACHE", str(tmp_path))
    first = library.build()
    stamp = first.stat().st_mtime_ns
    assert library.build() == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left
    first.unlink()
    monkeypatch.setenv("CXX", "false")  # exits 1 without a word
    with pytest.raises(KernelBuildError, match=f"false failed to build {what}"):
        library.build()
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler anywhere
    with pytest.raises(KernelBuildError, match="no C\\+\\+ compiler"):
        library.build()
