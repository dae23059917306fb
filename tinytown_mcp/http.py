"""The town's MCP server over streamable HTTP (``tt serve``): many agents, one token each.

Routes: ``POST|GET|DELETE /mcp`` (MCP streamable HTTP, the handshake era: ``initialize``
opens a session named by ``Mcp-Session-Id``) and ``GET /healthz`` (no auth: ``{"ok": true,
"town": NAME}``).  Anything else is 404.

Identity: every ``/mcp`` request carries ``Authorization: Bearer TOKEN``; :func:`identify`
turns the token into the caller (:class:`Caller`), and nothing else of the request (no tool
argument, header or query parameter) can change who that is.  A missing, unknown or revoked
token gets the same 401.  A session belongs to the token that opened it: another token
presenting its id gets 404, as an unknown id does.

One MCP session = one mailbox session, exactly as over stdio: each session gets its own
:class:`~tinytown_mcp.server.TownServer` from :func:`~tinytown_mcp.server.build_server`
(the one server definition of both faces) and runs its lifespan, so opening a session takes
the agent's mailbox over and puts back what a previous session held unacknowledged.

The delivery rule over HTTP: a ``notifications/cancelled`` is acted on as the POST carrying
it arrives, before the client can send its next request (the SDK answers it 202 before
queueing it).  A request whose client went away before its answer was written (the POST's
stream cut) is cancelled as if the client had sent the cancel: a waiting ``receive`` stops,
and a batch it had taken goes back to the inbox.

Keep-alive: a waiting ``receive`` sends a progress notification every ``keepalive_s``, and
every SSE stream carries a comment ping every ``keepalive_s`` (well under Claude Code's 300 s
HTTP idle limit and the idle cut of common proxies).

Shutdown (:meth:`HttpFace.close`, on SIGTERM/Ctrl-C): every session ends, waiting receives
are cancelled (their messages stay queued), clients see their streams end.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.runner import serve_dual_era_loop
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import JSONRPCNotification
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from sse_starlette import EventSourceResponse
from starlette.types import Message, Receive, Scope, Send

from tinytown.errors import TinytownError
from tinytown.masking import scrub
from tinytown.tokens import token_hash
from tinytown.town import Town
from tinytown_mcp.server import TownServer, build_server

log = logging.getLogger("tinytown_mcp.http")

MCP_PATH = "/mcp"
HEALTH_PATH = "/healthz"
KEEPALIVE_S = 10.0
SESSION_IDLE_S = 30 * 60.0
MAX_BODY = 4 * 1024 * 1024
PROTOCOL_VERSION_HEADER = b"mcp-protocol-version"
UNSUPPORTED_PROTOCOL_VERSION = -32022
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Caller:
    """Who an HTTP request comes from: decided by its bearer token alone (:func:`identify`)."""

    agent: str
    token_id: str
    """sha256 of the token: the session opened with it belongs to it."""
    query: Mapping[str, str] = field(default_factory=dict)
    """The URL's query parameters (options of the session, e.g. ``push=1``; never identity)."""


ServerFactory = Callable[[Caller], TownServer]
"""Builds the MCP server of one session for its caller (options from ``Caller.query`` go here)."""


