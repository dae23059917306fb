"""``tt demo``: the whole of Tinytown in well under a minute, with nothing to configure.

A throwaway town in a temp directory on the embedded managed Redis (``REDIS_URL`` and the
other Tinytown variables of the caller are ignored), two agents spawned on the built-in
``scripted`` preset — each round their runner starts the scripted agent, a real MCP client
that talks to the town through ``tinytown-mcp`` over stdio — and a handful of tasks the
conductor assigns.  A live view driven by the town's event stream shows the tasks move
(plain lines when stdout is not a terminal), then a final status table.  Afterwards
everything is removed: runners killed, the managed Redis shut down, the directory deleted —
also on Ctrl-C or failure.  ``--keep`` keeps the town (and its logs) for a look around.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from tinytown.cli.render import (
    STATE_STYLES,
    Part,
    Table,
    change_text,
    one_line,
    plain,
    renderable,
    show,
    styled,
)
from tinytown.config import TownPaths, init_town, load_config
from tinytown.connect import managed_redis
from tinytown.models import Event, Task
from tinytown.processes import lock_holder, signal_process, wait_exit
from tinytown.supervisor import runners_started_here
from tinytown.town import Town

AGENTS = (("alice", "calculator"), ("bob", "word counter"))
TASKS = (
    "2 + 3 * 4",
    "count the words of this sentence and say them backwards",
    "(17 - 5) * 3",
    "agents coordinate through redis",
    "1000 / 8",
    "the quick brown fox jumps over the lazy dog",
)
# --worktree: each agent changes the repository in its own worktree, then the conductor merges
WORKTREE_TASKS = (
    "write docs/alice.md: Alice was here, on her own branch.",
    "write docs/bob.md: Bob was here, on his own branch.",
)
DEADLINE_S = 90.0
# free text shares a narrow terminal; ids, states and names stay whole
FOLDING = frozenset({"description", "result"})


@dataclass
class View:
    """What the demo shows, updated from events: plain lines, or a live table on a terminal."""

    town: Town
    live: Any = None
    numbers: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    assignees: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def number(self, task: Task) -> str:
        """The task's own short reference (``#N``, as every ``tt`` command takes it)."""
        self.numbers[task.id] = task.number or 0
        return task.ref

    async def on_event(self, event: Event) -> None:
        line = await self.describe(event)
        if line is None:
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(event.at / 1000))
        self.lines = [*self.lines[-7:], f"{stamp}  {line}"]
        if self.live is None:
            sys.stdout.write(f"{stamp}  {line}\n")
            sys.stdout.flush()
        else:
            self.live.update(renderable(self.parts()), refresh=True)

    async def describe(self, event: Event) -> str | None:
        """One line for the events worth showing (None for the rest)."""
        data = event.data
        agent = str(data.get("agent") or data.get("by") or "")
        task_id = data.get("task_id")
        if event.type in ("agent.registered", "agent.attached") and agent != "conductor":
            return f"{agent} joined (cli {data.get('cli') or '-'})"
        if event.type in ("agent.stopped", "agent.error", "agent.paused"):
            return f"{agent} is {event.type.removeprefix('agent.')}"
        if task_id is None:
            if event.type == "message.sent" and data.get("kind") == "info":
                return f"{data.get('from')} → {data.get('to')}: info message"
            return None
        task = await self.town.get_task(str(task_id))
        self.tasks[task.id] = task
        ref = self.number(task)
        if event.type == "task.assigned":
            self.assignees[task.id] = agent
            return f"task {ref} → {agent}: {one_line(task.description, 50)}"
        if event.type == "task.started":
            return f"{agent} started task {ref}"
        if event.type == "task.completed":
            return f"{agent} completed task {ref}: {one_line(task.result or '', 60)}"
        if event.type in ("task.failed", "task.cancelled"):
            return f"task {ref} {event.type.removeprefix('task.')}: {one_line(task.error or '', 60)}"
        return None

    def parts(self) -> list[Part]:
        table = Table(["task", "state", "agent", "description", "result"], title="Tinytown demo",
                      folding=FOLDING)
        for task_id, n in sorted(self.numbers.items(), key=lambda kv: kv[1]):
            task = self.tasks[task_id]
            table.rows.append([
                f"#{n}", styled(task.state.value, STATE_STYLES), self.assignees.get(task_id, "-"),
                one_line(task.description, 40), one_line(task.result or task.error or "", 40),
            ])  # fmt: skip
        return [table, *self.lines]


