"""The OpenAI Chat Completions API, scripted: what aider (through litellm) talks to.

aider (``OPENAI_API_BASE=http://127.0.0.1:PORT/v1``, ``OPENAI_API_KEY=anything``) sends
``POST /v1/chat/completions`` with the conversation in ``messages`` (``system``, ``user``,
``assistant`` — with ``tool_calls`` — and ``tool`` messages) and, by default,
``"stream": true``.  A streamed reply is ``chat.completion.chunk`` events (a ``content``
delta or a ``tool_calls`` delta, then one with ``finish_reason``) ending in ``data: [DONE]``;
otherwise one ``chat.completion`` object.  ``GET /v1/models`` lists the one model.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fake_models.server import (
    FakeModelServer,
    ModelHandler,
    Script,
    Step,
    ToolCall,
    ToolResult,
    Turn,
    read_json_body,
)

MODEL = "gpt-4o"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def turn_of(body: dict[str, Any]) -> Turn:
    """The :class:`Turn` a chat request describes (the prompt: the last user message that
    is not a tool result — aider puts its file listings in earlier user messages)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    names: dict[str, str] = {}
    results: list[ToolResult] = []
    prompt = ""
    for message in messages:
        role = message.get("role")
        if role == "user":
            prompt = _text_of(message.get("content"))
        for call in message.get("tool_calls") or []:
            names[str(call.get("id"))] = str((call.get("function") or {}).get("name", ""))
        if role == "tool":
            call_id = str(message.get("tool_call_id"))
            results.append(ToolResult(names.get(call_id, ""), _text_of(message.get("content")), call_id))
    system = "\n".join(_text_of(m.get("content")) for m in messages if m.get("role") == "system")
    offered = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    tools = [str((t.get("function") or {}).get("name")) for t in offered]
    return Turn(prompt=prompt, tools=tools, results=results, system=system)


def _message(step: Step) -> tuple[dict[str, Any], str]:
    if isinstance(step, ToolCall):
        call = {"id": step.call_id or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                "function": {"name": step.name, "arguments": json.dumps(step.arguments)}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    return {"role": "assistant", "content": step}, "stop"


class ChatHandler(ModelHandler):
    """``POST /v1/chat/completions`` (streamed or not) and ``GET /v1/models``."""

    def do_GET(self) -> None:
        self.model.log(self.path, dict(self.headers), None)
        self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]})

    def do_POST(self) -> None:
        body = read_json_body(self)
        self.model.log(self.path, dict(self.headers), body)
        if not isinstance(body, dict) or not self.path.split("?", 1)[0].endswith("/chat/completions"):
            error = {"message": f"not served: {self.path}", "type": "invalid_request_error"}
            self._json(404, {"error": error})
            return
        message, finish = _message(self.model.next_step(turn_of(body)))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "created": int(time.time()),
                "model": body.get("model") or MODEL}
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            self._json(200, {**base, "object": "chat.completion", "usage": usage,
                             "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
            return
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{**c, "index": i} for i, c in enumerate(message["tool_calls"])]
        chunks = [
            {**base, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {**base, "object": "chat.completion.chunk", "usage": usage,
             "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
        ]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def chat_server(script: Script) -> FakeModelServer:
    """A scripted chat completions API; use as a context manager, point ``OPENAI_API_BASE``
    at ``.url + "/v1"``."""
    return FakeModelServer(ChatHandler, script)


def chat_requests(model: FakeModelServer) -> list[dict[str, Any]]:
    """The logged ``/chat/completions`` request bodies."""
    return [r["body"] for r in model.requests
            if r["path"].split("?", 1)[0].endswith("/chat/completions") and isinstance(r["body"], dict)]
