"""Helpers of the HTTP tests: a real ``tt serve`` subprocess, tokens from ``tt token add``,
and the official Python SDK's streamable HTTP client with a bearer token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

TT = str(Path(sys.executable).parent / "tt")
PROBE = Path(__file__).resolve().parent / "http_probe.py"


@dataclass
class Served:
    proc: subprocess.Popen[str]
    base: str

    @property
    def url(self) -> str:
        return self.base + "/mcp"


def start_serve(env: dict[str, str], *args: str) -> Served:
    """``tt serve --port 0`` (or ``args``) with a short keep-alive; waits for its address line."""
    proc = subprocess.Popen(
        [TT, "serve", "--port", "0", "--keepalive", "1", *args], env=env, stdout=subprocess.PIPE,
        stderr=None, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until it has bound its port (or exits)
    assert line.startswith("tt serve: town "), f"tt serve said {line!r} (exit {proc.poll()})"
    url = line.split(" at ", 1)[1].split(" ", 1)[0]
    return Served(proc, url.removesuffix("/mcp"))


def stop_serve(served: Served, timeout: float = 30) -> int:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGTERM)
    return served.proc.wait(timeout)


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[Served]:
    served = start_serve(env, *args)
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(10)


def tt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TT, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def new_token(env: dict[str, str], agent: str) -> str:
    done = tt(env, "token", "add", agent, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["agent"] == agent
    token: str = data["token"]
    return token


def http_client(token: str | None, headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx2.AsyncClient(headers=sent, timeout=httpx2.Timeout(30, read=400))


@asynccontextmanager
async def connect_http(url: str, token: str, headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    """One MCP session over streamable HTTP, as the agent ``token`` names."""
    async with http_client(token, headers) as http, Client(
        streamable_http_client(url, http_client=http)
    ) as client:
        yield client


def probe(env: dict[str, str], url: str, token: str, *args: str) -> subprocess.Popen[str]:
    """``tests/http_probe.py``: a client process the tests can SIGKILL (see its doc)."""
    return subprocess.Popen(
        [sys.executable, str(PROBE), url, token, *args], env={**env, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE, text=True,
    )
