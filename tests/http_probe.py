"""A client process for the HTTP tests to kill: ``http_probe.py URL TOKEN TIMEOUT_S``.

Connects over streamable HTTP with the token and calls ``receive`` (``TIMEOUT_S``).  It prints
``WAITING`` when the first progress notification of that receive arrives (the server is
waiting for it), ``GOT <json>`` with the result, and then waits forever (never acknowledging
it) until it is killed.
"""

from __future__ import annotations

import json
import sys

import anyio
import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, token: str, timeout_s: float) -> None:
    said = False

    async def progress(done: float, total: float | None, message: str | None) -> None:
        nonlocal said
        if not said:
            said = True
            print("WAITING", flush=True)

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                              timeout=httpx2.Timeout(30, read=400))
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        result = await client.call_tool("receive", {"timeout_s": timeout_s}, progress_callback=progress)
        print("GOT " + json.dumps(result.structured_content), flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]))
