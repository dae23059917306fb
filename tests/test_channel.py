"""The Channel through the Town: priorities, blocking receive, at-least-once delivery,
broadcast, limits and the event stream (SPEC 3).

Logic runs on fakeredis and on a real server (``town``); blocking and cancellation run on
the real server only (``real_town``), because fakeredis does not reproduce them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from conftest import make_config, start_redis_server
from redis.asyncio import Redis
from servers import server_binary

from tinytown import channel as channel_module
from tinytown.channel import EVENTS_MAXLEN, Received
from tinytown.connect import client_options
from tinytown.errors import Conflict, Invalid, NotFound, Unavailable
from tinytown.models import AgentState, MessageKind, Priority
from tinytown.town import Town

pytestmark = pytest.mark.anyio


async def _agents(town: Town, *names: str) -> None:
    for name in names:
        await town.register_agent(name)


def _town_like(town: Town, **overrides: object) -> Town:
    """Another Town object on the same client and town name, with a different config."""
    return Town(town.redis, make_config(town.name, **overrides))


async def _blocked_clients(redis: Redis) -> int:
    return int((await redis.info("clients"))["blocked_clients"])


async def _wait_until_blocked(redis: Redis, baseline: int) -> None:
    """Wait until the server holds one more client in a blocking command than ``baseline``.

    The server offers no notification for this, so it is a bounded readiness probe.
    """
    with anyio.fail_after(10):
        while await _blocked_clients(redis) <= baseline:
            await anyio.sleep(0.005)


# ----------------------------------------------------------------- order and batches


async def test_higher_priority_is_received_first_and_fifo_within_one_priority(town: Town) -> None:
    await _agents(town, "bob")
    sent = [
        ("low-1", Priority.LOW), ("normal-1", Priority.NORMAL), ("urgent-1", Priority.URGENT),
        ("high-1", Priority.HIGH), ("normal-2", Priority.NORMAL), ("urgent-2", Priority.URGENT),
        ("low-2", Priority.LOW), ("high-2", Priority.HIGH),
    ]
    for body, priority in sent:
        await town.send("conductor", "bob", body, priority=priority)

    got = await town.receive("bob", timeout_s=0, max_messages=100)

    assert [m.body for m in got.messages] == [
        "urgent-1", "urgent-2", "high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2",
    ]
    assert not got.timed_out


async def test_receive_returns_at_most_max_messages_and_the_rest_stays_queued(town: Town) -> None:
    await _agents(town, "bob")
    for i in range(5):
        await town.send("conductor", "bob", f"m{i}")

    first = await town.receive("bob", timeout_s=0, max_messages=2)
    second = await town.receive("bob", timeout_s=0, max_messages=2)
    third = await town.receive("bob", timeout_s=0, max_messages=2)

    assert [m.body for m in first.messages] == ["m0", "m1"]
    assert [m.body for m in second.messages] == ["m2", "m3"]
    assert [m.body for m in third.messages] == ["m4"]


async def test_a_receive_caps_the_bodies_it_returns_and_the_rest_comes_in_the_next_receives(
    town: Town,
) -> None:
    await _agents(town, "bob")
    cap = town.config.limits.max_receive_bytes
    assert cap == 100 * 1024
    sent = [f"{i:02d}:" + "x" * (16 * 1024 - 3) for i in range(11)]  # 176 KiB pending
    for body in sent:
        await town.send("conductor", "bob", body)

    batches: list[list[str]] = []
    while True:
        got = await town.receive("bob", timeout_s=0, max_messages=100)
        if not got.messages:
            break
        bodies = [m.body for m in got.messages]
        assert sum(len(b) for b in bodies) <= cap
        # only what this batch returned is in flight: nothing is acked unseen by the next one
        counts = await town.inbox_counts("bob")
        assert (counts.in_flight, counts.pending) == (len(bodies), got.inbox.pending)
        assert got.inbox.pending == len(sent) - sum(len(b) for b in [*batches, bodies])
        batches.append(bodies)

    assert [len(b) for b in batches] == [6, 5]  # 96 KiB, then the 80 KiB left
    assert [b for batch in batches for b in batch] == sent  # in order, none lost or doubled
    counts = await town.inbox_counts("bob")
    assert (counts.pending, counts.in_flight) == (0, 0)


async def test_a_receiver_that_dies_after_a_capped_batch_loses_nothing_of_a_176_kib_inbox(
    town: Town,
) -> None:
    await _agents(town, "bob")
    sent = [f"{i:02d}:" + "x" * (16 * 1024 - 3) for i in range(11)]
    for body in sent:
        await town.send("conductor", "bob", body)
    _, dying, _ = await town.open_session("bob")
    shown = await town.receive("bob", timeout_s=0, max_messages=100, session=dying)
    # the session dies before acknowledging (a client that crashed, or could not show the result)
    _, heir, requeued = await town.open_session("bob")
    assert requeued == len(shown.messages) == 6
    delivered: dict[str, int] = {}
    while got := (await town.receive("bob", timeout_s=0, max_messages=100, session=heir)).messages:
        for m in got:
            assert m.body not in delivered  # no message twice within the heir's receives
            delivered[m.body] = m.delivery_count
    assert sorted(delivered) == sent  # issued 11, observed 11: nothing lost
    assert [delivered[b] for b in sent] == [2] * 6 + [1] * 5  # only the shown batch came again


async def test_a_message_larger_than_the_receive_cap_still_comes_alone(town: Town) -> None:
    small = _town_like(town, limits={"max_receive_bytes": 1000})
    await _agents(small, "bob")
    await small.send("conductor", "bob", "a" * 1500, priority=Priority.URGENT)
    await small.send("conductor", "bob", "b" * 10)

    first = await small.receive("bob", timeout_s=0, max_messages=10)
    second = await small.receive("bob", timeout_s=0, max_messages=10)

    assert [len(m.body) for m in first.messages] == [1500]
    assert [m.body for m in second.messages] == ["b" * 10]


async def test_inbox_counts_show_pending_urgent_and_in_flight(town: Town) -> None:
    await _agents(town, "bob")
    await town.send("conductor", "bob", "u", priority="urgent")
    await town.send("conductor", "bob", "n1")
    await town.send("conductor", "bob", "n2")

    before = await town.inbox_counts("bob")
    await town.receive("bob", timeout_s=0, max_messages=2)
    after = await town.inbox_counts("bob")

    assert (before.pending, before.urgent, before.in_flight) == (3, 1, 0)
    assert (after.pending, after.urgent, after.in_flight) == (1, 0, 2)


async def test_a_receive_reports_the_mailbox_it_leaves_behind(town: Town) -> None:
    await town.register_agent("alice")
    for priority in ("urgent", "urgent", "normal"):
        await town.send("conductor", "alice", priority, priority=priority)

    got = await town.receive("alice", timeout_s=0, max_messages=1)
    assert (got.inbox.pending, got.inbox.urgent, got.inbox.in_flight) == (2, 1, 1)
    assert got.inbox == await town.inbox_counts("alice")
    empty = await town.receive("alice", timeout_s=0, max_messages=5)
    assert (empty.inbox.pending, empty.inbox.in_flight) == (0, 2)


async def test_a_receive_that_puts_back_an_unseen_batch_reports_the_mailbox_it_leaves(
    town: Town,
) -> None:
    await _agents(town, "bob")
    for i in range(3):
        await town.send("conductor", "bob", f"m{i}")
    _, session, _ = await town.open_session("bob")
    await town.receive("bob", timeout_s=0, max_messages=2, session=session, batch="b1")
    town.forget_batch("bob", session, "b1")  # its client never saw it

    got = await town.receive("bob", timeout_s=0, max_messages=1, session=session)

    assert [m.body for m in got.messages] == ["m0"]  # the unseen batch came back first
    assert (got.inbox.pending, got.inbox.in_flight) == (2, 1)
    assert got.inbox == await town.inbox_counts("bob")


async def test_peeking_at_the_inbox_does_not_consume(town: Town) -> None:
    await _agents(town, "bob")
    await town.send("conductor", "bob", "later", priority="low")
    await town.send("conductor", "bob", "first", priority="high")

    peeked = await town.inbox("bob")
    peeked_again = await town.inbox("bob")
    got = await town.receive("bob", timeout_s=0)

    assert [m.body for m in peeked] == ["first", "later"]
    assert [m.id for m in peeked_again] == [m.id for m in peeked]
    assert [m.id for m in got.messages] == [m.id for m in peeked]
    assert all(m.delivery_count == 0 for m in peeked)


async def test_message_fields_survive_the_round_trip(town: Town) -> None:
    await _agents(town, "alice", "bob")
    question = await town.send("alice", "bob", "ready?", kind="query", priority="high")
    asked = (await town.receive("bob", timeout_s=0)).messages[0]
    await town.send("bob", "alice", "yes", kind="ack", reply_to=asked.id)

    answer = (await town.receive("alice", timeout_s=0)).messages[0]

    assert asked.id == question.message.id
    assert (asked.sender, asked.to, asked.kind, asked.priority) == (
        "alice", "bob", MessageKind.QUERY, Priority.HIGH)
    assert asked.delivery_count == 1
    assert answer.reply_to == asked.id and answer.kind == MessageKind.ACK
    assert answer.public()["from"] == "bob"


async def test_sending_to_an_unknown_agent_or_replying_to_an_unknown_message_is_not_found(
    town: Town,
) -> None:
    await _agents(town, "bob")
    with pytest.raises(NotFound):
        await town.send("conductor", "nobody", "hi")
    with pytest.raises(NotFound):
        await town.send("ghost", "bob", "hi")
    with pytest.raises(NotFound):
        await town.send("conductor", "bob", "hi", reply_to="no-such-message")
    assert (await town.inbox_counts("bob")).pending == 0


# ----------------------------------------------------------------- blocking (real Redis)


async def test_a_paused_agents_waiting_receive_sleeps_through_mail_and_wakes_on_resume(
    real_town: Town,
) -> None:
    await _agents(real_town, "bob")
    await real_town.update_agent("bob", state=AgentState.PAUSED)
    baseline = await _blocked_clients(real_town.redis)
    results: list[Received] = []
    about_to_receive = anyio.Event()

    async def receiver() -> None:
        about_to_receive.set()
        results.append(await real_town.receive("bob", timeout_s=30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            await about_to_receive.wait()
            await _wait_until_blocked(real_town.redis, baseline)
            await real_town.send("conductor", "bob", "for after the pause")
            bell = real_town.keys.bell((await real_town.get_agent("bob")).id)
            while await real_town.redis.exists(bell):  # the send rang; the receive looks, quiets it
                await anyio.sleep(0.005)
            await _wait_until_blocked(real_town.redis, baseline)  # and waits again
            assert results == []
            assert (await real_town.inbox_counts("bob")).pending == 1
            await real_town.update_agent("bob", expect_state=[AgentState.PAUSED], state=AgentState.IDLE)
    assert [m.body for m in results[0].messages] == ["for after the pause"]


async def test_blocking_receive_wakes_when_a_message_is_sent(real_town: Town) -> None:
    await _agents(real_town, "bob")
    baseline = await _blocked_clients(real_town.redis)
    results: list[Received] = []
    about_to_receive = anyio.Event()

    async def receiver() -> None:
        about_to_receive.set()
        results.append(await real_town.receive("bob", timeout_s=30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            await about_to_receive.wait()
            await _wait_until_blocked(real_town.redis, baseline)
            assert results == []  # it is waiting, not returned
            await real_town.send("conductor", "bob", "wake up")

    assert [m.body for m in results[0].messages] == ["wake up"]
    assert not results[0].timed_out


async def test_receive_times_out_with_no_messages(real_town: Town) -> None:
    await _agents(real_town, "bob")
    started = anyio.current_time()

    with anyio.fail_after(10):
        got = await real_town.receive("bob", timeout_s=0.2)

    assert got.timed_out and got.messages == []
    assert anyio.current_time() - started >= 0.19


async def test_receive_with_timeout_zero_returns_at_once(real_town: Town) -> None:
    await _agents(real_town, "bob")
    with anyio.fail_after(5):
        got = await real_town.receive("bob", timeout_s=0)
    assert got.timed_out and got.messages == []


async def test_cancelled_receive_leaves_a_later_message_queued(real_town: Town) -> None:
    await _agents(real_town, "bob")
    baseline = await _blocked_clients(real_town.redis)
    results: list[Received] = []

    async def receiver() -> None:
        results.append(await real_town.receive("bob", timeout_s=30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            await _wait_until_blocked(real_town.redis, baseline)
            tg.cancel_scope.cancel()
    await real_town.send("conductor", "bob", "after the cancel")

    counts = await real_town.inbox_counts("bob")
    got = await real_town.receive("bob", timeout_s=1)

    assert results == []
    assert (counts.pending, counts.in_flight) == (1, 0)
    assert [m.body for m in got.messages] == ["after the cancel"]


async def test_a_receive_cancelled_while_taking_a_batch_loses_nothing(real_town: Town) -> None:
    """The cancel lands while the receive script is on the wire (after Redis moved the
    batch to in-flight): the batch must go back to the inbox, not be acked unseen by the
    next receive.  Repeated, since where exactly the cancel lands is up to the scheduler."""
    await _agents(real_town, "bob")
    await real_town.receive("bob", timeout_s=0)  # resolve and cache bob's id first
    for i in range(20):
        sent = await real_town.send("conductor", "bob", f"m{i}")
        results: list[Received] = []

        async def receiver(into: list[Received]) -> None:
            into.append(await real_town.receive("bob", timeout_s=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver, results)
            await anyio.lowlevel.checkpoint()  # the receiver sends its script...
            await anyio.lowlevel.checkpoint()  # ...and waits for the reply
            tg.cancel_scope.cancel()
        if results:
            assert [m.id for m in results[0].messages] == [sent.message.id]
            continue
        got = await real_town.receive("bob", timeout_s=0)
        assert [m.id for m in got.messages] == [sent.message.id]


async def test_a_receive_whose_script_gets_no_answer_is_unavailable_not_stuck(
    redis_socket: str, town_name: str
) -> None:
    """The shield that protects a batch in transit is bounded by the client's socket timeout:
    a Redis that stops answering (here: paused for writes) yields ``unavailable`` instead of
    an uncancellable wait."""
    client = Redis(unix_socket_path=redis_socket, **{**client_options(), "socket_timeout": 0.5})
    town = Town(client, make_config(town_name))
    await town.ensure_conductor()
    await _agents(town, "bob")
    await town.redis.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    try:
        with anyio.fail_after(10), pytest.raises(Unavailable, match="cannot reach Redis.*Timeout"):
            await town.receive("bob", timeout_s=0)
    finally:
        await town.redis.execute_command("CLIENT", "UNPAUSE")
        await client.aclose()


async def test_a_script_redis_runs_after_its_deadline_changes_nothing(
    town: Town, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every script call carries a deadline on Redis's clock; past it the script answers
    ``unavailable`` and writes nothing (here every deadline is already past when it runs)."""
    await _agents(town, "bob")
    sent = await town.send("conductor", "bob", "still here")
    monkeypatch.setattr(channel_module, "SCRIPT_BUDGET_S", -1.0)

    with pytest.raises(Unavailable, match="after its caller had given up"):
        await town.receive("bob", timeout_s=0)
    with pytest.raises(Unavailable, match="after its caller had given up"):
        await town.send("conductor", "bob", "never stored")

    monkeypatch.setattr(channel_module, "SCRIPT_BUDGET_S", 4.0)
    got = await town.receive("bob", timeout_s=0)
    assert [m.id for m in got.messages] == [sent.message.id]
    assert got.messages[0].delivery_count == 1


