"""Tasks that wait for other tasks (``depends_on``, the ``waiting`` state): ordering, a failed
or cancelled dependency, races between completions and creations, and the MCP tool."""

from __future__ import annotations

import anyio
import pytest
from conftest import make_config
from mcp_support import connect, ok, refused
from redis.asyncio import Redis

from tinytown.errors import Conflict, Invalid, NotFound
from tinytown.models import MessageKind, TaskDecider, TaskState
from tinytown.town import Town

pytestmark = pytest.mark.anyio


async def _task_messages(town: Town, agent: str) -> list[str]:
    """The task ids of the ``task`` messages waiting in an agent's inbox."""
    return [m.task_id or "" for m in await town.inbox(agent) if m.kind == MessageKind.TASK]


async def test_a_waiting_task_is_delivered_only_when_its_dependency_completes(town: Town) -> None:
    await town.register_agent("bob")
    await town.register_agent("alice")
    first = await town.assign("build the parser", agent="bob")
    second = await town.assign("test the parser", agent="alice", depends_on=[first.ref])
    assert second.state == TaskState.WAITING
    assert (second.depends_on, second.waiting_on, second.depends_on_refs) == (
        [first.id], [first.id], [first.ref])
    assert second.assignee == "alice" and second.attempt == 0
    assert await _task_messages(town, "alice") == []  # not delivered
    with pytest.raises(NotFound):
        await town.claim("alice")  # not in the backlog either
    with pytest.raises(Conflict):
        await town.claim("alice", second.ref)
    with pytest.raises(Conflict):
        await town.complete_task(second.id, "too early", by="conductor")
    assert [t.id for t in (await town.list_tasks(state="waiting")).tasks] == [second.id]

    await town.complete_task(first.id, "parsed", by="bob")
    moved = await town.get_task(second.id)
    assert (moved.state, moved.assignee, moved.attempt, moved.waiting_on) == (
        TaskState.ASSIGNED, "alice", 1, [])
    assert await _task_messages(town, "alice") == [second.id]
    assert (await town.list_tasks(state="waiting")).tasks == []


async def test_a_task_waiting_on_two_moves_on_only_after_both_completed(town: Town) -> None:
    await town.register_agent("bob")
    first = await town.assign("a", agent="bob")
    second = await town.assign("b", agent="bob")
    both = await town.assign("c", depends_on=[first.ref, second.id, first.id])  # repeats count once
    assert both.depends_on == [first.id, second.id]
    await town.complete_task(first.ref, "done a", by="bob")
    still = await town.get_task(both.id)
    assert (still.state, still.waiting_on) == (TaskState.WAITING, [second.id])
    public = still.model_dump(mode="json", by_alias=True)
    assert (public["depends_on"], public["waiting_on"], public["waiting_on_ids"]) == (
        [first.ref, second.ref], [second.ref], [second.id])
    await town.complete_task(second.ref, "done b", by="bob")
    ready = await town.get_task(both.id)
    assert ready.state == TaskState.PENDING and ready.assigned_to is None
    assert (await town.claim("bob")).id == both.id  # in the backlog now, claimable


async def test_a_failed_dependency_cancels_its_dependents_transitively(town: Town) -> None:
    await town.register_agent("bob")
    root = await town.assign("root", agent="bob")
    other = await town.assign("other", agent="bob")
    child = await town.assign("child", agent="bob", depends_on=[root.ref])
    grandchild = await town.assign("grandchild", depends_on=[child.ref])
    sibling = await town.assign("needs root and other", depends_on=[root.ref, other.ref])
    unrelated = await town.assign("needs other", depends_on=[other.ref])

    await town.fail_task(root.id, "it broke", by="bob")
    for task, cause, verb in ((child, root, "failed"), (grandchild, child, "was cancelled"),
                              (sibling, root, "failed")):
        now = await town.get_task(task.id)
        assert (now.state, now.decided_by) == (TaskState.CANCELLED, TaskDecider.DEPENDENCY)
        assert now.error == f"task {task.ref} was cancelled because its dependency {cause.ref} {verb}"
    assert (await town.get_task(unrelated.id)).state == TaskState.WAITING
    # the creator hears of each: the failure and every task it cancelled
    told = {m.task_id: m for m in await town.inbox("conductor")}
    assert told[root.id].kind == MessageKind.TASK_FAILED
    for task in (child, grandchild, sibling):
        assert told[task.id].kind == MessageKind.TASK_CANCELLED
        assert "its dependency #" in told[task.id].body
    assert await _task_messages(town, "bob") == [other.id]  # nothing new delivered


async def test_cancelling_a_waiting_task_cancels_what_waits_on_it(town: Town) -> None:
    first = await town.assign("first")
    second = await town.assign("second", depends_on=[first.ref])
    third = await town.assign("third", depends_on=[second.ref])
    cancelled = await town.cancel_task(second.ref, "not needed", by="conductor")
    assert (cancelled.state, cancelled.waiting_on) == (TaskState.CANCELLED, [])
    after = await town.get_task(third.id)
    assert after.state == TaskState.CANCELLED
    assert after.error == f"task {third.ref} was cancelled because its dependency {second.ref} was cancelled"
    assert (await town.get_task(first.id)).state == TaskState.PENDING


