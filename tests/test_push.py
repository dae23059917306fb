"""Push: new mail sent into a live session as ``notifications/claude/channel`` (issue 11).

Real ``tinytown-mcp`` processes over stdio with the official MCP client (an extension of it
collects the channel notifications), ``tt`` as a subprocess for the sender, and the
in-memory transport for the acknowledgement rules.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from conftest import make_config
from http_support import http_client, new_token, serving
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_support import ChannelEvent, ChannelObserver, ok, stdio
from redis.asyncio import Redis
from test_mcp_stdio import server_pid

from tinytown.mcp_config import with_push
from tinytown.push import FOLD_CHARS
from tinytown.town import Town
from tinytown_mcp import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis]

TT = Path(sys.executable).parent / "tt"


@pytest.fixture
async def town(real_redis: Redis, town_name: str) -> Town:
    """The test's view of the town the servers serve (same Redis, same name)."""
    town = Town(real_redis, make_config(town_name))
    await town.ensure_conductor()
    return town


async def tt(env: dict[str, str], *args: str) -> str:
    """Run ``tt ARGS`` as its own process; its stdout."""
    done = await anyio.run_process([str(TT), *args], env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def pushed_session(town: Town, agent: str, observer: ChannelObserver) -> Client:
    """An in-memory client session of ``agent`` with push on (enter it with ``async with``)."""
    return Client(build_server(town, agent, push=True), extensions=[observer], mode="legacy")


@pytest.mark.e2e
async def test_a_session_without_push_gets_no_channel_event_and_receives_as_before(
    tt_env: dict[str, str], town: Town
) -> None:
    observer = ChannelObserver()
    with anyio.fail_after(60):
        async with stdio(tt_env, "worker", extensions=[observer]) as client:
            assert client.server_capabilities.experimental == {"claude/channel": {}}
            await tt(tt_env, "send", "worker", "plain mail")
            got = await ok(client, "receive", timeout_s=30)
            await ok(client, "whoami")
    assert [m["body"] for m in got["messages"]] == ["plain mail"]
    assert observer.events == []


@pytest.mark.e2e
async def test_a_pushed_stdio_session_gets_a_channel_event_soon_after_tt_send(
    tt_env: dict[str, str], town: Town
) -> None:
    observer = ChannelObserver()
    with anyio.fail_after(60):
        async with stdio(tt_env, "worker", args=["--push"], extensions=[observer],
                         legacy=True) as client:
            await ok(client, "whoami")  # the session is open: the mailbox is worker's
            await tt(tt_env, "send", "worker", "are you there?", "--kind", "query", "--priority", "high")
            query = await observer.next()
            await tt(tt_env, "assign", "worker", "fix the parser")
            task = await observer.next()
            whoami = await ok(client, "whoami")
            held = await town.in_flight("worker")
    [sent] = [m for m in held if m.kind == "query"]
    assert query == ChannelEvent(content="are you there?", meta={
        "from": "conductor", "kind": "query", "priority": "high", "message_id": sent.id,
        "delivery_count": "1",
    })
    [made] = (await town.list_tasks()).tasks
    assert task.content == "fix the parser"
    assert task.meta == {"from": "conductor", "kind": "task", "priority": "normal",
                         "message_id": task.meta["message_id"], "delivery_count": "1",
                         "task": f"#{made.number}", "task_id": made.id}
    # pushed = delivered: the task runs, and both messages are in flight for the session
    assert (await town.get_task(made.id)).state == "running"
    assert whoami["current_task"]["id"] == made.id
    assert whoami["in_flight"] == len(held) == 2
    # the session ended without acting on them: both are back in the inbox
    assert {m.id for m in await town.inbox("worker")} == {m.id for m in held}


@pytest.mark.e2e
async def test_a_message_pushed_to_a_session_killed_before_acting_comes_back_on_the_next_receive(
    tt_env: dict[str, str], town: Town
) -> None:
    observer = ChannelObserver()
    with anyio.fail_after(60):
        async with stdio(tt_env, "worker", args=["--push"], extensions=[observer],
                         legacy=True) as first:
            await ok(first, "whoami")
            sent = await town.send("conductor", "worker", "do not lose me")
            event = await observer.next()
            os.kill(server_pid(tt_env, "worker"), signal.SIGKILL)
            with pytest.raises(MCPError, match="Connection closed"):
                await first.call_tool("whoami", {})
        assert event.meta["message_id"] == sent.message.id
        assert (await town.inbox_counts("worker")).in_flight == 1
        async with stdio(tt_env, "worker") as second:
            again = await ok(second, "receive", timeout_s=10)
    assert [(m["id"], m["body"], m["delivery_count"]) for m in again["messages"]] == [
        (sent.message.id, "do not lose me", 2)
    ]


async def test_the_next_receive_returns_again_what_was_pushed_and_not_acted_on(
    town: Town,
) -> None:
    observer = ChannelObserver()
    with anyio.fail_after(30):
        async with await pushed_session(town, "worker", observer) as client:
            await ok(client, "whoami")
            handled = await town.send("conductor", "worker", "one")
            ignored = await town.send("conductor", "worker", "two")
            await observer.next()
            await observer.next()
            await ok(client, "ack", message_ids=[handled.message.id])
            got = await ok(client, "receive", timeout_s=0)
            later = await town.send("conductor", "worker", "three")
            event = await observer.next()  # pushing resumed after the receive
    assert [(m["id"], m["delivery_count"]) for m in got["messages"]] == [(ignored.message.id, 2)]
    assert event.meta["message_id"] == later.message.id
    # the session ended without acting on "three": it is back in the inbox
    [back] = await town.inbox("worker")
    assert (back.id, back.delivery_count) == (later.message.id, 1)


async def test_ack_and_a_reply_acknowledge_pushed_messages_and_other_calls_do_not(
    town: Town,
) -> None:
    await town.register_agent("boss")
    observer = ChannelObserver()
    with anyio.fail_after(30):
        async with await pushed_session(town, "worker", observer) as client:
            await ok(client, "whoami")
            info = await town.send("conductor", "worker", "fyi")
            query = await town.send("boss", "worker", "which branch?", kind="query")
            other = await town.send("conductor", "worker", "left alone")
            for _ in range(3):
                await observer.next()
            await ok(client, "list_agents")  # not an act on any of them
            assert (await town.inbox_counts("worker")).in_flight == 3
            assert (await ok(client, "ack", message_ids=[info.message.id]))["acknowledged"] == 1
            await ok(client, "send_message", to="boss", body="main", reply_to=query.message.id)
            assert [m.id for m in await town.in_flight("worker")] == [other.message.id]
    [back] = await town.inbox("worker")
    assert back.id == other.message.id


async def test_a_long_body_is_pushed_folded_and_the_next_receive_returns_it_whole(
    town: Town,
) -> None:
    body = "x" * (FOLD_CHARS + 500)
    observer = ChannelObserver()
    with anyio.fail_after(30):
        async with await pushed_session(town, "worker", observer) as client:
            await ok(client, "whoami")
            sent = await town.send("conductor", "worker", body)
            event = await observer.next()
            got = await ok(client, "receive", timeout_s=0)
    assert event.meta["folded"] == "true"
    assert event.content.startswith("x" * FOLD_CHARS)
    assert "500 more characters folded" in event.content
    assert [(m["id"], m["body"]) for m in got["messages"]] == [(sent.message.id, body)]


async def test_a_blocked_receive_gets_new_mail_itself_and_nothing_is_pushed_meanwhile(
    town: Town,
) -> None:
    observer = ChannelObserver()
    with anyio.fail_after(30):
        async with await pushed_session(town, "worker", observer) as client:
            await ok(client, "whoami")
            async with anyio.create_task_group() as tg:
                got: dict[str, object] = {}

                async def wait() -> None:
                    got.update(await ok(client, "receive", timeout_s=20))

                tg.start_soon(wait)
                with anyio.fail_after(30):  # until the receive waits for mail in Redis
                    while not await town.redis.exists(town.keys.prefix + "receiver:"
                                                      + (await town.get_agent("worker")).id):
                        await anyio.sleep(0.01)
                sent = await town.send("conductor", "worker", "for the receive")
    assert [m["id"] for m in got["messages"]] == [sent.message.id]  # type: ignore[index]
    assert observer.events == []


@pytest.mark.e2e
async def test_tt_mcp_config_push_writes_the_flag_and_the_configured_server_pushes(
    tt_env: dict[str, str], town: Town
) -> None:
    shown = json.loads(await tt(tt_env, "mcp", "config", "--agent", "worker", "--push", "--json"))
    entry = json.loads(shown["config"])["mcpServers"]["tinytown"]
    assert entry["args"][-3:] == ["--push", "--agent", "worker"]
    codex = json.loads(await tt(tt_env, "mcp", "config", "--client", "codex", "--agent", "worker",
                                "--push", "--json"))
    assert "--push" in tomllib.loads(codex["config"])["mcp_servers"]["tinytown"]["args"]
    gemini = json.loads(await tt(tt_env, "mcp", "config", "--client", "gemini", "--agent", "worker",
                                 "--push", "--json"))
    assert json.loads(gemini["config"])["mcpServers"]["tinytown"]["args"][-3:] == [
        "--push", "--agent", "${TINYTOWN_AGENT:-worker}"]
    plain = json.loads(await tt(tt_env, "mcp", "config", "--agent", "worker", "--json"))
    assert "--push" not in json.loads(plain["config"])["mcpServers"]["tinytown"]["args"]
    observer = ChannelObserver()
    with anyio.fail_after(60):
        async with stdio(tt_env, None, command=[entry["command"], *entry["args"]],
                         extensions=[observer], legacy=True) as client:
            await ok(client, "whoami")
            sent = await town.send("conductor", "worker", "configured")
            event = await observer.next()
    assert (event.content, event.meta["message_id"]) == ("configured", sent.message.id)


@asynccontextmanager
async def pushed_http(url: str, token: str, observer: ChannelObserver) -> AsyncIterator[Client]:
    """An MCP session over streamable HTTP with push on (``?push=1``), observing channel events."""
    async with http_client(token) as http, Client(
        streamable_http_client(with_push(url), http_client=http), extensions=[observer]
    ) as client:
        yield client


@pytest.mark.e2e
@pytest.mark.http
async def test_a_pushed_http_session_gets_a_channel_event_and_one_without_push_gets_none(
    tt_env: dict[str, str], town: Town
) -> None:
    tokens = {name: new_token(tt_env, name) for name in ("worker", "plain")}
    pushed, plain = ChannelObserver(), ChannelObserver()
    with serving(tt_env) as served, anyio.fail_after(60):
        async with pushed_http(served.url, tokens["worker"], pushed) as client, http_client(
            tokens["plain"]
        ) as http, Client(streamable_http_client(served.url, http_client=http), extensions=[plain]) as other:
            await ok(client, "whoami")
            await ok(other, "whoami")
            await tt(tt_env, "send", "worker", "over http", "--kind", "query")
            await tt(tt_env, "send", "plain", "not pushed")
            event = await pushed.next()
            got = await ok(other, "receive", timeout_s=30)
            held = await town.in_flight("worker")
    assert [(m.id, m.body) for m in held] == [(event.meta["message_id"], "over http")]
    assert event == ChannelEvent(content="over http", meta={
        "from": "conductor", "kind": "query", "priority": "normal", "message_id": held[0].id,
        "delivery_count": "1"})
    assert [m["body"] for m in got["messages"]] == ["not pushed"]
    assert plain.events == []


@pytest.mark.e2e
@pytest.mark.http
async def test_a_message_pushed_over_http_comes_back_after_tt_serve_is_killed(
    tt_env: dict[str, str], town: Town
) -> None:
    token = new_token(tt_env, "worker")
    observer = ChannelObserver()
    with anyio.fail_after(60):
        with serving(tt_env) as served:
            try:
                async with pushed_http(served.url, token, observer) as client:
                    await ok(client, "whoami")
                    sent = await town.send("conductor", "worker", "keep me")
                    event = await observer.next()
                    served.proc.send_signal(signal.SIGKILL)
                    served.proc.wait(10)
            except* httpx2.HTTPError:
                pass  # the client's goodbye finds no server
        assert event.meta["message_id"] == sent.message.id
        assert (await town.inbox_counts("worker")).in_flight == 1
        with serving(tt_env) as again:
            async with http_client(token) as http, Client(
                streamable_http_client(again.url, http_client=http)
            ) as second:
                got = await ok(second, "receive", timeout_s=10)
    assert [(m["id"], m["delivery_count"]) for m in got["messages"]] == [(sent.message.id, 2)]