async def test_progress_is_reported_while_a_receive_waits(real_town: Town) -> None:
    await _agents(real_town, "bob")
    bob = await real_town.get_agent("bob")
    reports: list[tuple[float, float]] = []

    async def progress(elapsed: float, total: float) -> None:
        reports.append((elapsed, total))

    with anyio.fail_after(10):
        got = await real_town.channel.receive(
            bob.id, timeout_s=2.0, max_messages=1, redelivery_after_s=600,
            progress=progress, progress_every_s=0.1,
        )

    assert got.timed_out
    assert len(reports) >= 2 and all(total == 2.0 for _, total in reports)
    assert all(elapsed < total for elapsed, total in reports)  # none once the result is decided


# ----------------------------------------------------------------- at-least-once


async def test_unacked_messages_return_to_the_front_when_a_new_session_takes_over(town: Town) -> None:
    _, first_session, _ = await town.open_session("bob")
    for body in ("m1", "m2", "m3"):
        await town.send("conductor", "bob", body)
    first = await town.receive("bob", timeout_s=0, max_messages=2, session=first_session)

    _, second_session, requeued = await town.open_session("bob")
    again = await town.receive("bob", timeout_s=0, max_messages=10, session=second_session)

    assert [m.body for m in first.messages] == ["m1", "m2"]
    assert requeued == 2
    assert [m.body for m in again.messages] == ["m1", "m2", "m3"]
    assert [m.delivery_count for m in again.messages] == [2, 2, 1]
    assert second_session != first_session


