"""The per-agent task indexes (``tasks:agent:<id>``, ``tasks:open:<id>``, the ended indexes)
name a task under its current assignee only: every path that takes a task from an agent
(reclaim to another agent or to the backlog, then ``hand_out`` or ``claim``) takes it out
of that agent's indexes in the same write, so retention, which cleans the indexes of the
task's last assignee, leaves no id behind.  A listing skips and trims an id whose task is
gone (an index written before this was so)."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from conftest import make_config

from tinytown.errors import Conflict
from tinytown.models import TaskState
from tinytown.town import Town

pytestmark = pytest.mark.anyio


async def _agents(town: Town, *names: str) -> dict[str, str]:
    return {name: (await town.register_agent(name)).id for name in names}


async def indexes_naming(town: Town, task_id: str) -> set[str]:
    """Every task index of the town (``tasks``, ``tasks:...``) that holds ``task_id``."""
    found = set()
    pattern = town.keys.match_all.removesuffix("*") + "tasks*"
    async for key in town.redis.scan_iter(match=pattern, count=1000):
        if await town.redis.zscore(key, task_id) is not None:
            found.add(str(key).removeprefix(town.keys.prefix))
    return found


def agent_indexes(found: set[str], agent_id: str) -> set[str]:
    return {k for k in found if k.startswith((f"tasks:agent:{agent_id}", f"tasks:open:{agent_id}"))}


async def test_a_task_reassigned_from_alice_to_bob_is_in_bobs_indexes_only(town: Town) -> None:
    ids = await _agents(town, "alice", "bob")
    task = await town.assign("move me", agent="alice")
    await town.receive("alice", timeout_s=0)

    await town.reclaim_tasks("alice", to="bob")

    found = await indexes_naming(town, task.id)
    assert agent_indexes(found, ids["alice"]) == set()
    assert agent_indexes(found, ids["bob"]) == {f"tasks:agent:{ids['bob']}", f"tasks:open:{ids['bob']}"}
    assert (await town.list_tasks(agent="alice")).tasks == []
    assert [t.id for t in (await town.list_tasks(agent="bob")).tasks] == [task.id]

    await town.complete_task(task.id, "done", by="bob")

    found = await indexes_naming(town, task.id)
    assert agent_indexes(found, ids["alice"]) == set()
    assert agent_indexes(found, ids["bob"]) == {f"tasks:agent:{ids['bob']}",
                                                f"tasks:agent:{ids['bob']}:completed"}
    assert (await town.list_tasks(agent="alice", state="completed")).tasks == []


@pytest.mark.parametrize("taker", ["hand_out", "claim"])
async def test_a_task_reclaimed_to_the_backlog_and_taken_by_bob_is_in_bobs_indexes_only(
    town: Town, taker: str,
) -> None:
    ids = await _agents(town, "alice", "bob")
    task = await town.assign("orphan", agent="alice")
    await town.receive("alice", timeout_s=0)

    await town.reclaim_tasks("alice")
    assert agent_indexes(await indexes_naming(town, task.id), ids["alice"]) == set()
    if taker == "hand_out":
        await town.plans.hand_out("bob")
    else:
        await town.claim("bob", task.id)

    found = await indexes_naming(town, task.id)
    assert agent_indexes(found, ids["alice"]) == set()
    assert agent_indexes(found, ids["bob"]) == {f"tasks:agent:{ids['bob']}", f"tasks:open:{ids['bob']}"}


async def test_a_late_report_from_alice_after_the_reassignment_is_still_a_conflict(town: Town) -> None:
    await _agents(town, "alice", "bob", "carol")
    first = await town.assign("one", agent="alice")
    await town.receive("alice", timeout_s=0)
    await town.reclaim_tasks("alice", to="bob")

    with pytest.raises(Conflict, match="late"):
        await town.complete_task(first.id, "mine", by="alice")
    await town.reclaim_tasks("bob")  # back to the backlog, then to carol
    await town.claim("carol", first.id)
    for former in ("alice", "bob"):
        with pytest.raises(Conflict, match="late"):
            await town.fail_task(first.id, "mine", by=former)


def reconfigured(town: Town, **config: Any) -> Town:
    return Town(town.redis, make_config(town.name, **config))


async def test_after_retention_expires_a_reassigned_task_no_index_names_it(town: Town) -> None:
    short = reconfigured(town, retention={"tasks": 1})
    await _agents(short, "alice", "bob", "carol")
    passed = await short.assign("alice, then bob", agent="alice")
    await short.receive("alice", timeout_s=0)
    await short.reclaim_tasks("alice", to="bob")
    returned = await short.assign("alice, then the backlog, then carol", agent="alice")
    await short.reclaim_tasks("alice")
    await short.claim("carol", returned.id)
    await short.complete_task(passed.id, "done", by="bob")
    await short.fail_task(returned.id, "no", by="carol")
    for task in (passed, returned):
        assert await indexes_naming(short, task.id)

    with anyio.fail_after(30):
        while await short.redis.exists(short.keys.task(passed.id), short.keys.task(returned.id)):
            await short.retention.sweep()
            await anyio.sleep(0.05)

    for task in (passed, returned):
        assert await indexes_naming(short, task.id) == set()
    assert (await short.list_tasks(agent="alice")).tasks == []


@pytest.mark.parametrize("state", [None, "completed", "running"])
async def test_listing_by_agent_skips_and_trims_an_id_whose_task_is_gone(
    town: Town, state: str | None,
) -> None:
    ids = await _agents(town, "bob")
    kept = await town.assign("still here", agent="bob")
    await town.receive("bob", timeout_s=0)
    if state == "completed":
        await town.complete_task(kept.id, "ok", by="bob")
    gone = str(uuid.uuid4())  # as an index written before reassignment cleaned up left it
    index = (town.keys.tasks_of_agent(ids["bob"]) if state is None
             else town.keys.ended_tasks(ids["bob"], TaskState.COMPLETED) if state == "completed"
             else town.keys.open_tasks(ids["bob"]))
    await town.redis.zadd(index, {gone: 10**12})  # newest: listed first

    page = await town.list_tasks(agent="bob", state=state, limit=1)

    assert [t.id for t in page.tasks] == [kept.id]
    assert page.next_cursor is None
    assert await town.redis.zscore(index, gone) is None


async def test_listing_by_state_skips_and_trims_an_id_whose_task_is_gone(town: Town) -> None:
    await _agents(town, "bob")
    kept = await town.assign("in the backlog")
    gone = str(uuid.uuid4())
    await town.redis.zadd(town.keys.backlog, {gone: 10**12})

    page = await town.list_tasks(state="pending", limit=1)

    assert [t.id for t in page.tasks] == [kept.id]
    assert await town.redis.zscore(town.keys.backlog, gone) is None
