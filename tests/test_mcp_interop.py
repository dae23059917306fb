"""Interoperability: the official TypeScript MCP SDK client (the one Claude Code and
Codex-style hosts build on) against ``tinytown-mcp`` over stdio.

Runs ``node tests/interop/client.mjs``; installs the SDK with npm into ``tests/interop``
once (under a lock, so concurrent runs install it once).  Skipped only when node or npm is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from agent_clis import _locked, cache_dir
from conftest import make_config
from mcp_support import SCRIPT
from redis.asyncio import Redis

from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.real_redis, pytest.mark.e2e]

INTEROP = Path(__file__).resolve().parent / "interop"


def typescript_sdk() -> str:
    """The ``node`` binary, with the TypeScript SDK installed into ``tests/interop`` (once,
    under a lock); skipped only when node or npm is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the TypeScript SDK interop test (install Node.js >= 18)")
    done = INTEROP / "node_modules" / ".tinytown-installed"
    # Locked: .ci/run's two Python legs run this at once, and npm fills node_modules gradually.
    with _locked(cache_dir() / "interop-npm"):
        if not done.exists():
            install = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund"], cwd=INTEROP, capture_output=True, text=True,
                timeout=300, check=False,
            )
            assert install.returncode == 0, f"npm install failed:\n{install.stdout}\n{install.stderr}"
            done.touch()
    return node


@pytest.fixture(scope="module")
def node() -> str:
    return typescript_sdk()


async def test_the_typescript_sdk_client_lists_the_tools_and_calls_them(
    node: str, tt_env: dict[str, str], real_redis: Redis, town_name: str
) -> None:
    proc = subprocess.run(
        [node, str(INTEROP / "client.mjs"), str(SCRIPT), "--agent", "tsclient"], env=tt_env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["server"]["name"] == "tinytown"
    assert "'tsclient'" in seen["instructions"]
    tools = {tool["name"]: tool for tool in seen["tools"]}
    assert len(tools) == 15
    assert tools["receive"]["schema"]["properties"]["timeout_s"]["maximum"] == 300
    assert tools["whoami"]["annotations"]["readOnlyHint"] is True
    whoami = seen["whoami"]
    assert not whoami["isError"] and whoami["structured"]["agent"]["name"] == "tsclient"
    assert json.loads(whoami["text"]) == whoami["structured"]
    assert not seen["sent"]["isError"]
    assert seen["refused"] == {"isError": True, "text": "invalid: receive: timeout_s must be at most 300"}
    assert "tsclient" in seen["prompt"]
    assert json.loads(seen["inbox"]) == []

    town = Town(real_redis, make_config(town_name))
    [message] = await town.inbox("conductor")
    assert (message.sender, message.body, message.kind, message.priority) == (
        "tsclient", "hello from TypeScript", "query", "high"
    )
    assert message.id == seen["sent"]["structured"]["message"]["id"]
