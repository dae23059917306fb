"""Agents (SPEC 2): names, the conductor and its alias, limits, attach, state, pruning."""

from __future__ import annotations

import pytest
from conftest import make_config

from tinytown.errors import Conflict, Invalid, NotFound
from tinytown.models import CONDUCTOR, AgentState, now_ms
from tinytown.town import Town

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("name", ["a", "bob", "worker-2", "db_admin", "x" * 32])
async def test_good_agent_names_are_accepted(town: Town, name: str) -> None:
    agent = await town.register_agent(name)
    assert agent.name == name
    assert (await town.get_agent(name)).id == agent.id


@pytest.mark.parametrize("name", ["", "2fast", "-dash", "has space", "dot.name", "x" * 33, "ünï"])
async def test_bad_agent_names_are_invalid(town: Town, name: str) -> None:
    with pytest.raises(Invalid, match="not allowed"):
        await town.register_agent(name)
    assert [a.name for a in await town.list_agents()] == [CONDUCTOR]


@pytest.mark.parametrize("name", ["supervisor", "all", "ALL", "Supervisor", "Conductor"])
async def test_reserved_names_cannot_be_registered(town: Town, name: str) -> None:
    with pytest.raises(Invalid, match="reserved"):
        await town.register_agent(name, cli="claude")


async def test_a_second_conductor_cannot_be_registered(town: Town) -> None:
    with pytest.raises(Conflict, match="exists"):
        await town.register_agent("conductor", cli="claude")
    assert [a.cli for a in await town.list_agents()] == [None]


async def test_names_are_unique_regardless_of_case(town: Town) -> None:
    bob = await town.register_agent("Bob")

    with pytest.raises(Conflict, match="exists"):
        await town.register_agent("bob")
    with pytest.raises(Conflict):
        await town.register_agent("BOB")

    assert bob.name == "bob"
    assert (await town.get_agent("BoB")).id == bob.id
    assert [a.name for a in await town.list_agents()] == [CONDUCTOR, "bob"]


async def test_register_with_exist_ok_returns_the_existing_agent(town: Town) -> None:
    first = await town.register_agent("bob", role="reviewer")
    again = await town.register_agent("bob", exist_ok=True)
    assert again.id == first.id and again.role == "reviewer"


async def test_the_conductor_always_exists_and_supervisor_is_its_alias(town: Town) -> None:
    conductor = await town.get_agent("conductor")
    await town.ensure_conductor()
    await town.register_agent("bob")

    await town.send("bob", "supervisor", "for the human")

    assert (await town.get_agent("supervisor")).id == conductor.id
    assert [a.id for a in await town.list_agents() if a.name == CONDUCTOR] == [conductor.id]
    assert [m.body for m in await town.inbox("conductor")] == ["for the human"]
    assert [m.to for m in await town.inbox("supervisor")] == [CONDUCTOR]


async def test_max_agents_is_enforced_and_the_conductor_does_not_count(town: Town) -> None:
    small = Town(town.redis, make_config(town.name, max_agents=2))
    await small.register_agent("one")
    await small.register_agent("two")

    with pytest.raises(Invalid, match="max_agents"):
        await small.register_agent("three")

    assert [a.name for a in await small.list_agents()] == [CONDUCTOR, "one", "two"]


async def test_a_first_session_attaches_a_missing_agent_with_no_cli(town: Town) -> None:
    agent, session, requeued = await town.open_session("Claude-Window")

    stored = await town.get_agent("claude-window")
    types = [e.type for e in await town.history(10)]
    assert (agent.name, agent.cli, agent.state, requeued) == ("claude-window", None, AgentState.IDLE, 0)
    assert stored.session == session and stored.cli is None
    assert types[-2:] == ["agent.registered", "agent.attached"]


async def test_a_session_without_attach_needs_an_existing_agent(town: Town) -> None:
    with pytest.raises(NotFound):
        await town.open_session("ghost", attach=False)
    assert [a.name for a in await town.list_agents()] == [CONDUCTOR]


