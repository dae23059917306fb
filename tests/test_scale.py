"""Issue 9, cost that grows with the total: the per-agent task indexes (reclaim sees every
unfinished task, however old), paged listings, status in a constant number of round trips,
compact message records, and ``tt backlog add --file``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import UnixDomainSocketConnection

from tinytown.bulk import SLICE, TaskSpec
from tinytown.errors import Invalid
from tinytown.models import AgentState, TaskState
from tinytown.schema import SCHEMA, upgrade
from tinytown.tasks import MAX_PAGE
from tinytown.town import Town

pytestmark = pytest.mark.anyio


async def _finished_tasks(town: Town, agent: str, count: int) -> None:
    for i in range(count):
        task = await town.assign(f"done {i}", agent=agent)
        await town.complete_task(task.id, "ok", by="conductor")


async def test_an_unfinished_task_older_than_the_newest_500_is_reclaimed(town: Town) -> None:
    await town.register_agent("bob")
    old = await town.assign("the old one", agent="bob")
    await _finished_tasks(town, "bob", MAX_PAGE + 5)
    await town.update_agent("bob", state=AgentState.STOPPED)

    running = await town.list_tasks(agent="bob", state="assigned")
    moved = await town.reclaim_tasks("bob")

    assert [t.id for t in running.tasks] == [old.id]
    assert [(t.id, t.state) for t in moved] == [(old.id, TaskState.PENDING)]
    assert (await town.get_task(old.id)).state == TaskState.PENDING
    assert await town.open_task_ids((await town.get_agent("bob")).id) == []


async def test_listing_an_agents_tasks_by_state_reads_its_index_for_that_state(town: Town) -> None:
    await town.register_agent("bob")
    await town.register_agent("carol")
    kept = await town.assign("bob's", agent="bob")
    await _finished_tasks(town, "bob", 3)
    await town.cancel_task(kept.id, by="conductor")
    given = await town.assign("to carol", agent="bob")
    await town.reclaim_tasks("bob", to="carol")

    bob_done = await town.list_tasks(agent="bob", state="completed", limit=2)
    rest = await town.list_tasks(agent="bob", state="completed", cursor=bob_done.next_cursor)
    carol_open = await town.list_tasks(agent="carol", state="assigned")

    assert len(bob_done.tasks) == 2 and len(rest.tasks) == 1 and rest.next_cursor is None
    assert [t.id for t in (await town.list_tasks(agent="bob", state="cancelled")).tasks] == [kept.id]
    assert (await town.list_tasks(agent="bob", state="assigned")).tasks == []
    assert [t.id for t in carol_open.tasks] == [given.id]


async def test_an_older_towns_indexes_are_filled_once_when_it_is_opened(town: Town) -> None:
    await town.register_agent("bob")
    open_task = await town.assign("open", agent="bob")
    done = await town.assign("done", agent="bob")
    await town.complete_task(done.id, "ok", by="bob")
    bob = await town.get_agent("bob")
    await town.redis.delete(town.keys.schema, town.keys.open_tasks(bob.id),
                            town.keys.ended_tasks(bob.id, TaskState.COMPLETED))

    first = await upgrade(town)
    second = await upgrade(town)

    assert (first, second) == (True, False)
    assert await town.redis.get(town.keys.schema) == str(SCHEMA)
    assert await town.open_task_ids(bob.id) == [open_task.id]
    assert [t.id for t in (await town.list_tasks(agent="bob", state="completed")).tasks] == [done.id]


# ----------------------------------------------------------------- agents, a page at a time


class CountingConnection(UnixDomainSocketConnection):
    """A real connection that counts its round trips: one per request written (a pipeline
    is written at once and its replies read back, so it counts once)."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


async def _round_trips(call: Callable[[], Awaitable[object]]) -> int:
    before = CountingConnection.sent
    await call()
    return CountingConnection.sent - before