async def test_explicitly_acked_messages_are_never_delivered_again(town: Town) -> None:
    _, session, _ = await town.open_session("bob")
    await town.send("conductor", "bob", "done with this")
    got = await town.receive("bob", timeout_s=0, session=session)

    acked = await town.ack("bob", [m.id for m in got.messages])
    acked_twice = await town.ack("bob", [m.id for m in got.messages])
    _, new_session, requeued = await town.open_session("bob")
    after = await town.receive("bob", timeout_s=0, session=new_session)

    assert (acked, acked_twice, requeued) == (1, 0, 0)
    assert after.timed_out and after.messages == []
    assert (await town.inbox_counts("bob")).in_flight == 0


async def test_the_next_receive_acknowledges_the_previous_batch(town: Town) -> None:
    await _agents(town, "bob")
    await town.send("conductor", "bob", "first")
    await town.receive("bob", timeout_s=0)
    await town.send("conductor", "bob", "second")
    await town.receive("bob", timeout_s=0)

    _, session, requeued = await town.open_session("bob")
    again = await town.receive("bob", timeout_s=0, session=session)

    assert requeued == 1
    assert [m.body for m in again.messages] == ["second"]


async def test_receive_without_ack_previous_keeps_the_earlier_batch_in_flight(town: Town) -> None:
    await _agents(town, "bob")
    await town.send("conductor", "bob", "first")
    await town.receive("bob", timeout_s=0)
    await town.send("conductor", "bob", "second")
    await town.receive("bob", timeout_s=0, ack_previous=False)

    assert [m.body for m in await town.in_flight("bob")] == ["first", "second"]


