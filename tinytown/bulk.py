"""Many backlog tasks at once: ``tt backlog add --file FILE`` (issue 9).

:func:`parse_task_lines` reads a file of tasks — one description a line, or a JSON object a
line with ``description`` and optional ``tags`` and ``priority`` — and names the first bad
line.  :func:`add_tasks` (``Town.add_tasks``) checks every task before it writes any, then
writes them in slices of :data:`SLICE`: one round trip a slice (one plan giving each task
its seq, its number, its record, its index entries and its event inside the write).

All or nothing, as far as one server allows: a bad task anywhere writes nothing; a slice is
atomic; only a failure of Redis between two slices leaves the first slices added, and the
error then says how many tasks (and up to which line) were added, so the rest can be added
again from there.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tinytown.channel import Plan
from tinytown.errors import Invalid, TinytownError
from tinytown.models import Priority, Task

if TYPE_CHECKING:
    from tinytown.town import Town

SLICE = 250
"""Tasks per write: a plan of 250 tasks is ~150 KB of JSON and a few ms of Lua."""

BulkProgress = Callable[[int, int], Awaitable[None] | None]


@dataclass
class TaskSpec:
    """One task to add: what :meth:`Town.add_tasks` takes (``line`` names it in errors)."""

    description: str
    tags: list[str] = field(default_factory=list)
    priority: str = Priority.NORMAL.value
    line: int | None = None


class AddedTask(BaseModel):
    id: str
    number: int


class BulkResult(BaseModel):
    added: int
    tasks: list[AddedTask]


def _where(spec: TaskSpec, index: int) -> str:
    return f"line {spec.line}" if spec.line is not None else f"task {index + 1}"


def parse_task_lines(lines: Iterable[str]) -> list[TaskSpec]:
    """The tasks of a file: a plain line is a description; a line starting with ``{`` is a
    JSON object ``{"description": ..., "tags": [...], "priority": ...}``.  Blank lines are
    skipped.

    Raises:
        Invalid: naming the first line that is not a task.
    """
    specs: list[TaskSpec] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        if not text.lstrip().startswith("{"):
            specs.append(TaskSpec(description=text.strip(), line=number))
            continue
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise Invalid(f"line {number}: not a JSON object ({exc.args[0]})") from None
        if not isinstance(data, dict):
            raise Invalid(f"line {number}: not a JSON object")
        unknown = sorted(set(data) - {"description", "tags", "priority"})
        if unknown:
            raise Invalid(f"line {number}: unknown field(s) {', '.join(unknown)} "
                          "(description, tags and priority are read)")
        description = data.get("description")
        tags = data.get("tags", [])
        priority = data.get("priority", Priority.NORMAL.value)
        if not isinstance(description, str):
            raise Invalid(f"line {number}: \"description\" (a string) is missing")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise Invalid(f"line {number}: \"tags\" must be a list of strings")
        if not isinstance(priority, str):
            raise Invalid(f"line {number}: \"priority\" must be a string")
        specs.append(TaskSpec(description=description, tags=tags, priority=priority, line=number))
    return specs


async def add_tasks(
    town: Town, specs: Sequence[TaskSpec], *, by: str, progress: BulkProgress | None = None
) -> BulkResult:
    """Add every task of ``specs`` to the backlog (see the module docstring).

    Raises:
        Invalid: a task is not valid (its line or position is named); nothing was added.
        NotFound: no agent ``by``.
        TinytownError: Redis failed after some slices were added; the message says how many.
    """
    from tinytown.tasks import MAX_TAG_LEN, MAX_TAGS, check_size, parse_enum

    creator = await town.get_agent(by)
    limit = town.config.limits.max_description_bytes
    tasks: list[Task] = []
    for index, spec in enumerate(specs):
        where = _where(spec, index)
        try:
            if not spec.description.strip():
                raise Invalid("the task description is empty")
            check_size(spec.description, limit, "the task description")
            if len(spec.tags) > MAX_TAGS or any(not t or len(t) > MAX_TAG_LEN for t in spec.tags):
                raise Invalid(f"tags: at most {MAX_TAGS}, each 1-{MAX_TAG_LEN} characters")
            priority = parse_enum(Priority, spec.priority, "priority")
        except Invalid as exc:
            raise Invalid(f"{where}: {exc.message}; nothing was added") from None
        tasks.append(Task(id=str(uuid.uuid4()), description=spec.description,
                          created_by=creator.name, tags=list(spec.tags), priority=priority))
    added: list[AddedTask] = []
    for start in range(0, len(tasks), SLICE):
        chunk = tasks[start:start + SLICE]
        try:
            numbers = await _write(town, chunk)
        except TinytownError as exc:
            if not added:
                raise
            last = _where(specs[len(added) - 1], len(added) - 1)
            raise type(exc)(f"{exc.message} — {len(added)} of {len(tasks)} tasks were added "
                            f"(up to {last}, #{added[-1].number}); add the rest again") from exc
        added += [AddedTask(id=t.id, number=n) for t, n in zip(chunk, numbers, strict=True)]
        if progress is not None:
            shown = progress(len(added), len(tasks))
            if shown is not None:
                await shown
    return BulkResult(added=len(added), tasks=added)


async def _write(town: Town, chunk: list[Task]) -> list[int]:
    """One script call: each task gets its seq and number inside the write, in order."""
    keys = town.keys
    indexes = [town._k(keys.tasks), town._k(keys.backlog)]
    plan = Plan()
    for task in chunk:
        task_key = town._k(keys.task(task.id))
        plan.hset.append([task_key, task.to_redis()])
        plan.created.append([town._k(keys.seq), task_key, task.id, indexes])
        plan.number.append([town._k(keys.task_number), town._k(keys.task_numbers), task_key, task.id])
        plan.event("task.created", task_id=task.id, by=task.created_by, priority=task.priority.value)
    return await town.channel.apply(plan)
