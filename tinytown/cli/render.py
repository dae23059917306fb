"""How ``tt`` shows things: rich tables and colour on a terminal, plain aligned text otherwise.

Commands build a list of :data:`Part` (a line of text or a :class:`Table`) once; :func:`show`
prints it as rich output when stdout is a terminal and as plain text when it is not (pipes,
scripts, tests).  ``rich`` is imported only on the terminal path, so scripted calls such as
``tt send`` never pay for it.  Text from the town (message bodies, descriptions) is never
read as rich markup.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tinytown.cli.app import is_terminal

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from tinytown.conversation import HistoryEntry, TaskThread
    from tinytown.models import Agent, Event, Message, Task

# A cell is its text, or (text, rich style) to colour it on a terminal.
Cell = str | tuple[str, str]

STATE_STYLES = {
    # agents
    "starting": "blue", "idle": "green", "working": "cyan", "paused": "yellow",
    "stopped": "dim", "error": "bold red",
    # tasks
    "waiting": "magenta", "pending": "yellow", "assigned": "blue", "running": "cyan", "completed": "green",
    "failed": "bold red", "cancelled": "dim",
}  # fmt: skip
PRIORITY_STYLES = {"urgent": "bold red", "high": "yellow", "normal": "", "low": "dim"}
DESCRIPTION_WIDTH = 60
BODY_LINES = 12  # a message body in a conversation view: at most this many folded lines
STAMP_INDENT = " " * 10  # under "HH:MM:SS  "


@dataclass
class Table:
    """Rows of cells under a header; rendered aligned in both modes."""

    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    title: str | None = None
    # Only free text folds on a narrow terminal; ids and states stay whole (ids are copied).
    folding: frozenset[str] = frozenset({"description", "value", "role"})


Part = str | Table


def text_of(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell[0]


def styled(text: str, styles: dict[str, str]) -> Cell:
    """``text`` with the style the mapping gives it (none when unknown)."""
    style = styles.get(text, "")
    return (text, style) if style else text


def plain(parts: Sequence[Part]) -> str:
    """Plain text: tables as columns separated by two spaces, headers upper-case."""
    lines: list[str] = []
    for part in parts:
        if isinstance(part, str):
            lines.append(part)
            continue
        if part.title:
            lines.append(part.title)
        grid = [[h.upper() for h in part.headers]] + [[text_of(c) for c in row] for row in part.rows]
        widths = [max(len(row[i]) for row in grid) for i in range(len(part.headers))]
        for row in grid:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            lines.append("  ".join(cells).rstrip())
    return "".join(line + "\n" for line in lines)


def renderable(parts: Sequence[Part]) -> RenderableType:
    """The rich form of ``parts`` (one group), for printing or a live view."""
    from rich import box
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    items: list[RenderableType] = []
    for part in parts:
        if isinstance(part, str):
            items.append(Text(part))
            continue
        table = RichTable(
            title=part.title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, collapse_padding=True
        )
        for header in part.headers:
            if header in part.folding:
                table.add_column(header, overflow="fold", ratio=1)
            else:
                table.add_column(header, no_wrap=True)
        for row in part.rows:
            table.add_row(*(Text(c) if isinstance(c, str) else Text(c[0], style=c[1]) for c in row))
        items.append(table)
    return Group(*items)


def console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def show(parts: Sequence[Part]) -> None:
    """Print ``parts``: rich on a terminal, plain text otherwise."""
    if is_terminal():
        console().print(renderable(parts))
    else:
        sys.stdout.write(plain(parts))
        sys.stdout.flush()


def say(line: str) -> None:
    """One line of human output (a confirmation)."""
    show([line])


# --------------------------------------------------------------------- formats


def ago(ms: int | None, at_ms: int | None = None) -> str:
    """``12s ago``-style age of a millisecond timestamp; ``-`` when absent."""
    if not ms:
        return "-"
    seconds = max(0, ((at_ms if at_ms is not None else int(time.time() * 1000)) - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def clock(ms: int) -> str:
    """Local wall-clock time of a millisecond timestamp."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def task_ref(task_id: str | None, numbers: dict[str, int] | None = None) -> str:
    """A task known by id in an overview: ``#N`` when its number is known, else the first 8
    characters of the id (a prefix every command takes; ``--json`` gives the whole id)."""
    if not task_id:
        return "-"
    if numbers and task_id in numbers:
        return f"#{numbers[task_id]}"
    return task_id[:8]


