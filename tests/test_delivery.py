"""At-least-once delivery across real crashes (SPEC 3): a receiver process is SIGKILLed at
different points and the next session of the same agent sees exactly what it should.

The receiver is a real ``python -c`` process using the library against the test's
redis-server socket; it reports each step on stdout and then waits to be killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest
from redis.asyncio import Redis

from tinytown.models import MessageKind, TaskState
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis]

RECEIVER = r"""
import json, sys
import anyio
from redis.asyncio import Redis
from tinytown.config import TownConfig
from tinytown.town import Town

async def main(sock: str, town_name: str, mode: str) -> None:
    client = Redis(unix_socket_path=sock, decode_responses=True, socket_timeout=None)
    town = Town(client, TownConfig(name=town_name))
    _, session, _ = await town.open_session("worker")
    print("ready", flush=True)
    got = await town.receive("worker", timeout_s=20, session=session)
    ids = [m.id for m in got.messages]
    if mode == "ack":
        await town.ack("worker", ids)
    elif mode == "done":
        for m in got.messages:
            await town.complete_task(m.task_id, "finished before the crash", by="worker")
    print(json.dumps(ids), flush=True)
    await anyio.sleep_forever()  # SIGKILLed here: no further receive, no implicit ack

anyio.run(main, *sys.argv[1:])
"""


class Receiver:
    """A receiver process and its stdout lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    async def line(self) -> str:
        assert self.proc.stdout is not None
        with anyio.fail_after(20):
            text = await anyio.to_thread.run_sync(self.proc.stdout.readline)
        if not text:
            assert self.proc.stderr is not None
            pytest.fail(f"receiver exited early: {self.proc.stderr.read()}")
        return text.strip()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL


@contextmanager
def receiver(redis_socket: str, town: Town, mode: str) -> Iterator[Receiver]:
    proc = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, redis_socket, town.name, mode],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield Receiver(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


async def _blocked_clients(redis: Redis) -> int:
    return int((await redis.info("clients"))["blocked_clients"])


async def test_a_receiver_killed_before_acking_gets_the_message_again_in_the_next_session(
    real_town: Town, redis_socket: str
) -> None:
    await real_town.register_agent("worker")
    sent = await real_town.send("conductor", "worker", "please handle")

    with receiver(redis_socket, real_town, "none") as child:
        assert await child.line() == "ready"
        assert json.loads(await child.line()) == [sent.message.id]
        child.kill()

    _, session, requeued = await real_town.open_session("worker")
    again = await real_town.receive("worker", timeout_s=1, session=session)

    assert requeued == 1
    assert [(m.id, m.delivery_count) for m in again.messages] == [(sent.message.id, 2)]


async def test_a_message_acked_before_the_kill_is_never_delivered_again(
    real_town: Town, redis_socket: str
) -> None:
    await real_town.register_agent("worker")
    sent = await real_town.send("conductor", "worker", "handled then crashed")

    with receiver(redis_socket, real_town, "ack") as child:
        assert await child.line() == "ready"
        assert json.loads(await child.line()) == [sent.message.id]
        child.kill()

    _, session, requeued = await real_town.open_session("worker")
    again = await real_town.receive("worker", timeout_s=0, session=session)

    assert requeued == 0
    assert again.timed_out and again.messages == []


async def test_an_assignment_whose_receiver_died_is_redelivered_and_the_task_stays_running(
    real_town: Town, redis_socket: str
) -> None:
    await real_town.register_agent("worker")
    task = await real_town.assign("survive a crash", agent="worker")

    with receiver(redis_socket, real_town, "none") as child:
        assert await child.line() == "ready"
        await child.line()
        child.kill()

    assert (await real_town.get_task(task.id)).state == TaskState.RUNNING
    _, session, _ = await real_town.open_session("worker")
    again = await real_town.receive("worker", timeout_s=1, session=session)

    assert [(m.kind, m.task_id, m.delivery_count) for m in again.messages] == [
        (MessageKind.TASK, task.id, 2)]
    assert (await real_town.complete_task(task.id, "second try", by="worker")).state == TaskState.COMPLETED


async def test_a_task_reported_done_before_the_kill_is_not_delivered_again(
    real_town: Town, redis_socket: str
) -> None:
    await real_town.register_agent("worker")
    task = await real_town.assign("finish then crash", agent="worker")

    with receiver(redis_socket, real_town, "done") as child:
        assert await child.line() == "ready"
        await child.line()
        child.kill()

    _, session, requeued = await real_town.open_session("worker")
    again = await real_town.receive("worker", timeout_s=0, session=session)

    assert (await real_town.get_task(task.id)).state == TaskState.COMPLETED
    assert requeued == 0 and again.messages == []


async def test_a_receiver_killed_while_waiting_loses_nothing_sent_afterwards(
    real_town: Town, redis_socket: str
) -> None:
    await real_town.register_agent("worker")
    baseline = await _blocked_clients(real_town.redis)

    with receiver(redis_socket, real_town, "none") as child:
        assert await child.line() == "ready"
        with anyio.fail_after(10):  # no notification exists for "a client blocked": probe
            while await _blocked_clients(real_town.redis) <= baseline:
                await anyio.sleep(0.01)
        child.kill()

    sent = await real_town.send("conductor", "worker", "after the crash")
    counts = await real_town.inbox_counts("worker")
    _, session, _ = await real_town.open_session("worker")
    got = await real_town.receive("worker", timeout_s=1, session=session)

    assert (counts.pending, counts.in_flight) == (1, 0)
    assert [(m.id, m.delivery_count) for m in got.messages] == [(sent.message.id, 1)]
