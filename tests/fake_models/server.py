"""The API-independent half of a scripted model: what a script sees and returns, and the
HTTP server every wire format runs in.

A script is a function ``Turn -> Step``.  The ``Turn`` says which tools the CLI offered
(full names, e.g. ``mcp__tinytown__receive``) and which tool results came back so far; the
script answers a :class:`ToolCall` or a final text.  Tool names are matched by their bare
tinytown name (``turn.tool("receive")``), so one script drives every CLI.

Every request is logged (path, headers, parsed JSON body): the tools a CLI offered and the
results it passed back are the test's evidence.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    call_id: str = ""


@dataclass
class ToolResult:
    name: str
    text: str
    call_id: str = ""

    def json(self) -> Any:
        """The result parsed as JSON (tinytown's tools answer JSON text), else None."""
        try:
            return json.loads(self.text)
        except ValueError:
            return None


@dataclass
class Turn:
    prompt: str
    """The first user message's text (the round prompt, or the test's -p text)."""
    tools: list[str]
    """Names of the tools the CLI offered with this request."""
    results: list[ToolResult]
    """Tool results so far in this conversation, oldest first."""
    system: str = ""

    def tool(self, bare: str) -> str | None:
        """The offered tool whose name ends with ``bare`` after a separator (``receive`` ->
        ``mcp__tinytown__receive`` / ``mcp_tinytown_receive``), else None."""
        for name in self.tools:
            if name == bare or name.endswith(("__" + bare, "_" + bare, "." + bare)):
                if "tinytown" in name or name == bare:
                    return name
        return None

    def results_of(self, bare: str) -> list[ToolResult]:
        ends = ("__" + bare, "_" + bare, "." + bare)
        return [r for r in self.results if r.name == bare or r.name.endswith(ends)]


Step = ToolCall | str
Script = Callable[[Turn], Step]


class FakeModelServer:
    """A threaded HTTP server on 127.0.0.1 with a request log, serving one wire format.

    ``handler`` is a ``BaseHTTPRequestHandler`` subclass of an API module; it reaches the
    script and the log through ``self.server.model`` (this object).
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], script: Script) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.model = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def log(self, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body})

    def next_step(self, turn: Turn) -> Step:
        try:
            return self.script(turn)
        except Exception as exc:  # the test reads this: a script bug must not hang the CLI
            with self._lock:
                self.errors.append(repr(exc))
            return f"script error: {exc!r}"

    def __enter__(self) -> FakeModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class ModelHandler(BaseHTTPRequestHandler):
    """What every wire format's handler shares: HTTP/1.1, quiet logging (the request log is
    the record), the :class:`FakeModelServer` it serves, and a JSON reply."""

    protocol_version = "HTTP/1.1"

    @property
    def model(self) -> FakeModelServer:
        return self.server.model  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _json(self, status: int, data: Any) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def read_json_body(handler: BaseHTTPRequestHandler) -> Any:
    length = int(handler.headers.get("Content-Length") or 0)
    raw = handler.rfile.read(length) if length else b""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def send_sse(handler: BaseHTTPRequestHandler, events: list[tuple[str | None, Any]]) -> None:
    """Write a complete ``text/event-stream`` reply: (event name or None, JSON data) pairs."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Connection", "close")
    handler.end_headers()
    for name, data in events:
        chunk = (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
        handler.wfile.write(chunk.encode())
        handler.wfile.flush()
    handler.close_connection = True