def bearer_token(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer TOKEN`` (one such header), else ``None``."""
    values = [v for k, v in scope.get("headers", []) if k == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def identify(town: Town, scope: Scope) -> Caller | None:
    """The caller of an ``/mcp`` request, from its bearer token; ``None`` when the token is
    missing, unknown or revoked.  The one place identity is decided.

    Raises:
        Unavailable: Redis does not answer.
    """
    token = bearer_token(scope)
    if token is None:
        return None
    agent = await town.tokens.agent_of(token)
    if agent is None:
        return None
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    return Caller(agent=agent, token_id=token_hash(token), query=query)


@dataclass
class _Session:
    caller: Caller
    server: TownServer
    transport: StreamableHTTPServerTransport
    standalone: anyio.Event = field(default_factory=anyio.Event)
    """Set while the client's standalone (GET) stream is open: the one way a notification
    that answers no request (a pushed message) reaches it."""

    async def reachable(self) -> None:
        await self.standalone.wait()


PUSH_ON = ("1", "true", "yes", "on")


class HttpFace:
    """The ASGI app of ``tt serve`` (see the module doc).  Use as ``async with face.running():``
    around the HTTP server, or let the ASGI lifespan do it."""

    def __init__(
        self,
        town: Town,
        *,
        keepalive_s: float = KEEPALIVE_S,
        session_idle_s: float = SESSION_IDLE_S,
        host: str = "127.0.0.1",
        server_factory: ServerFactory | None = None,
    ) -> None:
        self.town = town
        self.keepalive_s = keepalive_s
        self.session_idle_s = session_idle_s
        self.make_server = server_factory or self.default_server
        self.security = (
            TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
            if host in LOOPBACK else None
        )
        self.sessions: dict[str, _Session] = {}
        self._tg: TaskGroup | None = None
        # Every SSE stream's comment ping (the SDK's transport builds the responses itself).
        EventSourceResponse.DEFAULT_PING_INTERVAL = max(1, round(keepalive_s))

    def default_server(self, caller: Caller) -> TownServer:
        """``?push=1`` on the URL: new mail is pushed as channel events (:mod:`tinytown_mcp.push`)."""
        push = caller.query.get("push", "").lower() in PUSH_ON
        return build_server(self.town, caller.agent, progress_every_s=self.keepalive_s, push=push)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the sessions' task group until cancelled; cancelling ends every session."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                task_status.started()
                await anyio.sleep_forever()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def close(self) -> None:
        """End every session now: waiting receives are cancelled, their messages stay queued."""
        for session_id, session in list(self.sessions.items()):
            self.sessions.pop(session_id, None)
            with anyio.CancelScope(shield=True):
                await session.transport.terminate()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if path == HEALTH_PATH and scope.get("method") in ("GET", "HEAD"):
            await _json(send, 200, {"ok": True, "town": self.town.name})
        elif path in (MCP_PATH, MCP_PATH + "/"):
            await self._mcp(scope, receive, send)
        else:
            await _json(send, 404, {"error": "not found"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            await send({"type": "lifespan.startup.complete"})
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            await self.close()
            tg.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    async def _mcp(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            caller = await identify(self.town, scope)
        except TinytownError as error:
            log.warning("cannot check a token: %s", error)
            await _json(send, 503, {"error": "unavailable"})
            return
        if caller is None:
            await _json(send, 401, {"error": "unauthorized"},
                        extra=[(b"www-authenticate", b'Bearer realm="tinytown"')])
            return
        version = _header(scope, PROTOCOL_VERSION_HEADER)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            # The stateless 2026 era has no session, and a mailbox session is what an agent
            # is: clients that probe it (the SDKs' "auto" mode) fall back to initialize.
            await _jsonrpc_error(send, 400, UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                                 {"supported": list(HANDSHAKE_PROTOCOL_VERSIONS), "requested": version})
            return
        body = b""
        if scope.get("method") == "POST":
            read = await _read_body(receive)
            if read is None:
                await _json(send, 413, {"error": "request body too large"})
                return
            body = read
        session_id = _header(scope, MCP_SESSION_ID_HEADER.encode())
        if session_id is None:
            await self._open(caller, scope, receive, body, send)
            return
        session = self.sessions.get(session_id)
        if session is None or session.caller.token_id != caller.token_id:
            await _jsonrpc_error(send, 404, -32600, "Session not found")
            return
        await self._forward(session, scope, receive, body, send)

    async def _open(self, caller: Caller, scope: Scope, receive: Receive, body: bytes, send: Send) -> None:
        """A request without a session id: it opens a session (the transport refuses anything
        but ``initialize``).  The mailbox session opens first, so a refusal (``conflict:`` under
        the name of an agent whose runner lives) answers this request."""
        if self._tg is None:
            await _json(send, 503, {"error": "shutting down"})
            return
        if scope.get("method") != "POST" or not _is_initialize(body):
            # only initialize opens a session (and takes the agent's mailbox over)
            await _jsonrpc_error(send, 400, -32600, "Bad Request: Missing session ID")
            return
        transport = StreamableHTTPServerTransport(
            mcp_session_id=uuid.uuid4().hex, security_settings=self.security,
            idle_timeout=self.session_idle_s,
        )
        session = _Session(caller, self.make_server(caller), transport)
        session.server.push_reachable = session.reachable
        try:
            await self._tg.start(self._serve, session)
        except TinytownError as error:
            log.info("session for %s refused: %s", caller.agent, error)
            await _jsonrpc_error(send, 409 if error.code == "conflict" else 503, -32603, scrub(str(error)))
            return
        assert transport.mcp_session_id is not None
        self.sessions[transport.mcp_session_id] = session
        status = await self._forward(session, scope, receive, body, send)
        if status is None or status >= 400:
            self.sessions.pop(transport.mcp_session_id, None)
            await transport.terminate()

    async def _serve(self, session: _Session, *, task_status: TaskStatus[None]) -> None:
        """One session's server: its lifespan (the mailbox session), then the MCP loop until
        the client deletes it, it idles out, or the face closes."""
        lowlevel = session.server._lowlevel_server
        transport = session.transport
        started = False
        try:
            async with lowlevel.lifespan(lowlevel) as state, transport.connect() as (read, write):
                task_status.started()
                started = True
                idle = transport.idle_scope or anyio.CancelScope()
                with idle:
                    await serve_dual_era_loop(lowlevel, read, write, lifespan_state=state,
                                              init_options=lowlevel.create_initialization_options())
                if idle.cancelled_caught:
                    log.info("session of %s idled out", session.caller.agent)
        except TinytownError as error:
            if not started:
                raise  # the opening request answers it
            log.warning("session of %s ended: %s", session.caller.agent, error)
        except Exception:  # the edge of one session: log it, keep serving the others
            log.exception("session of %s crashed", session.caller.agent)
        finally:
            if transport.mcp_session_id is not None:
                self.sessions.pop(transport.mcp_session_id, None)
            if not transport.is_terminated:
                with anyio.CancelScope(shield=True):
                    await transport.terminate()

    async def _forward(
        self, session: _Session, scope: Scope, receive: Receive, body: bytes, send: Send
    ) -> int | None:
        """Hand one request to the session's transport, acting on a cancel as it arrives and
        cancelling a request whose client left before its answer was written.  Returns the
        HTTP status answered (``None``: none was)."""
        request_id = _observe(session, body)
        delivered = False
        status: int | None = None
        sent_body = False

        async def replay() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the body was read already: what comes now is a disconnect

        standalone = scope.get("method") == "GET"
        opened = False

        async def watch(message: Message) -> None:
            nonlocal delivered, status, opened
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if standalone and status == 200:
                    opened = True
                    session.standalone.set()
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                delivered = True

        try:
            await session.transport.handle_request(scope, replay, watch)
        finally:
            if opened:
                session.standalone = anyio.Event()  # closed: push waits for the next one
            if request_id is not None and not delivered and not session.transport.is_terminated:
                with anyio.CancelScope(shield=True):
                    await self._client_left(session, request_id)
        return status

    async def _client_left(self, session: _Session, request_id: str | int) -> None:
        """The client of ``request_id`` went away before its answer was written: cancel the
        request as if it had said so (a receive's batch goes back, see the module doc)."""
        log.info("client of %s left before request %r was answered; cancelling it",
                 session.caller.agent, request_id)
        if session.server.session is not None:
            session.server.session.abandoned(request_id)
        writer = getattr(session.transport, "_read_stream_writer", None)
        if writer is None:
            return
        from mcp.shared.message import SessionMessage

        notice = JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled",
                                     params={"requestId": request_id, "reason": "the client went away"})
        try:
            with anyio.fail_after(5):
                await writer.send(SessionMessage(notice))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, TimeoutError):
            pass  # the session is ending: its requests end with it


