"""The OpenAI Responses API (streaming), as Codex calls it: ``POST /v1/responses``.

A request's ``tools`` are function tools (``{"type": "function", "name": ...}``), Codex's
``tool_search`` and, once a search has loaded them, ``namespace`` tools (MCP servers:
``{"type": "namespace", "name": "mcp__tinytown", "tools": [...]}``).  The conversation comes
back in ``input``: ``message`` items, ``function_call`` / ``function_call_output`` pairs
(joined by ``call_id``; a namespaced call carries ``namespace``) and ``tool_search_call`` /
``tool_search_output`` pairs.

Codex may hide MCP tools behind ``tool_search``: when the script asks for a tool that only a
search would reveal, this module answers a ``tool_search_call`` first (a wire detail, like
a content-block index), so the scripts stay the same for every CLI.

A reply streams ``response.created``, then per output item ``response.output_item.added``
and ``.done``, then ``response.completed`` (see codex-rs ``codex-api/src/sse/responses.rs``).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from fake_models.server import (
    FakeModelServer,
    ModelHandler,
    Script,
    ToolCall,
    ToolResult,
    Turn,
    read_json_body,
    send_sse,
)

_ids = itertools.count(1)

# Codex's own user messages that precede (or follow) the user's prompt.
_CONTEXT_PREFIXES = ("<environment_context", "<user_instructions", "# AGENTS.md", "<permissions",
                     "<collaboration_mode", "<skills_instructions", "<apps_instructions")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def raw_output_text(output: Any) -> str:
    """A ``function_call_output``'s text as Codex sent it (a string or content items)."""
    return _text_of(output.get("content") if isinstance(output, dict) else output)


def tool_output_text(output: Any) -> str:
    """A ``function_call_output``'s text without the header Codex puts before a tool's own
    output (``Wall time: 0.01 seconds\nOutput:\n``, plus exit code etc. for a command)."""
    text = raw_output_text(output)
    head, sep, rest = text.partition("\nOutput:\n")
    if sep and head.startswith(("Wall time:", "Chunk ID:")):
        return rest
    return text


def wall_time_s(output: Any) -> float | None:
    """The ``Wall time`` Codex reports for a tool call, in seconds (None if absent)."""
    text = raw_output_text(output)
    match = re.search(r"Wall time: ([0-9.]+) seconds", text)
    return float(match.group(1)) if match else None


def _qualified(name: str, namespace: str | None) -> str:
    if not namespace:
        return name
    return name if name.startswith(namespace) else f"{namespace}__{name}"


def tool_names(tools: list[dict[str, Any]]) -> list[str]:
    """Full names of the tools a request offers: a namespace's tools as ``NS__tool``."""
    names: list[str] = []
    for tool in tools:
        kind = tool.get("type")
        if kind == "namespace":
            names += [_qualified(str(t.get("name")), str(tool.get("name"))) for t in tool.get("tools", [])]
        elif kind == "tool_search":
            names.append("tool_search")
        elif "name" in tool:
            names.append(str(tool["name"]))
    return names


def searched_tools(body: dict[str, Any]) -> list[str]:
    """Names of the tools that ``tool_search_output`` items in ``input`` loaded."""
    names: list[str] = []
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("type") == "tool_search_output":
            names += tool_names(item.get("tools") or [])
    return names


def turn_from(body: dict[str, Any]) -> Turn:
    items = [i for i in body.get("input") or [] if isinstance(i, dict)]
    prompts = [_text_of(i.get("content")) for i in items
               if i.get("type", "message") == "message" and i.get("role") == "user"]
    prompt = next((p for p in prompts if not p.lstrip().startswith(_CONTEXT_PREFIXES)), "")
    calls: dict[str, str] = {}
    results: list[ToolResult] = []
    for item in items:
        kind = item.get("type")
        if kind == "function_call":
            calls[str(item.get("call_id"))] = _qualified(str(item.get("name")), item.get("namespace"))
        elif kind == "function_call_output":
            call_id = str(item.get("call_id"))
            results.append(ToolResult(calls.get(call_id, ""), tool_output_text(item.get("output")), call_id))
    offered = tool_names(body.get("tools") or [])
    offered += [n for n in searched_tools(body) if n not in offered]
    return Turn(prompt=prompt, tools=offered, results=results, system=str(body.get("instructions") or ""))


