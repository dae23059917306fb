"""The Tinytown MCP server: one town, one agent identity per session, over stdio.

``tinytown-mcp [--town PATH] [--agent NAME]`` (or ``python -m tinytown_mcp``).  The
identity is ``--agent``, else ``TINYTOWN_AGENT``, else ``conductor``.  Opening the town
starts its managed Redis when it is down.  When a client connects, the session takes over
the agent's mailbox (:meth:`Town.open_session`): a missing agent is registered ("attached",
``cli = null``) and whatever a previous session received but never acknowledged is put back
at the front of the inbox.  Under the name of a spawned agent whose runner lives, that is
refused (``conflict:``; ``--take-over`` overrides), except for the server of one of the
runner's rounds: with ``TINYTOWN_ROUND`` (the round's credential, set in the generated MCP
config) it joins the runner's session and takes nothing over.  Nothing but protocol goes to
stdout: logs go to ``.tt/logs/mcp-<agent>.log``, and only warnings and errors also to stderr.

Requests of one session run concurrently (the SDK's dispatcher starts a task per
request), so a ``receive`` blocked in Redis never holds up other tool calls, and a client
cancelling it interrupts the wait at once; the message stays queued.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.runner import serve_loop
from mcp_types import (
    CallToolResult,
    CancelledNotificationParams,
    InputRequiredResult,
    JSONRPCMessage,
    JSONRPCNotification,
    ServerCapabilities,
)
from pydantic import ValidationError

import tinytown
from tinytown.channel import PROGRESS_EVERY_S
from tinytown.errors import Invalid, TinytownError
from tinytown.masking import MaskingFormatter, scrub
from tinytown.mcp_config import ROUND_ENV
from tinytown.models import CONDUCTOR, normalise_agent_name
from tinytown.private import PrivateFileHandler, use_private_umask
from tinytown.processes import mcp_log_path
from tinytown.town import Town
from tinytown_mcp import guides, push
from tinytown_mcp.adapter import Session, failure, unexpected
from tinytown_mcp.arguments import ArgumentGate
from tinytown_mcp.resources import register_prompts, register_resources
from tinytown_mcp.stdio import pipe_stdio
from tinytown_mcp.tools import catalogue

log = logging.getLogger("tinytown_mcp")

HEARTBEAT_MAX_S = 30.0


class TownServer(MCPServer[Session]):
    """An :class:`MCPServer` bound to one town and one caller identity.

    It differs from a plain MCPServer in one place: :meth:`call_tool` checks the arguments
    against the tool's published schema first, so bad arguments come back as ``invalid:``
    (and an unknown tool as ``not_found:``) instead of the SDK's generic text.
    """

    def __init__(
        self,
        town: Town,
        agent: str,
        *,
        progress_every_s: float = PROGRESS_EVERY_S,
        round_credential: str | None = None,
        take_over: bool = False,
        push: bool = False,
    ) -> None:
        self.town = town
        self.agent = agent
        self.progress_every_s = progress_every_s
        self.round_credential = round_credential
        self.take_over = take_over
        self.push = push
        self.push_reachable: Callable[[], Awaitable[None]] | None = None
        """Set by a face whose client is not always reachable (HTTP: its standalone stream)."""
        tools = catalogue()
        self.gate = ArgumentGate({tool.name: tool.parameters for tool in tools})
        super().__init__(
            name="tinytown", title=f"Tinytown {town.name}", version=tinytown.__version__,
            instructions=guides.instructions(agent, town.name, push=push), tools=tools,
            lifespan=_lifespan,
            log_level="WARNING",
        )
        register_resources(self, town, agent)
        register_prompts(self, town, agent)
        self.session: Session | None = None
        self._lowlevel_server.add_notification_handler(
            "notifications/cancelled", CancelledNotificationParams, self._on_cancelled
        )
        self._lowlevel_server.middleware.append(self._start_push)
        _declare_channel(self)

    def _observe(self, message: JSONRPCMessage) -> None:
        """Sees each message as the transport reads it: a cancelled receive's batch is taken
        back before the client's next request is read (see :meth:`Session.abandoned`)."""
        if isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            request_id = (message.params or {}).get("requestId")
            if self.session is not None and isinstance(request_id, str | int):
                self.session.abandoned(request_id)

    async def _on_cancelled(self, ctx: Any, params: CancelledNotificationParams) -> None:
        """The same for transports without :meth:`_observe` (the in-memory one of the tests);
        a second call for one request does nothing."""
        if params.request_id is not None:
            session = ctx.lifespan_context
            if isinstance(session, Session):
                session.abandoned(params.request_id)

    async def _start_push(self, ctx: ServerRequestContext[Session, Any], call_next: CallNext) -> Any:
        """Middleware: once the client is ready for notifications (after its
        ``notifications/initialized``, or its first request on a connection of the 2026 era,
        which has no handshake), an opted-in session starts its push."""
        result = await call_next(ctx)
        session = ctx.lifespan_context
        if (self.push and ctx.method != "initialize" and isinstance(session, Session)
                and session.push is None and not session.in_round):
            push.attach(session, ctx.session, self.push_reachable)
        return result

    async def run_stdio_async(self) -> None:
        """Serve stdio with :func:`~tinytown_mcp.stdio.pipe_stdio` (no thread per message).

        With push, only the ``initialize`` handshake era is served: on a 2026-07-28 connection
        a server has no path for unsolicited notifications, and Claude Code registers no
        channel on one.  A client's ``server/discover`` probe is refused before the
        handshake, so it falls back to ``initialize``."""
        async with pipe_stdio(self._observe) as (read_stream, write_stream):
            lowlevel = self._lowlevel_server
            options = lowlevel.create_initialization_options()
            if not self.push:
                # the same call MCPServer.run_stdio_async makes, with our transport
                await lowlevel.run(read_stream, write_stream, options)
                return
            async with lowlevel.lifespan(lowlevel) as state:
                await serve_loop(lowlevel, read_stream, write_stream, lifespan_state=state,
                                 init_options=options)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Session, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        problem = self.gate.check(name, arguments)
        if problem is not None:
            log.info("%s as %s refused: %s", name, self.agent, problem)
            return failure(problem)
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            # Only argument coercion can get here (tool bodies answer every error themselves).
            if isinstance(exc.__cause__, ValidationError):
                fields = sorted({".".join(map(str, e["loc"])) for e in exc.__cause__.errors()})
                return failure(Invalid(f"{name}: bad value for {', '.join(fields)}"))
            log.exception("%s as %s raised unexpectedly", name, self.agent)
            return unexpected(name)


