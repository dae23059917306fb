"""Tasks (SPEC 4): assignment, the running transition on delivery, who may finish a task,
late reports, illegal moves, notices, listing with cursors, the backlog and claiming."""

from __future__ import annotations

import anyio
import pytest
from conftest import make_config
from redis.asyncio import Redis

from tinytown.errors import Conflict, Forbidden, Invalid, NotFound, TinytownError
from tinytown.models import AgentState, MessageKind, Priority, Task, TaskDecider, TaskState
from tinytown.town import Town

pytestmark = pytest.mark.anyio


async def _agents(town: Town, *names: str) -> None:
    for name in names:
        await town.register_agent(name)


async def _running(town: Town, description: str, agent: str) -> Task:
    """Assign a task and deliver it, so it is ``running``."""
    task = await town.assign(description, agent=agent)
    await town.receive(agent, timeout_s=0, max_messages=100)
    return await town.get_task(task.id)


# ----------------------------------------------------------------- assigning


async def test_assigning_creates_an_assigned_task_and_a_task_message_at_its_priority(town: Town) -> None:
    await _agents(town, "bob")
    await town.send("conductor", "bob", "chatter", priority="normal")

    task = await town.assign("fix the build", agent="bob", priority="high", tags=["ci"])

    stored = await town.get_task(task.id)
    pending = await town.inbox("bob")
    assert stored.state == TaskState.ASSIGNED
    assert stored.assigned_to == (await town.get_agent("bob")).id
    assert (stored.attempt, stored.created_by, stored.tags) == (1, "conductor", ["ci"])
    assert [(m.kind, m.task_id, m.priority, m.body) for m in pending] == [
        (MessageKind.TASK, task.id, Priority.HIGH, "fix the build"),
        (MessageKind.INFO, None, Priority.NORMAL, "chatter"),
    ]


async def test_delivering_the_assignment_marks_the_task_running_and_the_agent_working(town: Town) -> None:
    await _agents(town, "bob")
    task = await town.assign("fix the build", agent="bob")

    got = await town.receive("bob", timeout_s=0)

    stored = await town.get_task(task.id)
    bob = await town.get_agent("bob")
    assert [m.task_id for m in got.messages] == [task.id]
    assert stored.state == TaskState.RUNNING and stored.started_at is not None
    assert (bob.state, bob.current_task) == (AgentState.WORKING, task.id)
    assert [t.id for t in (await town.list_tasks(state="running")).tasks] == [task.id]
    assert (await town.list_tasks(state="assigned")).tasks == []


async def test_assigning_with_no_agent_puts_the_task_in_the_backlog(town: Town) -> None:
    task = await town.assign("someone take this")

    assert task.state == TaskState.PENDING and task.assigned_to is None
    assert [t.id for t in (await town.list_tasks(state="pending")).tasks] == [task.id]


async def test_bad_task_input_is_invalid_and_stores_nothing(town: Town) -> None:
    await _agents(town, "bob")
    with pytest.raises(Invalid, match="limit"):
        await town.assign("x" * (16 * 1024 + 1), agent="bob")
    with pytest.raises(Invalid):
        await town.assign("   ")
    with pytest.raises(Invalid):
        await town.assign("ok", priority="whenever")
    with pytest.raises(Invalid):
        await town.assign("ok", tags=["x" * 65])
    with pytest.raises(Invalid):
        await town.assign("ok", agent="all")
    with pytest.raises(NotFound):
        await town.assign("ok", agent="nobody")
    with pytest.raises(NotFound):
        await town.assign("ok", parent_id="no-such-task")

    assert (await town.list_tasks()).tasks == []
    assert (await town.inbox_counts("bob")).pending == 0
    await town.assign("x" * (16 * 1024), agent="bob")  # exactly at the limit


async def test_assigning_to_a_full_inbox_is_invalid_and_creates_no_task(town: Town) -> None:
    small = Town(town.redis, make_config(town.name, limits={"max_inbox": 1}))
    await _agents(small, "bob")
    await small.send("conductor", "bob", "fills it")

    with pytest.raises(Invalid, match="full"):
        await small.assign("no room", agent="bob")

    assert (await small.list_tasks()).tasks == []
    assert (await small.inbox_counts("bob")).pending == 1


