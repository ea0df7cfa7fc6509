"""`dagc reproduce --launcher slurm`: each cell of the campaign is one Slurm batch job.

The jobs train in the same run folders as a local campaign (`dagc reproduce --cell NAME` runs
one cell). Each job script asks Slurm for `--signal=B:USR1@GRACE` and `--requeue`: GRACE
seconds before the time limit the script passes the signal on to dagc, which finishes its
step, writes a checkpoint and exits 75; the script then requeues its own job
(`scontrol requeue`), so the cell continues in its next allocation under the same job id.

The campaign folder keeps what was submitted: `slurm/jobs.json` (cell -> job id),
`slurm/<cell>.sbatch` (the script, runnable by hand) and `slurm/logs/<cell>.out` (every
allocation of the cell, appended). A second call submits only the cells that are neither
complete (read from their run folders) nor still queued (the tracked job ids that `squeue`
still lists); `sacct`, where the cluster keeps accounting, says how the others ended.

Plain `sbatch` scripts rather than submitit: submitit pickles a Python callable and requeues
from inside its own signal handler, before the training has paused, while a dagc run pauses
itself (step, checkpoint, exit 75) and the script decides on exit 75; a script is also what a
cluster's users read, rerun and adapt, and it needs nothing installed beyond dagc.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

from dagc.compiler.errors import DagcError
from dagc.compiler.output import write_atomic

from .reproduce import Settings, campaign, compile_model

# SIGUSR1 this long before the time limit: time for a step, an evaluation and a checkpoint
DEFAULT_GRACE_S = 120
QUERY_TIMEOUT_S = 30  # a squeue that has not answered by then: no reachable Slurm
WHOLE_NUMBERS = ("cpus_per_task", "gpus_per_task", "signal_grace", "nproc_per_node")


@dataclass(frozen=True)
class SlurmOptions:
    """What each cell's job asks of Slurm (command line or `--slurm-config FILE.toml`)."""

    partition: str | None = None
    time: str | None = None  # sbatch --time: 30, 4:00:00, 1-00:00:00
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    signal_grace: int = DEFAULT_GRACE_S  # seconds before the time limit
    extra: tuple[str, ...] = ()  # further sbatch options, e.g. --account=lab
    nproc_per_node: int | None = None  # > 1: the run trains under torchrun (DDP)

    @classmethod
    def load(cls, config: Path | None = None, **overrides) -> SlurmOptions:
        """The config file's values (if any), then every override that is not None."""
        values: dict = {}
        if config is not None:
            values = read_config(Path(config))
        values.update({k: v for k, v in overrides.items() if v not in (None, ())})
        values["extra"] = tuple(values.get("extra", ()))
        options = cls(**values)
        if options.signal_grace < 1:
            raise DagcError("--signal-grace must be at least 1 second")
        return options

    def sbatch_lines(self) -> list[str]:
        lines = ["--requeue", f"--signal=B:USR1@{self.signal_grace}"]
        for flag, value in (("--partition", self.partition), ("--time", self.time),
                            ("--cpus-per-task", self.cpus_per_task),
                            ("--gpus-per-task", self.gpus_per_task)):  # fmt: skip
            if value is not None:
                lines.append(f"{flag}={value}")
        return lines + list(self.extra)


