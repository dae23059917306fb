"""Helpers shared by the MCP tests: a real client session and result checks.

``connect`` runs the official ``mcp.client.Client`` against our server object in process
(the SDK's in-memory transport); ``stdio`` starts ``tinytown-mcp`` as a real subprocess.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types import CallToolResult

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
    env: dict[str, str], agent: str | None, errlog: TextIO | None = None, command: list[str] | None = None
) -> AsyncIterator[Client]:
    """A session with a real ``tinytown-mcp --agent AGENT`` process (or ``command``) over stdio."""
    argv = [*(command or [str(SCRIPT)]), *(["--agent", agent] if agent else [])]
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
    async with Client(stdio_client(params, errlog=errlog or sys.stderr)) as client:
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
