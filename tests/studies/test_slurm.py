"""`dagc reproduce --launcher slurm`: the job script and a missing Slurm here (fast tier), and
a whole campaign on a real one-node Slurm started on this machine (the `slurm` tier).

The `slurm` tier installs Debian's `slurm-wlm` and `munge` when they are absent, writes a
slurm.conf into a temporary folder, starts munged, slurmctld and slurmd from it (as root,
proctrack/linuxproc, no cgroups) and stops them and removes the folder at the end. Where the
packages cannot be had it skips with one line; under CI=true it fails instead.
"""

from __future__ import annotations

import getpass
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import SHARED, require_shared

DATA = SHARED / "data"
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def dagc(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dagc", *map(str, args)],
                          capture_output=True, text=True, env=env or ENV, **kwargs)  # fmt: skip


# --- fast tier: no Slurm needed -------------------------------------------------------------


def test_without_a_reachable_slurm_it_is_one_line_and_exit_2(tmp_path, clean_error):
    empty = tmp_path / "bin"
    empty.mkdir()
    no_tools = dagc("reproduce", "--quick", "--launcher", "slurm", "--out", tmp_path / "c",
                    env={**ENV, "PATH": str(empty)})  # fmt: skip
    clean_error(no_tools, "--launcher slurm", "no reachable Slurm", "sbatch")
    for tool in ("sbatch", "scontrol"):
        (empty / tool).write_text("#!/bin/sh\nexit 0\n")
    (empty / "squeue").write_text(
        "#!/bin/sh\necho 'squeue: error: Unable to contact slurm controller' >&2\nexit 1\n"
    )
    for tool in empty.iterdir():
        tool.chmod(0o755)
    down = dagc("reproduce", "--quick", "--launcher", "slurm", "--out", tmp_path / "c",
                env={**ENV, "PATH": f"{empty}:/usr/bin:/bin"})  # fmt: skip
    clean_error(down, "no reachable Slurm", "Unable to contact slurm controller")
    assert not (tmp_path / "c").exists()


def test_the_job_script_passes_the_signal_on_once_dagc_listens_and_requeues_on_75(
    tmp_path,
):
    """A signal that comes before the cell has its handler waits for it, then exit 75 is a
    requeue (a stand-in scontrol records it)."""
    from dagc.runtime.studies.slurm import SlurmOptions, batch_script

    cell = textwrap.dedent("""\
        import signal, sys, time
        time.sleep(1.5)  # still starting: USR1 is ignored (inherited) until here
        signal.signal(signal.SIGUSR1, lambda *a: sys.exit(75))
        print("listening", flush=True)
        time.sleep(30)
    """)  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/requeued\n')
    (bin_dir / "scontrol").chmod(0o755)
    options = SlurmOptions.load(time="10", signal_grace=30, extra=("--account=lab",))
    script = batch_script("cell-s0", tmp_path, [sys.executable, "-c", cell], options)
    for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@30", "#SBATCH --time=10",
                 "#SBATCH --account=lab", "#SBATCH --open-mode=append"):  # fmt: skip
        assert line in script.splitlines(), line
    (tmp_path / "job.sh").write_text(script)
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42"}
    job = subprocess.Popen(["bash", str(tmp_path / "job.sh")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    time.sleep(0.5)
    job.send_signal(signal.SIGUSR1)  # before the cell listens
    output, _ = job.communicate(timeout=30)
    assert job.returncode == 75, output
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "42"]
    lines = output.splitlines()
    assert any("SIGUSR1 from Slurm" in line for line in lines), output
    assert lines.index("listening") < len(lines) - 1
    assert "paused (exit 75): requeued" in lines[-1], output


class Output:
    """A child's output, read by a thread, so that every wait on it has a deadline (a bare
    readline() waits forever on a child that hangs before it prints)."""

    def __init__(self, stream):
        self.text = ""
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)  # the end of the output

    def until(self, done, seconds: float, what: str) -> str:
        """Reads until done(text) or the output ends; fails after `seconds`."""
        deadline = time.monotonic() + seconds
        while not done(self.text):
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{what}: nothing after {seconds:.0f} s\n{self.text}")
            if line is None:
                break
            self.text += line
        return self.text

    def to_the_end(self, seconds: float, what: str) -> str:
        return self.until(lambda text: False, seconds, what)


