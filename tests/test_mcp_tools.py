"""Every MCP tool through a real client session (in-memory transport) on a real Redis.

Each tool is a thin adapter over one Town method; these tests check the MCP face: names,
schemas, structured results with the inbox piggyback, and each coded error.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from conftest import make_config, start_redis_server
from mcp_support import connect, ok, refused
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis]

SPEC_TOOLS = {
    "whoami": [],
    "town_status": ["limit", "cursor"],
    "list_agents": ["state", "limit", "cursor"],
    "spawn_agent": ["name", "cli", "role", "nickname", "worktree"],
    "kill_agent": ["name"],
    "assign_task": ["description", "agent", "tags", "priority", "parent_id", "depends_on"],
    "claim_task": ["task_id"],
    "list_tasks": ["state", "agent", "limit", "cursor"],
    "get_task": ["task_id"],
    "task_done": ["task_id", "result"],
    "task_failed": ["task_id", "error"],
    "cancel_task": ["task_id", "reason"],
    "send_message": ["to", "body", "kind", "priority", "reply_to"],
    "receive": ["timeout_s", "max_messages"],
    "ack": ["message_ids"],
}


async def test_the_fifteen_tools_have_the_spec_names_and_argument_order(real_town: Town) -> None:
    async with connect(real_town) as client:
        tools = (await client.list_tools()).tools
    assert {t.name: list(t.input_schema["properties"]) for t in tools} == SPEC_TOOLS
    for tool in tools:
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.input_schema["additionalProperties"] is False, tool.name
        for name, prop in tool.input_schema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"


async def test_schemas_carry_the_bounds_and_defaults_of_the_spec(real_town: Town) -> None:
    async with connect(real_town) as client:
        schemas = {t.name: t.input_schema for t in (await client.list_tools()).tools}
    receive = schemas["receive"]["properties"]
    assert (receive["timeout_s"]["minimum"], receive["timeout_s"]["maximum"]) == (0, 300)
    assert receive["timeout_s"]["default"] == 30
    assert (receive["max_messages"]["minimum"], receive["max_messages"]["maximum"]) == (1, 100)
    assert receive["max_messages"]["default"] == 10
    limit = schemas["list_tasks"]["properties"]["limit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 500, 50)
    send = schemas["send_message"]
    assert send["required"] == ["to", "body"]
    assert send["properties"]["kind"]["default"] == "info"
    assert "task_done" in send["properties"]["kind"]["enum"]
    assert send["properties"]["priority"]["enum"] == ["urgent", "high", "normal", "low"]
    assert schemas["task_done"]["required"] == ["task_id", "result"]
    assert "required" not in schemas["claim_task"]


async def test_annotations_mark_reads_as_read_only_and_cancel_as_destructive(real_town: Town) -> None:
    async with connect(real_town) as client:
        hints = {t.name: t.annotations for t in (await client.list_tools()).tools}
    for name in ("whoami", "town_status", "list_agents", "list_tasks", "get_task"):
        assert hints[name] is not None and hints[name].read_only_hint is True, name
    for name in ("send_message", "receive", "assign_task", "task_done", "ack"):
        assert hints[name] is not None and hints[name].read_only_hint is False, name
    assert hints["cancel_task"].destructive_hint is True  # type: ignore[union-attr]
    assert hints["kill_agent"].destructive_hint is True  # type: ignore[union-attr]
    assert hints["ack"].idempotent_hint is True  # type: ignore[union-attr]


async def test_instructions_name_the_identity_and_the_town(real_town: Town) -> None:
    async with connect(real_town, "alice") as client:
        text = client.instructions or ""
    assert "'alice'" in text and real_town.name in text and "`receive`" in text


async def test_first_session_of_a_new_name_attaches_the_agent(real_town: Town) -> None:
    async with connect(real_town, "Alice") as client:
        me = await ok(client, "whoami")
    assert me["agent"]["name"] == "alice"
    assert me["agent"]["cli"] is None and me["agent"]["state"] == "idle"
    assert me["agent"]["session"] == me["session"]
    assert me["town"] == real_town.name and me["current_task"] is None
    assert (await real_town.get_agent("alice")).session == me["session"]


async def test_a_live_session_keeps_its_agent_from_going_stale(real_redis: Redis, town_name: str) -> None:
    # heartbeat every 0.5 s: alice goes stale only if the test process stalls for over a
    # second (with 0.3 s and beats every 0.1 s, a 0.2 s stall on a loaded machine sufficed)
    town = Town(real_redis, make_config(town_name, stale_after_s=1.5))
    await town.ensure_conductor()
    await town.register_agent("idler")  # registered, but no session beats for it
    async with connect(town, "alice"):
        await anyio.sleep(1.6)  # staleness is about time passing: longer than stale_after_s
        stale = {view.agent.name: view.stale for view in (await town.status()).agents}
    assert stale == {"conductor": False, "idler": True, "alice": False}


async def test_whoami_shows_the_current_task_in_full(real_town: Town) -> None:
    async with connect(real_town, "alice") as alice, connect(real_town) as conductor:
        task = (await ok(conductor, "assign_task", description="write the tests", agent="alice"))["task"]
        await ok(alice, "receive", timeout_s=5)
        me = await ok(alice, "whoami")
    assert me["current_task"]["id"] == task["id"]
    assert me["current_task"]["description"] == "write the tests"
    assert me["in_flight"] == 1


async def test_every_result_carries_the_callers_pending_and_urgent_counts(real_town: Town) -> None:
    async with connect(real_town, "alice") as alice, connect(real_town) as conductor:
        await ok(conductor, "send_message", to="alice", body="fyi")
        await ok(conductor, "send_message", to="alice", body="now!", priority="urgent")
        assert (await ok(alice, "list_agents"))["inbox"] == {"pending": 2, "urgent": 1}
        assert (await ok(conductor, "town_status"))["inbox"] == {"pending": 0, "urgent": 0}
        got = await ok(alice, "receive", timeout_s=1, max_messages=1)
    assert got["messages"][0]["body"] == "now!"
    assert got["inbox"] == {"pending": 1, "urgent": 0}


async def test_town_status_masks_the_redis_password(real_redis: Redis, town_name: str) -> None:
    config = make_config(town_name, redis={"url": "redis://:hunter2@db.example:6379/0"})
    town = Town(real_redis, config)
    await town.ensure_conductor()
    async with connect(town) as client:
        status = await ok(client, "town_status")
    assert status["redis"] == "redis://:****@db.example:6379/0"
    assert "hunter2" not in str(status)
    info = await real_redis.info("server")
    name = info.get("server_name", "redis")  # each real server: Valkey and Redis 7
    assert status["server"] == {"name": name, "version": str(info[f"{name}_version"])}
    assert status["town"] == town_name
    assert [view["agent"]["name"] for view in status["agents"]] == ["conductor"]
    assert set(status["tasks"]) == {
        "waiting", "pending", "assigned", "running", "completed", "failed", "cancelled"}


async def test_list_agents_filters_by_state(real_town: Town) -> None:
    await real_town.register_agent("sleepy", state="paused")  # type: ignore[arg-type]
    async with connect(real_town, "alice") as client:
        everyone = await ok(client, "list_agents")
        paused = await ok(client, "list_agents", state="paused")
        await refused(client, "list_agents", "invalid", state="asleep")
    assert [a["name"] for a in everyone["agents"]] == ["conductor", "sleepy", "alice"]
    assert [a["name"] for a in paused["agents"]] == ["sleepy"]


async def test_assign_receive_done_tells_the_creator(real_town: Town) -> None:
    async with connect(real_town, "alice") as alice, connect(real_town) as conductor:
        task = (await ok(conductor, "assign_task", description="port it", agent="alice",
                         tags=["py"], priority="high"))["task"]
        assert (task["state"], task["created_by"], task["tags"]) == ("assigned", "conductor", ["py"])
        got = await ok(alice, "receive", timeout_s=5)
        [message] = got["messages"]
        assert (message["kind"], message["task_id"], message["from"]) == ("task", task["id"], "conductor")
        done = await ok(alice, "task_done", task_id=task["id"], result="ported")
        assert done["task"]["state"] == "completed"
        notice = (await ok(conductor, "receive", timeout_s=5))["messages"]
    assert [(m["kind"], m["task_id"], m["body"]) for m in notice] == [("task_done", task["id"], "ported")]


async def test_task_failed_and_cancel_tell_the_creator(real_town: Town) -> None:
    async with connect(real_town, "alice") as alice, connect(real_town) as conductor:
        first = (await ok(conductor, "assign_task", description="a", agent="alice"))["task"]
        second = (await ok(conductor, "assign_task", description="b", agent="alice"))["task"]
        failed = await ok(alice, "task_failed", task_id=first["id"], error="no disk")
        cancelled = await ok(conductor, "cancel_task", task_id=second["id"], reason="not needed")
        notices = (await ok(conductor, "receive", timeout_s=5))["messages"]
        told = (await ok(alice, "receive", timeout_s=5))["messages"]
    assert (failed["task"]["state"], failed["task"]["error"]) == ("failed", "no disk")
    assert cancelled["task"]["state"] == "cancelled"
    assert [(m["kind"], m["body"]) for m in notices] == [("task_failed", "no disk")]
    assert ("task_cancelled", "not needed") in [(m["kind"], m["body"]) for m in told]


async def test_backlog_task_is_claimed_by_the_caller(real_town: Town) -> None:
    async with connect(real_town, "bob") as bob, connect(real_town) as conductor:
        task = (await ok(conductor, "assign_task", description="anyone"))["task"]
        assert task["state"] == "pending" and task["assigned_to"] is None
        claimed = (await ok(bob, "claim_task"))["task"]
        await refused(bob, "claim_task", "not_found")
        await refused(bob, "claim_task", "conflict", task_id=task["id"])
    assert claimed["id"] == task["id"] and claimed["state"] == "running"
    assert claimed["assigned_to"] == "bob"
    assert claimed["assigned_to_id"] == (await real_town.get_agent("bob")).id


async def test_list_tasks_pages_with_next_cursor_and_get_task_reads_one(real_town: Town) -> None:
    async with connect(real_town) as client:
        ids = [(await ok(client, "assign_task", description=f"t{i}"))["task"]["id"] for i in range(5)]
        first = await ok(client, "list_tasks", limit=3)
        rest = await ok(client, "list_tasks", limit=3, cursor=first["next_cursor"])
        pending = await ok(client, "list_tasks", state="pending", limit=500)
        one = await ok(client, "get_task", task_id=ids[2])
        await refused(client, "get_task", "not_found", task_id="no-such-task")
        await refused(client, "list_tasks", "invalid", cursor="not a cursor")
    assert [t["id"] for t in first["tasks"] + rest["tasks"]] == ids[::-1]
    assert rest["next_cursor"] is None
    assert len(pending["tasks"]) == 5
    assert one["task"]["description"] == "t2"


async def test_only_the_assignee_or_the_conductor_may_finish_a_task(real_town: Town) -> None:
    async with connect(real_town, "alice") as alice, connect(real_town, "bob") as bob, \
            connect(real_town) as conductor:
        task = (await ok(conductor, "assign_task", description="mine", agent="alice"))["task"]
        text = await refused(bob, "task_done", "forbidden", task_id=task["id"], result="stolen")
        await refused(bob, "task_failed", "forbidden", task_id=task["id"], error="nope")
        done = (await ok(alice, "task_done", task_id=task["id"], result="done"))["task"]
        await refused(alice, "task_done", "conflict", task_id=task["id"], result="again")
        await refused(conductor, "cancel_task", "conflict", task_id=task["id"])
        shown = (await ok(conductor, "get_task", task_id=task["id"]))["task"]
    assert done["decided_by"] == shown["decided_by"] == "agent"  # alice reported it herself
    assert "alice" in text
    assert (await real_town.get_task(task["id"])).result == "done"


async def test_send_message_kinds_broadcast_and_replies(real_town: Town) -> None:
    async with connect(real_town, "alice") as alice, connect(real_town, "bob") as bob, \
            connect(real_town) as conductor:
        sent = await ok(conductor, "send_message", to="all", body="standup", kind="info")
        assert sent["copies"] == 2 and sent["message"]["to"] == "all"
        question = (await ok(alice, "send_message", to="bob", body="lunch?", kind="query"))["message"]
        got = (await ok(bob, "receive", timeout_s=5))["messages"]
        assert [m["body"] for m in got] == ["standup", "lunch?"]
        answer = await ok(bob, "send_message", to="alice", body="yes", reply_to=question["id"])
        await refused(bob, "send_message", "not_found", to="nobody", body="hi")
        await refused(bob, "send_message", "not_found", to="alice", body="hi", reply_to="no-such-id")
        mail = (await ok(alice, "receive", timeout_s=5))["messages"]
    assert answer["message"]["reply_to"] == question["id"]
    assert [m["reply_to"] for m in mail] == [None, question["id"]]
    assert all(m["from"] in ("conductor", "bob") for m in mail)


async def test_oversized_body_is_invalid_and_nothing_is_stored(real_town: Town) -> None:
    async with connect(real_town, "alice") as alice, connect(real_town) as conductor:
        await refused(conductor, "send_message", "invalid", to="alice", body="x" * (64 * 1024 + 1))
        await refused(conductor, "send_message", "invalid", to="alice", body="   ")
        assert (await ok(alice, "whoami"))["inbox"]["pending"] == 0


async def test_ack_means_a_new_session_does_not_get_the_message_back(real_town: Town) -> None:
    async with connect(real_town, "alice") as alice:
        await real_town.send("conductor", "alice", "keep")
        await real_town.send("conductor", "alice", "drop")
        got = (await ok(alice, "receive", timeout_s=5))["messages"]
        drop = next(m["id"] for m in got if m["body"] == "drop")
        assert (await ok(alice, "ack", message_ids=[drop, drop]))["acknowledged"] == 1
        assert (await ok(alice, "ack", message_ids=[drop]))["acknowledged"] == 0
    async with connect(real_town, "alice") as again:
        back = (await ok(again, "receive", timeout_s=5))["messages"]
    assert [(m["body"], m["delivery_count"]) for m in back] == [("keep", 2)]


async def test_a_newer_session_takes_over_the_mailbox(real_town: Town) -> None:
    async with connect(real_town, "alice") as old, connect(real_town, "alice") as new:
        text = await refused(old, "receive", "conflict", timeout_s=0)
        await ok(new, "receive", timeout_s=0)
    assert "session" in text


@pytest.mark.parametrize(("tool", "arguments", "says"), [
    ("receive", {"timeout_s": 301}, "timeout_s must be at most 300"),
    ("receive", {"timeout_s": -1}, "timeout_s must be at least 0"),
    ("receive", {"timeout_s": "soon"}, "timeout_s must be a number, not a string"),
    ("receive", {"max_messages": 0}, "max_messages must be at least 1"),
    ("receive", {"max_messages": 2.5}, "max_messages must be an integer"),
    ("receive", {"wait": 5}, "unknown argument 'wait'; it takes timeout_s, max_messages"),
    ("list_tasks", {"limit": 501}, "limit must be at most 500"),
    ("list_tasks", {"state": "done"}, "state must be one of waiting, pending, assigned"),
    ("send_message", {"to": "alice"}, "the argument 'body' is required"),
    ("send_message", {"to": "alice", "body": "x", "priority": "asap"}, "priority must be one of urgent"),
    ("send_message", {"to": "alice", "body": "x", "from": "bob"}, "unknown argument 'from'"),
    ("assign_task", {"description": "x", "tags": "a,b"}, "tags must be an array or null"),
    ("assign_task", {"description": "x", "tags": ["ok", ""]}, "tags.1 must be at least 1 characters"),
    ("ack", {"message_ids": []}, "message_ids must be a list of at least 1 items"),
    ("whoami", {"agent_id": "bob"}, "unknown argument 'agent_id'; it takes no arguments"),
    ("get_task", {"task_id": None}, "task_id must be a string, not null"),
    ("task_done", {"task_id": "x", "result": "\ud800"}, "result is not valid UTF-8"),
])
async def test_bad_arguments_are_refused_as_invalid_before_anything_runs(
    real_town: Town, tool: str, arguments: dict[str, object], says: str
) -> None:
    async with connect(real_town, "alice") as client:
        result = await client.call_tool(tool, arguments)
        assert result.is_error
        text = result.content[0].text  # type: ignore[union-attr]
        assert text.startswith(f"invalid: {tool}: "), text
        assert says in text
        assert (await ok(client, "whoami"))["inbox"] == {"pending": 0, "urgent": 0}
    assert (await real_town.list_tasks()).tasks == []


async def test_an_unknown_tool_is_not_found_and_lists_the_tools(real_town: Town) -> None:
    async with connect(real_town) as client:
        text = await refused(client, "teleport", "not_found")
    assert "receive" in text and "send_message" in text


async def test_spawn_and_kill_run_a_real_runner(
    tt_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in tt_env.items():
        monkeypatch.setenv(key, value)  # the runner process inherits the town and its Redis
    town = await Town.open()
    try:
        async with connect(town) as conductor, connect(town, "bob") as bob:
            await refused(conductor, "spawn_agent", "invalid", name="all", cli="scripted")
            await refused(conductor, "spawn_agent", "invalid", name="helper", cli="no-such-preset")
            made = await ok(conductor, "spawn_agent", name="helper", cli="scripted", role="tester")
            spawned = made["agent"]
            assert (spawned["name"], spawned["cli"], spawned["role"]) == ("helper", "scripted", "tester")
            assert spawned["state"] == "idle" and spawned["pid"]
            await refused(conductor, "spawn_agent", "conflict", name="helper", cli="scripted")
            await refused(bob, "kill_agent", "forbidden", name="helper")
            await refused(conductor, "kill_agent", "not_found", name="nobody")
            stopped = (await ok(conductor, "kill_agent", name="helper"))["agent"]
        assert stopped["state"] == "stopped" and stopped["pid"] is None
    finally:
        await town.close()


async def test_a_redis_outage_is_unavailable_and_the_server_keeps_answering(
    tmp_path: Path, town_name: str
) -> None:
    proc, sock = start_redis_server(tmp_path / "redis")
    # no reconnect retries: redis-py's default backoff would make each failing call take ~4 s
    redis = Redis(unix_socket_path=sock, decode_responses=True, socket_timeout=None,
                  retry=Retry(NoBackoff(), 0))
    try:
        town = Town(redis, make_config(town_name))
        await town.ensure_conductor()
        async with connect(town, "alice") as client:
            await ok(client, "whoami")
            proc.terminate()
            proc.wait(10)
            text = await refused(client, "whoami", "unavailable")
            assert "Redis" in text
            await refused(client, "send_message", "unavailable", to="conductor", body="hello?")
            assert (await client.list_tools()).tools
    finally:
        if proc.poll() is None:
            proc.kill()
        await redis.aclose()