def run_demo(
    *, keep: bool = False, n_tasks: int = len(TASKS), json_out: bool = False, worktree: bool = False
) -> int:
    """Run the demo; returns the exit code (0: every task completed).  ``worktree``: the town
    is a git repository, each agent works in its own worktree, and the conductor merges."""
    for var in ("REDIS_URL", "TINYTOWN_TOWN", "TINYTOWN_AGENT", "TINYTOWN_TASK_ID", "TINYTOWN_MCP_CONFIG"):
        os.environ.pop(var, None)  # the demo always runs on its own managed Redis
    root = Path(tempfile.mkdtemp(prefix="tt-demo-"))
    paths = TownPaths(root)
    try:
        init_town(root, name="demo")
        if worktree:
            _make_repository(root)
        return anyio.run(_demo, paths, n_tasks, json_out, worktree)
    finally:
        _clean_up(paths, keep)


def _make_repository(root: Path) -> None:
    """The demo town as a git repository with a first commit (as the demo, if git does not
    know the user)."""
    import subprocess

    who = {"GIT_AUTHOR_NAME": "tinytown demo", "GIT_AUTHOR_EMAIL": "demo@tinytown.invalid",
           "GIT_COMMITTER_NAME": "tinytown demo", "GIT_COMMITTER_EMAIL": "demo@tinytown.invalid"}
    (root / "README.md").write_text("# A demo repository\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "a demo repository"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, timeout=60,
                       env={**os.environ, **who})  # fmt: skip


async def _demo(paths: TownPaths, n_tasks: int, json_out: bool, worktree: bool = False) -> int:
    town = await Town.open(paths.root)
    try:
        if not json_out:
            server = (await town.status()).server or "server of unknown version"
            show([f"Tinytown demo: town {town.name} in {paths.root}, Redis {town.redis_display} ({server})"])
        view = View(town)
        live_cm: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if not json_out and sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
            from rich.live import Live

            from tinytown.cli.render import console

            live_cm = Live(renderable(view.parts()), console=console(), auto_refresh=False)
        after = await town.last_event_id()
        ok = True
        with live_cm as live:
            view.live = live
            async with anyio.create_task_group() as tg:
                if not json_out:
                    tg.start_soon(_watch, town, view, after)
                for name, role in AGENTS:
                    await town.spawn_agent(name, cli="scripted", role=role, worktree=worktree)
                task_ids = []
                jobs = WORKTREE_TASKS if worktree else TASKS
                for i in range(len(WORKTREE_TASKS) if worktree else n_tasks):
                    name = AGENTS[i % len(AGENTS)][0]
                    task = await town.assign(jobs[i % len(jobs)], agent=name)
                    task_ids.append(task.id)
                with anyio.move_on_after(DEADLINE_S) as deadline:
                    await _all_final(town, task_ids, after)
                ok = not deadline.cancelled_caught
                for name, _role in AGENTS:
                    await town.kill_agent(name)  # after its round: its work is committed
                tg.cancel_scope.cancel()
        if worktree and ok:
            ok = await _merge_all(town, task_ids, json_out)
        return await _final(town, task_ids, ok, json_out)
    finally:
        with anyio.CancelScope(shield=True):
            for name, _role in AGENTS:
                with contextlib.suppress(Exception):
                    await town.kill_agent(name, now=True, timeout_s=3)
            await town.close()


