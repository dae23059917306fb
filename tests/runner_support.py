"""Helpers for the runner and lifecycle tests: a town directory whose agents are real
runner processes on the session's real Redis, with a few custom presets, and event waits."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from tinytown.config import TownPaths
from tinytown.models import Event, Task
from tinytown.processes import lock_holder, signal_process, wait_exit
from tinytown.town import Town
from tinytown.trust import trust_town

PY = sys.executable


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


# name -> python code run as the preset's CLI (prompt on stdin unless said otherwise)
PRESETS: dict[str, list[str]] = {
    # exits non-zero without reporting: the runner fails the task with the output tail
    "fail": [PY, "-c", "import sys; print('boom: the build broke'); sys.exit(3)"],
    # cannot report (reports = false below): exit 0 completes the task with the output tail
    "echo": [PY, "-c", (
        "import os, pathlib, sys; prompt = sys.stdin.read(); "
        "print('agent', os.environ['TINYTOWN_AGENT'], 'task', os.environ.get('TINYTOWN_TASK_ID'), "
        "'cwd', os.getcwd(), 'mcp', pathlib.Path(os.environ['TINYTOWN_MCP_CONFIG']).is_file(), "
        "'town', os.environ['TINYTOWN_TOWN']); print('prompt lines', len(prompt.splitlines()))"
    )],
    # reports through MCP itself (the scripted agent as a custom preset)
    "callback": [PY, "-m", "tinytown_mcp.scripted_agent"],
    # a round that takes a while: prints its pid, then sleeps
    "sleepy": [PY, "-c", "import os, time; print('pid', os.getpid(), flush=True); time.sleep(600)"],
    # a round of about a second that finishes by itself (cannot report: exit 0 completes)
    "brief": [PY, "-c", "import time; time.sleep(1); print('finished after a second')"],
    # a real MCP client that records what its round's session is shown (tests/round_probe.py)
    "probe": [PY, str(Path(__file__).with_name("round_probe.py"))],
    # can report but never does: prints its prompt and exits 0
    "silent": [PY, "-c", "import sys; print(sys.stdin.read()); print('done, I think')"],
    # reports only when asked again: runs the `tt task done` command the follow-up names
    "late": [PY, "-c", (
        "import re, subprocess, sys; prompt = sys.stdin.read(); "
        "m = re.search(r'without MCP, run: (\\S+) task done (\\S+) ', prompt); "
        "print('first round, not reporting') if 'Report now' not in prompt else "
        "subprocess.run([m.group(1), 'task', 'done', m.group(2), 'reported when asked'], check=True)"
    )],
    # exits 0 without reporting, then hangs in its follow-up round (prints its pid first)
    "stall": [PY, "-c", (
        "import os, sys, time; prompt = sys.stdin.read(); "
        "print('pid', os.getpid(), flush=True) if 'Report now' in prompt else None; "
        "time.sleep(600) if 'Report now' in prompt else None"
    )],
    # a program that does not exist
    "ghost": ["tinytown-no-such-program-anywhere"],
}


# presets whose CLI cannot report: the exit code decides their tasks
CANNOT_REPORT = {"echo", "brief"}


def write_presets(root: Path, extra: str = "") -> None:
    lines = [(root / "tinytown.toml").read_text()]
    for name, command in PRESETS.items():
        reports = "reports = false\n" if name in CANNOT_REPORT else ""
        lines.append(f"[agent_clis.{name}]\ncommand = {_toml_list(command)}\n{reports}")
    lines.append('[agent_clis.callback.env]\nTINYTOWN_SCRIPTED_PEERS = ""\n')
    (root / "tinytown.toml").write_text("\n".join(lines) + extra)
    trust_town(TownPaths(root))  # in the test's private XDG_CONFIG_HOME (conftest)


@asynccontextmanager
async def open_spawn_town(env: dict[str, str]) -> AsyncIterator[Town]:
    """The ``tt_env`` town with the test presets, opened in-process; every runner it leaves
    is killed afterwards (SIGKILL to its group) so no test leaks processes."""
    root = Path(env["TINYTOWN_TOWN"])
    write_presets(root)
    saved = {k: os.environ.get(k) for k in ("REDIS_URL", "TINYTOWN_TOWN", "TINYTOWN_AGENT")}
    os.environ["REDIS_URL"] = env["REDIS_URL"]
    os.environ.pop("TINYTOWN_TOWN", None)
    os.environ.pop("TINYTOWN_AGENT", None)
    try:
        town = await Town.open(root)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield town
    finally:
        kill_leftover_runners(root)
        await town.close()


def kill_leftover_runners(root: Path) -> None:
    run_dir = root / ".tt" / "run"
    for lock in run_dir.glob("*.lock") if run_dir.is_dir() else []:
        pid = lock_holder(lock)
        if pid:
            signal_process(pid, signal.SIGKILL, group=True)
            wait_exit(pid, 10)


async def next_event(
    town: Town, after: str, match: Callable[[Event], bool], timeout_s: float = 30.0
) -> Event:
    """The first event after id ``after`` that ``match``es (bounded by ``timeout_s``)."""
    with anyio.fail_after(timeout_s):
        async for event in town.follow(after=after, block_s=1.0):
            if match(event):
                return event
    raise AssertionError("unreachable")


async def task_settled(town: Town, task_id: str, after: str, timeout_s: float = 30.0) -> Task:
    """The task once it is completed, failed or cancelled (woken by its events)."""
    task = await town.get_task(task_id)
    if task.state.is_final:
        return task
    await next_event(
        town, after,
        lambda e: e.type in ("task.completed", "task.failed", "task.cancelled")
        and e.data.get("task_id") == task_id,
        timeout_s,
    )
    return await town.get_task(task_id)


async def round_done(town: Town, agent: str, after: str, timeout_s: float = 30.0) -> Event:
    """The ``agent.round`` event of the agent's next finished round."""
    return await next_event(
        town, after, lambda e: e.type == "agent.round" and e.data.get("agent") == agent, timeout_s
    )


def wait_for_line(path: Path, prefix: str, timeout_s: float = 20.0) -> str:
    """A line a round's CLI wrote to its log.  A child's start-up has no event to wait on:
    a bounded readiness probe, like the fixtures' wait for redis-server."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            # only whole lines: a child's print() may reach the file in pieces ("pid ", "123")
            for line in path.read_text().split("\n")[:-1]:
                if line.startswith(prefix):
                    return line
        time.sleep(0.02)
    raise AssertionError(f"{path} never got a line starting with {prefix!r}")


def processes_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found