async def test_a_new_session_revives_a_stopped_agent(town: Town) -> None:
    await town.register_agent("bob", cli="claude")
    await town.update_agent("bob", state=AgentState.STOPPED)

    agent, _, _ = await town.open_session("bob")

    assert agent.state == AgentState.IDLE and agent.cli == "claude"


async def test_update_agent_records_state_changes_as_events(town: Town) -> None:
    await town.register_agent("bob")

    paused = await town.update_agent("bob", state="paused", role="tester")
    cleared = await town.update_agent("bob", role=None)

    assert paused.state == AgentState.PAUSED and paused.role == "tester"
    assert cleared.role is None and (await town.get_agent("bob")).role is None
    assert (await town.history(1))[0].type == "agent.paused"
    with pytest.raises(Invalid):
        await town.update_agent("bob", state="asleep")
    with pytest.raises(NotFound):
        await town.update_agent("ghost", state="idle")


async def test_list_agents_filters_by_state(town: Town) -> None:
    for name in ("a", "b", "c"):
        await town.register_agent(name)
    await town.update_agent("b", state=AgentState.STOPPED)

    assert [a.name for a in await town.list_agents(state="stopped")] == ["b"]
    assert [a.name for a in await town.list_agents(AgentState.IDLE)] == [CONDUCTOR, "a", "c"]
    with pytest.raises(Invalid):
        await town.list_agents(state="zombie")


async def test_an_agent_not_seen_for_stale_after_s_is_stale(town: Town) -> None:
    await town.register_agent("bob")
    await town.register_agent("gone")
    await town.update_agent("gone", last_seen=now_ms() - 200_000)
    await town.update_agent("bob", last_seen=now_ms() - 200_000)
    await town.heartbeat("bob")

    views = {v.agent.name: v.stale for v in (await town.status()).agents}

    assert views == {CONDUCTOR: False, "bob": False, "gone": True}
    await town.update_agent("gone", state=AgentState.STOPPED)
    assert not (await town.get_agent("gone")).is_stale(town.config.stale_after_s, at_ms=await town.now_ms())


async def test_only_a_stopped_agent_can_be_deleted_and_its_name_is_free_again(town: Town) -> None:
    await town.register_agent("bob")
    await town.send("conductor", "bob", "unread")
    await town.send("conductor", "bob", "read")
    await town.receive("bob", timeout_s=0, max_messages=1)

    with pytest.raises(Conflict, match="kill it"):
        await town.delete_agent("bob")
    await town.update_agent("bob", state=AgentState.STOPPED)
    await town.delete_agent("bob")

    with pytest.raises(NotFound):
        await town.get_agent("bob")
    assert [a.name for a in await town.list_agents()] == [CONDUCTOR]
    reborn = await town.register_agent("bob")
    assert await town.inbox_counts("bob") == await town.inbox_counts("conductor")
    assert (await town.inbox_counts("bob")).pending == 0 and reborn.state == AgentState.IDLE
    assert await town.redis.zcard(town.keys.inflight_due) == 0


async def test_the_conductor_cannot_be_deleted(town: Town) -> None:
    with pytest.raises(Conflict, match="always present"):
        await town.delete_agent("supervisor")


async def test_deleting_an_agent_removes_its_messages_and_returns_its_tasks_to_the_backlog(
    town: Town,
) -> None:
    await town.register_agent("bob")
    task = await town.assign("half done", agent="bob")
    await town.send("conductor", "bob", "never read")
    await town.receive("bob", timeout_s=0, max_messages=1)  # the task: running, in flight
    pending = [m.id for m in await town.inbox("bob")]
    in_flight = [m.id for m in await town.in_flight("bob")]
    await town.update_agent("bob", state=AgentState.STOPPED)

    await town.delete_agent("bob")

    stored = await town.get_task(task.id)
    assert (stored.state, stored.assigned_to) == ("pending", None)
    assert [t.id for t in (await town.list_tasks(state="pending")).tasks] == [task.id]
    assert len(pending) == 1 and len(in_flight) == 1
    for mid in pending + in_flight:
        assert not await town.redis.exists(town.keys.message(mid))
    await town.register_agent("carol")
    assert (await town.claim("carol")).id == task.id