def kill_all(job: subprocess.Popen, pid_dir: Path) -> None:
    """The job script's process group (bash, torchrun) and torchrun's workers, which run in
    sessions of their own (torchrun starts them so) and record their pids in pid_dir."""
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    for pid_file in pid_dir.glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.mark.slow  # torchrun and two worker processes
def test_under_torchrun_sigterm_is_passed_on_and_a_paused_summary_requeues(tmp_path):
    """torchrun ignores SIGUSR1 and turns its workers' exit 75 into a failure of its own:
    the script passes SIGTERM and requeues on the summary written in this allocation."""
    from dagc.runtime.studies.slurm import SlurmOptions, batch_script

    pids = tmp_path / "pids"
    pids.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(f"""\
        import json, os, signal, sys, time
        from pathlib import Path
        Path({str(pids)!r}, f"{{os.getpid()}}.pid").write_text(str(os.getpid()))
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        print("listening", flush=True)
        deadline = time.monotonic() + 600  # never an orphan for long
        while not stop and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.environ["RANK"] == "0":
            run = Path(sys.argv[1])
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({{"status": "paused"}}, indent=2))
        sys.exit(75)
    """))  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "slurm").mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/requeued\n')
    (bin_dir / "scontrol").chmod(0o755)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(worker), str(tmp_path / "runs" / "cell-s0")]  # fmt: skip
    script = batch_script(
        "cell-s0", tmp_path, command, SlurmOptions.load(nproc_per_node=2)
    )
    (tmp_path / "job.sh").write_text(script)
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "43"}
    job = subprocess.Popen(["bash", str(tmp_path / "job.sh")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)  # fmt: skip

    def both_listen(text):
        # Counted in the text, not as lines: torchrun runs its workers unbuffered
        # (python -u), so print() writes "listening" and "\n" apart and two workers that
        # start together can interleave them ("listeninglistening\n\n").
        return text.count("listening") == 2

    output = Output(job.stdout)
    try:
        output.until(both_listen, 300, "torchrun's two workers did not start")
        job.send_signal(signal.SIGUSR1)
        text = output.to_the_end(120, "the job did not end after SIGUSR1")
        assert job.wait(timeout=30) != 0, text  # torchrun's failure, passed on
    finally:
        kill_all(job, pids)
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "43"], text
    assert "SIGUSR1 from Slurm" in text and "requeued" in text.splitlines()[-1], text


def test_slurm_options_from_a_config_file_and_the_command_line(tmp_path):
    from dagc.compiler.errors import DagcError
    from dagc.runtime.studies.slurm import SlurmOptions

    config = tmp_path / "slurm.toml"
    config.write_text('partition = "gpu"\ntime = "4:00:00"\ngpus_per_task = 1\n'
                      'extra = ["--account=lab"]\n')  # fmt: skip
    options = SlurmOptions.load(config, partition="debug", cpus_per_task=8)
    assert options.sbatch_lines() == [
        "--requeue", "--signal=B:USR1@120", "--partition=debug", "--time=4:00:00",
        "--cpus-per-task=8", "--gpus-per-task=1", "--account=lab",
    ]  # fmt: skip
    config.write_text("queue = 'gpu'\n")
    with pytest.raises(DagcError, match="unknown key 'queue'"):
        SlurmOptions.load(config)


# --- the slurm tier: a real Slurm on this machine -------------------------------------------

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")


def unavailable(message: str):
    """The tier's one line: a skip here, a failure under CI."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def install_slurm() -> None:
    """slurm-wlm and munge from Debian's packages, unless their programs are here already."""
    tools = (*DAEMONS, "sbatch", "squeue", "scontrol", "sinfo")
    if all(shutil.which(tool) or Path("/usr/sbin", tool).exists() for tool in tools):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        unavailable("slurm tier: slurm-wlm and munge are not installed, and apt-get as root "
                    "is not available to install them")  # fmt: skip
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env,
                                    timeout=600)  # fmt: skip
        except subprocess.TimeoutExpired:
            unavailable(
                f"slurm tier: `{' '.join(command)}` did not finish in 10 minutes"
            )
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
            unavailable(
                f"slurm tier: cannot install {' and '.join(PACKAGES)}: {reason}"
            )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SLURM_CONF = """\
ClusterName=dagctest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds (default 120) before it may start again
AuthInfo=socket={state}/munge/munge.sock,cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=short Nodes={host} Default=YES MaxTime={max_minutes} State=UP
"""


