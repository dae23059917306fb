"""How one tool call becomes one Town call and one MCP result.

Every tool body is ``await answer(ctx, call)`` where ``call(session)`` awaits a single
:class:`~tinytown.town.Town` method and returns a JSON-able dict.  :func:`answer` adds the
caller's ``"inbox": {"pending": N, "urgent": M}``, returns it as structured content plus
the same JSON as text, and turns a :class:`~tinytown.errors.TinytownError` into an
``isError`` result whose text starts with the error's stable code.  It is the outermost
edge of a tool call, so it is also where an unexpected exception is logged with its
traceback (and reported as ``unavailable``) instead of reaching the SDK.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from mcp.server.mcpserver import Context
from mcp_types import CallToolResult, TextContent

from tinytown.errors import TinytownError
from tinytown.masking import scrub
from tinytown.models import public_json
from tinytown.push import PushFeed
from tinytown.town import Town

log = logging.getLogger("tinytown_mcp")

RECEIPTS_KEPT = 64


@dataclass
class Session:
    """One client connection: the town, the caller's fixed identity, its mailbox session.

    ``session_id`` is what :meth:`Town.open_session` returned when the connection
    started; ``receive`` passes it so a session that was taken over cannot keep reading.
    """

    town: Town
    agent: str
    session_id: str
    progress_every_s: float = 10.0
    in_round: bool = False
    """Joined a runner's session for one round (it took nothing over)."""
    receipts: OrderedDict[str, str] = field(default_factory=OrderedDict)
    """Request id -> batch name of this session's recent receives, for :meth:`abandoned`."""
    spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None] | None = None
    """Starts a background task that lives as long as the session."""
    push: PushFeed | None = None
    """New mail pushed to the client, for a session that opted in (:mod:`tinytown_mcp.push`)."""

    def receipt(self, request_id: str) -> str:
        """A batch name for the receive with this request id (remembered for a while)."""
        batch = uuid.uuid4().hex
        self.receipts[str(request_id)] = batch
        while len(self.receipts) > RECEIPTS_KEPT:
            self.receipts.popitem(last=False)
        return batch

    def abandoned(self, request_id: str | int) -> None:
        """The client gave up on request ``request_id`` (``notifications/cancelled``, sent by
        the SDKs on a cancel and on their own timeout).  If it was a receive, whatever it
        delivered was not seen, even when the answer had been written already: the next
        receive must not acknowledge it, and it goes back to the inbox now.

        Synchronous: the transport calls it as it reads the notification, before it reads
        the client's next request (stdio keeps their order), so that request cannot ack it.
        """
        batch = self.receipts.pop(str(request_id), None)
        if batch is None:
            return
        self.town.forget_batch(self.agent, self.session_id, batch)
        if self.spawn is not None:
            self.spawn(partial(self._put_back, batch))

    async def _put_back(self, batch: str) -> None:
        try:
            count = await self.town.unseen(self.agent, self.session_id, batch)
        except TinytownError as error:  # the session's next receive puts it back instead
            log.warning("putting back batch %s of %s failed: %s", batch, self.agent, error)
            return
        if count:
            log.info("%s gave up on a receive: %d message(s) it never saw are back", self.agent, count)


ToolContext = Context[Session, Any]
Call = Callable[[Session], Awaitable[dict[str, Any]]]


jsonable = public_json  # one definition for every face: tinytown.models


def success(payload: dict[str, Any]) -> CallToolResult:
    """Structured content plus the same JSON as text (for clients that show only text)."""
    data = jsonable(payload)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def failure(error: TinytownError) -> CallToolResult:
    """``isError`` with text ``"<code>: <sentence>"``."""
    return CallToolResult(content=[TextContent(type="text", text=scrub(str(error)))], is_error=True)


def unexpected(tool: str) -> CallToolResult:
    text = (
        f"unavailable: {tool} failed unexpectedly inside the Tinytown server (details are in its log, "
        ".tt/logs/mcp-<agent>.log); try again, and tell the conductor if it keeps happening"
    )
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def session_of(ctx: ToolContext) -> Session:
    return ctx.request_context.lifespan_context


async def answer(ctx: ToolContext, tool: str, call: Call) -> CallToolResult:
    """Run ``call`` for this connection's session and shape the result (see module doc)."""
    session = session_of(ctx)
    try:
        payload = await call(session)
        if "inbox" not in payload:
            counts = await session.town.inbox_counts(session.agent, cached=True)
            payload["inbox"] = {"pending": counts.pending, "urgent": counts.urgent}
    except TinytownError as error:
        log.info("%s as %s: %s", tool, session.agent, error)
        return failure(error)
    except Exception:  # the edge of a tool call: log with the traceback, answer with a code
        log.exception("%s as %s raised unexpectedly", tool, session.agent)
        return unexpected(tool)
    log.debug("%s as %s: ok", tool, session.agent)
    return success(payload)
