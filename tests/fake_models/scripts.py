"""Scripts (brains) shared by every CLI's tests: the same conversation on every wire format.

Each is a ``Turn -> Step`` function (see :mod:`fake_models.server`): it looks at the
tools offered and the results so far and answers the next tool call, or a final text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fake_models.server import Step, ToolCall, Turn

TASK_ID = re.compile(r"task id: ([0-9a-f-]{36})")

# Each CLI's shell tool, the name of its command argument, and arguments it needs besides.
SHELL_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "exec_command": ("cmd", {"yield_time_ms": 30000}),  # Codex: wait up to 30 s for the exit
    "Bash": ("command", {}),
    "run_shell_command": ("command", {}),
}


def _call(turn: Turn, bare: str, arguments: dict[str, Any]) -> Step:
    name = turn.tool(bare)
    if name is None:
        return f"no tinytown tool {bare!r} was offered; offered: {sorted(turn.tools)}"
    return ToolCall(name, arguments)


def shell_call(turn: Turn, command: str) -> Step:
    """Run ``command`` with the CLI's own shell tool (Codex ``exec_command``, Claude Code
    ``Bash``, Gemini CLI ``run_shell_command``)."""
    for name, (argument, extra) in SHELL_TOOLS.items():
        if name in turn.tools:
            return ToolCall(name, {argument: command, **extra})
    return f"no shell tool was offered; offered: {sorted(turn.tools)}"


def shell_results(turn: Turn) -> list[str]:
    return [r.text for r in turn.results if r.name in SHELL_TOOLS]


def whoami_name(turn: Turn) -> str | None:
    """The agent name the last ``whoami`` result gave."""
    for result in reversed(turn.results_of("whoami")):
        data = result.json() or {}
        name = (data.get("agent") or {}).get("name")
        if name:
            return str(name)
    return None


def received_task_ids(turn: Turn) -> list[str]:
    """Task ids of the messages that the conversation's ``receive`` calls returned."""
    ids: list[str] = []
    for result in turn.results_of("receive"):
        data = result.json() or {}
        ids += [m["task_id"] for m in data.get("messages", []) if m.get("task_id")]
    return ids


def attached_session(receive_timeout_s: int = 60) -> Any:
    """An attached agent: whoami -> receive -> task_done for the task it received -> text."""

    def script(turn: Turn) -> Step:
        done = len(turn.results)
        if done == 0:
            return _call(turn, "whoami", {})
        if not turn.results_of("receive") or not received_task_ids(turn):
            if len(turn.results_of("receive")) >= 3:
                return "no task arrived"
            return _call(turn, "receive", {"timeout_s": receive_timeout_s, "max_messages": 10})
        if not turn.results_of("task_done"):
            task_id = received_task_ids(turn)[0]
            return _call(turn, "task_done", {"task_id": task_id, "result": "done by the scripted model"})
        return "All done."

    return script


def report_round_task(result: str = "reported by the scripted model", first: Sequence[ToolCall] = ()) -> Any:
    """A spawned agent's round: the ``first`` tool calls in order, then task_done for the task
    id named in the round prompt, its result followed by each earlier call's result text.

    A call in ``first`` named by a bare tinytown tool name (``whoami``) goes to that tool
    as the CLI offers it; any other name (the CLI's own shell tool, e.g. ``Bash``) is called
    as is.
    """

    def script(turn: Turn) -> Step:
        match = TASK_ID.search(turn.prompt)
        if match is None:
            return "the prompt names no task"
        done = len(turn.results)
        if done < len(first):
            call = first[done]
            if turn.tool(call.name) is not None:
                return _call(turn, call.name, call.arguments)
            return ToolCall(call.name, call.arguments)
        if not turn.results_of("task_done"):
            report = "\n".join([result, *(r.text for r in turn.results[: len(first)])])
            return _call(turn, "task_done", {"task_id": match.group(1), "result": report})
        return "Reported."

    return script


def identify_and_report_round_task() -> Any:
    """A spawned agent's round that first asks ``whoami`` and reports the task of the round
    prompt with the name it was told ("reported by NAME"): the task's result shows which
    identity the CLI's MCP server had."""

    def script(turn: Turn) -> Step:
        match = TASK_ID.search(turn.prompt)
        if match is None:
            return "the prompt names no task"
        if not turn.results_of("whoami"):
            return _call(turn, "whoami", {})
        me = (turn.results_of("whoami")[0].json() or {}).get("agent", {}).get("name")
        if not turn.results_of("task_done"):
            return _call(turn, "task_done", {"task_id": match.group(1), "result": f"reported by {me}"})
        return "Reported."

    return script


def answer(text: str) -> Any:
    """A model that answers every request with ``text`` (a CLI without tools: aider)."""

    def script(turn: Turn) -> Step:
        return text

    return script


def receive_once(timeout_s: float, then: str = "Received.") -> Any:
    """An attached agent that makes one ``receive`` call of ``timeout_s`` and stops."""

    def script(turn: Turn) -> Step:
        if not turn.results_of("receive"):
            return _call(turn, "receive", {"timeout_s": timeout_s, "max_messages": 10})
        return then

    return script
