"""No stuck task (issue 8, items 4, 5 and 7): tasks held by a session that died come back to
the agent's next session; finishing or cancelling a task acknowledges its message wherever
it is; a claim for a spawned agent reaches its runner; ``max_agents`` holds under concurrent
registrations.  Real Redis, real ``tinytown-mcp`` and runner processes, real SIGKILLs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp_support import SCRIPT, connect, ok, payload, stdio
from runner_support import open_spawn_town, task_settled

from tinytown.errors import Invalid
from tinytown.models import CONDUCTOR, MessageKind, TaskState
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def _pid_of(pidfile: Path) -> int:
    return int(pidfile.read_text().strip())


async def _claimer(town: Town, env: dict[str, str], name: str, workdir: Path, kill_after: set[int],
                   tally: dict[str, Any], stack: ExitStack) -> None:
    """One agent working the backlog through real ``tinytown-mcp`` sessions: each session
    first finishes whatever its mailbox gives it back, then claims and finishes tasks.  After
    the claims numbered in ``kill_after`` its server is SIGKILLed before the report, and a
    new session of the same agent starts.  A claimer that finds the backlog empty before its
    last kill adds a task to it: how the claims split between the claimers is a race (one
    restarting its server falls behind), so a fixed backlog could run dry before claim 65."""
    claims = 0
    devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115 - closed by the stack
    while True:
        pidfile = workdir / f"{name}.pid"
        # the server's own pid, for the SIGKILL (exec keeps it)
        command = ["sh", "-c", f'echo $$ > {pidfile}; exec {SCRIPT} "$@"', "sh"]
        killed = False
        try:
            async with stdio(env, name, errlog=devnull, command=command) as client:
                got = await ok(client, "receive", timeout_s=0, max_messages=100)
                for message in got["messages"]:
                    if message["kind"] == "task":
                        await ok(client, "task_done", task_id=message["task_id"], result="done later")
                        tally["given_back"] += 1
                while True:
                    result = await client.call_tool("claim_task", {})
                    if result.is_error:  # not_found: the backlog is empty
                        if claims >= max(kill_after):
                            break
                        tally["ids"].append((await town.assign(f"more for {name}")).id)
                        continue
                    task_id = payload(result)["task"]["id"]
                    claims += 1
                    if claims in kill_after:
                        os.kill(_pid_of(pidfile), signal.SIGKILL)
                        killed = True
                        tally["kills"] += 1
                        break
                    await ok(client, "task_done", task_id=task_id, result="done")
        except Exception:  # noqa: BLE001 - the session we SIGKILLed breaks its client
            if not killed:
                raise
        if not killed:
            return


async def test_tasks_claimed_by_sessions_sigkilled_mid_task_come_back_and_none_stays_running(
    tt_env: dict[str, str], tmp_path: Path,
) -> None:
    total = 200
    async with open_spawn_town(tt_env) as town:
        ids = [(await town.assign(f"job {n}")).id for n in range(total)]
        tally: dict[str, Any] = {"kills": 0, "given_back": 0, "ids": ids}
        kills = {"c1": {5, 30, 55}, "c2": {10, 35, 60}, "c3": {15, 40, 65}}
        with ExitStack() as stack, anyio.fail_after(300):
            async with anyio.create_task_group() as tg:
                for name, points in kills.items():
                    tg.start_soon(_claimer, town, tt_env, name, tmp_path, points, tally, stack)
        tasks = [await town.get_task(task_id) for task_id in ids]
        stuck = [t.id for t in tasks if t.state in (TaskState.RUNNING, TaskState.ASSIGNED)]
        assert tally["kills"] == 9
        assert stuck == []
        assert all(t.state == TaskState.COMPLETED for t in tasks)
        assert tally["given_back"] == 9  # each killed session's task came to the next one
        for name in kills:
            assert await town.inbox(name) == [] and await town.in_flight(name) == []


async def test_recover_gives_a_live_agent_back_a_task_held_by_a_session_that_is_gone(
    real_town: Town,
) -> None:
    task = await real_town.assign("held and lost")
    async with connect(real_town, "vera") as first:
        await ok(first, "claim_task", task_id=task.id)
    # the session is gone without a word and its successor never took the mailbox over
    # (say it died between recording itself and giving the tasks back): the agent is live
    await real_town.update_agent("vera", session="a-session-that-died-while-opening")
    report = await real_town.recover()
    assert report.given_back == [{"task_id": task.id, "task": f"#{task.number}", "agent": "vera"}]
    assert report.stopped == [] and report.reclaimed == []
    got = await real_town.receive("vera", timeout_s=0)
    assert [(m.kind, m.task_id) for m in got.messages] == [(MessageKind.TASK, task.id)]
    assert (await real_town.recover()).given_back == []  # held by the live session now


async def test_task_done_from_a_later_session_acknowledges_the_task_message(real_town: Town) -> None:
    await real_town.register_agent("walt")
    task = await real_town.assign("finish me later", agent="walt")
    async with connect(real_town, "walt") as first:
        got = await ok(first, "receive", timeout_s=5)
        assert [m["task_id"] for m in got["messages"]] == [task.id]
    async with connect(real_town, "walt") as second:  # the first one's batch is back
        assert (await real_town.inbox_counts("walt")).pending == 1
        await ok(second, "task_done", task_id=task.id, result="done by the second session")
        again = await ok(second, "receive", timeout_s=0)
        assert again["messages"] == [] and again["inbox"]["pending"] == 0
    assert await real_town.inbox("walt") == [] and await real_town.in_flight("walt") == []


async def test_a_cancelled_tasks_message_is_not_delivered_to_the_assignee(real_town: Town) -> None:
    await real_town.register_agent("xena")
    task = await real_town.assign("never mind", agent="xena")
    await real_town.cancel_task(task.id, "changed my mind", by=CONDUCTOR)
    got = await real_town.receive("xena", timeout_s=0)
    assert [(m.kind, m.task_id) for m in got.messages] == [(MessageKind.TASK_CANCELLED, task.id)]


async def test_a_backlog_claim_for_a_spawned_agent_reaches_its_runner(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("yuri", cli="echo")
        task = await town.assign("from the backlog")
        after = await town.last_event_id()
        done = subprocess.run(
            [sys.executable, "-m", "tinytown.cli.main", "backlog", "claim", task.id, "--agent", "yuri"],
            env=tt_env, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
        settled = await task_settled(town, task.id, after, timeout_s=60)
        assert settled.state == TaskState.COMPLETED
        assert "agent yuri task " + task.id in (settled.result or "")  # the round saw the task


async def test_a_task_a_round_claimed_and_left_running_comes_back_in_the_next_round(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("zoe", cli="echo")
        task = await town.assign("claimed inside a round")
        # a claim by the agent's own session (what the round's CLI does through MCP) sends no
        # message; its round ends without finishing it
        session = (await town.get_agent("zoe")).session  # the runner's, which rounds join
        await town.claim("zoe", task.id, session=session)
        assert await town.inbox("zoe") == []
        after = await town.last_event_id()
        await town.send(CONDUCTOR, "zoe", "do something", kind="query")
        settled = await task_settled(town, task.id, after, timeout_s=60)
        assert settled.state == TaskState.COMPLETED


async def test_concurrent_spawns_and_attaches_at_the_limit_never_exceed_max_agents(
    tt_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = Path(tt_env["TINYTOWN_TOWN"])
    (root / "tinytown.toml").write_text((root / "tinytown.toml").read_text() + "max_agents = 2\n")
    async with open_spawn_town(tt_env) as town:
        monkeypatch.setenv("REDIS_URL", tt_env["REDIS_URL"])  # the test's Redis, never a managed one
        towns = [await Town.open(root, start_redis=False) for _ in range(6)]
        refused: list[str] = []
        spawns: list[subprocess.CompletedProcess[str]] = []

        async def attach(n: int) -> None:
            try:
                await towns[n].open_session(f"attached{n}")
            except Invalid as error:
                refused.append(error.message)

        def spawn(n: int) -> None:
            spawns.append(subprocess.run(
                [sys.executable, "-m", "tinytown.cli.main", "spawn", f"spawned{n}", "--cli", "echo"],
                env=tt_env, capture_output=True, text=True, timeout=120, check=False,
            ))

        try:
            with anyio.fail_after(180):
                async with anyio.create_task_group() as tg:
                    for n in range(6):
                        tg.start_soon(anyio.to_thread.run_sync, spawn, n)
                        tg.start_soon(attach, n)
        finally:
            for other in towns:
                await other.close()
        agents = [a.name for a in await town.list_agents() if a.name != CONDUCTOR]
        assert len(agents) == 2, agents
        refused += [s.stderr for s in spawns if s.returncode != 0]
        assert len(refused) == 10, refused
        assert all("max_agents" in text for text in refused)
