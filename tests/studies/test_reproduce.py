"""`dagc reproduce --quick` end to end at toy size (CI's smoke test), and `dagc draw`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

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


@pytest.mark.slow  # seven runs of the full networks
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
    # Every cell ran on the fastest kernels a CPU has (a levels-layout module would have
    # fallen back to torch's ops, 2-3x slower at the paper's width).
    assert {json.loads(s.read_text())["kernels"] for s in summaries} == {"engine"}
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


# --- campaigns in slots -------------------------------------------------------------------


@pytest.fixture
def tiny_campaign(monkeypatch, compile_to):
    """The campaign's machinery on two rows whose networks are 12-node random graphs."""
    from dagc.runtime.studies import reproduce

    require_shared(DATA / "mnist" / "train-images-idx3-ubyte.gz")
    models = {seed: compile_to("hermaphrodite", "ws", seed, nodes=12, channels=4,
                               layout="levels")[1] for seed in (0, 1)}  # fmt: skip
    rows = (reproduce.Row(reproduce.CONSTRAINED["hermaphrodite"], "mnist"),
            reproduce.Row(reproduce.CONSTRAINED["male"], "mnist"))  # fmt: skip
    monkeypatch.setattr(reproduce, "ROWS", rows)
    monkeypatch.setattr(reproduce, "DATASETS", ("mnist",))
    monkeypatch.setattr(
        reproduce, "compile_model",
        lambda network, seed, settings, folder: models[network.connectome == "male"],
    )  # fmt: skip
    settings = reproduce.Settings(seeds=1, channels=4, iterations=90, eval_every=30,
                                  device="cpu", data_dir=str(DATA), quick=True)  # fmt: skip
    return reproduce, settings


def metric_rows(run_dir):
    return [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.slow
def test_a_campaign_pauses_and_continues_where_it_stopped(tiny_campaign, tmp_path):
    reproduce, settings = tiny_campaign
    out = tmp_path / "campaign"
    first = reproduce.run_dir_of(reproduce.ROWS[0], 0, out)

    def signal_after_the_first_checkpoint():
        deadline = time.time() + 120
        while not (first / "latest.json").exists() and time.time() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    watcher = threading.Thread(target=signal_after_the_first_checkpoint, daemon=True)
    watcher.start()
    assert reproduce.reproduce(out, settings, log=lambda line: None) is False
    watcher.join()
    cells = reproduce.campaign(out, settings)
    assert [c.state for c in cells] == ["partial", "not started"]
    assert 30 <= cells[0].iteration < 90
    report = (out / "REPORT.md").read_text()
    assert "INCOMPLETE" in report and f"partial ({cells[0].iteration}/90)" in report
    assert "not started" in report
    # How far the partial run is: its last evaluation and its time so far.
    assert cells[0].paused["last_test_accuracy"] is not None
    latest = cells[0].latest_accuracy()
    assert latest.endswith("(latest)") and f"{latest} | " in report
    assert " min so far |" in report
    assert latest in reproduce.status_table(out, settings)
    logged = metric_rows(first)

    lines = []
    assert reproduce.reproduce(out, settings, log=lines.append) is True
    assert lines[0] == f"resume: {first.name}"  # the partial run first
    rows = metric_rows(first)
    assert rows[: len(logged)] == logged  # continued, not restarted
    iterations = [row["iteration"] for row in rows]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 90
    report = (out / "REPORT.md").read_text()
    assert "INCOMPLETE" not in report and report.count("| complete |") == 2
    table = reproduce.status_table(out, settings)
    assert "2 of 2 runs complete" in table


@pytest.mark.slow
def test_a_signal_as_a_run_ends_starts_no_other(tiny_campaign, tmp_path):
    """A slot's SIGTERM that lands while a run writes its summary and figures (the run's
    own stop request is installed then) must still keep the next run from starting."""
    reproduce, settings = tiny_campaign
    out = tmp_path / "campaign"
    first = reproduce.run_dir_of(reproduce.ROWS[0], 0, out)

    def signal_once_the_first_run_is_complete():
        deadline = time.time() + 900  # a busy CI machine: the run ends first
        while time.time() < deadline:
            summary = first / "summary.json"
            if summary.exists() and '"complete"' in summary.read_text():
                break
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR1)

    signal_it = signal_once_the_first_run_is_complete
    watcher = threading.Thread(target=signal_it, daemon=True)
    watcher.start()
    assert reproduce.reproduce(out, settings, log=lambda line: None) is False
    watcher.join()
    states = [c.state for c in reproduce.campaign(out, settings)]
    assert states == ["complete", "not started"]


def test_a_spent_time_limit_starts_nothing(tiny_campaign, tmp_path):
    reproduce, settings = tiny_campaign
    out = tmp_path / "campaign"
    assert (
        reproduce.reproduce(out, settings, log=lambda line: None, time_limit=1e-9)
        is False
    )
    assert [c.state for c in reproduce.campaign(out, settings)] == ["not started"] * 2
    assert "INCOMPLETE" in (out / "REPORT.md").read_text()