def short_id(task_id: str) -> str:
    """The first 8 characters of an id: unique in practice, and accepted as a prefix."""
    return task_id[:8]


def change_text(diffstat: dict[str, int] | None) -> str:
    """A branch's diff stat as the dashboard says it: ``1 file, +14 -3``."""
    stat = diffstat or {}
    return f"{plural(stat.get('files', 0), 'file')}, +{stat.get('insertions', 0)} -{stat.get('deletions', 0)}"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 copy``, ``2 copies``, ``0 messages``."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def one_line(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    """The first line of ``text``, cut to ``width`` characters with an ellipsis."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    if len(first) > width or "\n" in text.strip():
        return first[: width - 1] + "…"
    return first


# --------------------------------------------------------------------- records


def agents_table(
    agents: Sequence[Agent], stale_after_s: float, at_ms: int, numbers: dict[str, int] | None = None
) -> Table:
    """``at_ms``: Redis's clock, which stamps ``last_seen``."""
    table = Table(["name", "state", "cli", "role", "host", "task", "done", "seen"])
    for agent in agents:
        state: Cell = styled(agent.state.value, STATE_STYLES)
        if agent.is_stale(stale_after_s, at_ms=at_ms):
            state = (f"{agent.state.value} (stale)", "bold red")
        table.rows.append([
            agent.name, state, agent.cli or "-", agent.role or "-", agent.host or "-",
            task_ref(agent.current_task, numbers),
            str(agent.tasks_completed), ago(agent.last_seen, at_ms),
        ])  # fmt: skip
    return table


def tasks_table(tasks: Sequence[Task]) -> Table:
    """Tasks by short reference (``#N`` and the id's first characters), assignee by name."""
    table = Table(["task", "id", "state", "priority", "agent", "try", "description", "result"],
                  folding=frozenset({"description", "result"}))
    for task in tasks:
        agent = task.assignee or task.assigned_to or "-"
        outcome = task.result if task.result is not None else task.error
        table.rows.append([
            task.ref, short_id(task.id), task_state(task),
            styled(task.priority.value, PRIORITY_STYLES), agent or "-", str(task.attempt),
            one_line(task.description, 40), one_line(outcome or "-", 40),
        ])  # fmt: skip
    return table


def task_state(task: Task, most: int = 3) -> Cell:
    """The state, styled; for a waiting task with what it waits on (``waiting on #3,#4``)."""
    text = task.state.value
    if task.state.value == "waiting" and task.waiting_on:
        refs = [task.dependency_ref(t) for t in task.waiting_on]
        text += " on " + ",".join(refs[:most]) + (f" +{len(refs) - most}" if len(refs) > most else "")
    style = STATE_STYLES.get(task.state.value, "")
    return (text, style) if style else text


def task_parts(task: Task) -> list[Part]:
    """One task, field by field."""
    agent = task.assignee or task.assigned_to
    fields: list[tuple[str, Any]] = [
        ("task", task.ref), ("id", task.id), ("state", task.state.value), ("priority", task.priority.value),
        ("assigned_to", agent), ("created_by", task.created_by), ("attempt", task.attempt),
        ("tags", ", ".join(task.tags) or None), ("parent_id", task.parent_id),
        ("depends_on", ", ".join(task.dependency_ref(t) for t in task.depends_on) or None),
        ("waiting_on", ", ".join(task.dependency_ref(t) for t in task.waiting_on) or None),
        ("created", clock(task.created_at)), ("updated", clock(task.updated_at)),
        ("started", clock(task.started_at) if task.started_at else None),
        ("finished", clock(task.completed_at) if task.completed_at else None),
        ("decided_by", task.decided_by.value if task.decided_by else None),
        ("branch", task.branch), ("base", task.base[:10] if task.base else None),
        ("head", task.head[:10] if task.head else None),
        ("change", change_text(task.diffstat) if task.diffstat else None),
        ("merged", f"by {task.merged_by} into {task.merged_into}" if task.merged_by else None),
        ("discarded", "yes" if task.discarded else None),
    ]  # fmt: skip
    table = Table(["field", "value"])
    for name, value in fields:
        if value is not None:
            cell = styled(str(value), STATE_STYLES if name == "state" else {})
            table.rows.append([name, cell])
    parts: list[Part] = [table, "description:", _indent(task.description)]
    if task.result is not None:
        parts += ["result:", _indent(task.result)]
    if task.error is not None:  # a cancelled task keeps its reason in the error field
        label = "reason:" if task.state.value == "cancelled" else "error:"
        parts += [label, _indent(task.error)]
    return parts