def _needs_search(body: dict[str, Any], turn: Turn, step: ToolCall | str) -> bool:
    """The script wanted a tinytown tool this request does not show, and a search may find it."""
    if "tool_search" not in turn.tools:
        return False
    if any(i.get("type") == "tool_search_call" for i in body.get("input") or [] if isinstance(i, dict)):
        return False
    if isinstance(step, ToolCall):  # a tool this request does not show (e.g. bare "whoami")
        return step.name not in turn.tools
    return step.startswith("no tinytown tool")


def output_items(step: ToolCall | str, search: bool) -> list[dict[str, Any]]:
    n = next(_ids)
    if search:
        return [{"type": "tool_search_call", "id": f"ts_{n}", "call_id": f"call_search_{n}",
                 "status": "completed", "execution": "client",
                 "arguments": {"query": "tinytown", "limit": 20}}]
    if isinstance(step, ToolCall):
        name, namespace = step.name, None
        if "__" in name and name.startswith("mcp__"):
            namespace, _, name = name.rpartition("__")
        item: dict[str, Any] = {"type": "function_call", "id": f"fc_{n}", "status": "completed",
                                "call_id": step.call_id or f"call_{n}", "name": name,
                                "arguments": json.dumps(step.arguments)}
        if namespace:
            item["namespace"] = namespace
        return [item]
    return [{"type": "message", "id": f"msg_{n}", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": step, "annotations": []}]}]


def sse_events(items: list[dict[str, Any]], model: str) -> list[tuple[str | None, Any]]:
    rid = f"resp_{next(_ids)}"
    response = {"id": rid, "object": "response", "status": "in_progress", "model": model, "output": []}
    events: list[tuple[str | None, Any]] = [
        ("response.created", {"type": "response.created", "response": response})]
    for index, item in enumerate(items):
        events.append(("response.output_item.added",
                       {"type": "response.output_item.added", "output_index": index, "item": item}))
        if item["type"] == "message":
            text = item["content"][0]["text"]
            events.append(("response.output_text.delta",
                           {"type": "response.output_text.delta", "item_id": item["id"],
                            "output_index": index, "content_index": 0, "delta": text}))
        events.append(("response.output_item.done",
                       {"type": "response.output_item.done", "output_index": index, "item": item}))
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}
    events.append(("response.completed", {"type": "response.completed", "response": {
        **response, "status": "completed", "output": items, "usage": usage}}))
    return events


class ResponsesHandler(ModelHandler):
    def do_GET(self) -> None:
        self.model.log(self.path, dict(self.headers), None)
        if self.path.split("?")[0].endswith("/models"):
            self._json(200, {"object": "list", "data": [], "models": []})
        else:
            self._json(404, {"error": {"message": f"no {self.path} here"}})

    def do_POST(self) -> None:
        body = read_json_body(self)
        self.model.log(self.path, dict(self.headers), body)
        if not self.path.split("?")[0].endswith("/responses") or not isinstance(body, dict):
            self._json(404, {"error": {"message": f"no {self.path} here"}})
            return
        turn = turn_from(body)
        step = self.model.next_step(turn)
        search = _needs_search(body, turn, step)
        send_sse(self, sse_events(output_items(step, search), str(body.get("model", ""))))


def responses_server(script: Script) -> FakeModelServer:
    """A scripted Responses API on 127.0.0.1 (enter it to serve)."""
    return FakeModelServer(ResponsesHandler, script)
