"""One session model (issue 7): the runner owns a spawned agent; the MCP session of one of
its rounds joins the runner's session; a session from outside is refused while the runner
lives, unless it takes the agent over on purpose.  Real runners, real ``tinytown-mcp``
processes, real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp_support import SCRIPT, stdio
from runner_support import open_spawn_town, round_done, wait_for_line

from tinytown.errors import Conflict
from tinytown.models import AgentState, TaskState
from tinytown.processes import wait_exit
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_a_rounds_mcp_session_joins_the_runner_and_is_never_handed_its_own_task(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        spawned = await town.spawn_agent("pia", cli="probe")
        after = await town.last_event_id()
        task = await town.assign("look around", agent="pia")
        await round_done(town, "pia", after)
        assert town.paths is not None
        seen = json.loads(
            wait_for_line(town.paths.logs / "pia.round-1.log", "PROBE ").removeprefix("PROBE ")
        )
        # the round's task stays in flight with the runner: not pending, not received again
        assert seen["whoami"]["agent"]["name"] == "pia"
        assert seen["whoami"]["in_flight"] == 1 and seen["whoami"]["inbox"]["pending"] == 0
        assert seen["first"]["messages"] == [] and seen["first"]["inbox"]["pending"] == 0
        assert seen["done"]["task"]["state"] == "completed"
        assert seen["second"]["messages"] == []
        done = await town.get_task(task.id)
        assert (done.state, done.result) == (TaskState.COMPLETED, "probe did it")
        # the task message was delivered once, and is acknowledged
        (message,) = await town.channel.load(await _task_messages(town, task.id))
        assert message.delivery_count == 1
        assert await town.in_flight("pia") == [] and await town.inbox("pia") == []
        # the runner kept its session and runs the next round
        pia = await town.get_agent("pia")
        assert pia.session is not None and town.runner_pid(pia)
        assert spawned.pid == pia.pid
        after = await town.last_event_id()
        second = await town.assign("look again", agent="pia")
        await round_done(town, "pia", after)
        assert (await town.get_task(second.id)).state == TaskState.COMPLETED
        assert (await town.get_agent("pia")).session == pia.session


async def _task_messages(town: Town, task_id: str) -> list[str]:
    """Ids of the ``task`` messages the town stored for ``task_id`` (from the event stream)."""
    events = await town.history(200)
    return [str(e.data["id"]) for e in events
            if e.type == "message.sent" and e.data.get("task_id") == task_id
            and e.data.get("kind") == "task"]


async def test_an_outside_session_under_a_spawned_agents_name_is_refused_while_its_runner_lives(
    tt_env: dict[str, str], tmp_path: Path,
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("rex", cli="echo")
        before = await town.get_agent("rex")
        errlog = tmp_path / "mcp-stderr.txt"
        with errlog.open("w") as err, pytest.raises(Exception):  # noqa: B017 - any failure to connect
            with anyio.fail_after(60):
                async with stdio(tt_env, "rex", errlog=err) as client:
                    await client.list_tools()  # an inspector's look is enough to do harm today
        text = errlog.read_text()
        assert "conflict: agent rex is run by its runner" in text
        assert "tt kill rex" in text and "--take-over" in text
        # nothing changed hands: same session, runner alive, and it still does its work
        rex = await town.get_agent("rex")
        assert rex.session == before.session and town.runner_pid(rex)
        after = await town.last_event_id()
        task = await town.assign("still yours", agent="rex")
        await round_done(town, "rex", after)
        assert (await town.get_task(task.id)).state == TaskState.COMPLETED


async def test_taking_over_on_purpose_stops_the_runner_and_hands_the_mailbox_over(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        spawned = await town.spawn_agent("tom", cli="echo")
        assert spawned.pid
        with anyio.fail_after(60):
            async with stdio(tt_env, "tom", command=[str(SCRIPT), "--take-over"]) as client:
                assert await anyio.to_thread.run_sync(wait_exit, spawned.pid, 30.0)
                tom = await town.get_agent("tom")
                assert tom.state not in (AgentState.STOPPED, AgentState.ERROR)
                assert town.runner_pid(tom) is None
                await town.send("conductor", "tom", "you are mine now")
                got = await client.call_tool("receive", {"timeout_s": 20})
                assert not got.is_error
                assert got.structured_content is not None
                assert [m["body"] for m in got.structured_content["messages"]] == ["you are mine now"]
                # the agent is the new session's now: not a runner gone missing to recover
                view = next(v for v in (await town.status()).agents if v.agent.name == "tom")
                assert not view.runner_gone
                assert (await town.recover()).stopped == []
        events = [e.type for e in await town.history(100)]
        assert "agent.taken_over" in events


async def test_a_round_credential_joins_only_while_its_round_runs(real_town: Town) -> None:
    _, session, _ = await real_town.open_session("uma")
    credential = await real_town.begin_round("uma")
    agent, joined, requeued = await real_town.open_session("uma", round_credential=credential)
    assert (joined, requeued) == (session, 0)
    assert (await real_town.get_agent("uma")).session == session
    with pytest.raises(Conflict, match="round"):
        await real_town.open_session("uma", round_credential="uma:not-the-token")
    with pytest.raises(Conflict, match="round"):
        await real_town.open_session("uma", round_credential=credential.replace("uma:", "ulf:"))
    await real_town.end_round("uma")
    with pytest.raises(Conflict, match="round this session was started for is over"):
        await real_town.open_session("uma", round_credential=credential)


async def test_a_scripted_agent_answers_a_query_of_its_round_from_the_prompt(
    tt_env: dict[str, str],
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("quinn", cli="scripted")
        after = await town.last_event_id()
        query = await town.send("conductor", "quinn", "6 * 7", kind="query")
        await round_done(town, "quinn", after)
        got = await town.receive("conductor", timeout_s=20)
        assert [(m.sender, m.body, m.reply_to) for m in got.messages] == [
            ("quinn", "6 * 7 = 42", query.message.id)
        ]
        assert await town.in_flight("quinn") == [] and await town.inbox("quinn") == []
