"""The text a runner gives an agent CLI for one round, and the ``tt prime`` onboarding text.

A round prompt says who the agent is, which town it is in, every message of the round with
its ids (and task ids and attempts), and how to answer and finish: the ``tinytown`` MCP tools
first (``task_done``, ``task_failed``, ``send_message``), the ``tt`` commands (by absolute
path: a CLI's shell may not have this installation on PATH) as the fallback for CLIs without
MCP.  A CLI that cannot report (``reports = false``) is told its exit code decides.  It is
plain text: every CLI takes it as its first user message.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tinytown.models import CONDUCTOR, Agent, InboxCounts, Message, MessageKind, Task


def unwrap(text: str | None) -> str | None:
    """A docstring as prose: common indentation removed, the lines of each paragraph joined
    (a blank line separates paragraphs; one starting with click's ``\\b`` keeps its lines).
    For MCP tool descriptions and ``tt`` help, which a model or a terminal wraps itself."""
    if not text:
        return text
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(
        p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
        for p in paragraphs
    )


@functools.cache
def tt_command() -> str:
    """The ``tt`` of this installation by absolute path, shell-quoted, resolved once: the one
    next to this Python (a venv's ``bin/``), else the first on PATH, else ``python -m``.
    A CLI's shell (``bash -lc`` in Codex, a sandbox) may not have the venv on PATH."""
    beside = Path(sys.executable).parent / "tt"
    if beside.is_file() and os.access(beside, os.X_OK):
        return shlex.quote(str(beside))
    found = shutil.which("tt")
    if found:
        return shlex.quote(str(Path(found).absolute()))
    return f"{shlex.quote(sys.executable)} -m tinytown.cli.main"


def _who(agent: Agent) -> str:
    parts = [agent.name]
    if agent.nickname:
        parts.append(f'("{agent.nickname}")')
    if agent.role:
        parts.append(f"- role: {agent.role}")
    return " ".join(parts)


def render_round_prompt(
    agent: Agent,
    town: str,
    root: Path,
    messages: Sequence[Message],
    tasks: Mapping[str, Task],
    *,
    reports: bool = True,
    workdir: Path | None = None,
    branch: str | None = None,
) -> str:
    """One prompt for the actionable messages of a round (``tasks``: task id → task).
    ``reports``: whether the CLI can report (else its exit code decides, and it is told so).
    ``workdir``/``branch``: the agent works in its own git worktree, on that task branch."""
    lines = [
        f"You are {_who(agent)}, an agent in the Tinytown town {town!r} (directory {root}).",
        "Tinytown connects you with other coding agents and a human, the conductor. Your "
        "messages arrive through the `tinytown` MCP server; this round's messages are below.",
    ]
    if workdir is not None:
        lines.append(
            f"You work in your own git worktree, {workdir} (your current directory), "
            + (f"on the branch {branch}. " if branch else "")
            + "Edit files there, not in the town directory. Your changes are kept on that "
            "branch: whatever you leave uncommitted is committed for you when the round ends, "
            "and the conductor reviews and merges it."
        )
    lines += [
        "",
        f"You have {len(messages)} new message{'s' if len(messages) != 1 else ''}:",
    ]
    for n, message in enumerate(messages, 1):
        lines += ["", f"--- message {n} of {len(messages)} ---",
                  f"message id: {message.id}",
                  f"from: {message.sender}    kind: {message.kind.value}    "
                  f"priority: {message.priority.value}"]
        if message.task_id:
            task = tasks.get(message.task_id)
            attempt = f" (attempt {task.attempt})" if task else ""
            lines.append(f"task id: {message.task_id}{attempt}")
        if message.reply_to:
            lines.append(f"in reply to: {message.reply_to}")
        lines += ["", message.body.rstrip()]
    lines += ["", "--- end of messages ---", "", *how_to_finish(messages, reports=reports)]
    return "\n".join(lines) + "\n"


def how_to_finish(messages: Sequence[Message], *, reports: bool = True) -> list[str]:
    tt = tt_command()
    lines = ["How to answer and finish:"]
    if any(m.kind == MessageKind.TASK and m.task_id for m in messages):
        if reports:
            lines += [
                "- Do each task in this directory. Then report it exactly once, with its task id:",
                '    MCP tool: task_done(task_id="<task id>", result="<what you did, briefly>")',
                '    if you cannot do it: task_failed(task_id="<task id>", error="<why>")',
                f'    without MCP, run: {tt} task done <task id> "<result>"  /  '
                f'{tt} task fail <task id> "<error>"',
                "- Report before you exit. A task you did not report counts as not done: you are "
                "asked once more, and then it fails.",
            ]
        else:
            lines += [
                "- Do each task in this directory, then exit. Your exit code reports it: exit 0 "
                "marks it completed with the end of your output, any other code marks it failed.",
            ]
    if any(m.kind in (MessageKind.QUERY, MessageKind.CUSTOM) for m in messages):
        lines += [
            "- Answer a query to its sender: send_message(to=\"<from>\", body=\"<answer>\", "
            "reply_to=\"<message id>\")",
            f'    without MCP, run: {tt} send <from> "<answer>"',
        ]
    lines += [
        "- Tell another agent something: send_message(to=\"<name>\", body=\"...\") "
        "(`list_agents` shows who is here; to=\"all\" reaches everyone).",
        "- These messages are already delivered to you: do not wait for more with `receive`. "
        "Finish, then exit; the runner starts your next round when new messages arrive.",
    ]
    return lines


def render_followup_prompt(agent: Agent, town: str, root: Path, tasks: Sequence[Task]) -> str:
    """The prompt of the one follow-up round a runner gives a CLI that exited 0 without
    reporting its task(s): report now, by the exact tool or command."""
    tt = tt_command()
    lines = [
        f"You are {_who(agent)}, an agent in the Tinytown town {town!r} (directory {root}).",
        f"Your last round exited without reporting {'its task' if len(tasks) == 1 else 'these tasks'}. "
        "Report now, exactly once per task, then exit. Do not start other work.",
    ]
    for task in tasks:
        lines += [
            "",
            f"task id: {task.id} (attempt {task.attempt}): {_clip(task.description)}",
            f'    MCP tool: task_done(task_id="{task.id}", result="<what you did, briefly>")',
            f'    or, if it is not done: task_failed(task_id="{task.id}", error="<what is missing>")',
            f'    without MCP, run: {tt} task done {task.id} "<result>"',
            f'    or: {tt} task fail {task.id} "<error>"',
        ]
    lines += [
        "",
        "If you exit without reporting again, the task is marked failed: the agent did not report.",
    ]
    return "\n".join(lines) + "\n"


def render_prime(
    agent: Agent,
    town: str,
    root: Path | None,
    current: Task | None,
    counts: InboxCounts,
) -> str:
    """Short onboarding for a Claude Code session (SessionStart hook): identity, task, mail."""
    where = f" (directory {root})" if root else ""
    lines = [f"# Tinytown: you are {_who(agent)} in town {town!r}{where}"]
    if agent.name == CONDUCTOR:
        lines += [
            "You are the conductor: you assign work and watch the town.",
            "- assign: MCP `assign_task(description, agent)` or `tt assign AGENT \"...\"`; "
            "no agent puts it in the backlog.",
            "- watch: `town_status` / `tt status`; results arrive as task_done/task_failed "
            "messages in your inbox (`receive`, `tt inbox`).",
            "- agents: `spawn_agent(name, cli)` / `tt spawn NAME --cli PRESET`, "
            "`kill_agent(name)` / `tt kill NAME`.",
        ]
    else:
        if current is not None:
            lines.append(
                f"Current task: {current.id} ({current.state.value}, attempt {current.attempt}): "
                f"{_clip(current.description)}"
            )
        else:
            lines.append("Current task: none.")
        lines += [
            "How to work: MCP `receive` (or `tt receive`) gets your messages; do the work; "
            "finish a task with `task_done(task_id, result)` (`tt task done ID RESULT`) or "
            "`task_failed(task_id, error)`; talk with `send_message(to, body)`; then "
            "`receive` again.",
        ]
    mail = f"Inbox: {counts.pending} pending"
    if counts.urgent:
        mail += f" ({counts.urgent} urgent, read those first)"
    if counts.in_flight:
        mail += f", {counts.in_flight} received but not acknowledged"
    lines.append(mail + ".")
    return "\n".join(lines) + "\n"


def _clip(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
