"""The fault tier: the delivery rule of the README under the faults real clients and machines
produce, each scenario counted by a :class:`~fault_support.Ledger` (sent, lost, delivered
twice before ack, delivered after ack) and its figures printed.

* clients that give up on a receive at the moment a message arrives (cancel, SDK timeout);
* a client with its own tool timeout that gives up without a word (the orphaned receive);
* Redis stalled (SIGSTOP) during a receive and during every other tool and command;
* a proxy that cuts the connection after a script ran, before its reply reached redis-py;
* same-name sessions taking the mailbox over while messages flow;
* ``tt receive`` beside a live session;
* processes whose clocks are minutes ahead.

Everything is real: redis-server processes of the test's own, ``tinytown-mcp`` over stdio
with the official client (or a raw JSON-RPC one), ``tt`` subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import clean_env, make_config, start_redis_server
from fault_support import CuttingProxy, Ledger, RawClient, tool_payload
from mcp.shared.exceptions import MCPError
from mcp_support import SCRIPT, ok, stdio
from redis.asyncio import Redis

from tinytown.connect import client_options
from tinytown.errors import Unavailable
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis, pytest.mark.faults]

TT = str(Path(sys.executable).parent / "tt")
ROUNDS = int(os.environ.get("TINYTOWN_FAULT_ROUNDS", "300"))
UNAVAILABLE_WITHIN_S = 8.0  # "a few seconds": the 5 s call bound plus a loaded machine's slack


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        sys.stdout.write(f"\nfault figures: {line}\n")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test alone: it may be stopped (SIGSTOP) without hurting others."""
    proc, sock = start_redis_server(tmp_path / "redis")
    try:
        yield proc, sock
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(10)


def town_env(root: Path, redis_url: str, name: str) -> dict[str, str]:
    env = clean_env()
    env["TINYTOWN_TOWN"] = str(root)
    env["REDIS_URL"] = redis_url
    root.mkdir(parents=True, exist_ok=True)
    (root / "tinytown.toml").write_text(f'name = "{name}"\n')
    return env


@pytest.fixture
async def bounded_town(redis_socket: str, town_name: str) -> AsyncIterator[Town]:
    """The sender's Town on the session's Redis, with the product's call bounds."""
    town = Town(Redis(unix_socket_path=redis_socket, **client_options()), make_config(town_name))
    await town.ensure_conductor()
    try:
        yield town
    finally:
        await town.redis.aclose()


async def drain(client: Any, ledger: Ledger, town: Town | None = None) -> None:
    """Receive until the inbox is empty, as the client would go on doing (``town``: count
    acknowledgements as Redis has them, see :meth:`Ledger.settle`)."""
    while True:
        if town is None:
            ledger.asking_again()
        else:
            await ledger.settle(town)
        got = await ok(client, "receive", timeout_s=0, max_messages=100)
        if not got["messages"]:
            return
        ledger.saw(m["id"] for m in got["messages"])


# ----------------------------------------------------------------- clients that give up


async def give_up_receive(
    client: Any, outcome: list[dict[str, Any]], scope: anyio.CancelScope, timeout: float | None
) -> None:
    """A receive the caller may cancel (``scope``) or the SDK may time out (``timeout``)."""
    with scope:
        try:
            result = await client.call_tool(
                "receive", {"timeout_s": 5, "max_messages": 10}, read_timeout_seconds=timeout
            )
        except MCPError:
            return  # the SDK's own timeout: nothing seen
        outcome.append(result.structured_content or {})


