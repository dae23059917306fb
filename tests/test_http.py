"""``tt serve``: the town's MCP server over streamable HTTP, with per-agent bearer tokens.

Real parts only: ``tt serve`` and ``tt send`` as subprocesses, the official Python SDK's
streamable HTTP client (and ``httpx`` for the raw HTTP answers), client processes killed
with SIGKILL.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import tomllib
from typing import Any

import anyio
import httpx2
import pytest
from conftest import make_config
from http_support import connect_http, http_client, new_token, probe, serving, start_serve, stop_serve, tt
from mcp.shared.exceptions import MCPError
from mcp_support import ok
from redis.asyncio import Redis
from runner_support import open_spawn_town
from test_mcp_interop import INTEROP, typescript_sdk

from tinytown.mcp_config import http_client_config
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis, pytest.mark.e2e, pytest.mark.http]


@pytest.fixture(scope="module")
def node() -> str:
    """``node`` with the official TypeScript SDK installed (tests/interop, pinned by its lock file)."""
    return typescript_sdk()


async def wait_until(check: Any, what: str, deadline_s: float = 30) -> None:
    """Poll ``check()`` (async) until true, with a generous deadline (no event to wait on)."""
    with anyio.fail_after(deadline_s):
        while not await check():
            await anyio.sleep(0.05)


async def test_several_agents_on_one_server_each_get_the_identity_of_their_token(
    tt_env: dict[str, str], real_redis: Redis, town_name: str
) -> None:
    tokens = {name: new_token(tt_env, name) for name in ("alice", "bob", "carol")}
    with serving(tt_env) as served:
        async with connect_http(served.url, tokens["alice"]) as alice, \
                connect_http(served.url, tokens["bob"]) as bob, \
                connect_http(served.url, tokens["carol"]) as carol:
            for name, client in (("alice", alice), ("bob", bob), ("carol", carol)):
                assert (await ok(client, "whoami"))["agent"]["name"] == name
            assert len((await alice.list_tools()).tools) == 15
            assert {p.name for p in (await bob.list_prompts()).prompts} == {"agent_guide", "conductor_guide"}
            await ok(alice, "send_message", to="bob", body="for bob")
            await ok(carol, "send_message", to="bob", body="also for bob")
            got = await ok(bob, "receive", timeout_s=10)
            assert sorted((m["from"], m["body"]) for m in got["messages"]) == [
                ("alice", "for bob"), ("carol", "also for bob")]
            inbox = await bob.read_resource("tinytown://inbox")
            assert json.loads(inbox.contents[0].text) == []  # type: ignore[union-attr]
        assert stop_serve(served) == 0
    town = Town(real_redis, make_config(town_name))
    assert {a.name for a in await town.list_agents()} >= {"alice", "bob", "carol"}


async def test_a_receive_waiting_over_http_is_woken_by_tt_send_from_another_process(
    tt_env: dict[str, str]
) -> None:
    token = new_token(tt_env, "alice")
    with serving(tt_env) as served:
        async with connect_http(served.url, token) as alice:
            progressed = anyio.Event()
            notes: list[float] = []

            async def progress(done: float, total: float | None, message: str | None) -> None:
                notes.append(done)
                progressed.set()

            result: dict[str, Any] = {}

            async def wait() -> None:
                got = await alice.call_tool("receive", {"timeout_s": 120}, progress_callback=progress)
                result.update(got.structured_content or {})

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                with anyio.fail_after(30):
                    await progressed.wait()  # the keep-alive of a waiting receive (--keepalive 1)
                sent = await anyio.to_thread.run_sync(lambda: tt(tt_env, "send", "alice", "wake up"))
                assert sent.returncode == 0, sent.stderr
                started = time.monotonic()
            assert time.monotonic() - started < 30
            assert [m["body"] for m in result["messages"]] == ["wake up"]
            assert result["timed_out"] is False and notes


async def test_a_missing_wrong_or_revoked_token_gets_the_same_401_and_health_says_only_ok(
    tt_env: dict[str, str], town_name: str
) -> None:
    token = new_token(tt_env, "alice")
    with serving(tt_env) as served:
        async with http_client(None) as http:
            health = await http.get(served.base + "/healthz")
            assert health.status_code == 200 and health.json() == {"ok": True, "town": town_name}
            initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"}}}
            headers = {"Accept": "application/json, text/event-stream"}

            async def answer(auth: str | None) -> tuple[int, str, str | None]:
                sent = {**headers, **({"Authorization": auth} if auth else {})}
                reply = await http.post(served.url, json=initialize, headers=sent)
                return reply.status_code, reply.text, reply.headers.get("www-authenticate")

            good = await answer(f"Bearer {token}")
            assert good[0] == 200
            revoked = tt(tt_env, "token", "revoke", "alice")
            assert revoked.returncode == 0, revoked.stderr
            refusals = [
                await answer(None),
                await answer("Bearer ttk_" + "x" * 43),
                await answer(f"Bearer {token}"),  # revoked
                await answer(f"Basic {token}"),
                await answer(token),
            ]
            assert {r[0] for r in refusals} == {401}
            assert len(set(refusals)) == 1, refusals  # nothing tells unknown from revoked
            assert "alice" not in refusals[0][1] and town_name not in refusals[0][1]
        assert stop_serve(served) == 0


async def test_no_argument_header_or_query_parameter_changes_who_the_caller_is(
    tt_env: dict[str, str]
) -> None:
    alice_token, bob_token = new_token(tt_env, "alice"), new_token(tt_env, "bob")
    with serving(tt_env) as served:
        spoof = {"X-Tinytown-Agent": "bob", "Mcp-Agent": "bob", "X-Agent": "bob"}
        async with connect_http(served.url + "?agent=bob&as=bob", alice_token, spoof) as alice, \
                connect_http(served.url, bob_token) as bob:
            assert (await ok(alice, "whoami"))["agent"]["name"] == "alice"
            refused = await alice.call_tool("whoami", {"agent": "bob"})
            assert refused.is_error
            await ok(alice, "send_message", to="bob", body="hello", kind="info")
            [message] = (await ok(bob, "receive", timeout_s=5))["messages"]
            assert message["from"] == "alice"
        # a session opened with bob's token, presented with alice's: 404, as an unknown id
        bob_session = await _open_session(served.url, bob_token)
        async with http_client(alice_token) as http:
            call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                    "params": {"name": "whoami", "arguments": {}}}
            reply = await http.post(served.url, json=call, headers={
                "Mcp-Session-Id": bob_session, "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2025-11-25"})
            assert reply.status_code == 404 and "bob" not in reply.text
        assert stop_serve(served) == 0


async def _open_session(url: str, token: str) -> str:
    """Open a session with a raw initialize and return its id (to present it with another token)."""
    async with http_client(token) as http:
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        accept = {"Accept": "application/json, text/event-stream"}
        reply = await http.post(url, json=initialize, headers=accept)
        assert reply.status_code == 200, reply.text
        session_id: str = reply.headers["mcp-session-id"]
        return session_id


async def test_a_killed_clients_messages_come_back_whether_it_was_waiting_or_had_read_them(
    tt_env: dict[str, str], real_redis: Redis, town_name: str
) -> None:
    token = new_token(tt_env, "alice")
    town = Town(real_redis, make_config(town_name))
    with serving(tt_env) as served:
        # 1. killed while its receive waits: a message sent afterwards must not be swallowed
        waiting = probe(tt_env, served.url, token, "120")
        assert waiting.stdout is not None
        assert await anyio.to_thread.run_sync(waiting.stdout.readline) == "WAITING\n"
        waiting.send_signal(signal.SIGKILL)
        waiting.wait(10)
        assert tt(tt_env, "send", "alice", "sent after the kill").returncode == 0

        async def queued_not_in_flight() -> bool:
            counts = await town.inbox_counts("alice")
            return counts.pending == 1 and counts.in_flight == 0

        await wait_until(queued_not_in_flight, "the message stays queued")

        # 2. killed after its receive returned, before acknowledging: the next session gets it
        reader = probe(tt_env, served.url, token, "5")
        assert reader.stdout is not None
        line = await anyio.to_thread.run_sync(reader.stdout.readline)
        assert line.startswith("GOT "), line
        [seen] = json.loads(line[4:])["messages"]
        assert seen["body"] == "sent after the kill"
        reader.send_signal(signal.SIGKILL)
        reader.wait(10)
        async with connect_http(served.url, token) as again:
            [back] = (await ok(again, "receive", timeout_s=10))["messages"]
            assert back["id"] == seen["id"]
        assert stop_serve(served) == 0


async def test_tt_serve_restarted_while_an_agent_waits_loses_nothing(
    tt_env: dict[str, str], real_redis: Redis, town_name: str
) -> None:
    token = new_token(tt_env, "alice")
    town = Town(real_redis, make_config(town_name))
    served = start_serve(tt_env)
    try:
        port = served.base.rsplit(":", 1)[1]
        errors: list[BaseException] = []
        async with connect_http(served.url, token) as alice:
            progressed = anyio.Event()

            async def progress(done: float, total: float | None, message: str | None) -> None:
                progressed.set()

            async def wait() -> None:
                try:
                    await alice.call_tool("receive", {"timeout_s": 120}, progress_callback=progress)
                except (MCPError, httpx2.HTTPError) as error:
                    errors.append(error)

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                with anyio.fail_after(30):
                    await progressed.wait()
                stopped = time.monotonic()
                assert await anyio.to_thread.run_sync(lambda: stop_serve(served)) == 0
                assert time.monotonic() - stopped < 15  # the waiting receive did not hold it up
        assert errors, "the waiting receive ended when the server stopped"
        assert tt(tt_env, "send", "alice", "while the server was down").returncode == 0
        counts = await town.inbox_counts("alice")
        assert (counts.pending, counts.in_flight) == (1, 0)
        served = start_serve(tt_env, "--port", port)
        assert served.base.endswith(":" + port)
        async with connect_http(served.url, token) as again:
            [message] = (await ok(again, "receive", timeout_s=10))["messages"]
            assert message["body"] == "while the server was down"
        assert stop_serve(served) == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(10)


def test_tt_serve_refuses_a_public_bind_without_tls_or_insecure_http(tt_env: dict[str, str]) -> None:
    refused = tt(tt_env, "serve", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2
    assert "--tls-cert" in refused.stderr and "--insecure-http" in refused.stderr


def test_tt_serve_on_a_port_in_use_says_so_in_one_line(tt_env: dict[str, str]) -> None:
    """Like tt dashboard; it was uvicorn's "ERROR: [Errno 98] …" and exit 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = tt(tt_env, "serve", "--port", str(port))
    assert (refused.returncode, refused.stdout) == (1, ""), refused.stderr
    assert refused.stderr == f"tt: invalid: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_tt_token_list_never_shows_a_token(tt_env: dict[str, str]) -> None:
    token = new_token(tt_env, "alice")
    new_token(tt_env, "alice")
    listed = tt(tt_env, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["tokens"]
    assert [r["agent"] for r in rows] == ["alice", "alice"]
    assert token not in listed.stdout and token[4:20] not in listed.stdout
    assert tt(tt_env, "token", "revoke", "alice").returncode == 0
    assert json.loads(tt(tt_env, "token", "list", "--json").stdout)["tokens"] == []
    again = tt(tt_env, "token", "revoke", "alice")
    assert again.returncode == 1 and again.stderr.startswith("tt: not_found:")


def test_tt_token_add_prints_the_token_and_a_note_that_does_not_read_as_an_error(
    tt_env: dict[str, str],
) -> None:
    made = tt(tt_env, "token", "add", "alice")
    assert made.returncode == 0 and made.stdout.startswith("ttk_"), made.stderr
    assert made.stderr == ("# the token of alice; it is not shown again (`tt token revoke alice` "
                           "withdraws it)\n")


def test_tt_token_add_refuses_a_name_that_is_not_an_agent(tt_env: dict[str, str]) -> None:
    for name in ("all", "Bad Name!", ""):
        refused = tt(tt_env, "token", "add", name)
        assert refused.returncode != 0 and "invalid" in refused.stderr, (name, refused.stderr)


async def test_tt_mcp_config_http_prints_a_config_whose_url_and_token_reach_the_agent(
    tt_env: dict[str, str]
) -> None:
    with serving(tt_env) as served:
        made = tt(tt_env, "mcp", "config", "--client", "claude", "--agent", "dana", "--http", served.base,
                  "--json")
        assert made.returncode == 0, made.stderr
        printed = json.loads(made.stdout)
        entry = json.loads(printed["config"])["mcpServers"]["tinytown"]
        assert entry["type"] == "http" and entry["url"] == served.url
        token = entry["headers"]["Authorization"].removeprefix("Bearer ")
        assert token == printed["token"]
        async with connect_http(entry["url"], token) as dana:
            assert (await ok(dana, "whoami"))["agent"]["name"] == "dana"
        given = tt(tt_env, "mcp", "config", "--client", "cursor", "--agent", "dana", "--http", served.url,
                   "--token", token)
        assert given.returncode == 0, given.stderr
        pasted = json.loads(given.stdout)["mcpServers"]["tinytown"]
        assert pasted["headers"]["Authorization"] == f"Bearer {token}"
        assert stop_serve(served) == 0


def test_each_client_gets_its_own_http_config_form() -> None:
    url, token = "https://town.example:8765", "ttk_abc"
    header = {"Authorization": "Bearer ttk_abc"}
    claude = json.loads(http_client_config(url, token, "claude"))["mcpServers"]["tinytown"]
    assert (claude["type"], claude["url"], claude["headers"]) == ("http", url + "/mcp", header)
    gemini = json.loads(http_client_config(url, token, "gemini"))["mcpServers"]["tinytown"]
    assert (gemini["httpUrl"], gemini["headers"], gemini["trust"]) == (url + "/mcp", header, True)
    cursor = json.loads(http_client_config(url + "/mcp", token, "cursor"))["mcpServers"]["tinytown"]
    assert cursor == {"url": url + "/mcp", "headers": header}
    codex = tomllib.loads(http_client_config(url, token, "codex"))["mcp_servers"]["tinytown"]
    assert (codex["url"], codex["http_headers"], codex["tool_timeout_sec"]) == (url + "/mcp", header, 360)
    with pytest.raises(ValueError, match="desktop"):
        http_client_config(url, token, "desktop")
    with pytest.raises(ValueError, match="URL"):
        http_client_config("town.example:8765", token, "claude")


async def test_the_typescript_sdk_client_waits_in_receive_over_http_and_a_wrong_token_is_refused(
    node: str, tt_env: dict[str, str]
) -> None:
    token = new_token(tt_env, "tsagent")
    with serving(tt_env) as served:
        proc = subprocess.Popen([node, str(INTEROP / "http_client.mjs"), served.url, token], env=tt_env,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert await anyio.to_thread.run_sync(proc.stdout.readline) == "WAITING\n"
            assert tt(tt_env, "send", "tsagent", "hello TypeScript").returncode == 0
            out, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0
        seen = json.loads(out)
        assert seen["server"]["name"] == "tinytown" and len(seen["tools"]) == 15
        assert seen["whoami"]["agent"]["name"] == "tsagent"
        assert [m["body"] for m in seen["received"]["messages"]] == ["hello TypeScript"]
        assert seen["progress"] >= 1
        assert seen["refused"]["code"] == 401, seen["refused"]
        assert stop_serve(served) == 0


async def test_an_idle_event_stream_gets_a_keepalive_ping_every_keepalive_interval(
    tt_env: dict[str, str]
) -> None:
    token = new_token(tt_env, "alice")
    with serving(tt_env) as served:  # --keepalive 1
        session_id = await _open_session(served.url, token)
        pings: list[float] = []
        async with http_client(token) as http, http.stream("GET", served.url, headers={
            "Mcp-Session-Id": session_id, "Accept": "text/event-stream", "MCP-Protocol-Version": "2025-11-25",
        }) as stream:
            assert stream.status_code == 200
            with anyio.fail_after(30):
                async for line in stream.aiter_lines():
                    if line.startswith(": ping"):
                        pings.append(time.monotonic())
                        if len(pings) == 3:
                            break
        assert pings[-1] - pings[0] < 10  # about one a second, not Claude Code's 300 s limit
        assert stop_serve(served) == 0


async def test_a_session_under_the_name_of_an_agent_whose_runner_lives_is_refused_with_409(
    tt_env: dict[str, str]
) -> None:
    async with open_spawn_town(tt_env) as town:
        await town.spawn_agent("rex", cli="echo")
        before = await town.get_agent("rex")
        token = new_token(tt_env, "rex")
        with serving(tt_env) as served:
            async with http_client(token) as http:
                initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}}
                reply = await http.post(served.url, json=initialize,
                                        headers={"Accept": "application/json, text/event-stream"})
            assert reply.status_code == 409
            assert reply.json()["error"]["message"].startswith("conflict: agent rex is run by its runner")
            assert stop_serve(served) == 0
        rex = await town.get_agent("rex")
        assert rex.session == before.session and town.runner_pid(rex)