def _is_initialize(body: bytes) -> bool:
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(message, dict) and message.get("method") == "initialize" and "id" in message


def _observe(session: _Session, body: bytes) -> str | int | None:
    """Act on a cancel at once; return the id of a request (that needs an answer), else None."""
    if not body:
        return None
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    request_id = message.get("id")
    if message.get("method") == "notifications/cancelled" and request_id is None:
        params = message.get("params") or {}
        target = params.get("requestId") if isinstance(params, dict) else None
        if isinstance(target, str | int) and session.server.session is not None:
            session.server.session.abandoned(target)
        return None
    if "method" in message and isinstance(request_id, str | int) and not isinstance(request_id, bool):
        return request_id
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _json(
    send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _jsonrpc_error(send: Send, status: int, code: int, message: str, data: Any = None) -> None:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    await _json(send, status, {"jsonrpc": "2.0", "id": None, "error": error})


# ----------------------------------------------------------------------------- tt serve


def bind_problem(host: str, tls: bool, insecure_http: bool) -> str | None:
    """Why ``host`` may not be served as asked (``None``: it may): tokens cross the network
    in every request, so beyond loopback they need TLS, or a TLS proxy in front
    (``--insecure-http`` says there is one)."""
    if host in LOOPBACK or tls or insecure_http:
        return None
    return (f"invalid: serving on {host} sends every agent's token over the network: give "
            "--tls-cert and --tls-key, or --insecure-http when a TLS proxy terminates in front")


async def serve_http(
    town: Town,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    keepalive_s: float = KEEPALIVE_S,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve ``town`` over HTTP until SIGTERM or Ctrl-C, then end every session (waiting
    receives end, their messages stay queued) and return.  ``announce`` gets the base URL
    once the port is bound (``--port 0`` picks a free one)."""
    import uvicorn

    from tinytown.listening import bind_socket

    sock = bind_socket(host, port)  # a port in use is one invalid: line (uvicorn logs and exits 3)
    face = HttpFace(town, keepalive_s=keepalive_s, host=host)
    config = uvicorn.Config(
        face, host=host, port=port, lifespan="on", log_level="warning", access_log=False,
        ssl_certfile=tls_cert, ssl_keyfile=tls_key, timeout_graceful_shutdown=10,
        timeout_keep_alive=75,
    )
    scheme = "https" if tls_cert else "http"

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and announce is not None:
                bound = self.servers[0].sockets[0].getsockname()
                shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
                announce(f"{scheme}://{shown}:{bound[1]}")

        async def shutdown(self, sockets: Any = None) -> None:
            # sessions first: their open streams would otherwise hold the connections open
            await face.close()
            self._captured_signals.clear()  # a signal asked for this exit: return normally
            await super().shutdown(sockets)

    try:
        await Server(config).serve(sockets=[sock])
    finally:
        sock.close()
