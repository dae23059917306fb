"""Tools of the fault tier (``tests/test_faults.py``): a ledger that counts what a client saw,
a raw JSON-RPC client that can give up on a request without telling the server, and a TCP
proxy that cuts a connection between a script's run and its reply.

The ledger is the checker (Jepsen-style): every message a test sends is recorded, every
batch a client actually saw is recorded, and a batch counts as acknowledged once the client
asked for its next batch after seeing it (the implicit ack).  From that:

* lost: sent and never seen by any client, after a final drain;
* twice before ack: seen again before the client had acknowledged it (at-least-once allows it);
* after ack: seen again after it was acknowledged (never allowed).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from tinytown.town import Town


@dataclass
class Ledger:
    scenario: str
    sent: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    twice_before_ack: int = 0
    after_ack: int = 0
    _unacked: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def send(self, message_id: str) -> None:
        self.sent.append(message_id)

    def asking_again(self) -> None:
        """The client asks for its next batch: what it saw so far is acknowledged."""
        self.acked.update(self._unacked)
        self._unacked = []

    async def settle(self, town: Town) -> None:
        """Count as acknowledged what Redis has acknowledged (the message's record got its
        expiry), rather than what the client meant to acknowledge: where a client is told
        it gave up on an answer it had in fact read, the server rightly delivers it again,
        and that is a delivery before ack."""
        ids = [mid for mid in self.seen if mid not in self.acked]
        if not ids:
            return
        async with town.redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.pttl(town.keys.message(mid))
            ttls = await pipe.execute()
        self.acked.update(mid for mid, ttl in zip(ids, ttls, strict=True) if ttl > 0)

    def unacked_lost_with_session(self) -> None:
        """The client's session ended before it asked again: what it saw is not acknowledged."""
        self._unacked = []

    def saw(self, message_ids: Iterable[str]) -> None:
        for mid in message_ids:
            self.log.append(f"saw {mid} acked={mid in self.acked} seen={self.seen.get(mid, 0)}")
            if mid in self.acked:
                self.after_ack += 1
            elif mid in self.seen:
                self.twice_before_ack += 1
            self.seen[mid] = self.seen.get(mid, 0) + 1
            self._unacked.append(mid)

    @property
    def lost(self) -> list[str]:
        return [mid for mid in self.sent if mid not in self.seen]

    def figures(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "sent": len(self.sent), "lost": len(self.lost),
            "delivered_twice_before_ack": self.twice_before_ack, "delivered_after_ack": self.after_ack,
        }

    def report(self, **extra: Any) -> str:
        """One line of figures (the integrator quotes them); also appended to
        ``$TINYTOWN_FAULT_FIGURES`` when set."""
        line = json.dumps({**self.figures(), **extra})
        target = os.environ.get("TINYTOWN_FAULT_FIGURES")
        if target:
            with Path(target).open("a", encoding="utf-8") as out:
                out.write(line + "\n")
        return line

    def check(self) -> None:
        assert not self.lost, f"{self.scenario}: {len(self.lost)} of {len(self.sent)} lost"
        assert self.after_ack == 0, f"{self.scenario}: {self.after_ack} delivered after their ack"


class RawClient:
    """A bare JSON-RPC client over a ``tinytown-mcp`` subprocess's stdio.

    Unlike the SDK clients it can give up on a request and send nothing (no
    ``notifications/cancelled``), as clients with their own tool timeout may; the answers it
    no longer waits for are kept in ``late`` as evidence.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.late: dict[int, dict[str, Any]] = {}
        self.late_event = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str], stderr: Any) -> RawClient:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            limit=1 << 22,
        )
        client = cls(proc)
        client._reader = asyncio.create_task(client._read())
        await client.request("initialize", {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "fault-test", "version": "0"},
        })
        await client.notify("notifications/initialized", {})
        return client

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if "id" not in message or "method" in message:
                continue  # notifications (progress, logs) and server requests: not needed here
            future = self.waiting.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_result(message)
            else:
                self.late[message["id"]] = message
                self.late_event.set()

    async def _write(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self._write({"jsonrpc": "2.0", "method": method, "params": params})

    async def send_request(
        self, method: str, params: dict[str, Any]
    ) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = future
        await self._write({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return self.next_id, future

    def give_up(self, ident: int) -> None:
        """Stop waiting for ``ident`` and tell the server nothing."""
        self.waiting.pop(ident, None)

    async def request(self, method: str, params: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        _, future = await self.send_request(method, params)
        return await asyncio.wait_for(future, timeout)

    async def call(self, tool: str, timeout: float = 30, **arguments: Any) -> dict[str, Any]:
        reply = await self.request("tools/call", {"name": tool, "arguments": arguments}, timeout)
        return dict(reply["result"])

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


def tool_payload(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("isError"), result
    data: dict[str, Any] = result["structuredContent"]
    return data


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of a Redis unix socket.

    :meth:`cut_after` arms it: the next command whose bytes contain ``marker`` reaches Redis
    and runs, but its reply is dropped and both sides of that connection are closed — the
    reply "lost in the network" after the write happened.  ``cuts`` counts the cuts done.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = 0
        self.cuts = 0
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut_after(self, marker: bytes) -> None:
        self._marker = marker

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_unix_connection(self.upstream)
        doomed = asyncio.Event()

        async def upward() -> None:
            while data := await client_r.read(1 << 16):
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    doomed.set()
                server_w.write(data)
                await server_w.drain()

        async def downward() -> None:
            while data := await server_r.read(1 << 16):
                if doomed.is_set():
                    self.cuts += 1
                    return  # the reply of the doomed command is dropped with the connection
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upward()), asyncio.create_task(downward())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except Exception:
            pass
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()


async def within(seconds: float, call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """Run ``call``; return how long it took and its result (bounded by ``seconds``)."""
    started = anyio.current_time()
    with anyio.fail_after(seconds):
        result = await call()
    return anyio.current_time() - started, result
