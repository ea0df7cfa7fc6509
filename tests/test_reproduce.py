"""`dagc reproduce --quick` end to end at toy size (CI's smoke test), and `dagc draw`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import SHARED, require_shared

DATA = SHARED / "data"


def dagc(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dagc", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_quick_reproduction_writes_the_report_and_skips_finished_runs(tmp_path):
    require_shared(DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    out = tmp_path / "reproduction"
    args = ["reproduce", "--quick", "--out", out, "--data-dir", DATA,
            "--channels", 1, "--iterations", 2, "--eval-every", 1]  # fmt: skip
    first = dagc(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    report = (out / "REPORT.md").read_text()
    assert "REDUCED RUN" in report
    for label in ("hermaphrodite, constrained DAG", "male, constrained DAG", "random DAG",
                  "Watts-Strogatz", "Dale's law", "99.6", "92.6", "99.3"):  # fmt: skip
        assert label in report, label
    summaries = list(out.glob("runs/*/summary.json"))
    assert len(summaries) == 7
    for name in ("fig3_accuracy_mnist.png", "fig3_examples_male_fashion-mnist.png"):
        assert (out / name).stat().st_size > 10_000
    again = dagc(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("skip (finished)") == 7
    assert "train:" not in again.stderr


def test_draw_both_sexes(tmp_path):
    for sex, name in (("hermaphrodite", "h.svg"), ("male", "m.png")):
        result = dagc("draw", sex, "-o", tmp_path / name)
        assert result.returncode == 0, result.stderr
    svg = (tmp_path / "h.svg").read_text()
    assert "AVAL" in svg and "sensory (83)" in svg and "282 neurons" in svg
    assert (tmp_path / "m.png").stat().st_size > 100_000
    bad = dagc("draw", "male", "-o", tmp_path / "m.txt")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
