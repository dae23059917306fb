"""MCP server benchmark: tinytown-mcp against a trivial echo tool on the same SDK, same run.

    python bench/mcp.py [--calls 1000] [--hops 300] [--starts 8]

Everything runs over stdio with the official Python SDK client, against servers started as
subprocesses; the town uses a private managed redis-server this script starts in a temp
dir (unix socket, AOF everysec: the embedded default).  Figures are medians and p99 in
milliseconds, plus ratios against the floor measured in the same run:

* **call**: one ``send_message`` call (client → server → Town.send → Redis → result with the
  inbox piggyback → client) against one call of an ``echo(text)`` tool on a bare
  ``MCPServer``.  Target: p50 ≤ 2× echo.
* **hop**: agent A's ``send_message`` starts → agent B's *blocked* ``receive`` returns it;
  A and B are two tinytown-mcp processes, and B's client is a process of its own (as two
  agents' hosts are); timestamps are CLOCK_MONOTONIC, shared by processes on one Linux
  machine.  Target: p50 ≤ 2.5× the echo call.  Every process is idle before a hop (B must
  be blocked), and waking idle processes has a cost of its own, so the hop is also shown
  against an echo call made after the same idle gap.
* **start**: process start → initialized session → first ``tools/list`` answered, for
  tinytown-mcp (which also connects to Redis and opens the mailbox session) against the
  bare echo server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's directory comes first on sys.path, where "mcp" would be this
# file rather than the MCP SDK.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
from anyio.streams.buffered import BufferedByteReceiveStream  # noqa: E402
from mcp.client import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

from tinytown.config import TownPaths  # noqa: E402
from tinytown.redis_server import ManagedRedis  # noqa: E402

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
# Between hops every process goes idle so that B's receive is blocked when A sends.  Waking an
# idle process costs time on its own (a lot in a small VM), so the hop is also compared with
# an echo call made after the same idle gap.
HOP_GAP_S = 0.005


def echo_params() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-c", ECHO_SERVER], env=dict(os.environ))


def town_params(root: Path, agent: str) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TINYTOWN_AGENT")}
    return StdioServerParameters(
        command=str(SCRIPT), args=["--town", str(root), "--agent", agent, "--log-level", "WARNING"], env=env
    )


@asynccontextmanager
async def session(params: StdioServerParameters) -> AsyncIterator[Client]:
    async with Client(params) as client:
        yield client


def ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def timed_calls(call: Callable[[], Awaitable[object]], n: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def bench_calls(root: Path, n: int) -> tuple[list[float], list[float], list[float]]:
    """Alternate blocks of echo and send_message calls so both see the same machine load;
    then echo calls each after ``HOP_GAP_S`` of idleness (the hop's like-for-like floor)."""
    echo_s: list[float] = []
    send_s: list[float] = []
    idle_echo_s: list[float] = []
    async with session(echo_params()) as echo, session(town_params(root, "sender")) as town:

        async def one_echo() -> object:
            result = await echo.call_tool("echo", {"text": BODY})
            assert not result.is_error
            return result

        async def one_send() -> object:
            result = await town.call_tool("send_message", {"to": "sink", "body": BODY})
            assert not result.is_error, result.content
            return result

        async with session(town_params(root, "sink")):
            pass  # attach the recipient
        for _ in range(10):
            echo_s += await timed_calls(one_echo, n // 10, warmup=10)
            send_s += await timed_calls(one_send, n // 10, warmup=10)

        async def idle_echo() -> object:
            await anyio.sleep(HOP_GAP_S)
            start = time.perf_counter()
            await one_echo()
            idle_echo_s.append(time.perf_counter() - start)
            return None

        for _ in range(max(50, n // 3)):
            await idle_echo()
    return echo_s, send_s, idle_echo_s


async def hop_receiver(root: Path) -> None:
    """Child process: agent B's client.  Prints ``ready``, then one latency (ns) per message:
    its blocked receive returned at CLOCK_MONOTONIC ``now``; the body is the send start."""
    async with session(town_params(root, "hop-b")) as b:
        await b.call_tool("receive", {"timeout_s": 0})
        print("ready", flush=True)
        while True:
            result = await b.call_tool("receive", {"timeout_s": 30})
            now = time.monotonic_ns()
            assert not result.is_error and result.structured_content, result.content
            for message in result.structured_content["messages"]:
                if message["body"] == "stop":
                    return
                print(now - int(message["body"]), flush=True)


async def bench_hops(root: Path, n: int) -> list[float]:
    """A's send_message starts -> B's blocked receive returns.  A and B are two tinytown-mcp
    processes, and B's client runs in its own process, as two agents' hosts would."""
    hops: list[float] = []
    argv = [sys.executable, __file__, "--hop-receiver", str(root)]
    async with await anyio.open_process(argv, stderr=None) as receiver:
        assert receiver.stdout is not None
        lines = BufferedByteReceiveStream(receiver.stdout)
        assert await lines.receive_until(b"\n", 100) == b"ready"
        async with session(town_params(root, "hop-a")) as a:
            for i in range(n + 20):
                await anyio.sleep(HOP_GAP_S)  # B's next receive reaches its BLPOP
                sent = await a.call_tool("send_message", {"to": "hop-b", "body": str(time.monotonic_ns())})
                assert not sent.is_error, sent.content
                latency_ns = int(await lines.receive_until(b"\n", 100))
                if i >= 20:
                    hops.append(latency_ns / 1e9)
            await a.call_tool("send_message", {"to": "hop-b", "body": "stop"})
        await receiver.wait()
    return hops


async def time_start(params: StdioServerParameters) -> float:
    start = time.perf_counter()
    async with Client(params) as client:
        tools = await client.list_tools()
        elapsed = time.perf_counter() - start
        assert tools.tools
    return elapsed


async def bench_starts(root: Path, n: int) -> tuple[list[float], list[float]]:
    echo_s: list[float] = []
    town_s: list[float] = []
    for i in range(n):
        echo_s.append(await time_start(echo_params()))
        town_s.append(await time_start(town_params(root, f"starter{i}")))
    return echo_s, town_s


def line(label: str, samples: list[float], floor: list[float] | None = None) -> str:
    p50, p99 = ms(samples)
    text = f"  {label:<34} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms"
    if floor is not None:
        text += f"   ratio p50 {p50 / ms(floor)[0]:5.2f}x"
    return text


async def main(calls: int, hops: int, starts: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tt-bench-mcp-") as tmp:
        root = Path(tmp)
        (root / "tinytown.toml").write_text('name = "bench-mcp"\n[limits]\nmax_inbox = 1000000\n')
        managed = ManagedRedis(TownPaths(root).runtime)
        managed.ensure_running()
        try:
            echo_calls, send_calls, idle_echo = await bench_calls(root, calls)
            hop_samples = await bench_hops(root, hops)
            echo_starts, town_starts = await bench_starts(root, starts)
        finally:
            managed.stop()
    print(f"MCP benchmark (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, stdio, "
          f"managed redis-server on a unix socket)")
    print("call: one tools/call round trip")
    print(line("echo tool (bare MCPServer)", echo_calls))
    print(line("send_message (tinytown-mcp)", send_calls, echo_calls) + "   target <= 2x")
    print(line(f"echo tool after {HOP_GAP_S * 1000:g} ms idle", idle_echo, echo_calls))
    print("hop: A's send_message starts -> B's blocked receive returns")
    print(line("send_message -> receive", hop_samples, echo_calls) + "   target <= 2.5x echo")
    print(line("  the same, against the idle echo", hop_samples, idle_echo))
    print("start: spawn -> session -> first tools/list")
    print(line("bare MCPServer (echo)", echo_starts))
    print(line("tinytown-mcp", town_starts, echo_starts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--hops", type=int, default=300)
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--hop-receiver", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hop_receiver:
        anyio.run(hop_receiver, args.hop_receiver)
    else:
        anyio.run(main, args.calls, args.hops, args.starts)
