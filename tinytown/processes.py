"""Local process bookkeeping: the one-runner-per-agent lock, pid liveness, exit waits.

Each runner holds an exclusive ``flock`` on ``.tt/run/<agent>.lock`` (its pid written
inside) for as long as it lives.  The kernel drops the lock when the process ends, however it
ends, so "is the lock held?" is the liveness test: unlike a bare pid it cannot be fooled by a
reused pid or a zombie.  Signals and exit waits go to the recorded pid.

:func:`pid_alive`, :func:`wait_exit` and :func:`poll_until` are the one implementation of
"is this pid alive" and "wait until it is gone"; the managed server's checks use them too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tinytown.config import TownPaths
from tinytown.errors import Conflict, Invalid
from tinytown.models import AGENT_NAME_RULE, valid_agent_name
from tinytown.private import private_dir


def this_host() -> str:
    """The name this machine goes by in the town: ``TINYTOWN_HOST`` (tests run two "hosts"
    on one machine), else the host name."""
    return os.environ.get("TINYTOWN_HOST") or socket.gethostname()


def agent_file_stem(agent: str) -> str:
    """``agent`` when it may name a file in ``.tt/`` (an agent name, or the conductor).

    Every path built from an agent's name goes through here, so ``tt agent run ../../yarn``
    is refused before any file is opened.

    Raises:
        Invalid: anything else (a '/', '..', upper case, ...).
    """
    if not valid_agent_name(agent):
        raise Invalid(f"agent name {agent!r} is not allowed: use {AGENT_NAME_RULE}")
    return agent


def lock_path(paths: TownPaths, agent: str) -> Path:
    """``.tt/run/<agent>.lock``: held by the agent's live runner."""
    return paths.runtime / "run" / f"{agent_file_stem(agent)}.lock"


def runner_log_path(paths: TownPaths, agent: str) -> Path:
    return paths.logs / f"{agent_file_stem(agent)}.runner.log"


def round_log_path(paths: TownPaths, agent: str, n: int) -> Path:
    return paths.logs / f"{agent_file_stem(agent)}.round-{int(n)}.log"


def round_prompt_path(paths: TownPaths, agent: str, n: int, label: str = "") -> Path:
    """``.tt/logs/<agent>.round-<n><label>.prompt.md`` (``label``: "" or ".followup")."""
    if label not in ("", ".followup"):
        raise Invalid(f"unknown round label {label!r}")
    return paths.logs / f"{agent_file_stem(agent)}.round-{int(n)}{label}.prompt.md"


def mcp_log_path(paths: TownPaths, agent: str) -> Path:
    return paths.logs / f"mcp-{agent_file_stem(agent)}.log"


def mcp_config_path(paths: TownPaths, agent: str) -> Path:
    return paths.mcp_configs / f"{agent_file_stem(agent)}.json"


def round_logs(paths: TownPaths, agent: str) -> dict[int, Path]:
    """The agent's round logs on disk by round number, oldest first."""
    found: dict[int, Path] = {}
    pattern = re.compile(rf"{re.escape(agent)}\.round-(\d+)\.log")
    for path in paths.logs.glob(f"{agent}.round-*.log") if paths.logs.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match:
            found[int(match[1])] = path
    return dict(sorted(found.items()))


def next_round_number(paths: TownPaths, agent: str, rounds_completed: int) -> int:
    """The number of the agent's next round: after every round counted *and* every round
    log on disk, so a runner restarted after a crash mid-round continues the numbering
    instead of writing into the crashed round's log."""
    return max([rounds_completed, *round_logs(paths, agent)]) + 1


class RunnerLock:
    """The exclusive lock a runner holds while it runs (never inherited by its children)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, agent: str) -> None:
        """Take the lock and write our pid into it.

        Raises:
            Conflict: another live runner holds it (its pid is named).
        """
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise Conflict(
                f"a runner for agent {agent} is already running{who}; two runners never run for "
                "one agent. `tt kill` it first, or `tt restart` it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def lock_holder(path: Path) -> int | None:
    """The pid of the live runner holding ``path``, or ``None`` when nobody holds it.

    Returns 0 when it is held but the pid is not written yet.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (where ``/proc`` can tell).

    ``kill(pid, 0)`` alone is not enough: a killed child whose parent does not reap it (PID 1
    in some containers) stays a zombie, and signalling a zombie succeeds.  A process we may not
    signal (another user's) exists: it counts as alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state not in ("Z", "X"):
            return True
        # A zombie leader whose other threads are still exiting still holds the process's
        # files (and so its flock): it is gone only when the last thread is.
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (OSError, IndexError):
        return not Path("/proc").is_dir()  # no /proc (macOS): trust kill(0)


def wait_exit(pid: int, timeout_s: float) -> bool:
    """Block until ``pid`` has exited (True) or ``timeout_s`` passed (False).

    On Linux a pidfd makes the exit an event to wait on; elsewhere it polls in small steps.
    """
    deadline = time.monotonic() + max(timeout_s, 0.0)
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            while pid_alive(pid):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if select.select([fd], [], [], remaining)[0]:
                    time.sleep(0.001)  # the leader exited; its other threads are finishing
        finally:
            os.close(fd)
        return True
    return poll_until(lambda: not pid_alive(pid), deadline)


def poll_until(done: Callable[[], bool], deadline: float) -> bool:
    """Call ``done`` with a growing pause (5 ms up to 100 ms) until it is true (True) or the
    ``time.monotonic()`` ``deadline`` passes (False).

    Only for what has no event to wait on (no pidfd; a daemonized server binding its socket).
    """
    delay = 0.005
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.1)
    return True


def signal_process(pid: int, sig: signal.Signals, *, group: bool) -> bool:
    """Send ``sig`` to ``pid``, or to the process group it leads (a runner started by
    ``spawn`` leads its own; one started by hand may not, then just the process); False
    when nothing was there."""
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
            return True
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True