# ----------------------------------------------------------------- finishing


async def test_the_assignee_completes_its_task_and_the_creator_hears_of_it(town: Town) -> None:
    await _agents(town, "lead", "bob")
    task = await town.assign("write docs", agent="bob", by="lead")
    await town.receive("bob", timeout_s=0)

    done = await town.complete_task(task.id, "docs written", by="bob")

    bob = await town.get_agent("bob")
    notices = (await town.receive("lead", timeout_s=0)).messages
    assert (done.state, done.result, done.decided_by) == (TaskState.COMPLETED, "docs written", "agent")
    stored = await town.get_task(task.id)
    assert stored.completed_at is not None and stored.decided_by == TaskDecider.AGENT
    assert (bob.tasks_completed, bob.current_task, bob.state) == (1, None, AgentState.IDLE)
    assert [(m.kind, m.task_id, m.body, m.sender) for m in notices] == [
        (MessageKind.TASK_DONE, task.id, "docs written", "bob")]
    assert (await town.inbox_counts("bob")).pending == 0  # the reporter is not told


async def test_the_assignee_fails_its_task_and_the_creator_gets_the_error(town: Town) -> None:
    await _agents(town, "bob")
    task = await _running(town, "flaky thing", "bob")

    failed = await town.fail_task(task.id, "tests red", by="bob")

    notices = (await town.receive("conductor", timeout_s=0)).messages
    bob = await town.get_agent("bob")
    assert (failed.state, failed.error) == (TaskState.FAILED, "tests red")
    assert (await town.get_task(task.id)).decided_by == TaskDecider.AGENT
    assert [(m.kind, m.body) for m in notices] == [(MessageKind.TASK_FAILED, "tests red")]
    assert (bob.tasks_completed, bob.current_task) == (0, None)


async def test_the_conductor_may_finish_any_task_and_the_assignee_is_told(town: Town) -> None:
    await _agents(town, "bob")
    task = await _running(town, "long job", "bob")

    done = await town.complete_task(task.id, "closed by the human", by="supervisor")

    notices = (await town.receive("bob", timeout_s=0)).messages
    assert done.state == TaskState.COMPLETED
    assert (await town.get_task(task.id)).decided_by == TaskDecider.CONDUCTOR
    assert [(m.kind, m.task_id) for m in notices] == [(MessageKind.TASK_DONE, task.id)]
    assert (await town.get_agent("bob")).tasks_completed == 1


async def test_a_stranger_cannot_finish_someone_elses_task(town: Town) -> None:
    await _agents(town, "bob", "mallory")
    task = await _running(town, "bob's job", "bob")

    with pytest.raises(Forbidden, match="bob"):
        await town.complete_task(task.id, "mine now", by="mallory")
    with pytest.raises(Forbidden):
        await town.fail_task(task.id, "nope", by="mallory")
    with pytest.raises(Forbidden):
        await town.cancel_task(task.id, by="mallory")

    assert (await town.get_task(task.id)).state == TaskState.RUNNING


async def test_a_backlog_task_cannot_be_finished_by_an_agent_that_did_not_claim_it(town: Town) -> None:
    await _agents(town, "bob")
    task = await town.assign("unclaimed")

    with pytest.raises(Forbidden, match="claim"):
        await town.complete_task(task.id, "did it anyway", by="bob")


async def test_a_report_from_the_previous_assignee_after_a_reclaim_is_a_conflict(town: Town) -> None:
    await _agents(town, "bob", "carol")
    task = await _running(town, "hot potato", "bob")

    moved = await town.reclaim_tasks("bob", to="carol")

    assert [(t.id, t.attempt, t.state) for t in moved] == [(task.id, 2, TaskState.ASSIGNED)]
    with pytest.raises(Conflict, match="late"):
        await town.complete_task(task.id, "I finished it", by="bob")
    carols = (await town.receive("carol", timeout_s=0)).messages
    assert [(m.kind, m.task_id) for m in carols] == [(MessageKind.TASK, task.id)]
    assert (await town.get_task(task.id)).state == TaskState.RUNNING
    assert (await town.complete_task(task.id, "done", by="carol")).result == "done"
    assert (await town.get_agent("bob")).current_task is None