@pytest.mark.real_redis
async def test_status_and_list_agents_take_the_same_round_trips_for_10_and_200_agents(
    redis_socket: str, town_name: str, real_redis: Redis
) -> None:
    pool = ConnectionPool(connection_class=CountingConnection, path=redis_socket,
                          decode_responses=True)
    client = Redis(connection_pool=pool)
    town = Town(client, make_config(town_name, max_agents=300))
    try:
        await town.ensure_conductor()
        for i in range(9):
            await town.register_agent(f"a{i}")
        await town.status()  # the clock is read once, then estimated
        small = (await _round_trips(town.status), await _round_trips(town.agents_page))
        for i in range(9, 199):
            await town.register_agent(f"a{i}")
        # the clock again: re-read after CLOCK_RESYNC_S, which 190 registrations on a loaded
        # machine may have taken, and that TIME call would count here
        await town.status()
        large = (await _round_trips(lambda: town.status(limit=500)),
                 await _round_trips(lambda: town.agents_page(limit=500)))
        shown = await town.status(limit=500)
    finally:
        await client.aclose()

    assert len(shown.agents) == shown.agent_count == 200
    assert small == large
    assert large[0] <= 3 and large[1] <= 2


@pytest.mark.real_redis
async def test_bulk_add_takes_one_round_trip_per_slice_of_tasks(redis_socket: str, town_name: str,
                                                               real_redis: Redis) -> None:
    pool = ConnectionPool(connection_class=CountingConnection, path=redis_socket,
                          decode_responses=True)
    client = Redis(connection_pool=pool)
    town = Town(client, make_config(town_name))
    try:
        await town.ensure_conductor()
        one = await _round_trips(lambda: town.add_tasks([TaskSpec(description="one")]))
        three = await _round_trips(
            lambda: town.add_tasks([TaskSpec(description=f"t{i}") for i in range(SLICE * 2 + 10)]))
        listed = await town.list_tasks(state="pending", limit=MAX_PAGE, oldest_first=True)
    finally:
        await client.aclose()

    assert three - one == 2  # two more slices, one script call each
    assert [t.description for t in listed.tasks[:3]] == ["one", "t0", "t1"]
    assert [t.number for t in listed.tasks[:3]] == [1, 2, 3]


async def test_list_agents_pages_cover_every_agent_once(town_name: str, real_redis: Redis) -> None:
    town = Town(real_redis, make_config(town_name, max_agents=300))
    await town.ensure_conductor()
    names = [f"p{i}" for i in range(120)]
    for i, name in enumerate(names):
        await town.register_agent(name, state=AgentState.PAUSED if i % 3 == 0 else AgentState.IDLE)

    async def walk(state: str | None, limit: int, pages: Callable[..., Awaitable[Any]]) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page = await pages(state, limit, cursor)
            seen += page
            if page.next_cursor is None:
                return seen
            cursor = page.next_cursor

    async def agents(state: str | None, limit: int, cursor: str | None) -> Any:
        page = await town.agents_page(state, limit=limit, cursor=cursor)
        return _Page([a.name for a in page.agents], page.next_cursor)

    async def statuses(_state: str | None, limit: int, cursor: str | None) -> Any:
        page = await town.status(limit=limit, cursor=cursor)
        return _Page([v.agent.name for v in page.agents], page.next_cursor)

    assert await walk(None, 17, agents) == ["conductor", *names]
    assert await walk(None, 121, agents) == ["conductor", *names]
    assert await walk("paused", 7, agents) == names[::3]
    assert await walk(None, 50, statuses) == ["conductor", *names]
    with pytest.raises(Invalid):
        await town.agents_page(limit=0)
    with pytest.raises(Invalid):
        await town.status(cursor="x")


class _Page(list[str]):
    def __init__(self, names: list[str], next_cursor: str | None) -> None:
        super().__init__(names)
        self.next_cursor = next_cursor


# ----------------------------------------------------------------- compact records

PENDING_MESSAGE_GOAL = 450


async def test_a_pending_100_byte_message_costs_at_most_450_bytes(real_town: Town) -> None:
    town = real_town
    await town.register_agent("bob")
    ids = [(await town.send("conductor", "bob", "x" * 100)).copies[0] for _ in range(200)]
    bob = await town.get_agent("bob")

    records = [await town.redis.memory_usage(town.keys.message(mid)) or 0 for mid in ids]
    inbox = await town.redis.memory_usage(town.keys.inbox(bob.id, "normal")) or 0
    per_message = (sum(records) + inbox) / len(ids)

    assert await town.redis.type(town.keys.message(ids[0])) == "string"
    assert per_message <= PENDING_MESSAGE_GOAL, per_message