def test_status_trains_nothing(tmp_path):
    out = tmp_path / "nothing-yet"
    result = dagc("reproduce", "--quick", "--out", out, "--status")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.count("| not started |") == 7
        and "0 of 7 runs complete" in result.stdout
    )
    assert not out.exists()
    bad = dagc("reproduce", "--quick", "--out", out, "--time-limit", "soon")
    assert (
        bad.returncode == 2
        and "--time-limit" in bad.stderr
        and "Traceback" not in bad.stderr
    )


def test_a_campaign_remembers_its_protocol(tmp_path):
    from dagc.compiler.errors import DagcError
    from dagc.runtime.studies import reproduce

    out = tmp_path / "full"
    started = reproduce.campaign_settings(out, False, dict(seeds=1, precision=None))
    assert (started.seeds, started.channels, started.iterations) == (1, 78, 15000)
    reproduce.record_protocol(out, started)
    again = reproduce.campaign_settings(out, False, dict(device="cpu", data_dir="D"))
    assert again == reproduce.Settings(seeds=1, device="cpu", data_dir="D")
    reproduce.record_protocol(out, reproduce.Settings(seeds=5))  # written once only
    assert reproduce.read_protocol(out)["seeds"] == 1
    for quick, given in ((False, dict(seeds=3)), (False, dict(precision="bf16")),
                         (True, {})):  # fmt: skip
        with pytest.raises(DagcError, match="this campaign runs with"):
            reproduce.campaign_settings(out, quick, given)
    quick = tmp_path / "quick"
    reproduce.record_protocol(quick, reproduce.Settings.quick_settings(channels=2))
    assert reproduce.campaign_settings(quick, False, {}).channels == 2
    assert reproduce.campaign_settings(quick, False, {}).quick
    older = (
        tmp_path / "older"
    )  # a campaign from before campaign.json: its last report's
    older.mkdir()
    settings = dict(seeds=1, channels=4, iterations=120, eval_every=40, device="auto",
                    data_dir=None, quick=True)  # fmt: skip
    (older / "results.json").write_text(json.dumps({"settings": settings}))
    assert reproduce.campaign_settings(older, False, {}) == reproduce.Settings(
        **settings
    )


def test_status_reads_the_recorded_protocol(tmp_path):
    from dagc.runtime.studies import reproduce

    out = tmp_path / "full"
    reproduce.record_protocol(out, reproduce.Settings(seeds=1))
    status = dagc("reproduce", "--out", out, "--status")
    assert status.returncode == 0, status.stderr
    assert (
        "| not started |" in status.stdout and "0 of 7 runs complete" in status.stdout
    )
    mixed = dagc("reproduce", "--out", out, "--seeds", 3, "--status")
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr
    assert "campaign.json" in mixed.stderr and "seeds 1" in mixed.stderr
    (out / "campaign.json").write_text("{")
    broken = dagc("reproduce", "--out", out, "--status")
    assert broken.returncode == 2 and "not a campaign record" in broken.stderr


def test_status_of_a_report_kept_without_its_runs(tmp_path):
    """docs/reproduction keeps its report, not its run folders: --status says what the
    report recorded instead of showing an empty campaign alone."""
    from dagc.runtime.studies import reproduce

    out = tmp_path / "kept"
    out.mkdir()
    rows = [dict(network="worm", dataset="mnist", state="complete", mean=97.5),
            dict(network="fly", dataset="mnist", state="partial", mean=None)]  # fmt: skip
    settings = reproduce.Settings.quick_settings()
    (out / "results.json").write_text(json.dumps({"rows": rows}))
    table = reproduce.status_table(out, settings)
    assert "0 of 7 runs complete" in table
    assert "records 1 of 2 rows complete" in table and "worm, mnist: 97.50 %" in table
    (out / "runs").mkdir()  # a campaign under way reads its runs only
    assert "records" not in reproduce.status_table(out, settings)


def test_the_report_puts_each_complete_cell_beside_the_paper(tmp_path):
    """A complete cell further than 0.3 points from the paper is flagged, and the campaign's
    hand-written NOTES.md (why) survives the report's rewrite at every pause."""
    from dagc.runtime.studies import reproduce

    missed = dict(network="hermaphrodite, constrained DAG", dataset="mnist",
                  state="complete", accuracy_percent=[99.12], mean=99.12, paper=99.6,
                  parameters=210_000, latest=[], wall_time_s=600.0, device="cpu")  # fmt: skip
    close = dict(missed, network="male, constrained DAG", accuracy_percent=[99.35],
                 mean=99.35, paper=99.5)  # fmt: skip
    partial = dict(missed, dataset="fashion-mnist", state="partial (10/15000)",
                   accuracy_percent=[], mean=None, latest=["80.00 at 10 (latest)"])  # fmt: skip
    settings = reproduce.Settings(seeds=1)
    report = reproduce.render_report(settings, [missed, close, partial], {}, tmp_path)
    assert ("- hermaphrodite, constrained DAG, mnist: 99.12 % against 99.6 % (-0.48 points): "
            "misses it by more than 0.3 points.") in report  # fmt: skip
    assert "99.35 % against 99.5 % (-0.15 points): within 0.3 points." in report
    assert "fashion-mnist: 80.00" not in report and "NOTES.md" not in report
    (tmp_path / "NOTES.md").write_text("One seed, on a CPU.\n")
    report = reproduce.render_report(settings, [partial], {}, tmp_path)
    assert "No cell with a published number is complete yet." in report
    assert report.count("One seed, on a CPU.") == 1