def read_config(path: Path) -> dict:
    """A small TOML file with SlurmOptions' fields: partition = "gpu", time = "4:00:00",
    cpus_per_task, gpus_per_task, nproc_per_node, signal_grace, extra = ["--account=lab"]."""
    try:
        import tomllib
    except ImportError as exc:  # Python 3.10
        raise DagcError(
            "--slurm-config needs Python 3.11 or later (tomllib)", path
        ) from exc
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DagcError(f"cannot read the Slurm config: {exc.strerror}", path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise DagcError(f"not valid TOML: {exc}", path) from exc
    known = {field.name: field.type for field in fields(SlurmOptions)}
    for key, value in values.items():
        if key not in known:
            raise DagcError(f"unknown key {key!r} (known: {', '.join(known)})", path)
        if key == "extra":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise DagcError(
                    "extra must be a list of sbatch options (strings)", path
                )
        elif key in WHOLE_NUMBERS:
            if type(value) is not int or value < 0:
                raise DagcError(f"{key} must be a whole number", path)
        elif not isinstance(value, str | int):
            raise DagcError(f"{key} must be a string", path)
    return {k: (str(v) if k in ("partition", "time") else v) for k, v in values.items()}


# --- talking to Slurm ---------------------------------------------------------------------


def _query(*command: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True,
                              timeout=QUERY_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise DagcError(f"--launcher slurm: no reachable Slurm ({command[0]} did not answer "
                        f"in {QUERY_TIMEOUT_S} s)") from exc  # fmt: skip


def check_reachable() -> None:
    """A DagcError (one line, exit 2) unless sbatch is here and the controller answers."""
    for tool in ("sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            raise DagcError(
                f"--launcher slurm: no reachable Slurm ({tool} is not on PATH)"
            )
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # squeue would retry for a minute
        raise DagcError(
            f"--launcher slurm: no reachable Slurm (SLURM_CONF={conf} is not a file)"
        )
    active_jobs()


def active_jobs() -> dict[str, str]:
    """Job id -> state of this user's jobs that squeue lists: pending, running, being
    requeued or completing; not those that have ended."""
    result = _query("squeue", "--noheader", "--user", getpass.getuser(),
                    "--format=%A|%T")  # fmt: skip
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"squeue exit {result.returncode}"
        raise DagcError(f"--launcher slurm: no reachable Slurm ({reason})")
    jobs = {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            jobs[job_id] = state
    return jobs


def ended_states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> how it ended (sacct's state and exit code); empty without accounting."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    result = _query("sacct", "--noheader", "--allocations", "--parsable2",
                    "--format=JobID,State,ExitCode", "--jobs", ",".join(job_ids))  # fmt: skip
    if result.returncode != 0:
        return {}
    ended = {}
    for line in result.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            ended[parts[0]] = f"{parts[1]}, exit {parts[2]}"
    return ended


# --- the campaign folder's record of its jobs ---------------------------------------------


def slurm_dir(out: Path) -> Path:
    return out / "slurm"


def load_jobs(out: Path) -> dict[str, dict]:
    path = slurm_dir(out) / "jobs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_jobs(out: Path, jobs: dict[str, dict]) -> None:
    write_atomic(slurm_dir(out) / "jobs.json", json.dumps(jobs, indent=2) + "\n")


def cell_command(name: str, out: Path, settings: Settings, time_limit: float | None,
                 nproc_per_node: int | None = None) -> list[str]:  # fmt: skip
    """The command a job runs: this Python's dagc (under torchrun for several processes),
    one cell, the campaign's settings."""
    launcher = [sys.executable]
    if nproc_per_node and nproc_per_node > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={nproc_per_node}"]  # fmt: skip
    command = [*launcher, "-m", "dagc", "reproduce", "--cell", name,
               "--out", str(out), "--seeds", str(settings.seeds),
               "--channels", str(settings.channels), "--iterations", str(settings.iterations),
               "--eval-every", str(settings.eval_every), "--device", settings.device]  # fmt: skip
    if settings.quick:
        command.append("--quick")
    if settings.data_dir:
        command += ["--data-dir", str(Path(settings.data_dir).resolve())]
    if settings.precision != "fp32":
        command += ["--precision", settings.precision]
    if time_limit is not None:
        command += ["--time-limit", f"{time_limit:g}"]
    return command


def batch_script(
    name: str, out: Path, command: list[str], options: SlurmOptions
) -> str:
    log = slurm_dir(out) / "logs" / f"{name}.out"
    header = [f"--job-name=dagc:{name}", f"--output={log}", "--open-mode=append",
              *options.sbatch_lines()]  # fmt: skip
    # torchrun passes SIGTERM on to its workers (and ignores SIGUSR1), and reports its
    # workers' exit 75 as its own failure: the run's summary says whether it paused.
    torchrun = (options.nproc_per_node or 1) > 1
    started = slurm_dir(out) / f"{name}.started"
    summary = out / "runs" / name / "summary.json"
    return "\n".join([
        "#!/bin/bash",
        *(f"#SBATCH {shlex.quote(line)}" for line in header),
        f"# One cell of the campaign in {out}, written by `dagc reproduce --launcher slurm`.",
        f"# {options.signal_grace} s before the time limit Slurm sends SIGUSR1 to this script,",
        "# which passes it on; dagc finishes its step, writes a checkpoint and exits 75, and",
        "# the script requeues the job: the next allocation resumes the cell where it stopped.",
        'note() { echo "[dagc-slurm $(date -u +%H:%M:%S)] job $SLURM_JOB_ID: $*"; }',
        f'note "allocation $((${{SLURM_RESTART_COUNT:-0}} + 1)) on $(hostname): {name}"',
        f"cd {shlex.quote(os.getcwd())}",
        f"started={shlex.quote(str(started))} summary={shlex.quote(str(summary))}",
        'touch "$started"',
        "# The cell starts with USR1 and TERM ignored; a signal from Slurm is passed on once",
        "# dagc has its own handler for it (/proc/PID/status, SigIgn), so none is lost early.",
        "trap '' USR1 TERM",
        f"{shlex.join(command)} &",
        "cell=$! pending=",
        "listens() {",
        '    local mask; mask=$(awk \'/^SigIgn:/ {print $2}\' "/proc/$cell/status" 2>/dev/null)',
        '    [ -z "$mask" ] || (( ((16#$mask) >> ($(kill -l "$1") - 1) & 1) == 0 ))',
        "}",
        f"trap 'pending={'TERM' if torchrun else 'USR1'}; "
        "note \"SIGUSR1 from Slurm: asking the cell to pause\"' USR1",
        'trap \'pending=TERM; note "SIGTERM from Slurm: asking the cell to pause"\' TERM',
        'while kill -0 "$cell" 2>/dev/null; do',
        '    if [ -n "$pending" ] && listens "$pending"; then',
        '        kill -s "$pending" "$cell" 2>/dev/null; pending=',
        "    fi",
        "    sleep 1 & wait $!  # a trap interrupts this wait at once",
        "done",
        'wait "$cell"; status=$?',
        "trap '' USR1 TERM  # the requeue below cancels this allocation: finish the note",
        "paused() {  # exit 75, or a summary written in this allocation that says so",
        '    [ "$status" -eq 75 ] || { [ "$summary" -nt "$started" ] &&',
        '        grep -q \'"status": "paused"\' "$summary"; }',
        "}",
        "if paused; then",
        '    if scontrol requeue "$SLURM_JOB_ID"; then',
        '        note "paused (exit $status): requeued"',
        "    else",
        '        note "paused (exit $status), the requeue failed: call dagc reproduce again"',
        "    fi",
        "else",
        '    note "exit $status"',
        "fi",
        'exit "$status"',
        "",
    ])  # fmt: skip


# --- submitting, waiting, the status ------------------------------------------------------


def submit(out: Path, settings: Settings, options: SlurmOptions, log=print,
           time_limit: float | None = None) -> dict[str, list[str]]:  # fmt: skip
    """Submit every cell that is neither complete nor queued; what was done to each.

    Returns {"submitted": [...], "queued": [...], "complete": [...]} (run folder names).
    """
    check_reachable()
    for folder in (out, out / "models", out / "runs", slurm_dir(out) / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    done: dict[str, list[str]] = {"submitted": [], "queued": [], "complete": []}
    with open(slurm_dir(out) / "submit.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two calls at once submit each cell once
        jobs, active = load_jobs(out), active_jobs()
        cells = campaign(out, settings)
        gone = [jobs[c.run_dir.name]["job_id"] for c in cells if c.run_dir.name in jobs
                and c.state != "complete" and jobs[c.run_dir.name]["job_id"] not in active]  # fmt: skip
        ended = ended_states(gone)
        order = [c for c in cells if c.state == "partial"] + [
            c for c in cells if c.state == "not started"
        ]
        for cell in cells:
            if cell.state == "complete":
                log(f"skip (finished): {cell.run_dir.name}")
                done["complete"].append(cell.run_dir.name)
        for cell in order:
            name = cell.run_dir.name
            previous = jobs.get(name, {}).get("job_id")
            if previous in active:
                log(f"skip (queued as job {previous}, {active[previous]}): {name}")
                done["queued"].append(name)
                continue
            if previous is not None:
                how = ended.get(previous, "no longer queued")
                log(
                    f"job {previous} ended ({how}) with {name} {cell.describe(settings.iterations)}"
                )
            compile_model(cell.row.network, cell.seed, settings, out / "models")
            script = slurm_dir(out) / f"{name}.sbatch"
            command = cell_command(name, out.resolve(), settings, time_limit,
                                   options.nproc_per_node)  # fmt: skip
            write_atomic(script, batch_script(name, out.resolve(), command, options))
            result = subprocess.run(["sbatch", "--parsable", str(script)],
                                    capture_output=True, text=True)  # fmt: skip
            if result.returncode != 0:
                reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
                save_jobs(out, jobs)
                raise DagcError(f"sbatch refused the job of {name}: {reason}", script)
            job_id = result.stdout.strip().split(";")[0]
            jobs[name] = {"job_id": job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          "script": str(script)}  # fmt: skip
            save_jobs(out, jobs)
            log(f"submitted: {name} (job {job_id})")
            done["submitted"].append(name)
    return done


def wait(out: Path, settings: Settings, log=print, poll_s: float = 5.0) -> bool:
    """Follow the campaign's jobs until none is queued; True when every cell is complete."""
    seen: dict[str, str] = {}
    while True:
        jobs, active = load_jobs(out), active_jobs()
        mine = {entry["job_id"]: name for name, entry in jobs.items()}
        for job_id, name in mine.items():
            state = active.get(job_id, "ENDED")
            if seen.get(job_id) != state:
                log(f"job {job_id} {state}: {name}")
                seen[job_id] = state
        if not any(job_id in active for job_id in mine):
            break
        time.sleep(poll_s)
    return all(cell.state == "complete" for cell in campaign(out, settings))


def refuse_if_queued(out: Path) -> None:
    """A DagcError when a local campaign would train runs that Slurm jobs will train too."""
    jobs = load_jobs(out)
    if not jobs:
        return
    try:
        active = active_jobs()
    except DagcError:
        return  # no Slurm here: the jobs cannot be running from this machine's view
    queued = sorted(
        entry["job_id"] for entry in jobs.values() if entry["job_id"] in active
    )
    if queued:
        raise DagcError(f"{len(queued)} run(s) of this campaign are queued on Slurm (jobs "
                        f"{', '.join(queued)}): wait for them, or scancel them first", out)  # fmt: skip


def queue_lines(out: Path) -> list[str]:
    """The campaign's tracked jobs and their queue states, for `--status`."""
    jobs = load_jobs(out)
    if not jobs:
        return []
    try:
        active = active_jobs()
    except DagcError as exc:
        return ["", f"Slurm jobs: {len(jobs)} tracked in {slurm_dir(out)} ({exc})"]
    queued = {name: entry["job_id"] for name, entry in jobs.items()
              if entry["job_id"] in active}  # fmt: skip
    lines = ["", f"Slurm: {len(queued)} of {len(jobs)} tracked jobs queued"]
    lines += [
        f"  job {job_id} {active[job_id]}: {name}" for name, job_id in queued.items()
    ]
    return lines