def message_parts(messages: Sequence[Message], numbers: dict[str, int] | None = None) -> list[Part]:
    """Messages in receive order: a header line with the ids (tasks as ``#N`` where
    ``numbers`` knows them), then the body indented."""
    parts: list[Part] = []
    for m in messages:
        extras = [f"id {m.id}"]
        if m.task_id:
            extras.append(f"task {task_ref(m.task_id, numbers)}")
        if m.reply_to:
            extras.append(f"reply to {m.reply_to}")
        if m.delivery_count > 1:
            extras.append(f"delivery {m.delivery_count}")
        parts.append(f"[{m.priority.value}] {m.kind.value} from {m.sender}  ({', '.join(extras)})")
        parts.append(_indent(m.body))
    return parts


def event_line(event: Event) -> str:
    data = "  ".join(f"{k}={v}" for k, v in event.data.items() if v is not None)
    return f"{clock(event.at)}  {event.type:<18} {data}".rstrip()


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines() or [""])


# --------------------------------------------------------------------- the conversation


def terminal_width() -> int:
    """The terminal's columns (``$COLUMNS``, else 100 when not a terminal)."""
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def fold(head: str, body: str, width: int, *, max_lines: int = BODY_LINES) -> list[str]:
    """``head`` followed by ``body`` folded to ``width``, continuation lines indented under
    the time stamp; at most ``max_lines`` lines of body (``--json`` has all of it)."""
    lines: list[str] = []
    for paragraph in body.strip().splitlines() or [""]:
        first = not lines
        wrapped = textwrap.wrap(
            paragraph, width=width, initial_indent=head if first else STAMP_INDENT,
            subsequent_indent=STAMP_INDENT, break_long_words=True, break_on_hyphens=False,
        ) or [head.rstrip() if first else ""]
        lines += wrapped
    if len(lines) > max_lines:
        hidden = len(lines) - max_lines
        lines = [*lines[:max_lines], f"{STAMP_INDENT}… {hidden} more lines (--json shows all)"]
    return lines