async def test_messages_stored_as_hashes_by_an_older_town_are_still_delivered(real_town: Town) -> None:
    town = real_town
    await town.register_agent("bob")
    task = await town.assign("an old task", agent="bob")
    bob = await town.get_agent("bob")
    [old_id] = await town.redis.lrange(town.keys.inbox(bob.id, "normal"), 0, -1)
    record = await town.channel.load([old_id])
    await town.redis.delete(town.keys.message(old_id))
    await town.redis.hset(town.keys.message(old_id), mapping={
        **record[0].to_redis(), "attempt": str(task.attempt)})

    peeked = await town.inbox("bob")
    got = await town.receive("bob", timeout_s=0)
    reply = await town.send("bob", "conductor", "on it", reply_to=old_id)
    thread = await town.conversation.thread(task.id)

    assert [m.id for m in peeked] == [old_id]
    assert [(m.id, m.task_id, m.delivery_count) for m in got.messages] == [(old_id, task.id, 1)]
    assert (await town.get_task(task.id)).state == TaskState.RUNNING
    assert [m.id for m in thread.messages] == [old_id, reply.copies[0]]
    assert await town.redis.type(town.keys.message(old_id)) == "string"


# ----------------------------------------------------------------- tt backlog add --file


def _tt(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinytown.cli.main", *args], env=env, input=stdin,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.real_redis
def test_backlog_add_file_adds_plain_and_json_lines_in_order(tt_env: dict[str, str], tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.txt"
    tasks.write_text(
        "write the parser\n"
        "\n"
        '{"description": "test the parser", "tags": ["qa", "parser"], "priority": "high"}\n'
        '{"description": "ship it"}\n',
        encoding="utf-8",
    )

    added = _tt("backlog", "add", "--file", str(tasks), "--json", env=tt_env)
    listed = _tt("backlog", "list", "--json", env=tt_env)

    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    backlog = json.loads(listed.stdout)["tasks"]
    assert result["added"] == 3 and [t["number"] for t in result["tasks"]] == [1, 2, 3]
    assert [(t["description"], t["tags"], t["priority"]) for t in backlog] == [
        ("write the parser", [], "normal"), ("test the parser", ["qa", "parser"], "high"),
        ("ship it", [], "normal"),
    ]
    assert [t["id"] for t in backlog] == [t["id"] for t in result["tasks"]]


@pytest.mark.real_redis
@pytest.mark.parametrize(("bad", "said"), [
    ('{"description": "x", "priority": "soon"}', "priority must be one of"),
    ('{"description": "unclosed"', "not a JSON object"),
    ('{"tags": ["a"]}', '"description" (a string) is missing'),
    ('{"description": "x", "owner": "bob"}', "unknown field(s) owner"),
])
def test_backlog_add_file_names_the_bad_line_and_adds_nothing(
    tt_env: dict[str, str], tmp_path: Path, bad: str, said: str
) -> None:
    tasks = tmp_path / "tasks.txt"
    tasks.write_text(f"fine one\nfine two\n\n{bad}\nfine three\n", encoding="utf-8")

    done = _tt("backlog", "add", "--file", str(tasks), env=tt_env)
    listed = json.loads(_tt("backlog", "list", "--json", env=tt_env).stdout)

    assert done.returncode == 1
    assert "line 4: " in done.stderr and said in done.stderr and "nothing was added" in done.stderr
    assert listed["tasks"] == []


@pytest.mark.real_redis
def test_backlog_add_file_from_stdin_writes_hundreds_per_round_trip_with_progress(
    tt_env: dict[str, str]
) -> None:
    lines = "".join(f"task {i}\n" for i in range(1, SLICE * 2 + 11))

    done = _tt("backlog", "add", "--file", "-", env=tt_env, stdin=lines)
    status = json.loads(_tt("status", "--json", env=tt_env).stdout)

    assert done.returncode == 0, done.stderr
    assert f"added {SLICE * 2 + 10} tasks to the backlog (#1-#{SLICE * 2 + 10})" in done.stdout
    assert done.stderr.splitlines() == [
        f"added {SLICE}/{SLICE * 2 + 10} tasks", f"added {SLICE * 2}/{SLICE * 2 + 10} tasks",
        f"added {SLICE * 2 + 10}/{SLICE * 2 + 10} tasks",
    ]
    assert status["tasks"]["pending"] == SLICE * 2 + 10
