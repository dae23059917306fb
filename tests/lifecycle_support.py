"""Helpers for the lifecycle-order tests: a round that lasts until the test opens its gate,
``tt`` as a subprocess, and lines read from a running ``tt`` within a deadline."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from runner_support import PY, write_presets

# a round that prints "started", then waits until the file gate-<agent> exists in the town
# directory (its working directory), then finishes by itself (cannot report: exit 0 completes
# the task with the output tail)
GATED = (
    "import os, pathlib, time; print('started', flush=True); "
    "gate = pathlib.Path('gate-' + os.environ['TINYTOWN_AGENT']); "
    "[time.sleep(0.05) for _ in iter(lambda: gate.exists(), True)]; "
    "print('finished after the gate opened')"
)


def write_gated_presets(root: Path) -> None:
    write_presets(root, f'\n[agent_clis.gated]\ncommand = {json.dumps([PY, "-c", GATED])}\n'
                        "reports = false\n")


def open_gate(root: Path, agent: str) -> None:
    (root / f"gate-{agent}").write_text("open\n")


def tt(env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 90
       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinytown.cli.main", *args],
        check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def tt_json(env: dict[str, str], *args: str, cwd: Path | None = None) -> Any:
    done = tt(env, *args, "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tt_started(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A running ``tt`` that Ctrl-C (SIGINT) reaches as it would in a terminal, even when the
    test runner was started in the background (which leaves SIGINT ignored, inherited)."""
    return subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE_TT, *args],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


INTERRUPTIBLE_TT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'tt'; runpy.run_module('tinytown.cli.main', run_name='__main__', alter_sys=True)"
)


def read_line(stream: IO[bytes] | None, timeout_s: float = 60.0) -> str:
    """The next whole line of a running process's output, within ``timeout_s``."""
    assert stream is not None
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"no line within {timeout_s} s (have {data!r})")
        byte = os.read(fd, 1)
        if not byte:
            raise AssertionError(f"the stream closed (have {data!r})")
        data += byte
    return data.decode().rstrip("\n")


def finished(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a ``tt`` that should end by itself."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out.decode(), err.decode()