async def test_a_report_for_an_old_attempt_is_a_conflict(town: Town) -> None:
    await _agents(town, "bob")
    task = await _running(town, "retry me", "bob")

    with pytest.raises(Conflict, match="attempt"):
        await town.complete_task(task.id, "stale", by="bob", attempt=task.attempt - 1)

    stored = await town.get_task(task.id)
    assert stored.state == TaskState.RUNNING and stored.result is None
    assert (await town.complete_task(task.id, "fresh", by="bob", attempt=task.attempt)).result == "fresh"


async def test_reclaiming_to_the_backlog_lets_another_agent_claim_it(town: Town) -> None:
    await _agents(town, "bob", "carol")
    task = await _running(town, "orphan", "bob")

    moved = await town.reclaim_tasks("bob")
    claimed = await town.claim("carol")

    assert [(t.id, t.state) for t in moved] == [(task.id, TaskState.PENDING)]
    assert (claimed.id, claimed.state, claimed.attempt) == (task.id, TaskState.RUNNING, 2)
    with pytest.raises(Conflict):
        await town.fail_task(task.id, "late", by="bob")


@pytest.mark.parametrize(
    ("setup", "move"),
    [
        ("completed", "fail"),
        ("completed", "cancel"),
        ("failed", "complete"),
        ("cancelled", "complete"),
        ("pending", "complete"),
        ("pending", "fail"),
    ],
)
async def test_illegal_task_moves_are_conflicts(town: Town, setup: str, move: str) -> None:
    await _agents(town, "bob")
    if setup == "pending":
        task = await town.assign("in the backlog")
    else:
        task = await _running(town, "job", "bob")
        if setup == "completed":
            await town.complete_task(task.id, "ok", by="bob")
        elif setup == "failed":
            await town.fail_task(task.id, "broke", by="bob")
        else:
            await town.cancel_task(task.id, by="conductor")
    before = await town.get_task(task.id)

    # by its #N, as tables and messages show it (the id was 36 characters nobody had typed)
    with pytest.raises(Conflict, match=rf"^conflict: task #{before.number} is {setup}; it cannot become"):
        if move == "complete":
            await town.complete_task(task.id, "again", by="conductor")
        elif move == "fail":
            await town.fail_task(task.id, "again", by="conductor")
        else:
            await town.cancel_task(task.id, by="conductor")

    assert await town.get_task(task.id) == before


async def test_a_cancelled_assignment_does_not_start_when_delivered(town: Town) -> None:
    await _agents(town, "bob")
    task = await town.assign("never mind", agent="bob")
    await town.cancel_task(task.id, "changed plans", by="conductor")

    got = await town.receive("bob", timeout_s=0, max_messages=10)

    # the task's own message is withdrawn; only the notice arrives
    assert [m.kind for m in got.messages] == [MessageKind.TASK_CANCELLED]
    assert (await town.get_task(task.id)).state == TaskState.CANCELLED
    assert (await town.get_agent("bob")).current_task is None


async def test_cancelling_notifies_the_creator_and_the_assignee(town: Town) -> None:
    await _agents(town, "lead", "bob")
    task = await _running(town, "doomed", "bob")
    task = await town.assign("doomed too", agent="bob", by="lead")
    await town.receive("bob", timeout_s=0)

    cancelled = await town.cancel_task(task.id, "out of scope", by="conductor")

    to_lead = (await town.receive("lead", timeout_s=0)).messages
    to_bob = (await town.receive("bob", timeout_s=0)).messages
    assert (cancelled.state, cancelled.error) == (TaskState.CANCELLED, "out of scope")
    assert [(m.kind, m.body) for m in to_lead] == [(MessageKind.TASK_CANCELLED, "out of scope")]
    assert [(m.kind, m.task_id) for m in to_bob] == [(MessageKind.TASK_CANCELLED, task.id)]
    assert (await town.get_agent("bob")).tasks_completed == 0


