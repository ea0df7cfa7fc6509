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


def start_training(args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dagc", *map(str, args)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def assert_same_run(run_dir: Path, uninterrupted: Path) -> None:
    expected, actual = final_weights(uninterrupted), final_weights(run_dir)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert comparable(run_dir) == comparable(uninterrupted)
    summary = json.loads((run_dir / "summary.json").read_text())
    whole = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["status"] == whole["status"] == "complete"
    assert summary["final_test_accuracy"] == whole["final_test_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)  # fmt: skip
def test_signal_pauses_and_resume_is_exact(tiny_model, uninterrupted, tmp_path, signum):
    out = tmp_path / "signalled"
    process = start_training(train_args(tiny_model, out))
    deadline = time.time() + 120
    while not (out / "latest.json").exists() and process.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    assert "paused at iteration" in stderr and "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["status"] == "paused"
        and summary["stopped_by"] == signal.Signals(signum).name
    )
    assert 30 <= summary["iteration"] < 120
    pointer = json.loads((out / "latest.json").read_text())
    assert (
        pointer["iteration"] == summary["iteration"]
    )  # the checkpoint is where it stopped
    assert not list(out.glob("*.png"))  # figures only for a complete run
    resumed = dagc(*train_args(tiny_model, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted)


@pytest.mark.slow
def test_time_limit_pauses_and_resume_is_exact(tiny_model, uninterrupted, tmp_path):
    out = tmp_path / "limited"
    started = time.perf_counter()
    paused = dagc(*train_args(tiny_model, out, "--time-limit", "2s"))
    assert paused.returncode == 75, paused.stderr
    assert time.perf_counter() - started < 60
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "paused" and summary["stopped_by"] == "time limit"
    assert 0 < summary["iteration"] < 120
    # A second slot that is also too short moves on from where the first stopped.
    again = dagc(*train_args(tiny_model, out, "--resume", "--time-limit", "0.5s"))
    assert again.returncode == 75, again.stderr
    later = json.loads((out / "summary.json").read_text())["iteration"]
    assert summary["iteration"] < later < 120
    resumed = dagc(*train_args(tiny_model, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted)


def test_time_limit_must_be_a_duration(tiny_model, tmp_path):
    result = dagc(
        *train_args(tiny_model, tmp_path / "run", "--time-limit", "9 minutes")
    )
    assert result.returncode == 2 and "--time-limit" in result.stderr
    assert (
        len(result.stderr.strip().splitlines()) == 1
        and "Traceback" not in result.stderr
    )


def test_parse_duration():
    from dagc.compiler.errors import DagcError
    from dagc.runtime.stopping import parse_duration

    assert parse_duration("90") == parse_duration("90s") == 90.0
    assert parse_duration("9m") == 540.0 and parse_duration("1.5h") == 5400.0
    for text in ("0", "-5m", "9 minutes", "m", "1d", ""):
        with pytest.raises(DagcError, match="--time-limit"):
            parse_duration(text)


def test_nested_stop_requests_lose_no_signal():
    """`dagc reproduce` wraps each run's training in its own request: a signal that comes
    as a run ends (while it writes its summary and figures) must stop the campaign, and one
    that comes while the next network compiles must stop that run before it trains."""
    from dagc.runtime.stopping import StopRequest

    with StopRequest() as campaign:
        with StopRequest() as run:
            signal.raise_signal(signal.SIGUSR1)
            assert run.requested() and not campaign.requested()
        assert campaign.reason == "SIGUSR1"  # handed on when the run's request ends
        with StopRequest() as next_run:  # entered with a stop pending: takes it over
            assert next_run.reason == "SIGUSR1"
    # None encloses this one: it must not call SIG_DFL's action (that would kill pytest).
    with StopRequest() as alone:
        signal.raise_signal(signal.SIGUSR1)
    assert alone.reason == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_weights_of_another_network_do_not_load(tiny_model, uninterrupted, compile_to):
    from dagc.runtime.checkpoint import network_fingerprint
    from dagc.runtime.loading import load_generated

    other = compile_to("hermaphrodite", "ws", 1, nodes=12, channels=4, layout="levels")[
        1
    ]
    result = dagc(
        "eval", uninterrupted, "--model", other, "--data-dir", DATA, "--device", "cpu"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    for model in (tiny_model, other):
        assert network_fingerprint(load_generated(model))[:12] in lines[0]


def test_checkpoints_without_a_fingerprint_still_load(uninterrupted, tmp_path):
    from safetensors.torch import save_file

    old = tmp_path / "old-run"
    old.mkdir()
    (old / "model.py").write_bytes((uninterrupted / "model.py").read_bytes())
    save_file(
        final_weights(uninterrupted), str(old / "weights.safetensors")
    )  # no metadata
    result = dagc("eval", old / "weights.safetensors", "--data-dir", DATA, "--device", "cpu",
                  "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert json.loads(result.stdout)["test_accuracy"] == summary["final_test_accuracy"]


@pytest.mark.parametrize("saved_capturable", [True, False])
@pytest.mark.parametrize("capturable", [True, False])
def test_optimizer_state_moves_between_step_kinds(saved_capturable, capturable):
    """A CUDA-graph run's Adam state (capturable, lr and steps as device tensors) resumes
    in an eager run and the other way round; shown here with CPU tensors standing in."""
    from dagc.runtime.run_dir import load_optimizer_state

    param = torch.nn.Parameter(torch.ones(3))
    source = torch.optim.Adam([param], lr=0.004)
    param.grad = torch.ones(3)
    source.step()
    saved = source.state_dict()
    if saved_capturable:  # what a captured run saves
        saved["param_groups"][0]["capturable"] = True
        saved["param_groups"][0]["lr"] = torch.tensor(0.004)
    target_param = torch.nn.Parameter(param.detach().clone())
    lr = torch.tensor(0.004) if capturable else 0.004
    target = torch.optim.Adam([target_param], lr=lr)
    target.param_groups[0]["capturable"] = capturable  # (a CPU Adam cannot be built so)
    load_optimizer_state(target, saved, torch.device("cpu"))
    group = target.param_groups[0]
    assert group["capturable"] is capturable
    assert isinstance(group["lr"], torch.Tensor) is capturable
    assert float(group["lr"]) == pytest.approx(0.004)
    state = target.state[target_param]
    assert state["step"].dtype == torch.float32 and float(state["step"]) == 1.0
    assert torch.equal(state["exp_avg"], source.state[param]["exp_avg"])
    if not capturable:  # the eager step runs with the adapted state
        target_param.grad = torch.ones(3)
        target.step()
        assert float(target.state[target_param]["step"]) == 2.0


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
