"""Spawned agents' lifecycle with real runner processes: spawn refusals, who may kill whom,
pause/resume, wait, restart, prune, and the ``tt`` faces of them (subprocesses, --json)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp_support import connect, ok, refused
from runner_support import kill_leftover_runners, next_event, open_spawn_town, round_done, write_presets

from tinytown.errors import Conflict, Forbidden, Invalid, NotFound
from tinytown.models import AgentState, TaskState
from tinytown.processes import pid_alive
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def tt(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinytown.cli.main", *args],
        check=False, env=env, capture_output=True, text=True, timeout=timeout,
    )


def tt_json(env: dict[str, str], *args: str) -> Any:
    done = tt(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_a_refused_spawn_leaves_nothing_registered(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        with pytest.raises(Invalid, match="preset 'ghost' runs `tinytown-no-such-program-anywhere`, "
                                          "which is not on PATH"):
            await town.spawn_agent("ghost", cli="ghost")
        with pytest.raises(Invalid, match="no preset named 'nope'; presets: aider, brief, callback"):
            await town.spawn_agent("nope", cli="nope")
        with pytest.raises(Invalid, match="no --cli given and tinytown.toml sets no default_cli"):
            await town.spawn_agent("nobody")
        with pytest.raises(Invalid, match="reserved name"):
            await town.spawn_agent("all", cli="echo")
        assert [a.name for a in await town.list_agents()] == ["conductor"]
        assert town.paths is not None
        assert not (town.paths.runtime / "run").exists()


async def test_a_runner_that_dies_at_start_leaves_the_agent_in_error(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        assert town.paths is not None
        with town.paths.config.open("a") as config:  # the runner will read a broken file
            config.write("\nnot toml at all = = =\n")
        agent = await town.spawn_agent("doomed", cli="echo")
        assert (agent.state, agent.pid) == (AgentState.ERROR, None)
        log = (town.paths.logs / "doomed.runner.log").read_text()
        assert "tt: invalid:" in log and "not valid TOML" in log


async def test_an_agent_may_kill_itself_or_agents_it_spawned_but_no_other(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("lead", cli="echo")
        helper = await town.spawn_agent("helper", cli="echo", by="lead")
        assert helper.spawned_by == "lead"
        await town.spawn_agent("other", cli="echo")
        with pytest.raises(Forbidden, match="other may not kill helper: only the conductor, helper "
                                            "itself or lead, which spawned it can"):
            await town.kill_agent("helper", by="other")
        with pytest.raises(Forbidden):
            await town.pause_agent("lead", by="other")
        killed = await town.kill_agent("helper", by="lead")
        assert killed.state == AgentState.STOPPED
        assert helper.pid is not None and not pid_alive(helper.pid)
        assert (await town.kill_agent("other")).state == AgentState.STOPPED  # the conductor may


async def test_the_spawn_and_kill_tools_run_the_same_lifecycle_over_mcp(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.register_agent("boss")
        async with connect(town, "boss") as client:
            spawned = (await ok(client, "spawn_agent", name="worker", cli="echo"))["agent"]
            assert (spawned["state"], spawned["spawned_by"]) == ("idle", "boss")
            assert "presets: aider" in await refused(client, "spawn_agent", "invalid", name="w2", cli="nope")
            killed = (await ok(client, "kill_agent", name="worker"))["agent"]
            assert (killed["state"], killed["pid"]) == ("stopped", None)
        await town.spawn_agent("stranger", cli="echo")
        async with connect(town, "boss") as client:
            await refused(client, "kill_agent", "forbidden", name="stranger")
        assert not pid_alive(spawned["pid"])


async def test_a_paused_agent_starts_no_round_until_resumed(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("pat", cli="echo")
        paused = await town.pause_agent("pat")
        assert paused.state == AgentState.PAUSED
        assert (await town.pause_agent("pat")).state == AgentState.PAUSED  # idempotent
        after = await town.channel.last_event_id()
        task = await town.assign("wait for me", agent="pat")
        # for a second nothing may take the task: no delivery, no round
        with anyio.move_on_after(1.0):
            event = await next_event(town, after, lambda e: e.type in ("task.started", "agent.round"))
            pytest.fail(f"a paused agent took work: {event}")
        assert (await town.get_task(task.id)).state == TaskState.ASSIGNED
        assert (await town.inbox_counts("pat")).pending == 1
        resumed = await town.resume_agent("pat")
        assert resumed.state == AgentState.IDLE
        await round_done(town, "pat", after)
        assert (await town.get_task(task.id)).state == TaskState.COMPLETED
        with pytest.raises(Conflict, match="pat is idle, not paused"):
            await town.resume_agent("pat")


async def test_wait_returns_when_max_rounds_stops_the_runner(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        spawned = await town.spawn_agent("max", cli="echo", max_rounds=1)
        first = await town.assign("one", agent="max")
        stopped = await town.wait_agent("max", timeout_s=30)
        assert (stopped.state, stopped.pid, stopped.rounds_completed) == (AgentState.STOPPED, None, 1)
        assert spawned.pid is not None and not pid_alive(spawned.pid)
        assert (await town.get_task(first.id)).state == TaskState.COMPLETED
        # a runner that is not stopping: wait gives up at its timeout and says so
        await town.spawn_agent("busy", cli="echo")
        still = await town.wait_agent("busy", timeout_s=0.2)
        assert still.state == AgentState.IDLE


async def test_restart_starts_a_new_runner_for_the_same_agent(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        first = await town.spawn_agent("rita", cli="echo")
        second = await town.restart_agent("rita")
        assert second.state == AgentState.IDLE
        assert first.pid is not None and second.pid is not None and first.pid != second.pid
        assert not pid_alive(first.pid) and pid_alive(second.pid)
        after = await town.channel.last_event_id()
        task = await town.assign("still there?", agent="rita")
        await round_done(town, "rita", after)
        assert (await town.get_task(task.id)).state == TaskState.COMPLETED


async def test_prune_deletes_stopped_agents_only(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("old", cli="echo")
        await town.spawn_agent("live", cli="echo")
        await town.kill_agent("old")
        assert await town.prune() == ["old"]
        with pytest.raises(NotFound):
            await town.get_agent("old")
        assert (await town.get_agent("live")).state == AgentState.IDLE
        assert await town.prune() == []


async def test_recover_leaves_live_agents_alone_and_can_hand_tasks_to_an_agent(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("heir", cli="echo", max_rounds=5)
        # an attached agent that went silent long ago, holding a task
        await town.register_agent("ghost")
        task = await town.assign("orphaned work", agent="ghost")
        await town.receive("ghost", timeout_s=0)  # delivered: running, in flight
        await town.update_agent("ghost", last_seen=0)
        after = await town.channel.last_event_id()
        report = await town.recover(to="heir")
        assert report.stopped == ["ghost"]
        assert report.reclaimed == [
            {"task_id": task.id, "task": f"#{task.number}", "from": "ghost", "to": "heir"}]
        assert (await town.get_agent("heir")).state in (AgentState.IDLE, AgentState.WORKING)  # live
        await round_done(town, "heir", after)
        done = await town.get_task(task.id)
        assert (done.state, done.attempt) == (TaskState.COMPLETED, 2)
        with pytest.raises(Invalid, match="recover to a live agent"):
            await town.recover(to="ghost")


async def test_tt_recover_names_the_tasks_it_moved_by_their_number(tt_env: dict[str, str]) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.register_agent("ghost")
        task = await town.assign("orphaned work", agent="ghost")
        await town.receive("ghost", timeout_s=0)  # delivered: running, in flight
        await town.update_agent("ghost", last_seen=0)
    done = tt(tt_env, "recover")
    assert done.returncode == 0, done.stderr
    # #N as every table shows it (it printed the 36-character id), "message" counted in words
    assert done.stdout.splitlines() == [
        "marked stopped: ghost", "ghost: 1 unacknowledged message back in its inbox",
        f"task #{task.number} of ghost → the backlog"], done.stdout


@pytest.fixture
def cli_env(tt_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``tt_env`` with the test presets; runners left behind are killed afterwards."""
    root = Path(tt_env["TINYTOWN_TOWN"])
    write_presets(root)
    yield tt_env
    kill_leftover_runners(root)


