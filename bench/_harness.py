"""What the MCP benchmarks (``mcp.py``, ``push.py``, ``http.py``) share: a town on a private
managed redis-server in a temp dir, the echo server every ratio is measured against (over
stdio or streamable HTTP), the ``tinytown-mcp`` and ``tt serve`` processes, an SDK session
over HTTP with a bearer token, the hop between two agents, and how samples are timed and
printed.

Import it before anything else (``import _harness as harness``): run as a script, a bench's
own directory leads ``sys.path``, where ``mcp`` and ``http`` would be ``bench/mcp.py`` and
``bench/http.py`` rather than the MCP SDK and the standard library; this module takes that
directory off the path and puts the repository on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import httpx2  # noqa: E402
from anyio.streams.buffered import BufferedByteReceiveStream  # noqa: E402
from mcp.client import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from tinytown.config import TownPaths  # noqa: E402
from tinytown.redis_server import ManagedRedis  # noqa: E402
from tinytown.town import Town  # noqa: E402

BIN = Path(sys.executable).parent
BODY = "benchmark message " * 4
# Between hops every process goes idle so that B's receive is blocked when A sends.  Waking an
# idle process costs time on its own (a lot in a small VM), so the hop is also compared with
# an echo call made after the same idle gap.
HOP_GAP_S = 0.005
HOP_WARMUP = 20
ECHO_SERVER = """
import sys
from mcp.server.mcpserver import MCPServer

HTTP = len(sys.argv) > 1  # a port: streamable HTTP; else stdio
server = MCPServer("echo", log_level="WARNING") if HTTP else MCPServer("echo")

@server.tool()
def echo(text: str) -> str:
    \"\"\"Return the text.\"\"\"
    return text

if HTTP:
    import uvicorn
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
else:
    server.run()
"""

Call = Callable[[], Awaitable[object]]


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A bench's command line, its docstring as the help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def machine() -> str:
    return f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"


def clean_env() -> dict[str, str]:
    """This environment without what would point a town process at another town or agent."""
    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TINYTOWN_AGENT", "TINYTOWN_TOWN")}


# ----------------------------------------------------------------- processes


@contextmanager
def managed_town(name: str, settings: str = "") -> Iterator[Path]:
    """A town ``bench-<name>`` in a temp dir (``settings``: more of its tinytown.toml) on a
    private managed redis-server (unix socket), stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"tt-bench-{name}-") as tmp:
        root = Path(tmp)
        (root / "tinytown.toml").write_text(f'name = "bench-{name}"\n{settings}')
        managed = ManagedRedis(TownPaths(root).runtime)
        managed.ensure_running()
        try:
            yield root
        finally:
            managed.stop()


@asynccontextmanager
async def opened_town(root: Path) -> AsyncIterator[Town]:
    """The town in this process (what ``tt`` does), closed afterwards."""
    town = await Town.open(root)
    try:
        yield town
    finally:
        await town.close()


def echo_params() -> StdioServerParameters:
    """The bare echo server over stdio."""
    return StdioServerParameters(command=sys.executable, args=["-c", ECHO_SERVER], env=dict(os.environ))


def town_params(root: Path, agent: str, *extra: str) -> StdioServerParameters:
    """``tinytown-mcp --agent AGENT`` of the town over stdio."""
    return StdioServerParameters(
        command=str(BIN / "tinytown-mcp"),
        args=["--town", str(root), "--agent", agent, "--log-level", "WARNING", *extra], env=clean_env(),
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for_http(url: str) -> None:
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(60):
            while True:  # start-up has no event to wait on: a bounded readiness probe
                try:
                    await http.get(url)
                    return
                except httpx2.TransportError:
                    await anyio.sleep(0.05)


@asynccontextmanager
async def echo_http() -> AsyncIterator[tuple[str, int]]:
    """The bare echo server over streamable HTTP: its URL and pid."""
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(port)])
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        await wait_for_http(url)
        yield url, echo.pid
    finally:
        echo.terminate()
        echo.wait(30)


@asynccontextmanager
async def tt_serve(root: Path) -> AsyncIterator[tuple[str, int]]:
    """``tt serve`` of the town on a free port: its URL and pid."""
    argv = [str(BIN / "tt"), "--town", str(root), "serve", "--port", "0"]
    async with await anyio.open_process(argv, env=clean_env(), stderr=None) as served:
        try:
            assert served.stdout is not None
            said = (await BufferedByteReceiveStream(served.stdout).receive_until(b"\n", 1000)).decode()
            assert said.startswith("tt serve: "), said
            yield said.split(" at ", 1)[1].split(" ", 1)[0], served.pid
        finally:
            served.terminate()


@asynccontextmanager
async def http_session(url: str, token: str | None = None, **client: Any) -> AsyncIterator[Client]:
    """An SDK session over streamable HTTP, with a bearer token (``client``: more ``Client``
    arguments, e.g. its mode or extensions)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=400)) as http, Client(
        streamable_http_client(url, http_client=http), **client
    ) as session:
        yield session


# ----------------------------------------------------------------- timing


def tool_call(client: Client, tool: str, arguments: dict[str, Any]) -> Call:
    """One call of ``tool``, which must not be an error."""

    async def call() -> object:
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, result.content
        return result

    return call


async def timed_calls(call: Call, n: int, *, warmup: int) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def idle_calls(call: Call, n: int, gap_s: float = HOP_GAP_S) -> list[float]:
    """``n`` calls, each after ``gap_s`` of idleness (the hop's like-for-like floor: before
    each hop every process is idle, and waking one costs time of its own)."""
    samples = []
    for _ in range(n):
        await anyio.sleep(gap_s)
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def report_hops(b: Client) -> None:
    """Agent B's side of the hop, in a process of its own: prints ``ready``, then one latency
    (ns) per message — its blocked receive returned at CLOCK_MONOTONIC ``now``; the body is
    the send start — until the body ``stop``."""
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


async def time_hops(receiver: list[str], open_a: Callable[[], AbstractAsyncContextManager[Client]],
                    to: str, n: int) -> list[float]:
    """A's send_message starts -> B's blocked receive returns: ``receiver`` is the argv of
    B's client (a process of its own, as two agents' hosts are, running :func:`report_hops`),
    ``open_a`` opens A's session, ``to`` is B's name."""
    hops: list[float] = []
    async with await anyio.open_process(receiver, stderr=None) as process:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        assert await lines.receive_until(b"\n", 100) == b"ready"
        async with open_a() as a:
            for i in range(n + HOP_WARMUP):
                await anyio.sleep(HOP_GAP_S)  # B's next receive reaches its BLPOP
                sent = await a.call_tool("send_message", {"to": to, "body": str(time.monotonic_ns())})
                assert not sent.is_error, sent.content
                latency_ns = int(await lines.receive_until(b"\n", 100))
                if i >= HOP_WARMUP:
                    hops.append(latency_ns / 1e9)
            await a.call_tool("send_message", {"to": to, "body": "stop"})
        await process.wait()
    return hops


# ----------------------------------------------------------------- printing


def ms(samples: list[float]) -> tuple[float, float]:
    """Median and p99 of ``samples`` (seconds), in ms."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def line(label: str, samples: list[float], floor: list[float] | None = None, *, width: int = 34) -> str:
    """``label``, p50 and p99, and the p50 ratio against ``floor``."""
    p50, p99 = ms(samples)
    text = f"  {label:<{width}} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms"
    if floor is not None:
        text += f"   ratio p50 {p50 / ms(floor)[0]:5.2f}x"
    return text
