"""Issue 9, cost that grows with the total: the per-agent task indexes (reclaim sees every
unfinished task, however old), paged listings, status in a constant number of round trips,
compact message records, and ``tt backlog add --file``."""

from __future__ import annotations

import pytest

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
