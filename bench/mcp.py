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
import sys
import time
from pathlib import Path

import _harness as harness  # first: puts the repository, not bench/, on sys.path
import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters


async def bench_calls(root: Path, n: int) -> tuple[list[float], list[float], list[float]]:
    """Alternate blocks of echo and send_message calls so both see the same machine load;
    then echo calls each after ``HOP_GAP_S`` of idleness (the hop's like-for-like floor)."""
    echo_s: list[float] = []
    send_s: list[float] = []
    async with Client(harness.echo_params()) as echo, Client(harness.town_params(root, "sender")) as town:
        one_echo = harness.tool_call(echo, "echo", {"text": harness.BODY})
        one_send = harness.tool_call(town, "send_message", {"to": "sink", "body": harness.BODY})
        async with Client(harness.town_params(root, "sink")):
            pass  # attach the recipient
        for _ in range(10):
            echo_s += await harness.timed_calls(one_echo, n // 10, warmup=10)
            send_s += await harness.timed_calls(one_send, n // 10, warmup=10)
        idle_echo_s = await harness.idle_calls(one_echo, max(50, n // 3))
    return echo_s, send_s, idle_echo_s


async def hop_receiver(root: Path) -> None:
    """Child process: agent B's client (see :func:`harness.report_hops`)."""
    async with Client(harness.town_params(root, "hop-b")) as b:
        await harness.report_hops(b)


async def bench_hops(root: Path, n: int) -> list[float]:
    """A's send_message starts -> B's blocked receive returns.  A and B are two tinytown-mcp
    processes, and B's client runs in its own process, as two agents' hosts would."""
    argv = [sys.executable, __file__, "--hop-receiver", str(root)]
    return await harness.time_hops(argv, lambda: Client(harness.town_params(root, "hop-a")), "hop-b", n)


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
        echo_s.append(await time_start(harness.echo_params()))
        town_s.append(await time_start(harness.town_params(root, f"starter{i}")))
    return echo_s, town_s


async def main(calls: int, hops: int, starts: int) -> None:
    with harness.managed_town("mcp", "[limits]\nmax_inbox = 1000000\n") as root:
        echo_calls, send_calls, idle_echo = await bench_calls(root, calls)
        hop_samples = await bench_hops(root, hops)
        echo_starts, town_starts = await bench_starts(root, starts)
    line = harness.line
    print(f"MCP benchmark ({harness.machine()}, stdio, managed redis-server on a unix socket)")
    print("call: one tools/call round trip")
    print(line("echo tool (bare MCPServer)", echo_calls))
    print(line("send_message (tinytown-mcp)", send_calls, echo_calls) + "   target <= 2x")
    print(line(f"echo tool after {harness.HOP_GAP_S * 1000:g} ms idle", idle_echo, echo_calls))
    print("hop: A's send_message starts -> B's blocked receive returns")
    print(line("send_message -> receive", hop_samples, echo_calls) + "   target <= 2.5x echo")
    print(line("  the same, against the idle echo", hop_samples, idle_echo))
    print("start: spawn -> session -> first tools/list")
    print(line("bare MCPServer (echo)", echo_starts))
    print(line("tinytown-mcp", town_starts, echo_starts))


if __name__ == "__main__":
    parser = harness.arguments(__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--hops", type=int, default=300)
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--hop-receiver", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hop_receiver:
        anyio.run(hop_receiver, args.hop_receiver)
    else:
        anyio.run(main, args.calls, args.hops, args.starts)