async def test_an_overdue_in_flight_message_is_redelivered(town: Town) -> None:
    quick = _town_like(town, redelivery_after_s=0.05)
    await _agents(quick, "bob")
    await quick.send("conductor", "bob", "slow work")
    await quick.receive("bob", timeout_s=0)

    await anyio.sleep(0.1)  # the redelivery deadline is a time; let it pass
    # Any receive in the town redelivers overdue messages; this one keeps bob's batch unacked.
    again = await quick.receive("bob", timeout_s=0, ack_previous=False)

    assert [(m.body, m.delivery_count) for m in again.messages] == [("slow work", 2)]


async def test_an_agent_that_heartbeats_keeps_its_overdue_batch_until_it_falls_silent(
    town: Town,
) -> None:
    # The window is long enough that the heartbeat and carol's receive right after it fall
    # inside it even on a loaded machine (with 0.15 s, a stall between the two redelivered).
    quick = _town_like(town, redelivery_after_s=1.0)
    await _agents(quick, "bob", "carol")
    await quick.send("conductor", "bob", "long job")
    await quick.receive("bob", timeout_s=0)

    await anyio.sleep(1.05)  # overdue, but bob is still alive and says so
    await quick.heartbeat("bob")
    await quick.receive("carol", timeout_s=0)  # any receive runs the redelivery
    kept = await quick.inbox_counts("bob")
    with anyio.fail_after(20):  # until bob has been silent for the whole window
        while True:
            await quick.receive("carol", timeout_s=0)  # any receive runs the redelivery
            back = await quick.inbox_counts("bob")
            if back.in_flight == 0:
                break
            await anyio.sleep(0.05)

    assert (kept.pending, kept.in_flight) == (0, 1)
    assert (back.pending, back.in_flight) == (1, 0)


