"""Helpers shared by the MCP tests: a real client session and result checks.

``connect`` runs the official ``mcp.client.Client`` against our server object in process
(the SDK's in-memory transport); ``stdio`` starts ``tinytown-mcp`` as a real subprocess.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
from mcp.client import Client
from mcp.client.extension import ClientExtension, NotificationBinding
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types import CallToolResult
from pydantic import BaseModel

from tinytown.town import Town
from tinytown_mcp import build_server

CODES = ("not_found", "invalid", "forbidden", "conflict", "unavailable")
SCRIPT = Path(sys.executable).parent / "tinytown-mcp"


@asynccontextmanager
async def connect(town: Town, agent: str = "conductor", **options: Any) -> AsyncIterator[Client]:
    """One client session (= one mailbox session) for ``agent`` over the in-memory transport."""
    async with Client(build_server(town, agent, **options)) as client:
        yield client


@asynccontextmanager
async def stdio(
    env: dict[str, str], agent: str | None, errlog: TextIO | None = None, command: list[str] | None = None,
    *, args: Sequence[str] = (), extensions: Sequence[ClientExtension] = (), legacy: bool = False,
) -> AsyncIterator[Client]:
    """A session with a real ``tinytown-mcp --agent AGENT [ARGS]`` process (or ``command``)
    over stdio; ``extensions`` go to the client (e.g. one observing channel notifications);
    ``legacy`` opens with the ``initialize`` handshake, as Claude Code does."""
    argv = [*(command or [str(SCRIPT)]), *(["--agent", agent] if agent else []), *args]
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
    transport = stdio_client(params, errlog=errlog or sys.stderr)
    async with Client(transport, extensions=list(extensions) or None,
                      mode="legacy" if legacy else "auto") as client:
        yield client


def payload(result: CallToolResult) -> dict[str, Any]:
    """The structured result of a successful call; checks the text carries the same JSON."""
    assert not result.is_error, result.content
    data = result.structured_content
    assert data is not None
    assert json.loads(result.content[0].text) == data  # type: ignore[union-attr]
    assert set(data["inbox"]) == {"pending", "urgent"}
    return data


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    return payload(await client.call_tool(tool, arguments))


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result.structured_content
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


async def refused(client: Client, tool: str, code: str, **arguments: Any) -> str:
    """Call ``tool`` and check it fails with ``code``; returns the error text."""
    text = error_text(await client.call_tool(tool, arguments))
    assert text.startswith(f"{code}: "), text
    return text


class ChannelEvent(BaseModel):
    """The params of a ``notifications/claude/channel`` as a client receives them."""

    content: str
    meta: dict[str, str] = {}


class ChannelObserver(ClientExtension):
    """A client extension that collects the server's channel notifications (the SDK hands
    a vendor notification only to an extension that binds its method)."""

    identifier = "test.tinytown/channel-observer"

    def __init__(self) -> None:
        self.events: list[ChannelEvent] = []
        self._taken = 0
        self._arrived = anyio.Event()

    def notifications(self) -> Sequence[NotificationBinding[Any]]:
        return [NotificationBinding(method="notifications/claude/channel", params_type=ChannelEvent,
                                    handler=self._got)]

    async def _got(self, event: ChannelEvent) -> None:
        self.events.append(event)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def next(self, timeout_s: float = 30) -> ChannelEvent:
        """The next event this method has not returned yet, waiting at most ``timeout_s``."""
        with anyio.fail_after(timeout_s):
            while len(self.events) <= self._taken:
                await self._arrived.wait()
        self._taken += 1
        return self.events[self._taken - 1]
