"""Push benchmark: ``Town.send`` → the ``notifications/claude/channel`` a pushed session gets.

    python bench/push.py [--sends 100] [--calls 300]

The town uses a private managed redis-server this script starts in a temp dir (unix socket).
The pushed session is a real ``tinytown-mcp --agent pushed --push`` process over stdio, driven
by the official Python SDK client with an extension that binds the channel notification (the
way Claude Code listens to it), in the initialize-handshake mode Claude Code uses.  The sender
is ``Town.send`` on a Redis connection of its own in this process (what ``tt send`` does),
and each sample runs from just before the send to the moment the client's handler sees the
notification (one monotonic clock).  The same runs over ``tt serve`` (streamable HTTP,
``?push=1``, the SDK's HTTP client with a bearer token).  After each sample the client
acknowledges the message (``ack``) and the next send waits a few ms, so the feed is back in its
blocking wait.

Figures are medians and p99 in milliseconds, with ratios against floors measured in the same
run: one ``tools/call`` of an ``echo`` tool on a bare ``MCPServer`` over stdio, and the same
send waking a blocked ``receive`` of a session without push (the pull path).  Goal: push p50
≤ 100 ms.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _harness as harness  # first: puts the repository, not bench/, on sys.path
import anyio
from mcp.client import Client
from mcp.client.extension import ClientExtension, NotificationBinding
from pydantic import BaseModel

from tinytown.mcp_config import with_push
from tinytown.town import Town

GAP_S = 0.005
WARMUP = 10


class ChannelEvent(BaseModel):
    content: str
    meta: dict[str, str] = {}


class Arrivals(ClientExtension):
    """Notes when each channel notification arrives (monotonic s, by message id)."""

    identifier = "bench.tinytown/channel"

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.arrived = anyio.Event()

    def notifications(self) -> Sequence[NotificationBinding[Any]]:
        return [NotificationBinding(method="notifications/claude/channel", params_type=ChannelEvent,
                                    handler=self._got)]

    async def _got(self, event: ChannelEvent) -> None:
        self.at[event.meta["message_id"]] = time.perf_counter()
        self.arrived.set()

    async def wait_for(self, message_id: str) -> float:
        with anyio.fail_after(30):
            while message_id not in self.at:
                self.arrived = anyio.Event()
                if message_id in self.at:
                    break
                await self.arrived.wait()
        return self.at[message_id]


async def bench_echo(n: int) -> list[float]:
    async with Client(harness.echo_params(), mode="legacy") as echo:
        return await harness.timed_calls(harness.tool_call(echo, "echo", {"text": harness.BODY}), n,
                                         warmup=WARMUP)


async def bench_push(root: Path, n: int) -> list[float]:
    arrivals = Arrivals()
    async with harness.opened_town(root) as town, Client(
        harness.town_params(root, "pushed", "--push"), extensions=[arrivals], mode="legacy"
    ) as client:
        return await timed_pushes(town, client, arrivals, "pushed", n)


async def timed_pushes(town: Town, client: Client, arrivals: Arrivals, agent: str, n: int) -> list[float]:
    await client.call_tool("whoami", {})  # the session is open and pushing
    samples = []
    for i in range(n + WARMUP):
        await anyio.sleep(GAP_S)  # the feed is back in its BLPOP
        start = time.perf_counter()
        sent = await town.send("conductor", agent, harness.BODY)
        arrived = await arrivals.wait_for(sent.message.id)
        if i >= WARMUP:
            samples.append(arrived - start)
        acked = await client.call_tool("ack", {"message_ids": [sent.message.id]})
        assert not acked.is_error, acked.content
    return samples


async def bench_push_http(root: Path, n: int) -> list[float]:
    """The same over ``tt serve`` (streamable HTTP, ``?push=1``, the SDK's HTTP client)."""
    arrivals = Arrivals()
    async with harness.opened_town(root) as town, harness.tt_serve(root) as (url, _pid):
        token = (await town.tokens.add("pushed-http")).token
        async with harness.http_session(with_push(url), token, extensions=[arrivals]) as client:
            return await timed_pushes(town, client, arrivals, "pushed-http", n)


async def bench_pull(root: Path, n: int) -> list[float]:
    """The same send waking a blocked ``receive`` of a session without push."""
    samples = []
    puller = harness.town_params(root, "puller")
    async with harness.opened_town(root) as town, Client(puller, mode="legacy") as client:
        await client.call_tool("receive", {"timeout_s": 0})
        got: dict[str, float] = {}

        async def receive() -> None:
            result = await client.call_tool("receive", {"timeout_s": 30})
            got["at"] = time.perf_counter()
            assert not result.is_error and result.structured_content, result.content
            assert len(result.structured_content["messages"]) == 1

        for i in range(n + WARMUP):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.sleep(GAP_S * 4)  # the receive reaches its BLPOP
                start = time.perf_counter()
                await town.send("conductor", "puller", harness.BODY)
            if i >= WARMUP:
                samples.append(got["at"] - start)
    return samples


def line(label: str, samples: list[float], floor: list[float] | None = None) -> str:
    return harness.line(label, samples, floor, width=44)


async def main(sends: int, calls: int) -> None:
    with harness.managed_town("push") as root:
        echo = await bench_echo(calls)
        pushed = await bench_push(root, sends)
        pushed_http = await bench_push_http(root, sends)
        pulled = await bench_pull(root, sends)
    ms = harness.ms
    print(f"Push benchmark ({harness.machine()}, stdio and HTTP, managed redis-server on a unix socket)")
    print(line("echo tool call (bare MCPServer)", echo))
    print(line("Town.send -> blocked receive returns", pulled, echo))
    p50 = ms(pushed)[0]
    print(line("Town.send -> channel notification (stdio)", pushed, echo)
          + f"   goal p50 <= 100 ms: {'met' if p50 <= 100 else 'MISSED'}")
    p50_http = ms(pushed_http)[0]
    print(line("Town.send -> channel notification (HTTP)", pushed_http, echo)
          + f"   goal p50 <= 100 ms: {'met' if p50_http <= 100 else 'MISSED'}")
    print(f"  push (stdio) against the pull path: p50 {p50 / ms(pulled)[0]:5.2f}x")


if __name__ == "__main__":
    parser = harness.arguments(__doc__)
    parser.add_argument("--sends", type=int, default=100)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    anyio.run(main, args.sends, args.calls)
