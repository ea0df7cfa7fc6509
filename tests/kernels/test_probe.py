"""dagc's own machine probe (runtime/kernels/probe.cpp): it does the work it counts."""

from __future__ import annotations

import ctypes

import pytest
import torch

from dagc.runtime.kernels import probe


def test_the_read_probe_reads_every_float_of_every_slice():
    library = probe._library()
    threads, floats, repeats = 2, 1000 + 7, 3  # a tail past the last full vector
    data = torch.arange(threads * floats, dtype=torch.float32) % 5
    total = library.probe_read(data.data_ptr(), floats, repeats, threads)
    assert total == pytest.approx(repeats * float(data.sum()), rel=1e-6)


def test_the_fma_probe_counts_lanes_chains_rounds_and_threads():
    library = probe._library()
    lanes = library.probe_lanes()
    assert lanes in (1, 8, 16)
    checksum = (ctypes.c_float * 1)()
    assert library.probe_fma(10, 2, checksum) == 10 * 12 * lanes * 2


def test_measure_reports_every_ceiling():
    facts = probe.measure(threads=1, scale=0.001)
    assert facts["threads"] == 1
    assert facts["fma_per_s"] > 1e8
    assert set(facts["read_bytes_per_s"]) == {"L2", "L3", "DRAM"}
    assert all(rate > 1e8 for rate in facts["read_bytes_per_s"].values())
