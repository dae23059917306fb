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

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's directory comes first on sys.path, where "mcp" would be
# bench/mcp.py rather than the MCP SDK.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import httpx2  # noqa: E402
from anyio.streams.buffered import BufferedByteReceiveStream  # noqa: E402
from mcp.client import Client  # noqa: E402
from mcp.client.extension import ClientExtension, NotificationBinding  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from tinytown.config import TownPaths  # noqa: E402
from tinytown.mcp_config import with_push  # noqa: E402
from tinytown.redis_server import ManagedRedis  # noqa: E402
from tinytown.town import Town  # noqa: E402

SCRIPT = Path(sys.executable).parent / "tinytown-mcp"
ECHO_SERVER = """
from mcp.server.mcpserver import MCPServer

server = MCPServer("echo")

@server.tool()
def echo(text: str) -> str:
    \"\"\"Return the text.\"\"\"
    return text

server.run()
"""
BODY = "benchmark message " * 4
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


def town_params(root: Path, agent: str, *extra: str) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TINYTOWN_AGENT")}
    return StdioServerParameters(
        command=str(SCRIPT),
        args=["--town", str(root), "--agent", agent, "--log-level", "WARNING", *extra], env=env,
    )


@asynccontextmanager
async def opened_town(root: Path) -> AsyncIterator[Town]:
    town = await Town.open(root)
    try:
        yield town
    finally:
        await town.close()


async def bench_echo(n: int) -> list[float]:
    params = StdioServerParameters(command=sys.executable, args=["-c", ECHO_SERVER], env=dict(os.environ))
    samples = []
    async with Client(params, mode="legacy") as echo:
        for i in range(n + WARMUP):
            start = time.perf_counter()
            result = await echo.call_tool("echo", {"text": BODY})
            assert not result.is_error
            if i >= WARMUP:
                samples.append(time.perf_counter() - start)
    return samples


async def bench_push(root: Path, n: int) -> list[float]:
    arrivals = Arrivals()
    async with opened_town(root) as town, Client(
        town_params(root, "pushed", "--push"), extensions=[arrivals], mode="legacy"
    ) as client:
        return await timed_pushes(town, client, arrivals, "pushed", n)


async def timed_pushes(town: Town, client: Client, arrivals: Arrivals, agent: str, n: int) -> list[float]:
    await client.call_tool("whoami", {})  # the session is open and pushing
    samples = []
    for i in range(n + WARMUP):
        await anyio.sleep(GAP_S)  # the feed is back in its BLPOP
        start = time.perf_counter()
        sent = await town.send("conductor", agent, BODY)
        arrived = await arrivals.wait_for(sent.message.id)
        if i >= WARMUP:
            samples.append(arrived - start)
        acked = await client.call_tool("ack", {"message_ids": [sent.message.id]})
        assert not acked.is_error, acked.content
    return samples


async def bench_push_http(root: Path, n: int) -> list[float]:
    """The same over ``tt serve`` (streamable HTTP, ``?push=1``, the SDK's HTTP client)."""
    arrivals = Arrivals()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TINYTOWN_AGENT")}
    argv = [str(Path(sys.executable).parent / "tt"), "--town", str(root), "serve", "--port", "0"]
    async with opened_town(root) as town, await anyio.open_process(argv, env=env) as served:
        try:
            assert served.stdout is not None
            line = (await BufferedByteReceiveStream(served.stdout).receive_until(b"\n", 1000)).decode()
            url = line.split(" at ", 1)[1].split(" ", 1)[0]
            token = (await town.tokens.add("pushed-http")).token
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                          timeout=httpx2.Timeout(30, read=400)) as http, Client(
                streamable_http_client(with_push(url), http_client=http), extensions=[arrivals]
            ) as client:
                return await timed_pushes(town, client, arrivals, "pushed-http", n)
        finally:
            served.terminate()


async def bench_pull(root: Path, n: int) -> list[float]:
    """The same send waking a blocked ``receive`` of a session without push."""
    samples = []
    async with opened_town(root) as town, Client(town_params(root, "puller"), mode="legacy") as client:
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
                await town.send("conductor", "puller", BODY)
            if i >= WARMUP:
                samples.append(got["at"] - start)
    return samples


def ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def line(label: str, samples: list[float], floor: list[float] | None = None) -> str:
    p50, p99 = ms(samples)
    text = f"  {label:<44} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms"
    if floor is not None:
        text += f"   ratio p50 {p50 / ms(floor)[0]:5.2f}x"
    return text


async def main(sends: int, calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tt-bench-push-") as tmp:
        root = Path(tmp)
        (root / "tinytown.toml").write_text('name = "bench-push"\n')
        managed = ManagedRedis(TownPaths(root).runtime)
        managed.ensure_running()
        try:
            echo = await bench_echo(calls)
            pushed = await bench_push(root, sends)
            pushed_http = await bench_push_http(root, sends)
            pulled = await bench_pull(root, sends)
        finally:
            managed.stop()
    print(f"Push benchmark (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, stdio and HTTP, "
          f"managed redis-server on a unix socket)")
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sends", type=int, default=100)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    anyio.run(main, args.sends, args.calls)
