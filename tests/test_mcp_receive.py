"""The blocking ``receive`` tool: timeouts, progress, cancellation, concurrency, redelivery.

All on a real redis-server (fakeredis does not reproduce blocking or cancellation).  The
server is built with a short progress interval, so a progress notification is the event
that proves a receive is waiting inside Redis; nothing here sleeps to wait.
"""

from __future__ import annotations

import anyio
import pytest
from mcp_support import connect, ok, payload

from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis]

FAST_PROGRESS = {"progress_every_s": 0.05}


async def test_a_timeout_is_a_normal_result(real_town: Town) -> None:
    async with connect(real_town, "alice") as client:
        with anyio.fail_after(10):
            got = await ok(client, "receive", timeout_s=0.2)
    assert got == {"messages": [], "timed_out": True, "inbox": {"pending": 0, "urgent": 0}}


async def test_receive_returns_as_soon_as_a_message_arrives(real_town: Town) -> None:
    async with connect(real_town, "alice", **FAST_PROGRESS) as client:
        waiting = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            waiting.set()

        async with anyio.create_task_group() as tg:
            results: list[dict[str, object]] = []

            async def wait_for_mail() -> None:
                result = await client.call_tool("receive", {"timeout_s": 60}, progress_callback=on_progress)
                results.append(payload(result))

            tg.start_soon(wait_for_mail)
            with anyio.fail_after(10):
                await waiting.wait()
                await real_town.send("conductor", "alice", "wake up")
    [got] = results
    assert got["timed_out"] is False
    assert [m["body"] for m in got["messages"]] == ["wake up"]  # type: ignore[attr-defined]


async def test_a_waiting_receive_reports_progress_when_asked(real_town: Town) -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with connect(real_town, "alice", **FAST_PROGRESS) as client:
        with anyio.fail_after(10):
            result = await client.call_tool("receive", {"timeout_s": 2}, progress_callback=on_progress)
    assert payload(result)["timed_out"] is True
    assert len(seen) >= 2
    assert all(total == 2 for _, total in seen)
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


async def test_no_progress_is_reported_once_the_wait_has_reached_its_deadline(real_town: Town) -> None:
    """A notification sent after the result is decided reaches a client that has already dropped
    the request's progress token: a receive shorter than one progress interval reports none,
    and a longer one never reports the deadline itself."""
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with connect(real_town, "alice") as client:  # progress every 10 s
        with anyio.fail_after(10):
            result = await client.call_tool("receive", {"timeout_s": 0.3}, progress_callback=on_progress)
    assert payload(result)["timed_out"] is True
    assert seen == []
    async with connect(real_town, "alice", **FAST_PROGRESS) as client:
        with anyio.fail_after(10):
            await client.call_tool("receive", {"timeout_s": 2}, progress_callback=on_progress)
    assert seen and all(p < 2 for p, _ in seen)


async def test_cancelling_a_waiting_receive_leaves_the_next_message_queued(real_town: Town) -> None:
    async with connect(real_town, "alice", **FAST_PROGRESS) as client:
        waiting = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            waiting.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "receive", {"timeout_s": 60}, None, on_progress)
                await waiting.wait()
                tg.cancel_scope.cancel()
        await real_town.send("conductor", "alice", "after the cancel")
        counts = await real_town.inbox_counts("alice")
        assert (counts.pending, counts.in_flight) == (1, 0)
        # the server still answers, and the message is delivered once, to the next receive
        assert (await ok(client, "whoami"))["inbox"]["pending"] == 1
        got = await ok(client, "receive", timeout_s=5)
    assert [(m["body"], m["delivery_count"]) for m in got["messages"]] == [("after the cancel", 1)]


async def test_a_blocked_receive_does_not_hold_up_other_calls_of_the_session(real_town: Town) -> None:
    async with connect(real_town, "alice", **FAST_PROGRESS) as client:
        waiting = anyio.Event()
        received: list[dict[str, object]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            waiting.set()

        async def wait_for_mail() -> None:
            received.append(payload(await client.call_tool(
                "receive", {"timeout_s": 60}, progress_callback=on_progress)))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_mail)
                await waiting.wait()
                me = await ok(client, "whoami")
                status = await ok(client, "town_status")
                await ok(client, "send_message", to="alice", body="note to self")
    assert me["agent"]["name"] == "alice" and status["town"] == real_town.name
    assert [m["body"] for m in received[0]["messages"]] == ["note to self"]  # type: ignore[index]


async def test_an_unacknowledged_message_comes_back_to_the_next_session(real_town: Town) -> None:
    await real_town.register_agent("alice")
    sent = await real_town.send("conductor", "alice", "important")
    async with connect(real_town, "alice") as first:
        got = await ok(first, "receive", timeout_s=5)
        assert [(m["id"], m["delivery_count"]) for m in got["messages"]] == [(sent.message.id, 1)]
    async with connect(real_town, "alice") as second:
        again = await ok(second, "receive", timeout_s=5)
        assert [(m["id"], m["delivery_count"]) for m in again["messages"]] == [(sent.message.id, 2)]
        # receiving again acknowledges that batch: a third session gets nothing back
        await ok(second, "receive", timeout_s=0)
    async with connect(real_town, "alice") as third:
        assert (await ok(third, "receive", timeout_s=0))["messages"] == []


async def test_priorities_and_batches_follow_the_channel(real_town: Town) -> None:
    await real_town.register_agent("alice")
    for body, priority in [("low", "low"), ("normal", "normal"), ("urgent", "urgent"), ("high", "high")]:
        await real_town.send("conductor", "alice", body, priority=priority)
    async with connect(real_town, "alice") as client:
        first = await ok(client, "receive", timeout_s=1, max_messages=3)
        rest = await ok(client, "receive", timeout_s=1)
    assert [m["body"] for m in first["messages"]] == ["urgent", "high", "normal"]
    assert first["inbox"] == {"pending": 1, "urgent": 0}
    assert [m["body"] for m in rest["messages"]] == ["low"]


async def test_a_176_kb_inbox_comes_in_results_of_at_most_100_kb_and_nothing_is_acked_unseen(
    real_town: Town,
) -> None:
    await real_town.register_agent("alice")
    sent = [f"{i:02d}:" + "x" * (16 * 1024 - 3) for i in range(11)]
    for body in sent:
        await real_town.send("conductor", "alice", body)
    seen: list[str] = []
    async with connect(real_town, "alice") as client:
        first = await ok(client, "receive", timeout_s=0, max_messages=100)
        seen += [m["body"] for m in first["messages"]]
        assert (len(first["messages"]), first["inbox"]["pending"]) == (6, 5)
        assert (await real_town.inbox_counts("alice")).in_flight == 6  # only what it was shown
        while True:
            got = await ok(client, "receive", timeout_s=0, max_messages=100)
            if not got["messages"]:
                break
            assert sum(len(m["body"]) for m in got["messages"]) <= 100 * 1024
            seen += [m["body"] for m in got["messages"]]
    assert seen == sent