async def _merge_all(town: Town, task_ids: list[str], json_out: bool) -> bool:
    """The conductor merges each task's branch into the checkout (as ``tt merge`` does)."""
    for task_id in task_ids:
        task = await town.worktrees.merge(task_id, by="conductor")
        if not json_out:
            show([f"merged {task.ref} ({task.branch}, {change_text(task.diffstat)}) into {task.merged_into}"])
    return True


async def _watch(town: Town, view: View, after: str) -> None:
    async for event in town.follow(after=after, block_s=2.0):
        await view.on_event(event)


async def _all_final(town: Town, task_ids: list[str], after: str) -> None:
    """Until every task is final: woken by task events on the stream, not by polling."""
    last = after
    while True:
        pending = [t for t in task_ids if not (await town.get_task(t)).state.is_final]
        if not pending:
            return
        events = await town.wait_events(last, 5.0)
        if events:
            last = events[-1].id


async def _final(town: Town, task_ids: list[str], ok: bool, json_out: bool) -> int:
    agents = [a for a in await town.list_agents() if a.name != "conductor"]
    tasks = [await town.get_task(t) for t in task_ids]
    completed = sum(t.state.value == "completed" for t in tasks)
    ok = ok and completed == len(tasks)
    if json_out:
        from tinytown.cli.app import print_json

        print_json({"town": town.name, "ok": ok, "agents": agents, "tasks": tasks})
        return 0 if ok else 1
    agent_table = Table(["agent", "state", "cli", "rounds", "tasks done"], title="Agents")
    for agent in agents:
        agent_table.rows.append([
            agent.name, styled(agent.state.value, STATE_STYLES), agent.cli or "-",
            str(agent.rounds_completed), str(agent.tasks_completed),
        ])  # fmt: skip
    task_table = Table(["task", "state", "agent", "description", "result"], title="Tasks", folding=FOLDING)
    for task in tasks:
        task_table.rows.append([
            task.ref, styled(task.state.value, STATE_STYLES), task.assignee or "-",
            one_line(task.description, 40), one_line(task.result or task.error or "", 50),
        ])  # fmt: skip
    summary = (f"{completed} of {len(tasks)} tasks completed by "
               f"{len(agents)} agents talking MCP over stdio")
    if not ok:
        summary += " — not all tasks completed; see the logs (run with --keep)"
    parts: list[Part] = ["", agent_table, task_table, summary]
    show(parts)
    return 0 if ok else 1


def _clean_up(paths: TownPaths, keep: bool) -> None:
    """Leave nothing behind: runners (and what they started), the managed Redis, the town."""
    pids = set(runners_started_here())
    run_dir = paths.runtime / "run"
    for lock in run_dir.glob("*.lock") if run_dir.is_dir() else []:
        pids.add(lock_holder(lock) or 0)
    server = None
    with contextlib.suppress(Exception):
        server = managed_redis(load_config(paths), paths)
    redis_pid = server.pid() if server else None
    # An MCP server a scripted agent started lives in its own session; anything whose command
    # line names this throwaway directory is the demo's (Linux /proc; elsewhere the runners'
    # groups are all there is to kill).
    pids |= set(_processes_naming(str(paths.root)))
    pids -= {0, os.getpid(), redis_pid or 0}
    for pid in pids:
        signal_process(pid, signal.SIGKILL, group=True)
    for pid in pids:
        wait_exit(pid, 5.0)
    if server is not None:
        with contextlib.suppress(Exception):
            server.stop()
    if keep:
        sys.stdout.write(plain([f"kept the demo town in {paths.root} (its Redis is stopped; "
                                f"`tt --town {paths.root} status` starts it again)"]))
        return
    shutil.rmtree(paths.root, ignore_errors=True)


def _processes_naming(text: str) -> list[int]:
    found = []
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else []:
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found