async def test_clients_that_give_up_on_a_receive_as_a_message_arrives_lose_nothing(
    tmp_path: Path, redis_socket: str, town_name: str, bounded_town: Town,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Hundreds of rounds: the official client (over stdio) waits in ``receive``, a message is
    sent, and the client cancels the call — or its own read timeout fires — within a few ms
    of it, on either side of the moment the server answers.  The SDK then sends
    ``notifications/cancelled``, also for a call the server had already answered; a batch the
    client never saw must come back rather than be acknowledged by the next receive."""
    env = town_env(tmp_path / "town", f"unix://{redis_socket}", town_name)
    ledger = Ledger("client gives up on receive as a message arrives (cancel / SDK timeout)")
    rng = random.Random(8)
    gave_up = 0
    # Each way of giving up (SDK timeout on odd rounds, cancel on even ones) has its own delay,
    # moved after every round toward the moment the server answers: longer after a give-up,
    # shorter after an answer.  About half the rounds then give up, on either side of the
    # answer, however fast the server answers; a fixed range of delays gave up in fewer than 1
    # round in 10 (and failed the count below) once the server answered within ~2 ms.
    reach = [0.004, 0.004]
    with anyio.fail_after(300), (tmp_path / "server.err").open("w") as err:
        async with stdio(env, "bob", errlog=err) as client:
            await ok(client, "whoami")
            for round_no in range(ROUNDS):
                delay = reach[round_no % 2] * rng.uniform(0.5, 1.5)
                await ledger.settle(bounded_town)
                outcome: list[dict[str, Any]] = []
                scope = anyio.CancelScope()
                async with anyio.create_task_group() as tg:
                    if round_no % 2:  # the SDK's read timeout, a few ms after the request
                        tg.start_soon(give_up_receive, client, outcome, anyio.CancelScope(), delay)
                        sent = await bounded_town.send("conductor", "bob", f"m{round_no}")
                    else:  # the caller cancels a few ms after the message is sent
                        tg.start_soon(give_up_receive, client, outcome, scope, None)
                        sent = await bounded_town.send("conductor", "bob", f"m{round_no}")
                        await anyio.sleep(delay)
                        scope.cancel()
                ledger.send(sent.message.id)
                if outcome:
                    ledger.saw(m["id"] for m in outcome[0]["messages"])
                    reach[round_no % 2] = max(reach[round_no % 2] * 0.8, 0.0002)
                else:
                    gave_up += 1
                    reach[round_no % 2] = min(reach[round_no % 2] * 1.25, 1.0)
            await drain(client, ledger, bounded_town)
            counts = await bounded_town.inbox_counts("bob")
    show(capsys, ledger.report(rounds=ROUNDS, client_gave_up=gave_up))
    if ledger.after_ack:
        show(capsys, "\n".join(ledger.log))
    ledger.check()
    assert gave_up >= ROUNDS // 10  # the faults happened
    assert (counts.pending, counts.in_flight) == (0, 0)


async def test_a_client_that_gives_up_without_a_cancel_does_not_leave_a_receive_taking_its_mail(
    tmp_path: Path, redis_socket: str, town_name: str, bounded_town: Town,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A client whose own tool timeout is shorter than ``timeout_s`` and that sends no cancel
    (a raw JSON-RPC client here): its orphaned receive keeps waiting.  Before, the orphan —
    the older waiter in Redis — took the next message and answered into the void, and the
    client's next receive acknowledged it.  Now the client's next receive replaces the orphan
    (which answers ``conflict`` to nobody), so the message goes to the receive the client
    waits on."""
    env = town_env(tmp_path / "town", f"unix://{redis_socket}", town_name)
    ledger = Ledger("client gives up on receive without a cancel, then receives again")
    rounds = max(ROUNDS // 3, 10)
    replaced = 0
    with anyio.fail_after(300), (tmp_path / "server.err").open("w") as err:
        client = await RawClient.start([str(SCRIPT), "--agent", "bob"], env, err)
        try:
            receive = {"name": "receive", "arguments": {"timeout_s": 60}}
            orphan, _ = await client.send_request("tools/call", receive)
            client.give_up(orphan)
            for round_no in range(rounds):
                ledger.asking_again()
                _, answer = await client.send_request("tools/call", receive)
                while orphan not in client.late:  # the orphan's answer: it was replaced
                    client.late_event.clear()
                    await client.late_event.wait()
                text = client.late[orphan]["result"]["content"][0]["text"]
                replaced += text.startswith("conflict: a newer receive")
                sent = await bounded_town.send("conductor", "bob", f"m{round_no}")
                ledger.send(sent.message.id)
                got = tool_payload((await asyncio.wait_for(answer, 30))["result"])
                ledger.saw(m["id"] for m in got["messages"])
                ledger.asking_again()
                orphan, _ = await client.send_request("tools/call", receive)
                client.give_up(orphan)  # the tool timeout fires; the client says nothing
            ledger.asking_again()
            got = tool_payload(await client.call("receive", timeout_s=0, max_messages=100))
            ledger.saw(m["id"] for m in got["messages"])
        finally:
            await client.close()
    show(capsys, ledger.report(rounds=rounds, orphans_replaced=replaced))
    ledger.check()
    assert replaced == rounds


# ----------------------------------------------------------------- Redis stalls


async def stalled_call(client: Any, tool: str, arguments: dict[str, Any]) -> tuple[float, str]:
    """Call ``tool`` and return (seconds it took, the error text, '' if it succeeded)."""
    started = anyio.current_time()
    result = await client.call_tool(tool, arguments)
    text = result.content[0].text if result.is_error else ""
    return anyio.current_time() - started, text


async def test_a_stalled_redis_answers_unavailable_within_seconds_and_its_late_scripts_change_nothing(
    tmp_path: Path, private_redis: tuple[subprocess.Popen[bytes], str], town_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Redis is SIGSTOPped while a receive waits and while every other kind of tool and a ``tt``
    command run.  Each answers ``unavailable:`` within seconds (not after the stall); the
    scripts Redis runs when it wakes — a receive, a send, an assignment — are past their
    deadline and change nothing; the same session works again by itself afterwards."""
    proc, sock = private_redis
    env = town_env(tmp_path / "town", f"unix://{sock}", town_name)
    town = Town(Redis(unix_socket_path=sock, **client_options()), make_config(town_name))
    await town.ensure_conductor()
    ledger = Ledger("Redis SIGSTOPped during receive and during other tools")
    calls = {
        "receive": {"timeout_s": 0}, "whoami": {}, "town_status": {}, "list_agents": {},
        "send_message": {"to": "conductor", "body": "during the stall"},
        "assign_task": {"description": "during the stall", "agent": "bob"}, "list_tasks": {},
        "ack": {"message_ids": ["nope"]},
    }
    timings: dict[str, tuple[float, str]] = {}
    try:
        with anyio.fail_after(240), (tmp_path / "server.err").open("w") as err:
            async with stdio(env, "bob", errlog=err) as bob:
                await ok(bob, "whoami")
                sent = await town.send("conductor", "bob", "before the stall")
                ledger.send(sent.message.id)
                empty_before = await town.inbox_counts("conductor")

                await town.open_session("alice")

                async def waiting_receive() -> None:  # alice waits in BLPOP when Redis stops
                    started = anyio.current_time()
                    try:
                        await town.receive("alice", timeout_s=60)
                        text = "received"
                    except Unavailable as error:
                        text = str(error)
                    timings["receive (waiting when Redis stopped)"] = (anyio.current_time() - started, text)

                async def one(tool: str) -> None:
                    timings[tool] = await stalled_call(bob, tool, calls[tool])

                async def tt(*argv: str) -> None:
                    started = anyio.current_time()
                    done = await anyio.run_process([TT, *argv], env=env, check=False)
                    timings["tt " + " ".join(argv)] = (
                        anyio.current_time() - started,
                        done.stderr.decode() if done.returncode == 1 else f"exit {done.returncode}",
                    )

                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiting_receive)
                    await anyio.sleep(0.3)  # let the receive reach its BLPOP (best effort)
                    os.kill(proc.pid, signal.SIGSTOP)
                    for tool in calls:
                        tg.start_soon(one, tool)
                    tg.start_soon(tt, "status")
                    tg.start_soon(tt, "send", "bob", "from tt during the stall")
                os.kill(proc.pid, signal.SIGCONT)
                # ...and after the stall: the late scripts changed nothing, all works by itself
                counts = await town.inbox_counts("bob")
                conductor = await town.inbox_counts("conductor")
                tasks = await town.list_tasks(agent="bob")
                ledger.asking_again()
                got = await ok(bob, "receive", timeout_s=5)
                ledger.saw(m["id"] for m in got["messages"])
                ledger.asking_again()
                assert not (await ok(bob, "receive", timeout_s=0))["messages"]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        await town.redis.aclose()
    slowest = max(t for t, _ in timings.values())
    show(capsys, repr({k: round(v[0], 1) for k, v in timings.items()}))
    show(capsys, ledger.report(slowest_unavailable_s=round(slowest, 1), calls=len(timings)))
    ledger.check()
    for what, (seconds, text) in timings.items():
        assert "unavailable" in text, (what, text)
        bound = UNAVAILABLE_WITHIN_S + (30 if what.startswith("tt ") else 0)  # + interpreter start
        assert seconds < bound, (what, seconds)
    assert (counts.pending, counts.in_flight) == (1, 0)  # the late receive took nothing
    assert conductor.pending == empty_before.pending  # the late send stored nothing
    assert tasks.tasks == []  # the late assignment created nothing
    assert [(m["body"], m["delivery_count"]) for m in got["messages"]] == [("before the stall", 1)]


# ----------------------------------------------------------------- lost replies


async def test_a_reply_lost_after_its_script_ran_is_retried_without_a_second_delivery_or_ack(
    private_redis: tuple[subprocess.Popen[bytes], str], town_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A TCP proxy between the Town and Redis drops the reply of a send, a receive or an ack
    after Redis ran the script, and closes the connection.  redis-py retries the call on a
    new connection: the send must not store a second copy, the receive must return the same
    batch (not a second one, and not acknowledge the batch it just delivered), the ack
    acknowledges nothing twice."""
    _, sock = private_redis
    rounds = max(ROUNDS // 2, 20)
    ledger = Ledger("reply lost after the script ran (proxy cut), redis-py retries")
    async with CuttingProxy(sock) as proxy:
        town = Town(Redis.from_url(proxy.url, **client_options()), make_config(town_name))
        try:
            await town.ensure_conductor()
            await town.open_session("bob")
            with anyio.fail_after(180):
                for round_no in range(rounds):
                    if round_no % 3 == 0:
                        proxy.cut_after(b"$4\r\nsend\r\n")
                    sent = await town.send("conductor", "bob", f"m{round_no}")
                    ledger.send(sent.message.id)
                    if round_no % 2 == 0:
                        proxy.cut_after(b"$7\r\nreceive\r\n")
                    ledger.asking_again()
                    got = await town.receive("bob", timeout_s=5, max_messages=3)
                    ledger.saw(m.id for m in got.messages)
                    if round_no % 5 == 4:
                        proxy.cut_after(b"$3\r\nack\r\n")
                        assert await town.ack("bob", [m.id for m in got.messages]) in (0, len(got.messages))
                while True:
                    ledger.asking_again()
                    got = await town.receive("bob", timeout_s=0, max_messages=100)
                    if not got.messages:
                        break
                    ledger.saw(m.id for m in got.messages)
                counts = await town.inbox_counts("bob")
        finally:
            await town.redis.aclose()
    show(capsys, ledger.report(connections_cut=proxy.cuts))
    ledger.check()
    assert ledger.twice_before_ack == 0  # the retries delivered nothing twice
    assert proxy.cuts >= rounds // 2
    assert (counts.pending, counts.in_flight) == (0, 0)


# ----------------------------------------------------------------- sessions


async def test_same_name_sessions_taking_the_mailbox_over_lose_nothing(
    tmp_path: Path, redis_socket: str, town_name: str, bounded_town: Town,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second session of the same name starts while the first holds a batch it received but
    did not acknowledge, and while messages keep arriving: the old session can no longer
    receive, its unacknowledged batch comes back to the new one, nothing is lost and nothing
    acknowledged comes back."""
    env = town_env(tmp_path / "town", f"unix://{redis_socket}", town_name)
    ledger = Ledger("same-name sessions take the mailbox over while messages flow")
    refused = 0
    switches = 3
    with anyio.fail_after(300), (tmp_path / "server.err").open("w") as err:
        for switch in range(switches):
            async with stdio(env, "bob", errlog=err) as old:
                for n in range(5):
                    ledger.send((await bounded_town.send("conductor", "bob", f"s{switch}.{n}")).message.id)
                ledger.asking_again()
                got = await ok(old, "receive", timeout_s=5, max_messages=3)
                ledger.saw(m["id"] for m in got["messages"])
                async with stdio(env, "bob", errlog=err) as new:
                    ledger.send((await bounded_town.send("conductor", "bob", f"s{switch}.late")).message.id)
                    result = await old.call_tool("receive", {"timeout_s": 0})
                    refused += bool(result.is_error) and "newer session" in result.content[0].text  # type: ignore[union-attr]
                    # the old session's batch was never acknowledged: it comes back to the new one
                    ledger.unacked_lost_with_session()
                    await drain(new, ledger)
                    ledger.asking_again()
    show(capsys, ledger.report(takeovers=switches, old_session_refused=refused))
    ledger.check()
    assert refused == switches
    assert ledger.twice_before_ack >= switches  # each old batch was seen again by the new session


async def test_tt_receive_beside_a_live_session_does_not_acknowledge_the_sessions_batch(
    tmp_path: Path, redis_socket: str, town_name: str, bounded_town: Town,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``tt receive bob`` while bob's MCP session holds a batch it has not acknowledged: the
    command takes and acknowledges only what it printed; the session's batch stays in flight
    and comes back to bob's next session when this one dies without acknowledging it."""
    env = town_env(tmp_path / "town", f"unix://{redis_socket}", town_name)
    ledger = Ledger("tt receive beside a live session's unacknowledged batch")
    with anyio.fail_after(180), (tmp_path / "server.err").open("w") as err:
        async with stdio(env, "bob", errlog=err) as bob:
            first = await bounded_town.send("conductor", "bob", "for the session")
            ledger.send(first.message.id)
            got = await ok(bob, "receive", timeout_s=5)
            ledger.saw(m["id"] for m in got["messages"])
            second = await bounded_town.send("conductor", "bob", "for tt")
            ledger.send(second.message.id)
            done = await anyio.run_process([TT, "receive", "bob", "--timeout", "0", "--json"], env=env)
            printed = json.loads(done.stdout)
            ledger.saw(m["id"] for m in printed["messages"])
            in_flight = [m.id for m in await bounded_town.in_flight("bob")]
        ledger.unacked_lost_with_session()
        async with stdio(env, "bob", errlog=err) as again:
            back = await ok(again, "receive", timeout_s=5)
            ledger.saw(m["id"] for m in back["messages"])
            await drain(again, ledger)
    show(capsys, ledger.report())
    ledger.check()
    assert [m["id"] for m in printed["messages"]] == [second.message.id]
    assert in_flight == [first.message.id]  # tt receive left the session's batch alone
    assert [(m["id"], m["delivery_count"]) for m in back["messages"]] == [(first.message.id, 2)]


# ----------------------------------------------------------------- skewed clocks


@pytest.mark.parametrize("skew_s", [180, 600])
async def test_a_process_whose_clock_is_minutes_ahead_sees_live_agents_live_and_leaves_their_work(
    tmp_path: Path, redis_socket: str, town_name: str, bounded_town: Town, skew_s: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``tt`` run with a clock 3 or 10 minutes ahead (the test-only offset
    ``TINYTOWN_TEST_CLOCK_SKEW_S``, which shifts every clock reading of that process) beside
    a live agent holding an unacknowledged message: its status shows the agent live, its
    ``recover`` stops nothing and requeues nothing, its receives (which redeliver overdue
    messages) leave the agent's message in flight.  Liveness and redelivery run on Redis's
    clock."""
    env = town_env(tmp_path / "town", f"unix://{redis_socket}", town_name)
    skewed = {**env, "TINYTOWN_TEST_CLOCK_SKEW_S": str(skew_s)}
    (tmp_path / "town" / "tinytown.toml").write_text(
        f'name = "{town_name}"\nstale_after_s = 120\nredelivery_after_s = 300\n')
    ledger = Ledger(f"tt with a clock {skew_s // 60} min ahead beside a live agent")
    await bounded_town.open_session("alice")
    work = await bounded_town.send("conductor", "alice", "in progress")
    ledger.send(work.message.id)
    got = await bounded_town.receive("alice", timeout_s=0)
    ledger.saw(m.id for m in got.messages)

    async def tt(*argv: str) -> Any:
        done = await anyio.run_process([TT, *argv, "--json"], env=skewed)
        return json.loads(done.stdout)

    with anyio.fail_after(120):
        note = await tt("send", "conductor", "sent from the future")
        status = await tt("status")
        await tt("receive", "conductor", "--timeout", "0")
        report = await tt("recover")
    in_flight = [m.id for m in await bounded_town.in_flight("alice")]
    alice = await bounded_town.get_agent("alice")
    real_now = await bounded_town.now_ms()
    show(capsys, ledger.report(skew_s=skew_s))
    assert note["message"]["created_at"] - real_now > (skew_s - 60) * 1000  # the skew is real
    views = {v["agent"]["name"]: v["stale"] for v in status["agents"]}
    assert views["alice"] is False
    assert (report["stopped"], report["requeued"], report["reclaimed"]) == ([], {}, [])
    assert alice.state.value != "stopped"
    assert in_flight == [work.message.id]  # not redelivered while alice works on it
    ledger.check()
