"""HTTP benchmark: ``tt serve`` against a trivial echo tool on the same SDK over HTTP, same run.

    python bench/http.py [--calls 600] [--hops 200] [--agents 50]

Both servers are subprocesses serving streamable HTTP on 127.0.0.1 (uvicorn, SSE answers,
stateful sessions: the handshake era both Claude Code and ``tt serve`` speak); the clients
are the official Python SDK's streamable HTTP client.  The town uses a private managed
redis-server this script starts in a temp dir.  Figures are medians and p99 in ms, plus
ratios against the echo floor measured in the same run:

* **call**: one ``send_message`` call over HTTP (bearer token checked, Town.send, the inbox
  piggyback) against one call of an ``echo(text)`` tool on a bare ``MCPServer`` over HTTP.
  Goal: p50 <= 1.5x echo.
* **hop**: agent A's ``send_message`` starts -> agent B's *blocked* ``receive`` returns it, B's
  client being a process of its own; CLOCK_MONOTONIC timestamps.  Goal: p50 <= 2.5x echo.
* **50 agents**: that many agents connect to one ``tt serve`` (one session each), all wait in
  ``receive``; then each sends one message to the next (a ring) at once.  Shows the time to
  connect them all, the hop latencies under that load, and that every message arrived once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import _harness as harness  # first: puts the repository, not bench/, on sys.path
import anyio
from mcp.client import Client


def session(url: str, token: str) -> AbstractAsyncContextManager[Client]:
    return harness.http_session(url, token, mode="legacy")


async def bench_calls(
    echo_url: str, town_url: str, token: str, n: int, cpu: dict[str, float], pids: dict[str, int]
) -> tuple[list[float], list[float], list[float]]:
    """Alternate blocks of echo and send_message calls so both see the same machine load;
    then echo calls each after ``HOP_GAP_S`` of idleness (the hop's like-for-like floor:
    before each hop every process is idle, and waking one costs time of its own).  ``cpu``
    gets each server's CPU seconds per call (``pids``: "echo" and "town"), a figure the
    machine's load does not inflate the way it does wall time."""
    echo_s: list[float] = []
    send_s: list[float] = []
    async with harness.http_session(echo_url, mode="legacy") as echo, session(town_url, token) as town:
        one_echo = harness.tool_call(echo, "echo", {"text": harness.BODY})
        one_send = harness.tool_call(town, "send_message", {"to": "sink", "body": harness.BODY})
        await harness.timed_calls(one_echo, 0, warmup=20)
        await harness.timed_calls(one_send, 0, warmup=20)
        for _ in range(10):
            before = process_cpu_s(pids["echo"])
            echo_s += await harness.timed_calls(one_echo, n // 10, warmup=0)
            cpu["echo"] = cpu.get("echo", 0.0) + (process_cpu_s(pids["echo"]) - before) / n
            before = process_cpu_s(pids["town"])
            send_s += await harness.timed_calls(one_send, n // 10, warmup=0)
            cpu["town"] = cpu.get("town", 0.0) + (process_cpu_s(pids["town"]) - before) / n
        idle_echo_s = await harness.idle_calls(one_echo, max(50, n // 3))
    return echo_s, send_s, idle_echo_s


async def hop_receiver(url: str, token: str) -> None:
    """Child process: agent B's client (see :func:`harness.report_hops`)."""
    async with session(url, token) as b:
        await harness.report_hops(b)


async def bench_hops(url: str, token_a: str, token_b: str, n: int) -> list[float]:
    argv = [sys.executable, __file__, "--hop-receiver", url, token_b]
    return await harness.time_hops(argv, lambda: session(url, token_a), "hop-b", n)


async def bench_crowd(url: str, tokens: dict[str, str]) -> dict[str, Any]:
    """Every agent connects and waits in receive; then each sends to the next at once."""
    names = list(tokens)
    connected = anyio.Event()
    waiting = anyio.Semaphore(0)
    go = anyio.Event()
    got: dict[str, list[tuple[str, float]]] = {name: [] for name in names}
    connect_s: list[float] = []
    started = time.perf_counter()
    ready = 0

    async def agent(index: int, name: str) -> None:
        nonlocal ready
        begin = time.perf_counter()
        async with session(url, tokens[name]) as client:
            await client.call_tool("receive", {"timeout_s": 0})
            connect_s.append(time.perf_counter() - begin)
            ready += 1
            if ready == len(names):
                connected.set()
            await connected.wait()

            async def wait() -> None:
                waiting.release()
                result = await client.call_tool("receive", {"timeout_s": 60})
                now = time.monotonic_ns()
                assert not result.is_error and result.structured_content, result.content
                for message in result.structured_content["messages"]:
                    got[name].append((message["from"], (now - int(message["body"])) / 1e9))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await go.wait()
                await anyio.sleep(0.05)  # every receive is in its BLPOP by now
                target = names[(index + 1) % len(names)]
                body = str(time.monotonic_ns())
                sent = await client.call_tool("send_message", {"to": target, "body": body})
                assert not sent.is_error, sent.content

    async with anyio.create_task_group() as tg:
        for i, name in enumerate(names):
            tg.start_soon(agent, i, name)
        await connected.wait()
        all_connected_s = time.perf_counter() - started
        for _ in names:
            await waiting.acquire()
        go.set()
    hops = [latency for received in got.values() for _, latency in received]
    exactly_once = all(len(got[names[(i + 1) % len(names)]]) == 1 for i in range(len(names)))
    return {"connect_s": connect_s, "all_connected_s": all_connected_s, "hops": hops,
            "exactly_once": exactly_once, "received": len(hops)}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(calls: int, hops: int, agents: int) -> None:
    settings = "max_agents = 200\n[limits]\nmax_inbox = 1000000\n"
    with harness.managed_town("http", settings) as root:
        async with harness.opened_town(root) as town:
            names = ["sender", "sink", "hop-a", "hop-b", *(f"crowd{i:02d}" for i in range(agents))]
            tokens = {name: (await town.tokens.add(name)).token for name in names}
        async with (
            harness.echo_http() as (echo_url, echo_pid),
            harness.tt_serve(root) as (town_url, serve_pid),
        ):
            async with session(town_url, tokens["sink"]):
                pass  # attach the recipient
            cpu: dict[str, float] = {}
            echo_calls, send_calls, idle_echo = await bench_calls(
                echo_url, town_url, tokens["sender"], calls, cpu, {"echo": echo_pid, "town": serve_pid}
            )
            hop_samples = await bench_hops(town_url, tokens["hop-a"], tokens["hop-b"], hops)
            cpu_before = process_cpu_s(serve_pid)
            crowd = await bench_crowd(town_url, {n: t for n, t in tokens.items() if n.startswith("crowd")})
            crowd["server_cpu_s"] = process_cpu_s(serve_pid) - cpu_before
    line = harness.line
    print(f"HTTP benchmark ({harness.machine()}, streamable HTTP on "
          "127.0.0.1, SSE answers, managed redis-server on a unix socket)")
    print("call: one tools/call round trip over HTTP")
    print(line("echo tool (bare MCPServer, HTTP)", echo_calls))
    print(line("send_message (tt serve)", send_calls, echo_calls) + "   goal <= 1.5x")
    print(line(f"echo tool after {harness.HOP_GAP_S * 1000:g} ms idle", idle_echo, echo_calls))
    print(f"  server CPU per call: echo {cpu['echo'] * 1000:.2f} ms, tt serve {cpu['town'] * 1000:.2f} ms, "
          f"ratio {cpu['town'] / cpu['echo']:.2f}x")
    print("hop: A's send_message starts -> B's blocked receive returns (both over HTTP)")
    print(line("send_message -> receive", hop_samples, echo_calls) + "   goal <= 2.5x echo")
    print(line("  the same, against the idle echo", hop_samples, idle_echo))
    print(f"{agents} agents on one tt serve: each waits in receive, then all send around a ring at once")
    print(line("connect + first receive, per agent", crowd["connect_s"]))
    cpu_s = crowd["server_cpu_s"]
    print(f"  all {agents} connected in {crowd['all_connected_s']:.2f} s; tt serve used "
          f"{cpu_s:.2f} CPU s for all of it ({cpu_s / agents * 1000:.0f} ms per agent)")
    print(line("hop under that load", crowd["hops"], echo_calls))
    print(f"  messages received: {crowd['received']} of {agents}; each exactly once: {crowd['exactly_once']}")


if __name__ == "__main__":
    parser = harness.arguments(__doc__)
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--hops", type=int, default=200)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--hop-receiver", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hop_receiver:
        anyio.run(hop_receiver, *args.hop_receiver)
    else:
        anyio.run(main, args.calls, args.hops, args.agents)