def build_server(
    town: Town,
    agent: str = CONDUCTOR,
    *,
    progress_every_s: float = PROGRESS_EVERY_S,
    round_credential: str | None = None,
    take_over: bool = False,
    push: bool = False,
) -> TownServer:
    """The MCP server for ``agent`` in ``town`` (the town stays the caller's to close).

    ``round_credential``: join the runner's session of the round it was made for (what
    ``TINYTOWN_ROUND`` carries); ``take_over``: take the mailbox even from a live runner;
    ``push``: send each new message to the client as a channel notification
    (:mod:`tinytown_mcp.push`).
    """
    return TownServer(town, normalise_agent_name(agent), progress_every_s=progress_every_s,
                      round_credential=round_credential, take_over=take_over, push=push)


def _declare_channel(server: MCPServer[Session]) -> None:
    """Every transport (stdio, in memory, HTTP; handshake or ``server/discover``) asks the
    low-level server for its capabilities: they declare ``experimental["claude/channel"]``."""
    lowlevel = server._lowlevel_server
    capabilities = lowlevel.get_capabilities

    def with_channel(
        notification_options: Any = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> ServerCapabilities:
        experimental = {**push.CAPABILITIES, **(experimental_capabilities or {})}
        return capabilities(notification_options, experimental, extensions,
                            protocol_version=protocol_version)

    lowlevel.get_capabilities = with_channel  # type: ignore[method-assign]


@asynccontextmanager
async def _lifespan(server: MCPServer[Session]) -> AsyncIterator[Session]:
    """One connection = one mailbox session (a runner round's session joins the runner's),
    kept fresh by heartbeats.  Refused (``conflict:``) under the name of an agent whose runner
    lives, unless it is that runner's round or ``take_over`` was asked for."""
    assert isinstance(server, TownServer)
    town, name = server.town, server.agent
    agent, session_id, requeued = await town.open_session(
        name, attach=True, round_credential=server.round_credential, take_over=server.take_over
    )
    if server.round_credential is not None:
        log.info("session for %s in %s joined its runner's round", agent.name, town.name)
    else:
        log.info("session %s for %s in %s (cli=%s); %d unacknowledged message(s) requeued",
                 session_id, agent.name, town.name, agent.cli, requeued)
    session = Session(town=town, agent=agent.name, session_id=session_id,
                      progress_every_s=server.progress_every_s,
                      in_round=server.round_credential is not None)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_heartbeat, town, agent.name,
                          min(HEARTBEAT_MAX_S, town.config.stale_after_s / 3))

            def spawn(job: Callable[[], Coroutine[Any, Any, None]]) -> None:
                tg.start_soon(job)

            session.spawn = spawn
            server.session = session
            try:
                yield session
            finally:
                server.session = None
                tg.cancel_scope.cancel()
    finally:
        if session.push is not None:  # (its feed has stopped with the task group)
            back = await session.push.close()
            log.info("session %s for %s: %d pushed message(s) not acted on went back to the inbox",
                     session_id, agent.name, back)
    log.info("session %s for %s ended", session_id, agent.name)


