"""Retention (issue 9): finished tasks and acknowledged messages expire after their window,
with every index entry; unfinished tasks and ``0`` keep; task notices never fail a task's
transition (the oldest queued notice makes room); ``stats`` measures keys and memory per kind."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from conftest import _delete_town_keys as delete_town_keys
from conftest import make_config

from tinytown.config import parse_config, parse_duration
from tinytown.errors import Invalid, NotFound
from tinytown.models import MessageKind, Task
from tinytown.retention import KINDS, kind_of
from tinytown.town import Town

pytestmark = pytest.mark.anyio

DEADLINE_S = 30.0


def reconfigured(town: Town, **config: Any) -> Town:
    """The same town (name, Redis) seen with other settings, as another process would."""
    return Town(town.redis, make_config(town.name, **config))


async def finished_task(town: Town, agent: str = "bob", description: str = "do it") -> Task:
    task = await town.assign(description, agent=agent)
    await town.receive(agent, timeout_s=0)
    return await town.complete_task(task.id, "done", by=agent)


async def wait_until_gone(town: Town, task_id: str, *others: Town) -> float:
    """Sweep (as heartbeats do) until the task is gone; returns how long that took."""
    started = time.monotonic()
    with anyio.fail_after(DEADLINE_S):
        while await town.redis.exists(town.keys.task(task_id)):
            for t in (town, *others):
                await t.retention.sweep()
            await anyio.sleep(0.05)
    return time.monotonic() - started


async def test_a_finished_task_disappears_after_its_window_with_every_index_entry(town: Town) -> None:
    short = reconfigured(town, retention={"tasks": 3})
    await short.register_agent("bob")
    await short.send("conductor", "bob", "about it first")
    before = time.monotonic()
    task = await finished_task(short)
    await short.send("bob", "conductor", "it is done", task_id=task.id)
    await short.retention.sweep()
    assert (await short.get_task(f"#{task.number}")).id == task.id  # inside the window: kept
    assert await short.redis.exists(short.keys.task_messages(task.id))

    await wait_until_gone(short, task.id)

    assert time.monotonic() - before >= 2.9
    with pytest.raises(NotFound):
        await short.get_task(task.id)
    with pytest.raises(NotFound):
        await short.get_task(f"#{task.number}")
    assert (await short.list_tasks()).tasks == []
    assert (await short.list_tasks(state="completed")).tasks == []
    assert (await short.list_tasks(agent="bob")).tasks == []
    assert (await short.list_tasks(agent="bob", state="completed")).tasks == []
    keys = short.keys
    bob = (await short.get_agent("bob")).id
    for index in (keys.tasks, keys.tasks_in_state("completed"), keys.tasks_of_agent(bob), keys.finished,
                  keys.ended_tasks(bob, "completed")):
        assert await short.redis.zscore(index, task.id) is None, index
    assert not await short.redis.hexists(keys.task_numbers, str(task.number))
    assert not await short.redis.exists(keys.task_messages(task.id))
    assert (await short.status()).tasks["completed"] == 0


async def test_unfinished_tasks_never_expire_while_finished_ones_do(town: Town) -> None:
    short = reconfigured(town, retention={"tasks": 1})
    await short.register_agent("bob")
    backlog = await short.assign("later")
    assigned = await short.assign("queued", agent="bob")
    running = await short.assign("now", agent="bob")
    await short.claim("bob", backlog.id)  # running: claimed from the backlog
    waiting = await short.assign("still in the backlog")
    done = await short.assign("quick", agent="bob")
    await short.complete_task(done.id, "ok", by="conductor")

    await wait_until_gone(short, done.id)

    states = {t.id: t.state.value for t in (await short.list_tasks()).tasks}
    assert states == {backlog.id: "running", assigned.id: "assigned", running.id: "assigned",
                      waiting.id: "pending"}


async def test_a_finished_task_an_unfinished_task_depends_on_is_kept_until_that_one_finishes(
    town: Town,
) -> None:
    short = reconfigured(town, retention={"tasks": 1})
    await short.register_agent("bob")
    needed = await short.assign("the base", agent="bob")
    follower = await short.assign("builds on the base", agent="bob", depends_on=[needed.id])
    await short.complete_task(needed.id, "based", by="bob")
    other = await finished_task(short, description="unrelated")
    assert (await short.get_task(follower.id)).state.value in ("assigned", "running")  # unfinished

    await wait_until_gone(short, other.id)
    await short.retention.sweep()

    assert (await short.get_task(needed.id)).state.value == "completed"
    await short.complete_task(follower.id, "built", by="bob")
    await wait_until_gone(short, needed.id)
    await wait_until_gone(short, follower.id)


async def test_zero_keeps_finished_tasks_and_acknowledged_messages_forever(town: Town) -> None:
    # two towns on one server: the retention a sweep applies is its own town's
    keeping = Town(town.redis, make_config(town.name + "k", retention={"tasks": 0, "messages": 0}))
    short = reconfigured(town, retention={"tasks": 1, "messages": 1})
    try:
        await keeping.ensure_conductor()
        await _zero_keeps(keeping, short)
    finally:
        await delete_town_keys(town.redis, keeping.name)


async def _zero_keeps(keeping: Town, short: Town) -> None:
    await short.register_agent("bob")
    await keeping.register_agent("bob")
    kept = await finished_task(keeping, description="kept")
    sent = await keeping.send("conductor", "bob", "kept too")
    got = await keeping.receive("bob", timeout_s=0, session="s")
    await keeping.receive("bob", timeout_s=0, session="s")  # acknowledges the batch
    assert sent.message.id in {m.id for m in got.messages}
    assert await keeping.redis.ttl(keeping.keys.message(sent.message.id)) == -1

    gone = await finished_task(short, description="expires")
    await wait_until_gone(short, gone.id, keeping)

    assert (await keeping.get_task(kept.id)).result == "done"
    assert [t.id for t in (await keeping.list_tasks()).tasks] == [kept.id]


async def test_acknowledged_messages_expire_after_the_message_window_and_queued_ones_stay(
    town: Town,
) -> None:
    short = reconfigured(town, retention={"messages": 1})
    await short.register_agent("bob")
    read = await short.send("conductor", "bob", "read me")
    got = await short.receive("bob", timeout_s=0, max_messages=1, ack_previous=False)
    queued = await short.send("conductor", "bob", "not read yet")
    assert [m.id for m in got.messages] == [read.message.id]
    assert await short.ack("bob", [read.message.id]) == 1
    assert 0 < await short.redis.ttl(short.keys.message(read.message.id)) <= 1

    with anyio.fail_after(DEADLINE_S):
        while await short.redis.exists(short.keys.message(read.message.id)):
            await anyio.sleep(0.05)

    assert await short.redis.ttl(short.keys.message(queued.message.id)) == -1
    assert [m.body for m in await short.inbox("bob")] == ["not read yet"]


async def test_a_notice_to_a_full_inbox_drops_the_oldest_queued_notice(town: Town) -> None:
    small = reconfigured(town, limits={"max_inbox": 4})
    await small.register_agent("bob")
    await small.send("bob", "conductor", "first words")
    first = await finished_task(small, description="one")
    await small.send("bob", "conductor", "more words")
    second = await finished_task(small, description="two")
    assert (await small.inbox_counts("conductor")).pending == 4  # full

    third = await finished_task(small, description="three")

    inbox = await small.inbox("conductor")
    assert [(m.kind, m.task_id or m.body) for m in inbox] == [
        (MessageKind.INFO, "first words"), (MessageKind.INFO, "more words"),
        (MessageKind.TASK_DONE, second.id), (MessageKind.TASK_DONE, third.id),
    ]
    assert first.state.value == third.state.value == "completed"
    with pytest.raises(Invalid, match="full"):
        await small.send("bob", "conductor", "still refused")


async def test_a_notice_to_an_inbox_full_of_other_messages_is_dropped_and_the_task_still_finishes(
    town: Town,
) -> None:
    small = reconfigured(town, limits={"max_inbox": 3})
    await small.register_agent("bob")
    for n in range(3):
        await small.send("bob", "conductor", f"words {n}")

    done = await finished_task(small)

    assert (await small.get_task(done.id)).state.value == "completed"
    assert [m.body for m in await small.inbox("conductor")] == ["words 0", "words 1", "words 2"]
    with pytest.raises(Invalid, match="full"):
        await small.assign("more work", agent="conductor")


async def test_notices_a_creator_has_read_are_forgotten_as_new_ones_come(town: Town) -> None:
    await town.register_agent("bob")
    for n in range(5):
        await finished_task(town, description=f"read {n}")
    assert len((await town.receive("conductor", timeout_s=0, max_messages=100)).messages) == 5

    queued = [await finished_task(town, description=f"queued {n}") for n in range(3)]

    conductor = (await town.get_agent("conductor")).id
    assert await town.redis.lrange(town.keys.notices(conductor), 0, -1) == [
        m.id for m in await town.inbox("conductor")]
    assert [m.task_id for m in await town.inbox("conductor")] == [t.id for t in queued]


async def test_the_10001st_notice_does_not_fail_task_done(real_town: Town) -> None:
    town = real_town
    await town.register_agent("bob")
    limit = town.config.limits.max_inbox
    assert limit == 10_000
    first = await finished_task(town, description="the first")
    async with anyio.create_task_group() as tg:
        for start in range(0, limit - 1, 500):
            async def fill(start: int = start) -> None:
                for n in range(start, min(start + 500, limit - 1)):
                    await town.send("bob", "conductor", f"chatter {n}")
            tg.start_soon(fill)
    assert (await town.inbox_counts("conductor")).pending == limit

    last = await finished_task(town, description="the 10,001st notice")

    assert last.state.value == "completed"
    assert (await town.inbox_counts("conductor")).pending == limit
    queued = await town.channel.peek((await town.get_agent("conductor")).id, limit)
    notices = [m.task_id for m in queued if m.kind == MessageKind.TASK_DONE]
    assert notices == [last.id]  # the oldest notice (for `first`) made room
    assert first.id not in notices
    with pytest.raises(Invalid, match="full"):
        await town.send("bob", "conductor", "one too many")


async def test_stats_counts_keys_per_kind_and_measures_memory_where_the_server_allows(
    town: Town,
) -> None:
    await town.register_agent("bob")
    await finished_task(town)
    await town.assign("open")
    await town.send("conductor", "bob", "hello")

    first = await town.retention.stats(sample=0)
    second = await town.retention.stats(sample=1)

    assert set(first.kinds) == set(KINDS)
    assert first.kinds["tasks"].keys == 2 == first.records["tasks"]
    assert first.records["finished_tasks"] == 1
    assert first.records["agents"] == 2
    assert first.kinds["events"].keys == 1
    assert first.total.keys == sum(k.keys for k in first.kinds.values())
    assert first.retention.tasks == 14 * 86400
    assert first.growth_since is None
    assert second.growth_since == first.now
    real = first.used_memory is not None
    if real:
        assert all(k.bytes is not None and (k.bytes > 0) == (k.keys > 0) for k in first.kinds.values())
        assert second.kinds["tasks"].sampled == 1
    else:  # fakeredis answers neither MEMORY USAGE nor INFO
        assert first.total.bytes is None


def test_durations_take_seconds_or_a_unit() -> None:
    assert [parse_duration(v) for v in ("14d", "90s", "2h", "15m", "1w", "30", 45, 0)] == [
        14 * 86400, 90, 7200, 900, 7 * 86400, 30, 45, 0]
    config = parse_config({"name": "t", "retention": {"tasks": "3d", "messages": 60}})
    assert (config.retention.tasks, config.retention.messages, config.retention.events) == (
        3 * 86400, 60, 14 * 86400)
    for bad in ("fortnight", -1, "1y", 1.5, True):
        with pytest.raises(Invalid, match="retention.tasks"):
            parse_config({"name": "t", "retention": {"tasks": bad}})
    with pytest.raises(Invalid, match="unknown key"):
        parse_config({"name": "t", "retention": {"tasks_s": 1}})


def test_every_key_of_a_town_counts_under_a_kind() -> None:
    assert [kind_of(k) for k in ("task:x", "msg:y", "inbox:a:normal", "events", "agent:a", "bell:a",
                                 "tasks:state:pending", "task_msgs:x", "retention:finished", "seq")] == [
        "tasks", "messages", "messages", "events", "agents", "agents", "indexes", "indexes",
        "indexes", "other"]
