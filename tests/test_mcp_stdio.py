"""End to end: real ``tinytown-mcp`` processes over stdio with the official MCP client.

The servers use the session's private redis-server through ``REDIS_URL`` (the ``tt_env``
fixture), except the one test that shows a server starting its town's managed Redis.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from conftest import clean_env, make_config
from mcp.shared.exceptions import MCPError
from mcp_support import SCRIPT, ok, stdio
from redis.asyncio import Redis

from tinytown.config import TownPaths
from tinytown.redis_server import ManagedRedis
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis, pytest.mark.e2e]


@pytest.fixture
async def town(real_redis: Redis, town_name: str) -> Town:
    """The test's view of the same town the servers serve (same Redis, same name)."""
    town = Town(real_redis, make_config(town_name))
    await town.ensure_conductor()
    return town


async def test_conductor_assigns_two_agents_over_stdio_and_receives_both_results(
    tt_env: dict[str, str], town: Town
) -> None:
    attached = {"alice": anyio.Event(), "bob": anyio.Event()}
    finished: dict[str, dict[str, Any]] = {}

    async def agent(name: str) -> None:
        async with stdio(tt_env, name) as client:
            attached[name].set()
            got = await ok(client, "receive", timeout_s=30)
            [message] = got["messages"]
            assert message["kind"] == "task" and message["from"] == "conductor"
            result = f"{name} did: {message['body']}"
            finished[name] = await ok(client, "task_done", task_id=message["task_id"], result=result)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg, stdio(tt_env, "conductor") as conductor:
            for name in attached:
                tg.start_soon(agent, name)
            for event in attached.values():
                await event.wait()
            tasks = {}
            for name in attached:
                made = await ok(conductor, "assign_task", description=f"chapter for {name}", agent=name)
                tasks[made["task"]["id"]] = name
            notices: list[dict[str, Any]] = []
            while len(notices) < 2:
                notices += (await ok(conductor, "receive", timeout_s=30))["messages"]
    assert {n["task_id"]: (n["kind"], n["from"]) for n in notices} == {
        task_id: ("task_done", name) for task_id, name in tasks.items()
    }
    assert {n["body"] for n in notices} == {"alice did: chapter for alice", "bob did: chapter for bob"}
    for task_id in tasks:
        assert (await town.get_task(task_id)).state == "completed"
    assert all(done["task"]["state"] == "completed" for done in finished.values())
    assert (await town.get_agent("alice")).cli is None  # attached, not spawned


def server_pid(env: dict[str, str], agent: str) -> int:
    """The pid of the latest server serving ``agent``, from its log file."""
    log = Path(env["TINYTOWN_TOWN"]) / ".tt" / "logs" / f"mcp-{agent}.log"
    found = re.findall(r"\(pid (\d+)\) serving", log.read_text())
    assert found, log.read_text()
    return int(found[-1])


async def test_a_message_received_by_a_killed_server_is_redelivered_to_the_next_session(
    tt_env: dict[str, str], town: Town
) -> None:
    with anyio.fail_after(30):
        async with stdio(tt_env, "worker") as first:
            sent = await town.send("conductor", "worker", "survive this")
            got = await ok(first, "receive", timeout_s=10)
            os.kill(server_pid(tt_env, "worker"), signal.SIGKILL)
            with pytest.raises(MCPError, match="Connection closed"):
                await first.call_tool("whoami", {})
        assert [(m["id"], m["delivery_count"]) for m in got["messages"]] == [(sent.message.id, 1)]
        assert (await town.inbox_counts("worker")).in_flight == 1
        async with stdio(tt_env, "worker") as second:
            again = await ok(second, "receive", timeout_s=10)
    assert [(m["id"], m["body"], m["delivery_count"]) for m in again["messages"]] == [
        (sent.message.id, "survive this", 2)
    ]


async def test_cancelling_a_receive_over_stdio_stops_the_wait(tt_env: dict[str, str], town: Town) -> None:
    with anyio.fail_after(30):
        async with stdio(tt_env, "alice") as client:
            with anyio.move_on_after(1) as scope:
                await client.call_tool("receive", {"timeout_s": 60})
            assert scope.cancelled_caught
            # answered after the cancel notification was handled: the wait is gone
            assert (await ok(client, "whoami"))["agent"]["name"] == "alice"
            await town.send("conductor", "alice", "after the cancel")
            counts = await town.inbox_counts("alice")
            assert (counts.pending, counts.in_flight) == (1, 0)
            got = await ok(client, "receive", timeout_s=5)
    assert [m["body"] for m in got["messages"]] == ["after the cancel"]


async def test_a_blocked_receive_does_not_hold_up_other_calls_over_stdio(tt_env: dict[str, str]) -> None:
    results: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        async with stdio(tt_env, "alice") as client:

            async def wait_for_mail() -> None:
                results.append(await ok(client, "receive", timeout_s=60))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_mail)
                await anyio.wait_all_tasks_blocked()  # the receive request is on the pipe
                # sent after the receive on the same pipe; served while it waits
                assert (await ok(client, "whoami"))["agent"]["name"] == "alice"
                assert results == []
                await ok(client, "send_message", to="alice", body="unblock")
    assert [m["body"] for m in results[0]["messages"]] == ["unblock"]


