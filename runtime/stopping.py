"""Stopping a run cleanly: a wall-clock limit (--time-limit) and the signals a scheduler sends.

On SIGTERM, SIGUSR1 or SIGINT (Ctrl-C), or once the time limit has passed, training finishes
the step it is in, writes a checkpoint and a summary with "status": "paused", and `dagc train`
exits with PAUSED_EXIT_CODE so that a scheduler can requeue the job; `--resume` continues it
exactly. A second Ctrl-C stops at once (the last checkpoint is kept, as after `kill -9`).
"""

from __future__ import annotations

import re
import signal
import time

from dagc.compiler.errors import DagcError

PAUSED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "try again later"
STOP_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGUSR1", "SIGINT")
    if hasattr(signal, name)
)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float | int) -> float:
    """'90' or '90s' -> 90.0, '9m' -> 540.0, '1.5h' -> 5400.0; a DagcError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text).lower())
    if match is None or float(match.group(1)) <= 0:
        raise DagcError(
            f"--time-limit {text!r}: expected a positive duration such as 90, 90s, 9m or 2h"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


class StopRequest:
    """Set by a stop signal or by the deadline; the training loop polls `requested()`.

    Used as a context manager, it installs the signal handlers (main thread only) and puts
    the previous ones back on exit. Nested ones (a campaign around each run's training) pass
    a stop along in both directions, so that no signal is lost between them: one entered
    while an enclosing request has a stop pending takes it over, and a signal that arrived
    while it was installed goes on to the enclosing handler on exit (after the run's last
    step, it is the campaign that must not start the next run).
    """

    def __init__(self, time_limit_s: float | None = None, start: float | None = None):
        start = time.monotonic() if start is None else start
        self.deadline = None if time_limit_s is None else start + time_limit_s
        self.reason: str | None = None
        self._previous: dict = {}
        self._received: list[int] = []  # stop signals caught while installed

    def requested(self) -> bool:
        if self.reason is None and self.deadline is not None:
            if time.monotonic() >= self.deadline:
                self.reason = "time limit"
        return self.reason is not None

    def _handle(self, signum, frame) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._note(signum)

    def _note(self, signum: int) -> None:
        self.reason = self.reason or signal.Signals(signum).name
        self._received.append(signum)

    def __enter__(self) -> StopRequest:
        import threading

        self._received = []
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                previous = signal.signal(signum, self._handle)
                self._previous[signum] = previous
                enclosing = getattr(previous, "__self__", None)
                if isinstance(enclosing, StopRequest) and enclosing.reason is not None:
                    self.reason = self.reason or enclosing.reason
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        for signum in dict.fromkeys(self._received):
            enclosing = getattr(signal.getsignal(signum), "__self__", None)
            # Only to another request: calling SIG_DFL's action would end the process now.
            if isinstance(enclosing, StopRequest):
                enclosing._note(signum)
        self._received = []