async def test_the_agents_own_next_receive_acks_even_an_overdue_batch(town: Town) -> None:
    quick = _town_like(town, redelivery_after_s=0.05)
    await _agents(quick, "bob")
    await quick.send("conductor", "bob", "handled")
    await quick.receive("bob", timeout_s=0)

    await anyio.sleep(0.1)  # past the redelivery deadline
    again = await quick.receive("bob", timeout_s=0)

    assert again.timed_out and again.messages == []
    assert (await quick.inbox_counts("bob")).in_flight == 0


async def test_a_receive_with_a_superseded_session_is_a_conflict(town: Town) -> None:
    _, old, _ = await town.open_session("bob")
    _, new, _ = await town.open_session("bob")
    await town.send("conductor", "bob", "for the new session")

    with pytest.raises(Conflict):
        await town.receive("bob", timeout_s=0, session=old)
    got = await town.receive("bob", timeout_s=0, session=new)

    assert [m.body for m in got.messages] == ["for the new session"]


async def test_requeue_in_flight_puts_messages_back_at_the_front(town: Town) -> None:
    await _agents(town, "bob")
    await town.send("conductor", "bob", "a")
    await town.receive("bob", timeout_s=0)
    await town.send("conductor", "bob", "b")

    assert await town.requeue_in_flight("bob") == 1
    assert [m.body for m in await town.inbox("bob")] == ["a", "b"]