async def test_depending_on_a_completed_task_starts_at_once_and_on_a_failed_one_is_refused(
    town: Town,
) -> None:
    await town.register_agent("bob")
    done = await town.assign("done", agent="bob")
    await town.complete_task(done.id, "ok", by="bob")
    failed = await town.assign("failed", agent="bob")
    await town.fail_task(failed.id, "no", by="bob")
    started = await town.assign("after done", agent="bob", depends_on=[done.ref])
    assert (started.state, started.depends_on, started.waiting_on) == (TaskState.ASSIGNED, [done.id], [])
    assert started.id in await _task_messages(town, "bob")
    with pytest.raises(Invalid, match=f"task {failed.ref} is failed"):
        await town.assign("after failed", agent="bob", depends_on=[done.ref, failed.ref])
    with pytest.raises(NotFound, match="#99"):
        await town.assign("after nothing", depends_on=["#99"])
    assert (await town.list_tasks()).tasks[0].id == started.id  # nothing was created


async def test_a_waiting_task_whose_agent_was_pruned_goes_to_the_backlog(town: Town) -> None:
    await town.register_agent("bob")
    await town.register_agent("temp")
    first = await town.assign("first", agent="bob")
    later = await town.assign("later", agent="temp", depends_on=[first.ref])
    await town.update_agent("temp", state="stopped")
    await town.delete_agent("temp")
    await town.complete_task(first.id, "ok", by="bob")
    moved = await town.get_task(later.id)
    assert (moved.state, moved.assigned_to) == (TaskState.PENDING, None)


async def _complete(town: Town, task_id: str) -> None:
    await town.complete_task(task_id, "ok", by="bob")


@pytest.mark.real_redis
async def test_two_dependencies_completing_at_once_release_the_dependent_exactly_once(
    redis_socket: str, town_name: str
) -> None:
    clients = [Redis(unix_socket_path=redis_socket, decode_responses=True) for _ in range(2)]
    towns = [Town(c, make_config(town_name)) for c in clients]
    try:
        town = towns[0]
        await town.ensure_conductor()
        await town.register_agent("bob")
        await town.register_agent("alice")
        for round_ in range(10):
            a = await town.assign(f"a{round_}", agent="bob")
            b = await town.assign(f"b{round_}", agent="bob")
            c = await town.assign(f"c{round_}", agent="alice", depends_on=[a.ref, b.ref])
            async with anyio.create_task_group() as group:
                group.start_soon(_complete, towns[0], a.id)
                group.start_soon(_complete, towns[1], b.id)
            moved = await town.get_task(c.id)
            assert (moved.state, moved.attempt) == (TaskState.ASSIGNED, 1), round_
            assert (await _task_messages(town, "alice")).count(c.id) == 1
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.real_redis
async def test_a_task_created_while_its_dependency_completes_is_never_left_waiting(
    redis_socket: str, town_name: str
) -> None:
    clients = [Redis(unix_socket_path=redis_socket, decode_responses=True) for _ in range(2)]
    towns = [Town(c, make_config(town_name)) for c in clients]
    try:
        town = towns[0]
        await town.ensure_conductor()
        await town.register_agent("bob")
        created: list[str] = []

        async def create(dependency: str) -> None:
            created.append((await towns[1].assign("after", depends_on=[dependency])).id)

        for _ in range(15):
            first = await town.assign("first", agent="bob")
            async with anyio.create_task_group() as group:
                group.start_soon(_complete, towns[0], first.id)
                group.start_soon(create, first.id)
        states = {(await town.get_task(t)).state for t in created}
        assert states == {TaskState.PENDING}, states
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.real_redis
async def test_mcp_assign_task_takes_depends_on_and_get_task_shows_what_it_waits_on(
    real_town: Town,
) -> None:
    await real_town.register_agent("bob")
    async with connect(real_town, "bob") as bob, connect(real_town) as conductor:
        first = (await ok(conductor, "assign_task", description="a", agent="bob"))["task"]
        second = (await ok(conductor, "assign_task", description="b"))["task"]
        waiting = (await ok(conductor, "assign_task", description="c", agent="bob",
                            depends_on=["#1", second["id"][:6]]))["task"]
        assert waiting["state"] == "waiting"
        assert (waiting["depends_on"], waiting["depends_on_ids"]) == (
            ["#1", "#2"], [first["id"], second["id"]])
        shown = (await ok(bob, "get_task", task_id="#3"))["task"]
        assert (shown["waiting_on"], shown["assigned_to"]) == (["#1", "#2"], "bob")
        listed = (await ok(conductor, "list_tasks", state="waiting"))["tasks"]
        assert [t["number"] for t in listed] == [3]
        await ok(bob, "task_done", task_id="#1", result="did a")
        assert (await ok(bob, "get_task", task_id="#3"))["task"]["waiting_on"] == ["#2"]
        await ok(conductor, "cancel_task", task_id="#2", reason="dropped")
        ended = (await ok(bob, "get_task", task_id="#3"))["task"]
        assert (ended["state"], ended["decided_by"]) == ("cancelled", "dependency")
        assert "#2 was cancelled" in ended["error"]
        missing = await refused(conductor, "assign_task", "not_found", description="d",
                                depends_on=["#42"])
    assert "#42" in missing


async def test_history_says_when_a_task_waits_and_when_it_can_start(town: Town) -> None:
    from tinytown.cli.render import history_lines

    await town.register_agent("bob")
    first = await town.assign("first", agent="bob")
    second = await town.assign("second", agent="bob", depends_on=[first.ref])
    await town.complete_task(first.id, "ok", by="bob")
    lines = [line[10:] for entry in await town.conversation.history(50)
             for line in history_lines(entry, 200)]
    assert f"task {second.ref} waits on {first.ref}" in lines, lines
    waited = lines.index(f"task {second.ref} can start: done waiting, last on {first.ref}")
    assert lines[waited + 1] == f"task {second.ref} assigned to bob (attempt 1)"