def rpc(method: str, params: dict[str, Any], ident: int | None = None) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if ident is not None:
        message["id"] = ident
    return json.dumps(message) + "\n"


async def test_python_m_tinytown_mcp_writes_only_protocol_to_stdout_and_info_only_to_its_log_file(
    tt_env: dict[str, str],
) -> None:
    requests = [
        rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "raw", "version": "0"}}, 1),
        rpc("notifications/initialized", {}),
        rpc("tools/call", {"name": "whoami", "arguments": {}}, 2),
        rpc("tools/call", {"name": "receive", "arguments": {"timeout_s": "x"}}, 3),
    ]
    argv = [sys.executable, "-m", "tinytown_mcp", "--agent", "carol"]
    with anyio.fail_after(30):
        async with await anyio.open_process(argv, env=tt_env) as proc:
            assert proc.stdin and proc.stdout and proc.stderr
            await proc.stdin.send("".join(requests).encode())
            stdout = BufferedByteReceiveStream(proc.stdout)
            replies = [json.loads(await stdout.receive_until(b"\n", 1 << 20)) for _ in range(3)]
            await proc.stdin.aclose()  # EOF: the server shuts down
            rest = bytes(stdout.buffer) + b"".join([chunk async for chunk in proc.stdout])
            stderr = b"".join([chunk async for chunk in proc.stderr]).decode()
            assert await proc.wait() == 0
    replies += [json.loads(line) for line in rest.splitlines()]
    assert all(reply["jsonrpc"] == "2.0" for reply in replies)
    by_id = {reply["id"]: reply["result"] for reply in replies[:3]}
    assert json.loads(by_id[2]["content"][0]["text"])["agent"]["name"] == "carol"
    assert by_id[3]["isError"] is True
    assert by_id[3]["content"][0]["text"].startswith("invalid: receive: timeout_s")
    # INFO goes to the log file only: a client shows every stderr line as an error
    log = (Path(tt_env["TINYTOWN_TOWN"]) / ".tt" / "logs" / "mcp-carol.log").read_text()
    assert "serving" in log and "session" in log and "receive as carol refused" in log
    assert " INFO " in log
    assert "INFO" not in stderr and "serving" not in stderr and "refused" not in stderr, stderr


async def test_a_message_at_the_size_limit_crosses_stdio_intact(tt_env: dict[str, str]) -> None:
    body = ("é" * 32767) + "."  # 65535 bytes of UTF-8: several pipe reads and partial writes
    with anyio.fail_after(30):
        async with stdio(tt_env, "alice") as client:
            sent = await ok(client, "send_message", to="alice", body=body)
            got = await ok(client, "receive", timeout_s=5)
    assert sent["message"]["body"] == body
    assert [m["body"] for m in got["messages"]] == [body]


async def test_a_malformed_line_does_not_end_the_session(tt_env: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "tinytown_mcp", "--agent", "dave"]
    with anyio.fail_after(30):
        async with await anyio.open_process(argv, env=tt_env) as proc:
            assert proc.stdin and proc.stdout
            stdout = BufferedByteReceiveStream(proc.stdout)
            await proc.stdin.send(b"this is not json\n" + rpc("initialize", {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"}}, 1).encode())
            refused = json.loads(await stdout.receive_until(b"\n", 1 << 20))
            reply = json.loads(await stdout.receive_until(b"\n", 1 << 20))
            await proc.stdin.aclose()
            assert await proc.wait() == 0
    assert refused["id"] is None and refused["error"]["code"] == -32700  # answered, not ignored
    assert reply["id"] == 1 and reply["result"]["serverInfo"]["name"] == "tinytown"


@pytest.mark.parametrize(("agent", "says"), [("all", "reserved"), ("Not A Name", "not allowed")])
def test_an_identity_the_town_refuses_exits_with_one_line(
    tt_env: dict[str, str], agent: str, says: str
) -> None:
    proc = subprocess.run(
        [str(SCRIPT), "--agent", agent], input="", env=tt_env, capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("tinytown-mcp: invalid: ")
    assert says in proc.stderr


async def test_the_server_starts_the_managed_redis_of_a_town_whose_redis_is_down(tmp_path: Path) -> None:
    root = tmp_path / "town"
    root.mkdir()
    (root / "tinytown.toml").write_text('name = "managed"\n')
    env = clean_env()
    env["TINYTOWN_TOWN"] = str(root)
    managed = ManagedRedis(TownPaths(root).runtime)
    assert not managed.is_running()
    try:
        with anyio.fail_after(30):
            async with stdio(env, "alice") as client:
                status = await ok(client, "town_status")
        assert status["redis"].startswith("managed ")
        assert managed.is_running()
    finally:
        managed.stop()