class Cluster:
    """munged + slurmctld + slurmd in the foreground, all state in one temporary folder."""

    def __init__(self, cpus: int = 2, max_minutes: int = 2):
        self.state = Path(tempfile.mkdtemp(prefix="dagc-slurm-"))
        self.conf = self.state / "slurm.conf"
        self.env = {**ENV, "SLURM_CONF": str(self.conf)}
        self.processes: list[subprocess.Popen] = []
        host = socket.gethostname().split(".")[0]
        for folder in ("munge", "ctld", "d"):
            (self.state / folder).mkdir(mode=0o700)
        key = self.state / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        ports = {free_port()}
        while len(ports) < 2:
            ports.add(free_port())
        ctld_port, d_port = sorted(ports)
        self.conf.write_text(SLURM_CONF.format(host=host, ctld_port=ctld_port,
                                               d_port=d_port, state=self.state,
                                               cpus=cpus, max_minutes=max_minutes))  # fmt: skip
        self.max_minutes = max_minutes

    def start(self) -> None:
        munge = self.state / "munge"
        self._daemon("munged", "-F", "--force", f"--key-file={munge}/munge.key",
                     f"--socket={munge}/munge.sock", f"--pid-file={munge}/munged.pid",
                     f"--seed-file={munge}/seed", f"--log-file={munge}/munged.log")  # fmt: skip
        self._wait_for(lambda: (munge / "munge.sock").exists(), "munged")
        self._daemon("slurmctld", "-D", "-i")
        self._daemon("slurmd", "-D")
        self._wait_for(self._node_idle, "slurmctld and slurmd (an idle node)")

    def _daemon(self, name: str, *args: str) -> None:
        program = shutil.which(name) or f"/usr/sbin/{name}"
        with open(self.state / f"{name}.out", "w") as log:
            self.processes.append(subprocess.Popen([program, *args], env=self.env,
                                                   stdout=log, stderr=subprocess.STDOUT))  # fmt: skip

    def _node_idle(self) -> bool:
        result = self.run("sinfo", "--noheader", "--format=%T")
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def _wait_for(self, ready, what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited ({process.returncode}); "
                                       f"logs in {self.state}: {self.logs()}")  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready in {seconds} s: {self.logs()}")
            time.sleep(0.5)

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self.env,
                              timeout=60)  # fmt: skip

    def logs(self) -> str:
        tails = []
        for path in sorted(self.state.glob("*.log")) + sorted(self.state.glob("*.out")):
            tails.append(
                f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-15:])
            )
        return "\n".join(tails)

    def stop(self) -> None:
        """Cancel every job, stop the daemons (these processes, by id), remove the state."""
        try:
            if self.processes:
                self.run("scancel", "--user", getpass.getuser())
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    queue = self.run("squeue", "--noheader")
                    if queue.returncode != 0 or not queue.stdout.strip():
                        break
                    time.sleep(1)
        finally:
            for process in reversed(self.processes):
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
            shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm_cluster():
    install_slurm()
    cluster = Cluster(cpus=2, max_minutes=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing column (the one thing that differs between runs)."""
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows]


def pause_the_first_cell_through_slurm(cluster, logs: Path, found: list) -> None:
    """Slurm's time-limit signal comes 5-35 s into an allocation, which a fast machine can
    outrun (a quick cell trains in seconds once it has started). So the first cell whose
    job script starts is also sent USR1 through Slurm (`scancel --batch`: the same signal to
    the batch script that --signal=B:USR1 sends at the time limit), a second into its
    allocation; the script holds it until the training listens, so that cell pauses and is
    requeued on any machine. Runs beside the submission; `found` gets the cell's name."""
    deadline = time.monotonic() + 600
    started = re.compile(r"job (\d+): allocation 1 on")
    while time.monotonic() < deadline:
        for path in sorted(logs.glob("*.out")) if logs.is_dir() else ():
            match = started.search(path.read_text())
            if match:
                time.sleep(1)  # its traps are set within milliseconds of that line
                result = cluster.run("scancel", "--signal=USR1", "--batch", match[1])
                found.append(path.stem if result.returncode == 0 else result.stderr)
                return
        time.sleep(0.2)


@pytest.mark.slurm
# It installs Slurm, then waits on queued jobs (each wait bounded): past the default limit.
@pytest.mark.timeout(3600)
def test_a_campaign_on_slurm_pauses_requeues_and_matches_a_local_run(
    slurm_cluster, tmp_path, clean_error
):
    from safetensors.torch import load_file

    require_shared(DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    iterations = 30
    settings = ["--quick", "--channels", 1, "--iterations", iterations, "--eval-every",
                iterations, "--device", "cpu", "--data-dir", DATA]  # fmt: skip
    # slurmctld checks time limits every 30 s and sends SIGUSR1 at the first check within
    # grace + 30 s of the limit: with 2 minutes and 85 s, 5-35 s into each allocation. The
    # script holds it until the training listens, so a cell whose training has not ended
    # by then pauses after a step (85 s or more to do it in) and is requeued.
    slurm = ["--launcher", "slurm", "--slurm-time", 2, "--signal-grace", 85,
             "--partition", "short"]  # fmt: skip
    started = time.monotonic()
    signalled: list = []
    signaller = threading.Thread(
        target=pause_the_first_cell_through_slurm,
        args=(slurm_cluster, tmp_path / "slurm" / "slurm" / "logs", signalled),
        daemon=True,
    )
    signaller.start()
    # The same cells here, one after another, while the cluster works.
    local = subprocess.Popen([sys.executable, "-m", "dagc", "reproduce", *map(str, settings),
                              "--out", tmp_path / "local"], env=ENV, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        submit = dagc("reproduce", *settings, *slurm, "--out", tmp_path / "slurm",
                      env=slurm_cluster.env, timeout=600)  # fmt: skip
        assert submit.returncode == 0, submit.stderr[-3000:]
        assert submit.stderr.count("submitted:") == 7, submit.stderr
        again = dagc("reproduce", *settings, *slurm, "--out", tmp_path / "slurm",
                     env=slurm_cluster.env, timeout=600)  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        assert "submitted:" not in again.stderr
        assert again.stderr.count("skip (queued as job") + again.stderr.count(
            "skip (finished)") == 7, again.stderr  # fmt: skip
        clash = dagc("reproduce", *settings, "--out", tmp_path / "slurm",
                     env=slurm_cluster.env, timeout=600)  # fmt: skip
        clean_error(clash, "queued on Slurm", "scancel")
        wait = dagc("reproduce", *settings, *slurm, "--out", tmp_path / "slurm", "--wait",
                    env=slurm_cluster.env, timeout=1200)  # fmt: skip
        local_output, _ = local.communicate(timeout=1200)
    finally:
        if local.poll() is None:  # an assertion above failed: stop it
            local.kill()
            local.wait()
    logs = {path.stem: path.read_text()
            for path in (tmp_path / "slurm" / "slurm" / "logs").glob("*.out")}  # fmt: skip
    print(f"slurm campaign and local run: {time.monotonic() - started:.0f} s")
    for name, text in sorted(logs.items()):
        print(f"--- {name}\n{text}")
    assert wait.returncode == 0, wait.stderr[-3000:] + slurm_cluster.logs()
    assert local.returncode == 0, local_output[-3000:]
    assert "7 of 7 runs complete" in wait.stdout

    # At least one cell was signalled by Slurm, paused and requeued, and resumed.
    paused = [
        name for name, text in logs.items() if "paused (exit 75): requeued" in text
    ]
    signaller.join(timeout=1)
    print(f"signalled through scancel: {signalled}")
    assert paused, "no cell was signalled and requeued"
    assert signalled and signalled[0] in paused, signalled
    for name in paused:
        text = logs[name]
        assert "SIGUSR1 from Slurm" in text and "allocation 2 on" in text
        assert f"paused: {name} at iteration" in text and f"resume: {name}" in text

    # Nothing lost or run twice: one job per cell, one fresh start each, every iteration
    # logged once, and the same numbers and weights as the local run.
    jobs = json.loads((tmp_path / "slurm" / "slurm" / "jobs.json").read_text())
    assert len(jobs) == 7 and len({entry["job_id"] for entry in jobs.values()}) == 7
    runs = sorted(path.name for path in (tmp_path / "local" / "runs").iterdir())
    assert sorted(jobs) == sorted(logs) == runs
    for name in runs:
        ours, theirs = (
            tmp_path / "slurm" / "runs" / name,
            tmp_path / "local" / "runs" / name,
        )
        assert logs[name].count(f"train: {name}") == 1, logs[name]
        rows = metric_rows(ours)
        assert [row["iteration"] for row in rows] == [iterations], name
        assert rows == metric_rows(theirs), name
        summary, reference = (json.loads((run / "summary.json").read_text())
                              for run in (ours, theirs))  # fmt: skip
        assert summary["status"] == "complete"
        assert summary["final_test_accuracy"] == reference["final_test_accuracy"], name
        weights = [load_file(run / f"ckpt-{iterations:06d}.safetensors")
                   for run in (ours, theirs)]  # fmt: skip
        assert weights[0].keys() == weights[1].keys()
        for key in weights[0]:
            assert weights[0][key].equal(weights[1][key]), (name, key)
    report = (tmp_path / "slurm" / "REPORT.md").read_text()
    assert "INCOMPLETE" not in report and report.count("| complete |") == 7

    # A third call submits nothing: every cell is complete.
    done = dagc("reproduce", *settings, *slurm, "--out", tmp_path / "slurm",
                env=slurm_cluster.env, timeout=600)  # fmt: skip
    assert done.returncode == 0 and done.stderr.count("skip (finished)") == 7, (
        done.stderr
    )


def test_a_job_runs_its_cell_with_the_campaign_settings(tmp_path):
    from dagc.runtime.studies.reproduce import Settings
    from dagc.runtime.studies.slurm import cell_command

    settings = Settings(channels=8, iterations=90, precision="bf16")
    command = cell_command("male-s0", tmp_path, settings, 300.0)
    assert command[command.index("--cell") + 1] == "male-s0"
    assert command[command.index("--channels") + 1] == "8"
    assert command[command.index("--precision") + 1] == "bf16"
    assert command[command.index("--time-limit") + 1] == "300"
    assert "--precision" not in cell_command("male-s0", tmp_path, Settings(), None)
