"""The Anthropic Messages API, scripted: what Claude Code talks to.

Claude Code (``ANTHROPIC_BASE_URL=http://127.0.0.1:PORT``) calls ``HEAD /`` to see the API
is up, ``POST /v1/messages?beta=true`` (streaming SSE when ``"stream": true``, which is how
it asks for every model turn) and ``POST /v1/messages/count_tokens`` before it passes a
large tool result.  Each ``/v1/messages`` request becomes a :class:`Turn` (tools offered,
tool results so far, the first user message as the prompt) and the script's step becomes
one assistant message: a ``tool_use`` block (``stop_reason: tool_use``) or a text block
(``end_turn``).

Claude Code also sends small side requests of its own (a one-token quota probe, a title
for the session); they carry no tools, and the script answers them with text like any
other turn.  Tests tell the conversation's requests apart by their ``tools``.
"""

from __future__ import annotations

import json
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
    send_sse,
)

MODEL = "claude-sonnet-4-5"


def _text_of(content: Any) -> str:
    """The text of a message's ``content`` (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                elif block.get("type") == "tool_result":
                    parts.append(_text_of(block.get("content", "")))
        return "\n".join(parts)
    return ""


def turn_of(body: dict[str, Any]) -> Turn:
    """The :class:`Turn` a Messages request describes."""
    messages = body.get("messages") or []
    prompt = ""
    for message in messages:
        if message.get("role") == "user":
            prompt = _text_of(message.get("content"))
            break
    names: dict[str, str] = {}  # tool_use id -> tool name
    results: list[ToolResult] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                names[str(block.get("id"))] = str(block.get("name"))
            elif block.get("type") == "tool_result":
                call_id = str(block.get("tool_use_id"))
                text = _text_of(block.get("content", ""))
                results.append(ToolResult(names.get(call_id, ""), text, call_id))
    tools = [str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
    return Turn(prompt=prompt, tools=tools, results=results, system=_text_of(body.get("system", "")))


def _blocks(step: Step) -> tuple[list[dict[str, Any]], str]:
    if isinstance(step, ToolCall):
        call_id = step.call_id or f"toolu_{uuid.uuid4().hex[:24]}"
        return [{"type": "tool_use", "id": call_id, "name": step.name, "input": step.arguments}], "tool_use"
    return [{"type": "text", "text": step}], "end_turn"


def _usage(body: dict[str, Any]) -> dict[str, int]:
    return {"input_tokens": max(1, len(json.dumps(body)) // 4), "output_tokens": 1}


def message_events(step: Step, body: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """The SSE events of one streamed assistant message answering ``step``."""
    blocks, stop_reason = _blocks(step)
    usage = _usage(body)
    events: list[tuple[str | None, Any]] = [("message_start", {"type": "message_start", "message": {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
        "model": body.get("model") or MODEL, "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": usage,
    }})]
    for index, block in enumerate(blocks):
        if block["type"] == "tool_use":
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        events += [
            ("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}),
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    events += [
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 10},
                           "delta": {"stop_reason": stop_reason, "stop_sequence": None}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


class AnthropicHandler(ModelHandler):
    """``HEAD /``, ``POST /v1/messages`` (SSE or JSON), ``POST /v1/messages/count_tokens``."""

    def do_HEAD(self) -> None:
        self.model.log(self.path, dict(self.headers), None)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.model.log(self.path, dict(self.headers), None)
        self._json(200, {"data": [{"id": MODEL, "type": "model"}], "has_more": False})

    def do_POST(self) -> None:
        body = read_json_body(self)
        self.model.log(self.path, dict(self.headers), body)
        path = self.path.split("?", 1)[0]
        if not isinstance(body, dict):
            error = {"type": "invalid_request_error", "message": "a JSON object body is required"}
            self._json(400, {"type": "error", "error": error})
            return
        if path.endswith("/count_tokens"):
            self._json(200, {"input_tokens": _usage(body)["input_tokens"]})
            return
        if not path.endswith("/v1/messages"):
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})
            return
        step = self.model.next_step(turn_of(body))
        if body.get("stream"):
            send_sse(self, message_events(step, body))
            return
        blocks, stop_reason = _blocks(step)
        self._json(200, {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                         "model": body.get("model") or MODEL, "content": blocks, "stop_reason": stop_reason,
                         "stop_sequence": None, "usage": _usage(body)})


def anthropic_server(script: Script) -> FakeModelServer:
    """A scripted Messages API; use as a context manager, point ``ANTHROPIC_BASE_URL`` at ``.url``."""
    return FakeModelServer(AnthropicHandler, script)


def conversation_requests(model: FakeModelServer) -> list[dict[str, Any]]:
    """The logged ``/v1/messages`` request bodies that offered tools (the agent's own turns,
    not Claude Code's side requests)."""
    return [r["body"] for r in model.requests
            if r["path"].split("?", 1)[0].endswith("/v1/messages") and isinstance(r["body"], dict)
            and r["body"].get("tools")]
