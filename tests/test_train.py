"""Training runtime: outputs, exact resume after kill -9, DDP, eval and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SHARED, require_shared

DATA = SHARED / "data"


@pytest.fixture(scope="module")
def tiny_model(compile_to):
    """A 12-node random graph at 4 channels: a training step takes milliseconds."""
    require_shared(DATA / "mnist" / "train-images-idx3-ubyte.gz")
    return compile_to("hermaphrodite", "ws", 0, nodes=12, channels=4, layout="levels")[
        1
    ]


def dagc(*args, **kwargs):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dagc", *map(str, args)],
        capture_output=True, text=True, env=env, **kwargs,
    )  # fmt: skip


def train_args(model, out, *extra):
    return [
        "train", model, "--dataset", "mnist", "--data-dir", DATA, "--iterations", 120,
        "--eval-every", 30, "--log-every", 10, "--batch-size", 50, "--out", out, "--quiet",
        "--device", "cpu", *extra,
    ]  # fmt: skip


def final_weights(run_dir: Path) -> dict:
    stem = json.loads((run_dir / "latest.json").read_text())["stem"]
    return load_file(str(run_dir / f"{stem}.safetensors"))


def comparable(run_dir: Path) -> list[dict]:
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    result = dagc(*train_args(tiny_model, out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_run_writes_every_output(uninterrupted):
    from PIL import Image

    for name in ("metrics.jsonl", "summary.json", "model.py", "latest.json"):
        assert (uninterrupted / name).exists(), name
    for name in ("accuracy.png", "examples.png", "confusion.png"):
        with Image.open(uninterrupted / name) as image:
            assert image.size[0] > 200 and image.size[1] > 200
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["iterations"] == 120 and summary["dataset"] == "mnist"
    assert (
        summary["final_test_accuracy"] > 0.15
    )  # chance is 0.1; a 12-node, 4-channel net learns slowly
    assert set(summary["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert summary["parameters"] == sum(
        t.numel()
        for k, t in final_weights(uninterrupted).items()
        if not k.endswith(
            ("_mean", "_var", "running_mean", "running_var", "num_batches_tracked")
        )
    )
    evals = [row for row in comparable(uninterrupted) if "test_accuracy" in row]
    assert [row["iteration"] for row in evals] == [30, 60, 90, 120]


@pytest.mark.slow
def test_same_seed_same_curve(tiny_model, uninterrupted, tmp_path):
    result = dagc(*train_args(tiny_model, tmp_path / "again"))
    assert result.returncode == 0, result.stderr
    assert comparable(tmp_path / "again") == comparable(uninterrupted)


@pytest.mark.slow
def test_kill_and_resume_is_exact(tiny_model, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dagc", *map(str, train_args(tiny_model, out))],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while not (out / "latest.json").exists() and process.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "summary.json").exists(), (
        "the run finished before it could be killed"
    )
    resumed = dagc(*train_args(tiny_model, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = final_weights(uninterrupted), final_weights(out)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert comparable(out) == comparable(uninterrupted)
    whole = json.loads((uninterrupted / "summary.json").read_text())
    again = json.loads((out / "summary.json").read_text())
    assert again["final_test_accuracy"] == whole["final_test_accuracy"]


@pytest.mark.slow
def test_eval_matches_the_summary(uninterrupted):
    result = dagc(
        "eval", uninterrupted, "--dataset", "mnist", "--data-dir", DATA, "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert json.loads(result.stdout)["test_accuracy"] == summary["final_test_accuracy"]


@pytest.mark.slow
def test_a_busy_run_folder_needs_resume(tiny_model, uninterrupted):
    result = dagc(*train_args(tiny_model, uninterrupted))
    assert result.returncode == 2 and "--resume" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_is_one_clear_line(tiny_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = dagc("train", tiny_model, "--dataset", "fashion-mnist", "--data-dir", empty,
                  "--iterations", 2, "--out", tmp_path / "run", "--quiet")  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "train-images-idx3-ubyte" in result.stderr


def test_model_and_dataset_must_agree(tiny_model, tmp_path):
    result = dagc("train", tiny_model, "--dataset", "cifar10", "--data-dir", tmp_path,
                  "--iterations", 2, "--out", tmp_path / "run", "--quiet")  # fmt: skip
    assert result.returncode == 2
    assert "--in-channels 3" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tiny_model, tmp_path):
    out = tmp_path / "diverged"
    result = dagc(*train_args(tiny_model, out, "--lr", "1e20"))
    assert result.returncode == 2, result.stderr
    assert "diverged" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "summary.json").exists()


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tiny_model, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port=29517", "-m", "dagc", "train", str(tiny_model), "--data-dir", str(DATA),
         "--iterations", "6", "--eval-every", "3", "--batch-size", "20", "--device", "cpu",
         "--out", str(out), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["iterations"] == 6