# ----------------------------------------------------------------- broadcast


async def test_broadcast_reaches_every_live_agent_but_the_sender(town: Town) -> None:
    await _agents(town, "alice", "bob", "carol", "dave")
    await town.update_agent("dave", state=AgentState.STOPPED)

    receipt = await town.send("alice", "all", "standup in 5")

    assert len(receipt.copies) == 3  # bob, carol and the conductor
    for name in ("bob", "carol", "conductor"):
        got = await town.receive(name, timeout_s=0)
        assert [(m.body, m.sender, m.to) for m in got.messages] == [("standup in 5", "alice", "all")]
    assert (await town.inbox_counts("alice")).pending == 0
    assert (await town.inbox_counts("dave")).pending == 0


async def test_each_broadcast_copy_is_acknowledged_on_its_own(town: Town) -> None:
    await _agents(town, "bob", "carol")
    await town.send("conductor", "all", "news")
    bob_copy = (await town.receive("bob", timeout_s=0)).messages[0]
    carol_copy = (await town.receive("carol", timeout_s=0)).messages[0]

    await town.ack("bob", [bob_copy.id])
    _, _, bob_requeued = await town.open_session("bob")
    _, _, carol_requeued = await town.open_session("carol")

    assert bob_copy.id != carol_copy.id
    assert (bob_requeued, carol_requeued) == (0, 1)
    assert [m.id for m in await town.inbox("carol")] == [carol_copy.id]


# ----------------------------------------------------------------- limits


async def test_a_body_over_64_kib_is_invalid_and_nothing_is_stored(town: Town) -> None:
    await _agents(town, "bob")
    events_before = await town.history(100)

    with pytest.raises(Invalid, match="limit"):
        await town.send("conductor", "bob", "x" * (64 * 1024 + 1))

    assert (await town.inbox_counts("bob")).pending == 0
    assert await town.history(100) == events_before
    await town.send("conductor", "bob", "x" * (64 * 1024))  # exactly at the limit is fine


async def test_an_empty_body_is_refused(town: Town) -> None:
    await _agents(town, "bob")
    with pytest.raises(Invalid):
        await town.send("conductor", "bob", "   \n")
    assert (await town.inbox_counts("bob")).pending == 0