async def test_the_creator_may_cancel_its_own_backlog_task(town: Town) -> None:
    await _agents(town, "lead")
    task = await town.assign("maybe later", by="lead")

    cancelled = await town.cancel_task(task.id, by="lead")

    assert cancelled.state == TaskState.CANCELLED
    assert (await town.get_task(task.id)).decided_by == TaskDecider.CREATOR
    assert (await town.list_tasks(state="pending")).tasks == []
    with pytest.raises(NotFound):
        await town.claim("lead")


async def test_a_result_over_64_kib_is_invalid_and_the_task_is_unchanged(town: Town) -> None:
    await _agents(town, "bob")
    task = await _running(town, "big output", "bob")

    with pytest.raises(Invalid, match="limit"):
        await town.complete_task(task.id, "r" * (64 * 1024 + 1), by="bob")
    with pytest.raises(Invalid, match="limit"):
        await town.fail_task(task.id, "e" * (64 * 1024 + 1), by="bob")

    assert (await town.get_task(task.id)).state == TaskState.RUNNING
    assert (await town.inbox_counts("conductor")).pending == 0


async def test_finishing_a_task_acknowledges_the_assignment_message(town: Town) -> None:
    """SPEC 3: a task message is acknowledged by task_done for the task it carries, so a
    session that dies after reporting does not get the finished task delivered again."""
    await _agents(town, "bob")
    task = await town.assign("once only", agent="bob")
    await town.send("conductor", "bob", "unrelated note")
    _, session, _ = await town.open_session("bob")
    await town.receive("bob", timeout_s=0, session=session, max_messages=10)

    await town.complete_task(task.id, "done", by="bob")
    _, _, requeued = await town.open_session("bob")

    assert requeued == 1
    assert [m.body for m in await town.inbox("bob")] == ["unrelated note"]


async def test_tasks_completed_counts_each_completion(town: Town) -> None:
    await _agents(town, "bob")
    for i in range(3):
        task = await _running(town, f"job {i}", "bob")
        await town.complete_task(task.id, "ok", by="bob")

    assert (await town.get_agent("bob")).tasks_completed == 3


# ----------------------------------------------------------------- listing


async def test_list_tasks_pages_with_a_cursor_without_duplicates(town: Town) -> None:
    created = [await town.assign(f"task {i}") for i in range(7)]

    pages = []
    cursor = None
    for _ in range(5):
        page = await town.list_tasks(limit=3, cursor=cursor)
        pages.append([t.id for t in page.tasks])
        cursor = page.next_cursor
        if cursor is None:
            break

    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == [t.id for t in reversed(created)]  # newest first


async def test_a_full_last_page_has_no_next_cursor_and_oldest_first_pages_forward(town: Town) -> None:
    created = [await town.assign(f"task {i}") for i in range(6)]

    first = await town.list_tasks(state="pending", limit=3, oldest_first=True)
    second = await town.list_tasks(state="pending", limit=3, oldest_first=True, cursor=first.next_cursor)

    assert [t.id for t in first.tasks + second.tasks] == [t.id for t in created]
    assert first.next_cursor is not None and second.next_cursor is None


async def test_list_tasks_filters_by_state_and_agent(town: Town) -> None:
    await _agents(town, "bob", "carol")
    bobs = [await town.assign(f"bob {i}", agent="bob") for i in range(4)]
    await town.assign("carol's", agent="carol")
    await town.assign("backlog")
    await town.receive("bob", timeout_s=0, max_messages=1)  # bob 0 starts running
    await town.complete_task(bobs[0].id, "ok", by="bob")

    first = await town.list_tasks(agent="bob", limit=2)
    rest = await town.list_tasks(agent="bob", limit=2, cursor=first.next_cursor)

    assert [t.id for t in first.tasks + rest.tasks] == [t.id for t in reversed(bobs)]
    assert rest.next_cursor is None
    assert [t.id for t in (await town.list_tasks(agent="bob", state="assigned")).tasks] == [
        t.id for t in reversed(bobs[1:])]
    assert [t.id for t in (await town.list_tasks(state="completed")).tasks] == [bobs[0].id]
    assert [t.description for t in (await town.list_tasks(state="pending")).tasks] == ["backlog"]
    assert (await town.status()).tasks == {
        "waiting": 0, "pending": 1, "assigned": 4, "running": 0, "completed": 1, "failed": 0,
        "cancelled": 0}