async def _heartbeat(town: Town, agent: str, every_s: float) -> None:
    """Keep ``last_seen`` fresh while the session lives, so the agent is not shown stale."""
    while True:
        await anyio.sleep(every_s)
        try:
            await town.heartbeat(agent)
        except TinytownError as error:
            log.warning("heartbeat for %s failed: %s", agent, error)


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tinytown-mcp", description="Tinytown MCP server over stdio, bound to one agent identity."
    )
    parser.add_argument("--town", type=Path, default=None,
                        help="town directory (default: $TINYTOWN_TOWN, else search upward)")
    parser.add_argument("--agent", default=None,
                        help="the caller's identity (default: $TINYTOWN_AGENT, else conductor)")
    parser.add_argument("--take-over", action="store_true",
                        help="take the agent's mailbox even from its live runner (the runner stops)")
    parser.add_argument("--push", action="store_true",
                        help="push each new message to the client as a Claude Code channel event "
                             "(notifications/claude/channel)")
    parser.add_argument("--log-level", default=os.environ.get("TINYTOWN_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level of .tt/logs/mcp-AGENT.log (stderr gets warnings and errors only)")
    return parser.parse_args(argv)


def configure_logging(level: str) -> None:
    """Warnings and errors to stderr; everything at ``level`` goes to the log file once the
    town is known (:func:`log_to_file`).  stdout belongs to the protocol, and clients show
    the server's stderr as errors (Claude Code prints every line as ``[ERROR]``), so INFO
    never goes there."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter("tinytown-mcp %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(max(logging.WARNING, logging.getLevelName(level)))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("tinytown_mcp").setLevel(level)
    logging.getLogger("tinytown").setLevel(level)


def log_to_file(town: Town, agent: str) -> Path | None:
    if town.paths is None:
        return None
    path = mcp_log_path(town.paths, agent)
    handler = PrivateFileHandler(path)
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return path


def round_credential_for(agent: str) -> str | None:
    """``TINYTOWN_ROUND`` when it was made for ``agent`` (``NAME:TOKEN``); a credential of
    another agent (a server started inside someone's round under another name) is ignored."""
    credential = os.environ.get(ROUND_ENV)
    if not credential:
        return None
    if credential.partition(":")[0] != agent:
        log.warning("%s names another agent than %s; ignored", ROUND_ENV, agent)
        return None
    return credential


def resolve_identity(explicit: str | None) -> str:
    """``--agent``, else ``TINYTOWN_AGENT``, else ``conductor`` (``supervisor`` means conductor)."""
    return normalise_agent_name(explicit or os.environ.get("TINYTOWN_AGENT") or CONDUCTOR)


async def serve(
    town_path: Path | None, agent: str, take_over: bool = False, push: bool = False
) -> None:
    """Open the town (starting its managed Redis if needed) and serve stdio until EOF.

    Raises:
        Invalid: an identity the town refuses as an agent name (or ``all``).
        NotFound, Unavailable: no town there, or its Redis cannot be reached or started.
    """
    town = await Town.open(town_path)
    try:
        if agent != CONDUCTOR:
            town.validate_agent_name(agent)
        logfile = log_to_file(town, agent)
        log.info("tinytown-mcp %s (pid %d) serving %s as %s (Redis %s, log %s)",
                 tinytown.__version__, os.getpid(), town.name, agent, town.redis_display, logfile)
        server = build_server(
            town, agent, round_credential=round_credential_for(agent), take_over=take_over,
            push=push,
        )
        await server.run_stdio_async()
    finally:
        await town.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``tinytown-mcp``."""
    args = parse_args(argv)
    use_private_umask()  # the server writes nothing but .tt/ (its log): private to the user
    configure_logging(args.log_level)
    try:
        agent = resolve_identity(args.agent)
        anyio.run(serve, args.town, agent, args.take_over, args.push)
    except TinytownError as error:
        sys.stderr.write(f"tinytown-mcp: {scrub(str(error))}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
