"""The dashboard's web face: routes over :mod:`tinytown.dashboard.board` and two Town
operations (``send``, ``assign``), a token gate, and the live event stream.

Routes (JSON unless said otherwise):

* ``GET /`` the page; ``GET /static/...`` its assets (package data).
* ``GET /api/state`` agents and the task board; ``GET /api/feed?agent=&task=&kind=`` the
  conversation; ``GET /api/tasks/{ref}`` a task and its thread; ``GET /api/logs/{agent}
  ?round=&offset=`` a window of a round log.
* ``GET /api/events?after=&agent=&task=&kind=`` Server-Sent Events: each town event as
  ``event: town`` with ``id:`` its stream id and ``data:`` the feed entry JSON plus
  ``matches`` (whether it passes the given feed filter).  A reconnecting browser sends
  ``Last-Event-ID`` and misses nothing.  When the town's Redis cannot be read the stream
  sends ``event: trouble`` (``{error, message}``) and ends; the browser retries in a second.
* ``POST /api/send`` ``{to, body, kind?, priority?, task?}`` and ``POST /api/assign``
  ``{description, agent?, priority?, tags?, depends_on?}``: as the conductor.

Bound to a loopback address it needs no token, but answers only requests whose ``Host`` is
that loopback address (no DNS rebinding) and refuses writes from another ``Origin``.  Bound
anywhere else every request needs the token printed at start: ``?token=`` once (it becomes
a cookie), the cookie, or ``Authorization: Bearer``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tinytown.dashboard import board
from tinytown.errors import Invalid, TinytownError
from tinytown.listening import bind_socket
from tinytown.models import CONDUCTOR

if TYPE_CHECKING:
    from tinytown.town import Town

COOKIE = "tt_dashboard"
STREAM_TICK_S = 1.0
"""How long one wait on the event stream blocks: the stream notices a shutdown this fast."""
KEEP_ALIVE_S = 15.0
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
STATUS_BY_CODE = {"not_found": 404, "invalid": 400, "forbidden": 403, "conflict": 409, "unavailable": 503}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def static_dir() -> Path:
    """The page's assets, inside the installed package."""
    return Path(str(files("tinytown.dashboard") / "static"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def _error(exc: TinytownError) -> JSONResponse:
    return _json({"error": exc.code, "message": exc.message}, STATUS_BY_CODE.get(exc.code, 500))


Handler = Callable[[Request], Awaitable[Response]]


def _answers(fn: Handler) -> Handler:
    """A route whose Tinytown errors become ``{"error": code, "message"}`` with a status."""

    async def handler(request: Request) -> Response:
        try:
            return await fn(request)
        except TinytownError as exc:
            return _error(exc)

    return handler


async def _body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise Invalid("send JSON (content-type application/json)")
    try:
        data = await request.json()
    except ValueError:
        raise Invalid("the body is not JSON") from None
    if not isinstance(data, dict):
        raise Invalid("the body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise Invalid(f"{key} is required")
        return None
    if not isinstance(value, str):
        raise Invalid(f"{key} must be a string")
    return value


def _words(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key) or []
    if isinstance(value, str):
        value = [w for w in value.replace(",", " ").split() if w]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"{key} must be a list of strings")
    return list(value)


def _int(request: Request, key: str) -> int | None:
    raw = request.query_params.get(key)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise Invalid(f"{key} must be a number") from None


def create_app(town: Town, *, token: str | None = None,
               stopping: Callable[[], bool] = lambda: False) -> ASGIApp:
    """The dashboard of ``town``.  ``token``: required of every request (a non-loopback
    bind; without one only loopback ``Host`` names are answered); ``stopping``: true once
    the server shuts down (ends the event streams)."""

    async def index(request: Request) -> Response:
        return FileResponse(static_dir() / "index.html", headers=SECURITY_HEADERS)

    async def state(request: Request) -> Response:
        return _json(await board.state(town))

    async def feed(request: Request) -> Response:
        q = request.query_params
        return _json(await board.feed(town, agent=q.get("agent"), task=q.get("task"), kind=q.get("kind")))

    async def task(request: Request) -> Response:
        return _json(await board.thread(town, request.path_params["ref"]))

    async def logs(request: Request) -> Response:
        return _json(await board.round_log(town, request.path_params["agent"], _int(request, "round"),
                                           _int(request, "offset")))

    async def send(request: Request) -> Response:
        data = await _body(request)
        receipt = await town.send(
            CONDUCTOR, _text(data, "to", required=True) or "", _text(data, "body", required=True) or "",
            kind=_text(data, "kind") or "info", priority=_text(data, "priority") or "normal",
            task_id=_text(data, "task"),
        )
        return _json(board.jsonable(receipt), 201)

    async def assign(request: Request) -> Response:
        data = await _body(request)
        created = await town.assign(
            _text(data, "description", required=True) or "", agent=_text(data, "agent"), by=CONDUCTOR,
            tags=_words(data, "tags"), priority=_text(data, "priority") or "normal",
            depends_on=_words(data, "depends_on") or None,
        )
        return _json(board.jsonable(created), 201)

    async def events(request: Request) -> Response:
        q = request.query_params
        flt = await town.conversation.filter(agent=q.get("agent") or None, task=q.get("task") or None,
                                             kind=q.get("kind") or None)
        after = request.headers.get("last-event-id") or q.get("after") or await town.last_event_id()
        if not STREAM_ID.match(after):
            raise Invalid(f"{after!r} is not an event id")

        async def stream() -> AsyncIterator[str]:
            last = after
            yield "retry: 1000\n: connected\n\n"
            quiet = 0.0
            while not stopping():
                try:
                    found = await town.wait_events(last, STREAM_TICK_S)
                    entries = await town.conversation.enrich(found) if found else []
                except TinytownError as exc:  # Redis went away: say so; the browser reconnects
                    trouble = json.dumps({"error": exc.code, "message": exc.message})
                    yield f"event: trouble\ndata: {trouble}\n\n"
                    return
                if not entries:
                    quiet += STREAM_TICK_S
                    if quiet >= KEEP_ALIVE_S:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
                    continue
                quiet = 0.0
                chunks = []
                for entry in entries:
                    last = entry.id
                    data = json.dumps(board.entry_json(entry, flt), separators=(",", ":"))
                    chunks.append(f"id: {entry.id}\nevent: town\ndata: {data}\n\n")
                yield "".join(chunks)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    routes = [
        Route("/", index),
        Route("/api/state", _answers(state)),
        Route("/api/feed", _answers(feed)),
        Route("/api/tasks/{ref}", _answers(task)),
        Route("/api/logs/{agent}", _answers(logs)),
        Route("/api/events", _answers(events)),
        Route("/api/send", _answers(send), methods=["POST"]),
        Route("/api/assign", _answers(assign), methods=["POST"]),
        Mount("/static", StaticFiles(directory=static_dir()), name="static"),
    ]
    return Gate(Starlette(routes=routes), token=token)


class Gate:
    """Who may use the dashboard (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self.refusal(request)
        if refusal is not None:
            await PlainTextResponse(refusal, status_code=403 if self.token is None else 401)(
                scope, receive, send)
            return
        given = request.query_params.get("token")
        if self.token is None or given is None:
            await self.app(scope, receive, send)
            return

        async def with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, with_cookie)

    def refusal(self, request: Request) -> str | None:
        """Why the request is refused (None: it may pass)."""
        if self.token is not None:
            offered = (request.query_params.get("token") or request.cookies.get(COOKIE)
                       or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
            if not offered or not secrets.compare_digest(offered.encode(), self.token.encode()):
                return ("this dashboard needs its token: open the URL `tt dashboard` printed "
                        "(?token=...), or send Authorization: Bearer TOKEN\n")
            return None
        if not is_loopback(urlsplit(f"//{request.headers.get('host', '')}").hostname or ""):
            return "this dashboard answers only on its loopback address\n"
        origin = request.headers.get("origin")
        foreign = origin is not None and not is_loopback(urlsplit(origin).hostname or "")
        if request.method != "GET" and foreign:
            return "writes are accepted only from the dashboard's own page\n"
        return None


async def serve(town: Town, *, host: str, port: int, on_start: Callable[[str, str | None], None]) -> None:
    """Serve the dashboard of ``town`` until interrupted (Ctrl-C / SIGTERM: a clean stop).

    ``on_start(url, token)`` is called once the page can be loaded; ``url`` carries the
    token when there is one.
    """
    import uvicorn

    token = None if is_loopback(host) else secrets.token_urlsafe(24)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}/" + (f"?token={token}" if token else "")

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                on_start(url, token)

    server: Server
    app = create_app(town, token=token, stopping=lambda: server.should_exit)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=3)
    server = Server(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
