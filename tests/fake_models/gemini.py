"""The Gemini API (``generativelanguage``), scripted: what Gemini CLI talks to.

Gemini CLI (``GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:PORT``, ``GEMINI_API_KEY=anything``)
asks for every model turn with ``POST /v1beta/models/MODEL:streamGenerateContent?alt=sse``;
side requests are answered without the script: ``:generateContent`` (Gemini CLI's model
router and checkers ask for JSON that fits a ``responseJsonSchema``; they get the smallest
such object), ``:countTokens`` and ``GET /v1beta/models``.  A request's ``contents`` is the
conversation: ``user`` turns hold ``text`` parts (Gemini CLI's own session context first,
then the prompt) and ``functionResponse`` parts, ``model`` turns hold ``text`` and
``functionCall`` parts.  Its ``tools`` hold ``functionDeclarations``
(MCP tools named ``mcp_<server>_<tool>``).

A reply is one SSE event (``data: {"candidates": [...]}``) with a ``functionCall`` part or a
``text`` part, ``finishReason: STOP`` and ``usageMetadata``.
"""

from __future__ import annotations

import json
import re
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

MODEL = "gemini-2.5-pro"


def _parts(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, dict):
        return []
    return [p for p in content.get("parts") or [] if isinstance(p, dict)]


UNTRUSTED = re.compile(r"^\s*<untrusted_context>\n?(.*?)\n?</untrusted_context>\s*$", re.DOTALL)


def _response_text(response: Any) -> str:
    """The text of a ``functionResponse.response``: Gemini CLI passes a tool's output as
    ``{"output": "..."}`` (or ``{"error": "..."}``), an MCP tool's wrapped in
    ``<untrusted_context>`` tags (taken off here); MCP content lists are joined."""
    if isinstance(response, dict):
        for key in ("output", "error"):
            if isinstance(response.get(key), str):
                text = str(response[key])
                match = UNTRUSTED.match(text)
                return match.group(1) if match else text
        content = response.get("content")
        if isinstance(content, list):
            return "\n".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    if isinstance(response, str):
        return response
    return json.dumps(response)


def tool_names(body: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            declared = tool.get("functionDeclarations") or []
            names += [str(d.get("name")) for d in declared if isinstance(d, dict)]
    return names


def turn_of(body: dict[str, Any]) -> Turn:
    """The :class:`Turn` a ``generateContent`` request describes.  The prompt is every user
    text part joined (Gemini CLI sends its session context as a user turn of its own)."""
    texts: list[str] = []
    results: list[ToolResult] = []
    for content in body.get("contents") or []:
        for part in _parts(content):
            if content.get("role") == "user" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            response = part.get("functionResponse")
            if isinstance(response, dict):
                text = _response_text(response.get("response"))
                results.append(ToolResult(str(response.get("name", "")), text, str(response.get("id", ""))))
    system = "\n".join(str(p.get("text", "")) for p in _parts(body.get("systemInstruction")))
    return Turn(prompt="\n".join(texts), tools=tool_names(body), results=results, system=system)


def candidate(step: Step) -> dict[str, Any]:
    """The JSON of one reply chunk answering ``step``."""
    if isinstance(step, ToolCall):
        part: dict[str, Any] = {"functionCall": {"name": step.name, "args": step.arguments,
                                                 "id": step.call_id or f"call_{uuid.uuid4().hex[:12]}"}}
    else:
        part = {"text": step}
    return {
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        "modelVersion": MODEL,
        "responseId": uuid.uuid4().hex,
    }


def sample(schema: Any) -> Any:
    """The smallest value that fits a JSON schema (enough for Gemini CLI's side requests)."""
    if not isinstance(schema, dict):
        return {}
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    kind = str(kind or "object").lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: sample(v) for k, v in props.items() if k in (schema.get("required") or props)}
    number = schema.get("minimum", 1)  # 1: a "score from 1-100" says its bound only in words
    return {"array": [], "string": "", "integer": number, "number": number, "boolean": False}.get(kind)


def side_reply(body: dict[str, Any]) -> dict[str, Any]:
    """A ``generateContent`` answer that is not a conversation turn: JSON for a schema."""
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    wants_json = schema or config.get("responseMimeType") == "application/json"
    text = json.dumps(sample(schema)) if wants_json else "ok"
    return candidate(text)


class GeminiHandler(ModelHandler):
    """``:streamGenerateContent`` (SSE), ``:generateContent``, ``:countTokens``, model lists."""

    def do_GET(self) -> None:
        self.model.log(self.path, dict(self.headers), None)
        self._json(200, {"models": [{"name": f"models/{MODEL}", "supportedGenerationMethods": [
            "generateContent", "streamGenerateContent", "countTokens"]}]})

    def do_POST(self) -> None:
        body = read_json_body(self)
        self.model.log(self.path, dict(self.headers), body)
        path = self.path.split("?", 1)[0]
        if not isinstance(body, dict):
            self._json(400, {"error": {"code": 400, "message": "a JSON object body is required",
                                       "status": "INVALID_ARGUMENT"}})
            return
        if path.endswith(":countTokens"):
            self._json(200, {"totalTokens": max(1, len(json.dumps(body)) // 4)})
            return
        if path.endswith(":streamGenerateContent"):
            send_sse(self, [(None, candidate(self.model.next_step(turn_of(body))))])
            return
        if path.endswith(":generateContent"):
            self._json(200, side_reply(body))
            return
        self._json(404, {"error": {"code": 404, "message": path, "status": "NOT_FOUND"}})


def gemini_server(script: Script) -> FakeModelServer:
    """A scripted Gemini API; use as a context manager, point ``GOOGLE_GEMINI_BASE_URL`` at
    ``.url``."""
    return FakeModelServer(GeminiHandler, script)


def conversation_requests(model: FakeModelServer) -> list[dict[str, Any]]:
    """The logged ``streamGenerateContent`` bodies that offered tools (the agent's turns)."""
    return [r["body"] for r in model.requests
            if r["path"].split("?", 1)[0].endswith(":streamGenerateContent") and isinstance(r["body"], dict)
            and tool_names(r["body"])]