async def test_bad_kind_or_priority_is_invalid(town: Town) -> None:
    await _agents(town, "bob")
    with pytest.raises(Invalid, match="kind"):
        await town.send("conductor", "bob", "hi", kind="shout")
    with pytest.raises(Invalid, match="priority"):
        await town.send("conductor", "bob", "hi", priority="asap")


async def test_a_full_inbox_refuses_the_message_and_stores_nothing(town: Town) -> None:
    small = _town_like(town, limits={"max_inbox": 3})
    await _agents(small, "bob", "carol")
    for i in range(3):
        await small.send("conductor", "bob", f"m{i}")
    events_before = await small.history(100)

    with pytest.raises(Invalid, match="full"):
        await small.send("conductor", "bob", "one too many")
    with pytest.raises(Invalid, match="full"):
        await small.send("conductor", "all", "broadcast is all or nothing")

    assert (await small.inbox_counts("bob")).pending == 3
    assert (await small.inbox_counts("carol")).pending == 0
    assert await small.history(100) == events_before


async def test_receive_arguments_out_of_range_are_invalid(town: Town) -> None:
    await _agents(town, "bob")
    with pytest.raises(Invalid):
        await town.receive("bob", timeout_s=301)
    with pytest.raises(Invalid):
        await town.receive("bob", timeout_s=-1)
    with pytest.raises(Invalid):
        await town.receive("bob", timeout_s=0, max_messages=0)


# ----------------------------------------------------------------- events


async def test_registrations_sends_and_task_moves_appear_in_history_in_order(town: Town) -> None:
    await _agents(town, "bob")
    await town.send("conductor", "bob", "hello")
    task = await town.assign("build it", agent="bob")
    await town.receive("bob", timeout_s=0, max_messages=10)
    await town.complete_task(task.id, "built", by="bob")

    types = [e.type for e in await town.history(100)]

    assert types == [
        "agent.registered",  # conductor
        "agent.registered",  # bob
        "message.sent",
        "task.created", "task.assigned", "message.sent",
        "task.started",
        "task.completed",
    ]
    sent = [e for e in await town.history(100) if e.type == "message.sent"][0]
    assert (sent.data["from"], sent.data["to"], sent.data["kind"]) == ("conductor", "bob", "info")


async def test_the_event_stream_is_capped_near_ten_thousand(town: Town) -> None:
    async with town.redis.pipeline(transaction=False) as pipe:
        for i in range(EVENTS_MAXLEN + 500):
            pipe.xadd(town.keys.events, {"type": "filler", "data": f'{{"i": {i}}}'})
        await pipe.execute()
    await _agents(town, "bob")  # one event through the Town trims the stream

    length = await town.redis.xlen(town.keys.events)

    assert EVENTS_MAXLEN <= length < EVENTS_MAXLEN + 200
    assert (await town.history(1))[0].type == "agent.registered"


async def test_follow_yields_new_events_as_they_are_appended(real_town: Town) -> None:
    await _agents(real_town, "bob")
    seen: list[str] = []
    following = anyio.Event()
    baseline = await _blocked_clients(real_town.redis)

    async def follower() -> None:
        stream = real_town.follow(block_s=1)
        following.set()
        async for event in stream:
            seen.append(event.type)
            if event.type == "message.sent":
                return

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower)
            await following.wait()
            await _wait_until_blocked(real_town.redis, baseline)
            await real_town.send("conductor", "bob", "tail me")

    assert seen == ["message.sent"]


async def test_follow_ends_when_its_task_was_cancelled_even_if_a_call_swallowed_the_cancellation(
    real_town: Town,
) -> None:
    """Ctrl-C cancels ``tt status --watch`` / ``tt history --follow`` once; redis-py 8.1 can
    swallow a cancellation that lands mid-command, and the follow loop then waited forever.
    The swallowing is done here on purpose, as the library does it."""
    import asyncio

    waiting = anyio.Event()

    async def follower() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()  # the command in flight when the cancellation lands
        except asyncio.CancelledError:
            pass  # swallowed, without uncancel(): the task still counts the request
        async for _event in real_town.follow(block_s=0.2):
            pass

    task = asyncio.create_task(follower())
    await waiting.wait()
    task.cancel()
    with anyio.fail_after(20):
        done, _ = await asyncio.wait({task})
    assert task.cancelled(), "the follow loop went on after its task was cancelled"