def test_the_tt_lifecycle_commands_print_the_agent_as_json(cli_env: dict[str, str]) -> None:
    tt_env = cli_env
    spawned = tt_json(tt_env, "spawn", "sam", "--cli", "echo", "--role", "tester", "--max-rounds", "3")
    assert (spawned["name"], spawned["state"], spawned["role"], spawned["max_rounds"]) == (
        "sam", "idle", "tester", 3)
    assert tt_json(tt_env, "pause", "sam")["state"] == "paused"
    assert tt_json(tt_env, "resume", "sam")["state"] == "idle"
    busy = tt(tt_env, "wait", "sam", "--timeout", "0.1")
    assert busy.returncode == 1 and busy.stderr.strip() == "tt: agent sam is still idle after 0.1 s"
    killed = tt_json(tt_env, "kill", "sam")
    assert (killed["state"], killed["pid"]) == ("stopped", None)
    assert tt_json(tt_env, "wait", "sam")["state"] == "stopped"
    assert tt_json(tt_env, "recover") == {"stopped": [], "requeued": {}, "reclaimed": [], "given_back": []}
    assert tt_json(tt_env, "prune") == {"pruned": ["sam"]}
    refused_spawn = tt(tt_env, "spawn", "x", "--cli", "ghost")
    assert refused_spawn.returncode == 1
    assert refused_spawn.stderr.startswith("tt: invalid: preset 'ghost' runs `tinytown-no-such-program")
    assert tt(tt_env, "kill", "nobody").stderr.startswith("tt: not_found: no agent named 'nobody'")


def test_tt_prime_tells_the_current_agent_its_task_and_mail(tt_env: dict[str, str]) -> None:
    created = tt_json(tt_env, "assign", "conductor", "warm up")  # the conductor can hold tasks too
    assert created["state"] == "assigned"
    assert tt(tt_env, "send", "--from", "conductor", "conductor", "note to self").returncode == 0
    env = {**tt_env, "TINYTOWN_AGENT": "conductor"}
    text = tt(env, "prime").stdout
    assert "you are conductor in town" in text and "You are the conductor" in text
    assert "Inbox: 2 pending." in text
    primer = tt_json(env, "prime")
    assert primer["agent"]["name"] == "conductor" and primer["inbox"]["pending"] == 2
    assert tt(tt_env, "prime", "nobody").stderr.startswith("tt: not_found:")



async def test_a_paused_agent_is_given_nothing_until_resumed(town: Town) -> None:
    await town.register_agent("zoe", cli="echo")
    await town.update_agent("zoe", state=AgentState.PAUSED)
    task = await town.assign("later", agent="zoe")
    got = await town.receive("zoe", timeout_s=0)  # e.g. a receive that raced the pause
    assert got.messages == []
    zoe = await town.get_agent("zoe")
    assert (zoe.state, zoe.current_task) == (AgentState.PAUSED, None)
    assert (await town.get_task(task.id)).state == TaskState.ASSIGNED
    assert (await town.inbox_counts("zoe")).pending == 1  # it waits in the inbox

    await town.resume_agent("zoe")
    got = await town.receive("zoe", timeout_s=0)
    assert [m.task_id for m in got.messages] == [task.id]
    assert (await town.get_task(task.id)).state == TaskState.RUNNING
