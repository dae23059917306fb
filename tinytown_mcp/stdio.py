"""A stdio transport that waits on the pipes in the event loop instead of in threads.

The SDK's ``stdio_server`` reads each line, writes each message and flushes it through a
worker thread (``anyio.wrap_file``): three thread hand-offs per request on a busy machine.
An agent's messages cross two servers per hop, so this transport reads stdin and writes
stdout as non-blocking pipes watched by the event loop (``add_reader``/``add_writer``
under anyio's ``wait_readable``/``wait_writable``).  It frames messages exactly as the SDK
does (one JSON-RPC message per line, UTF-8) and keeps its safety rule: while serving, fd 0
reads the null device and fd 1 points at stderr, so a stray ``print`` cannot corrupt the
protocol; both are restored on exit, with their blocking mode.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

READ_CHUNK = 1 << 16

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


@asynccontextmanager
async def pipe_stdio() -> AsyncIterator[Streams]:
    """``(read_stream, write_stream)`` over this process's stdin and stdout."""
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    blocking = os.get_blocking(wire_in), os.get_blocking(wire_out)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    os.set_blocking(wire_in, False)
    os.set_blocking(wire_out, False)
    incoming_send, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outgoing, outgoing_receive = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with anyio.create_task_group() as tg:
            reading = anyio.CancelScope()

            async def read() -> None:
                with reading:
                    await _read_lines(wire_in, incoming_send)

            tg.start_soon(read)
            tg.start_soon(_write_lines, wire_out, outgoing_receive)
            try:
                yield incoming, outgoing
            finally:
                reading.cancel()
                outgoing.close()  # the writer drains what is queued, then ends
    finally:
        os.set_blocking(wire_in, blocking[0])
        os.set_blocking(wire_out, blocking[1])
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        for fd in (wire_in, wire_out, saved_in, saved_out):
            os.close(fd)


async def _read_lines(fd: int, sink: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
    pending = b""
    async with sink:
        while True:
            await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                break  # EOF: the client is gone; closing the sink ends the session
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except Exception as exc:  # a malformed line is reported to the session, as the SDK does
                    await sink.send(exc)
                    continue
                await sink.send(SessionMessage(message))


async def _write_lines(fd: int, source: MemoryObjectReceiveStream[SessionMessage]) -> None:
    async with source:
        async for item in source:
            data = item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
            view = memoryview(data)
            while view:
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    await anyio.wait_writable(fd)
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client is gone; stdin's EOF ends the session
                view = view[written:]