# ----------------------------------------------------------------- isolation


async def test_two_towns_on_one_redis_do_not_see_each_other(real_redis: Redis, town_name: str) -> None:
    north = Town(real_redis, make_config(town_name))
    south_name = town_name + "-south"
    south = Town(real_redis, make_config(south_name))
    try:
        await north.ensure_conductor()
        await south.ensure_conductor()
        await north.register_agent("bob")
        await south.register_agent("bob")
        await north.send("conductor", "bob", "north only")
        await north.assign("a northern task")

        assert [m.body for m in await south.inbox("bob")] == []
        assert (await south.receive("bob", timeout_s=0)).timed_out
        assert (await south.list_tasks()).tasks == []
        assert [a.name for a in await south.list_agents()] == ["conductor", "bob"]
        assert {e.data.get("agent") for e in await south.history(100)} == {"conductor", "bob"}
        assert (await north.get_agent("bob")).id != (await south.get_agent("bob")).id
        assert (await south.status()).tasks["pending"] == 0
        assert [m.body for m in await north.inbox("bob")] == ["north only"]
    finally:
        async for key in real_redis.scan_iter(match=south.keys.match_all):
            await real_redis.delete(key)


async def test_reset_deletes_only_this_towns_keys_and_recreates_the_conductor(
    real_redis: Redis, town_name: str
) -> None:
    town = Town(real_redis, make_config(town_name))
    other = Town(real_redis, make_config(town_name + "-other"))
    try:
        for t in (town, other):
            await t.ensure_conductor()
            await t.register_agent("bob")
            await t.send("conductor", "bob", "hello")
            await t.assign("work")

        deleted = await town.reset()

        assert deleted > 0
        assert [a.name for a in await town.list_agents()] == ["conductor"]
        assert (await town.list_tasks()).tasks == []
        assert [e.type for e in await town.history(10)] == ["agent.registered"]
        assert [a.name for a in await other.list_agents()] == ["conductor", "bob"]
        assert [m.body for m in await other.inbox("bob")] == ["hello"]
        assert len((await other.list_tasks()).tasks) == 1
    finally:
        async for key in real_redis.scan_iter(match=other.keys.match_all):
            await real_redis.delete(key)


# ----------------------------------------------------------------- Redis 6.2


@pytest.fixture(scope="module")
def redis62_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, sock = start_redis_server(tmp_path_factory.mktemp("r62"), binary=server_binary("redis6.2"))
    try:
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def town62(redis62_socket: str, town_name: str) -> AsyncIterator[Town]:
    client = Redis(unix_socket_path=redis62_socket, decode_responses=True, socket_timeout=None)
    version = (await client.info("server"))["redis_version"]
    assert str(version).startswith("6.2"), version
    town = Town(client, make_config(town_name))
    await town.ensure_conductor()
    try:
        yield town
    finally:
        await client.aclose()


async def test_send_receive_claim_and_error_replies_work_on_redis_6_2(town62: Town) -> None:
    await _agents(town62, "bob")
    baseline = await _blocked_clients(town62.redis)
    results: list[Received] = []

    async def receiver() -> None:
        results.append(await town62.receive("bob", timeout_s=10))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            await _wait_until_blocked(town62.redis, baseline)
            await town62.send("conductor", "bob", "hello 6.2", priority="urgent")
    task = await town62.assign("backlog work")
    claimed = await town62.claim("bob")

    assert [m.body for m in results[0].messages] == ["hello 6.2"]
    assert claimed.id == task.id and claimed.assigned_to == (await town62.get_agent("bob")).id
    with pytest.raises(Conflict):
        await town62.claim("bob", task.id)
    with pytest.raises(NotFound):
        await town62.claim("bob")
    with pytest.raises(Invalid):
        await town62.register_agent("Bad Name")
    await town62.register_agent("carol")
    with pytest.raises(Conflict):
        await town62.register_agent("CAROL")