def _stamp(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def _short(value: Any) -> str:
    """Ids shortened to their first 8 characters in a readable line."""
    text = str(value)
    return text[:8] if len(text) == 36 and text.count("-") == 4 else text


def message_lines(m: Message, width: int, ref: str = "") -> list[str]:
    """One message of a conversation: who to whom, its kind, its task, its body folded."""
    head = f"{_stamp(m.created_at)}  {m.sender} → {m.to}  {m.kind.value}"
    if ref:
        head += f" {ref}"
    if m.reply_to:
        head += " (reply)"
    if m.priority.value in ("urgent", "high"):
        head += f" [{m.priority.value}]"
    return fold(head + ": ", m.body, width)


def history_lines(entry: HistoryEntry, width: int) -> list[str]:
    """An event as short readable lines: messages with their bodies, tasks by ``#N``,
    folded to ``width``."""
    folded: list[str] = []
    for line in _event_lines(entry, width):
        if len(line) <= width:
            folded.append(line)
        else:
            folded += textwrap.wrap(line, width=width, subsequent_indent=STAMP_INDENT,
                                    break_on_hyphens=False) or [line]
    return folded


def _event_lines(entry: HistoryEntry, width: int) -> list[str]:
    data = entry.data
    task = entry.task
    ref = task.ref if task else _short(data["task_id"]) if data.get("task_id") else ""
    actor = str(data.get("agent") or data.get("by") or "")
    stamp = _stamp(entry.at) + "  "
    kind = entry.type
    if kind == "message.sent":
        if entry.message is not None:
            return message_lines(entry.message, width, ref)
        head = f"{stamp}{data.get('from', '?')} → {data.get('to', '?')}  {data.get('kind', '')}"
        why = ("no live agent got a copy, so it was not stored" if data.get("copies") == 0
               else "the message is no longer stored")
        return [f"{head}{' ' + ref if ref else ''}: ({why})"]
    if kind == "task.created":
        what = f": {one_line(task.description)}" if task else ""
        return [f"{stamp}{actor} created task {ref} [{data.get('priority', 'normal')}]{what}"]
    if kind == "task.assigned":
        return [f"{stamp}task {ref} assigned to {actor} (attempt {data.get('attempt', '?')})"]
    if kind in ("task.started", "task.claimed"):
        return [f"{stamp}{actor} {kind.removeprefix('task.')} task {ref}"]
    if kind in ("task.completed", "task.failed", "task.cancelled"):
        verb = kind.removeprefix("task.")
        decided = f" (decided by {data['decided_by']})" if data.get("decided_by") else ""
        text = (task.result if verb == "completed" else task.error) if task else None
        head = f"{stamp}{actor} {verb} task {ref}{decided}"
        return fold(head + ": ", text, width) if text else [head]
    if kind == "task.reclaimed":
        return [f"{stamp}task {ref} went back to the backlog from {actor}"]
    if kind in ("task.waiting", "task.ready"):  # (tinytown.dependencies)
        ids = data.get("waiting_on") or [data.get("after")]
        refs = ", ".join(task.dependency_ref(t) if task else _short(t) for t in ids if t)
        verb = "waits on" if kind == "task.waiting" else "can start: done waiting, last on"
        return [f"{stamp}task {ref} {verb} {refs}"]
    if kind in ("agent.registered", "agent.attached"):
        cli = f" (cli {data['cli']})" if data.get("cli") else ""
        return [f"{stamp}{actor} {kind.removeprefix('agent.')}{cli}"]
    if kind.startswith("agent.") and "previous" in data:
        return [f"{stamp}{actor} is {kind.removeprefix('agent.')} (was {data['previous']})"]
    said = _plain_event(kind, data, ref)
    if said is not None:
        return [f"{stamp}{said}"]
    rest = "  ".join(f"{k}={_short(v)}" for k, v in data.items() if v is not None and k != "task_id")
    return [f"{stamp}{kind}{'  ' + ref if ref else ''}  {rest}".rstrip()]


def _plain_event(kind: str, data: dict[str, Any], ref: str) -> str | None:
    """The line of an event most towns see (a round, an order, a merge), in words; ``None``
    for the rest, shown as ``type key=value``."""
    agent = data.get("agent")
    if kind == "agent.round":
        return f"{agent} finished round {data.get('round')} (exit {data.get('exit_code')})"
    if kind == "agent.order":
        when = "now (cutting its round off)" if data.get("now") else "after its round"
        return f"{data.get('by')} asked {agent} to {data.get('action')} {when}"
    if kind == "agent.order_seen":
        during = f" during round {data['round']}" if data.get("round") else ""
        return f"{agent} saw the order{during}"
    if kind == "agent.order_done":
        return f"{agent} carried out the order (outcome: {data.get('outcome')})"
    if kind == "agent.pruned":
        return f"{agent} was pruned"
    if kind == "task.merged":
        return f"{agent} merged task {ref} ({data.get('branch')}) into {data.get('into')}"
    if kind == "task.given_back":
        return f"task {ref} given back to {agent}'s next session (attempt {data.get('attempt')})"
    if kind == "token.added":
        return f"a token for {agent} was added"
    if kind == "token.revoked":
        return f"{plural(int(data.get('count') or 0), 'token')} of {agent} revoked"
    return None


def thread_parts(thread: TaskThread, width: int) -> list[Part]:
    """A task (field by field), its conversation, and how it ended."""
    task = thread.task
    parts: list[Part] = task_parts(task)
    count = len(thread.messages)
    parts.append(f"thread ({plural(count, 'message')}):" if count else "thread: no messages")
    for message in thread.messages:
        ref = task.ref if message.task_id == task.id else ""
        parts += message_lines(message, width, ref)
    if task.state.is_final:
        when = f" at {clock(task.completed_at)}" if task.completed_at else ""
        who = f", decided by {task.decided_by.value}" if task.decided_by else ""
        parts.append(f"ended: {task.state.value}{when}{who}")
    else:
        parts.append(f"not ended: {task.state.value}")
    return parts
