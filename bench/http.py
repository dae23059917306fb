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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's directory comes first on sys.path, where "http" would be this
# file rather than the standard library's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import httpx2  # noqa: E402
from anyio.streams.buffered import BufferedByteReceiveStream  # noqa: E402
from mcp.client import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from tinytown.config import TownPaths  # noqa: E402
from tinytown.redis_server import ManagedRedis  # noqa: E402
from tinytown.town import Town  # noqa: E402

TT = str(Path(sys.executable).parent / "tt")
ECHO_SERVER = """
import sys, uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("echo", log_level="WARNING")

@server.tool()
def echo(text: str) -> str:
    \"\"\"Return the text.\"\"\"
    return text

uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
BODY = "benchmark message " * 4
HOP_GAP_S = 0.005


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def session(url: str, token: str | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=400)) as http, Client(
        streamable_http_client(url, http_client=http), mode="legacy"
    ) as client:
        yield client


def ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def timed_calls(call: Callable[[], Awaitable[object]], n: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


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
    idle_echo_s: list[float] = []
    async with session(echo_url) as echo, session(town_url, token) as town:

        async def one_echo() -> object:
            result = await echo.call_tool("echo", {"text": BODY})
            assert not result.is_error
            return result

        async def one_send() -> object:
            result = await town.call_tool("send_message", {"to": "sink", "body": BODY})
            assert not result.is_error, result.content
            return result

        await timed_calls(one_echo, 0, warmup=20)
        await timed_calls(one_send, 0, warmup=20)
        for _ in range(10):
            before = process_cpu_s(pids["echo"])
            echo_s += await timed_calls(one_echo, n // 10, warmup=0)
            cpu["echo"] = cpu.get("echo", 0.0) + (process_cpu_s(pids["echo"]) - before) / n
            before = process_cpu_s(pids["town"])
            send_s += await timed_calls(one_send, n // 10, warmup=0)
            cpu["town"] = cpu.get("town", 0.0) + (process_cpu_s(pids["town"]) - before) / n
        for _ in range(max(50, n // 3)):
            await anyio.sleep(HOP_GAP_S)
            start = time.perf_counter()
            await one_echo()
            idle_echo_s.append(time.perf_counter() - start)
    return echo_s, send_s, idle_echo_s


async def hop_receiver(url: str, token: str) -> None:
    """Child process: agent B's client.  Prints ``ready``, then one latency (ns) per message."""
    async with session(url, token) as b:
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


async def bench_hops(url: str, token_a: str, token_b: str, n: int) -> list[float]:
    hops: list[float] = []
    argv = [sys.executable, __file__, "--hop-receiver", url, token_b]
    async with await anyio.open_process(argv, stderr=None) as receiver:
        assert receiver.stdout is not None
        lines = BufferedByteReceiveStream(receiver.stdout)
        assert await lines.receive_until(b"\n", 100) == b"ready"
        async with session(url, token_a) as a:
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


def line(label: str, samples: list[float], floor: list[float] | None = None) -> str:
    p50, p99 = ms(samples)
    text = f"  {label:<34} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms"
    if floor is not None:
        text += f"   ratio p50 {p50 / ms(floor)[0]:5.2f}x"
    return text


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_tt_serve(root: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TINYTOWN_AGENT", "TINYTOWN_TOWN")}
    proc = subprocess.Popen([TT, "--town", str(root), "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    said = proc.stdout.readline()
    assert said.startswith("tt serve: "), said
    return proc, said.split(" at ", 1)[1].split(" ", 1)[0]


async def wait_for_http(url: str) -> None:
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(60):
            while True:
                try:
                    await http.get(url)
                    return
                except httpx2.TransportError:
                    await anyio.sleep(0.05)


async def main(calls: int, hops: int, agents: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tt-bench-http-") as tmp:
        root = Path(tmp)
        (root / "tinytown.toml").write_text(
            'name = "bench-http"\nmax_agents = 200\n[limits]\nmax_inbox = 1000000\n'
        )
        managed = ManagedRedis(TownPaths(root).runtime)
        managed.ensure_running()
        echo_port = free_port()
        echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(echo_port)])
        serve = None
        try:
            town = await Town.open(root)
            try:
                names = ["sender", "sink", "hop-a", "hop-b", *(f"crowd{i:02d}" for i in range(agents))]
                tokens = {name: (await town.tokens.add(name)).token for name in names}
            finally:
                await town.close()
            serve, town_url = start_tt_serve(root)
            echo_url = f"http://127.0.0.1:{echo_port}/mcp"
            await wait_for_http(echo_url)
            async with session(town_url, tokens["sink"]):
                pass  # attach the recipient
            cpu: dict[str, float] = {}
            echo_calls, send_calls, idle_echo = await bench_calls(
                echo_url, town_url, tokens["sender"], calls, cpu, {"echo": echo.pid, "town": serve.pid}
            )
            hop_samples = await bench_hops(town_url, tokens["hop-a"], tokens["hop-b"], hops)
            cpu_before = process_cpu_s(serve.pid)
            crowd = await bench_crowd(town_url, {n: t for n, t in tokens.items() if n.startswith("crowd")})
            crowd["server_cpu_s"] = process_cpu_s(serve.pid) - cpu_before
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(30)
            echo.terminate()
            echo.wait(30)
            managed.stop()
    print(f"HTTP benchmark (python {sys.version.split()[0]}, {os.cpu_count()} CPUs, streamable HTTP on "
          "127.0.0.1, SSE answers, managed redis-server on a unix socket)")
    print("call: one tools/call round trip over HTTP")
    print(line("echo tool (bare MCPServer, HTTP)", echo_calls))
    print(line("send_message (tt serve)", send_calls, echo_calls) + "   goal <= 1.5x")
    print(line(f"echo tool after {HOP_GAP_S * 1000:g} ms idle", idle_echo, echo_calls))
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--hops", type=int, default=200)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--hop-receiver", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hop_receiver:
        anyio.run(hop_receiver, *args.hop_receiver)
    else:
        anyio.run(main, args.calls, args.hops, args.agents)
