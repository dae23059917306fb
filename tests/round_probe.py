"""A round's CLI for the session tests: a real MCP client, started by the runner like any
preset, that records what its session is shown and reports its task.

It connects with the MCP config the runner generated (``TINYTOWN_MCP_CONFIG``), calls
``whoami``, ``receive`` (0 s), ``task_done`` for ``TINYTOWN_TASK_ID`` and ``receive`` again,
and prints one line ``PROBE <json>`` with what it saw.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client

from tinytown_mcp.scripted_agent import call, server_parameters


async def main() -> None:
    config = Path(os.environ["TINYTOWN_MCP_CONFIG"])
    task_id = os.environ["TINYTOWN_TASK_ID"]
    seen: dict[str, Any] = {}
    async with Client(server_parameters(config)) as client:
        seen["whoami"] = await call(client, "whoami")
        seen["first"] = await call(client, "receive", {"timeout_s": 0})
        seen["done"] = await call(client, "task_done", {"task_id": task_id, "result": "probe did it"})
        seen["second"] = await call(client, "receive", {"timeout_s": 0})
    print("PROBE " + json.dumps(seen), flush=True)


if __name__ == "__main__":
    anyio.run(main)