async def test_list_tasks_refuses_a_bad_cursor_state_or_limit(town: Town) -> None:
    with pytest.raises(Invalid):
        await town.list_tasks(cursor="not-a-cursor")
    with pytest.raises(Invalid):
        await town.list_tasks(state="sleeping")
    with pytest.raises(Invalid):
        await town.list_tasks(limit=0)


# ----------------------------------------------------------------- claiming


async def test_claim_takes_the_oldest_backlog_task_first(town: Town) -> None:
    await _agents(town, "bob")
    oldest = await town.assign("first in")
    newer = await town.assign("second in")

    claimed = await town.claim("bob")

    bob = await town.get_agent("bob")
    assert claimed.id == oldest.id
    assert (claimed.state, claimed.assigned_to, claimed.attempt) == (TaskState.RUNNING, bob.id, 1)
    assert (bob.state, bob.current_task) == (AgentState.WORKING, oldest.id)
    assert [t.id for t in (await town.list_tasks(state="pending")).tasks] == [newer.id]
    assert [t.id for t in (await town.list_tasks(agent="bob")).tasks] == [oldest.id]


async def test_claim_takes_a_given_task_and_refuses_one_not_in_the_backlog(town: Town) -> None:
    await _agents(town, "bob", "carol")
    await town.assign("older")
    wanted = await town.assign("this one")

    claimed = await town.claim("bob", wanted.id)

    assert claimed.id == wanted.id
    with pytest.raises(Conflict, match="not in the backlog"):
        await town.claim("carol", wanted.id)
    with pytest.raises(NotFound):
        await town.claim("carol", "no-such-task")


async def test_claiming_from_an_empty_backlog_is_not_found(town: Town) -> None:
    await _agents(town, "bob")
    with pytest.raises(NotFound, match="backlog is empty"):
        await town.claim("bob")


async def test_a_claimed_task_is_finished_by_its_claimer(town: Town) -> None:
    await _agents(town, "bob")
    task = await town.assign("grab me")
    await town.claim("bob")

    done = await town.complete_task(task.id, "grabbed and done", by="bob")

    assert done.state == TaskState.COMPLETED
    assert (await town.get_agent("bob")).tasks_completed == 1


async def _claim_race(redis: Redis, name: str, agents: int, tasks: int) -> tuple[list[str], int]:
    town = Town(redis, make_config(name, max_agents=agents + 5))
    await town.ensure_conductor()
    names = [f"w{i:02d}" for i in range(agents)]
    for n in names:
        await town.register_agent(n)
    for i in range(tasks):
        await town.assign(f"job {i}")
    claimed: list[str] = []
    not_found = 0
    others: list[TinytownError] = []
    start = anyio.Event()

    async def claimer(agent: str) -> None:
        nonlocal not_found
        await start.wait()
        try:
            claimed.append((await town.claim(agent)).id)
        except NotFound:
            not_found += 1
        except TinytownError as exc:
            others.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in names:
                tg.start_soon(claimer, n)
            start.set()
    assert others == []
    return claimed, not_found


async def test_fifty_concurrent_claimers_each_get_a_different_task(real_redis: Redis, town_name: str) -> None:
    claimed, not_found = await _claim_race(real_redis, town_name, agents=50, tasks=50)

    assert not_found == 0
    assert len(claimed) == 50 and len(set(claimed)) == 50
    town = Town(real_redis, make_config(town_name))
    assert (await town.status()).tasks["running"] == 50
    assert (await town.list_tasks(state="pending")).tasks == []


async def test_fifty_claimers_for_thirty_tasks_give_thirty_claims_and_twenty_not_found(
    real_redis: Redis, town_name: str,
) -> None:
    claimed, not_found = await _claim_race(real_redis, town_name, agents=50, tasks=30)

    assert len(claimed) == 30 and len(set(claimed)) == 30
    assert not_found == 20
