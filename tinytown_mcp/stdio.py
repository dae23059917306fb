"""A stdio transport that waits on the pipes in the event loop instead of in threads.

The SDK's ``stdio_server`` reads each line, writes each message and flushes it through a
worker thread (``anyio.wrap_file``): three thread hand-offs per request on a busy machine.
An agent's messages cross two servers per hop, so this transport reads stdin and writes
stdout as non-blocking pipes watched by the event loop (``add_reader``/``add_writer``
under anyio's ``wait_readable``/``wait_writable``).  It frames messages exactly as the SDK
does (one JSON-RPC message per line, UTF-8) and keeps its safety rule: while serving, fd 0
reads the null device and fd 1 points at stderr, so a stray ``print`` cannot corrupt the
protocol; both are restored on exit, with their blocking mode.

Every line gets an answer: a line that is not a JSON-RPC message (not UTF-8, not JSON, a
lone surrogate, nested deeper than the parser allows, the wrong shape) is answered here
with a JSON-RPC error (``-32700`` parse error, ``-32600`` invalid request) carrying the
request's ``id`` when one can be read, else ``null`` (JSON-RPC 2.0, section 5.1).  A reply
that cannot be serialised becomes an internal error for the same id.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

log = logging.getLogger("tinytown_mcp.stdio")

READ_CHUNK = 1 << 16

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


Observer = Callable[[types.JSONRPCMessage], None]


@asynccontextmanager
async def pipe_stdio(observe: Observer | None = None) -> AsyncIterator[Streams]:
    """``(read_stream, write_stream)`` over this process's stdin and stdout.

    ``observe`` sees each incoming message synchronously, in order, before it is passed on
    (the server learns of a cancelled request before it reads the next one)."""
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
    replies = outgoing.clone()  # the reader answers hostile lines itself
    try:
        async with anyio.create_task_group() as tg:
            reading = anyio.CancelScope()

            async def read() -> None:
                with reading:
                    await _read_lines(wire_in, incoming_send, replies, observe)

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


async def _read_lines(
    fd: int,
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    replies: MemoryObjectSendStream[SessionMessage],
    observe: Observer | None = None,
) -> None:
    pending = b""
    async with sink, replies:
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
                except Exception as exc:  # any malformed line: a protocol error, never silence
                    error = protocol_error(line, exc)
                    log.info("refused a malformed JSON-RPC line (%d bytes): %s", len(line),
                             error.error.message)
                    await replies.send(SessionMessage(error))
                    continue
                if isinstance(message, types.JSONRPCNotification) and _has_id(line):
                    # an id that is neither a string nor a number: not a notification
                    await replies.send(SessionMessage(types.JSONRPCError(
                        jsonrpc="2.0", id=None, error=types.ErrorData(
                            code=types.INVALID_REQUEST,
                            message="invalid request: the id must be a string or a number",
                        ))))
                    continue
                if observe is not None:
                    observe(message)
                await sink.send(SessionMessage(message))


def _has_id(line: bytes) -> bool:
    try:
        parsed = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and "id" in parsed


def protocol_error(line: bytes, exc: Exception) -> types.JSONRPCError:
    """The JSON-RPC error reply for a line that is not a valid JSON-RPC message."""
    request_id: int | str | None = None
    code = types.INVALID_REQUEST
    try:
        parsed = json.loads(line)  # more lenient than the protocol's parser: to find the id
    except (ValueError, RecursionError):
        parsed = None
        code = types.PARSE_ERROR
    if isinstance(parsed, dict):
        candidate = parsed.get("id")
        if isinstance(candidate, str) and _encodable(candidate):
            request_id = candidate
        elif isinstance(candidate, int) and not isinstance(candidate, bool):
            request_id = candidate
    detail = _first_problem(exc)
    if detail.startswith("Invalid JSON"):
        code = types.PARSE_ERROR  # e.g. nested too deep, or a lone surrogate
    what = (
        "parse error: not JSON the protocol accepts (UTF-8, no lone surrogates, nesting under 200)"
        if code == types.PARSE_ERROR
        else "invalid request: not a JSON-RPC 2.0 message"
    )
    if detail:
        what = f"{what}: {detail}"
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=what))


def _first_problem(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors(include_input=False, include_url=False)[0]
            return str(first.get("msg", ""))[:200]
        except Exception:  # pydantic's errors() on an odd error: keep the generic text
            return ""
    return ""


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _write_lines(fd: int, source: MemoryObjectReceiveStream[SessionMessage]) -> None:
    async with source:
        async for item in source:
            data = _serialise(item)
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


def _serialise(item: SessionMessage) -> bytes:
    """One line of JSON; a message that cannot be encoded becomes an internal error reply."""
    try:
        return item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
    except (ValueError, UnicodeError) as exc:
        request_id = getattr(item.message, "id", None)
        log.warning("cannot encode a reply (id %r): %s", request_id, exc)
        if not isinstance(request_id, int | str) or isinstance(request_id, bool):
            request_id = None
        error = types.JSONRPCError(
            jsonrpc="2.0", id=request_id,
            error=types.ErrorData(
                code=types.INTERNAL_ERROR, message="internal error: the reply could not be encoded"
            ),
        )
        return error.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
