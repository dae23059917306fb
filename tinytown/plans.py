"""Plans: a whole set of tasks with dependencies created at once, and handing out the backlog.

A plan file (``tt plan FILE``) is TOML, one ``[[tasks]]`` table per task::

    [[tasks]]
    key = "api"                       # names the task inside the file (letters, digits, _ . -)
    description = "Add the /health endpoint"
    agent = "alice"                   # optional: else the task goes to the backlog
    tags = ["backend"]                # optional
    priority = "high"                 # optional: urgent | high | normal | low
    depends_on = ["schema", "#12"]    # optional: keys of this file, or existing tasks (#N or id)

:meth:`Plans.create` checks the whole plan first (keys, agents, priorities, references,
cycles; every error names the task's key), then stores every task in ONE atomic write
(:meth:`tinytown.dependencies.Dependencies.create`): all or nothing.  Tasks whose
dependencies are all completed start at once; the others are ``waiting``.  A dry run
returns the tasks in the order they can start, by level: level 0 needs nothing of the plan,
level n waits for a task of level n-1.

:meth:`Plans.hand_out` gives backlog tasks to an agent, or one to each idle agent, highest
priority first (oldest first within one priority).
"""

from __future__ import annotations

import re
import tomllib
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from tinytown.channel import Plan
from tinytown.dependencies import Draft
from tinytown.errors import Conflict, Invalid, NotFound, TinytownError, wrap_redis_errors
from tinytown.models import (
    BROADCAST,
    CONDUCTOR,
    Agent,
    AgentState,
    Priority,
    Task,
    TaskState,
    normalise_agent_name,
)
from tinytown.tasks import _UUID_RE, MAX_PAGE, MAX_TAG_LEN, MAX_TAGS, check_size, parse_enum

if TYPE_CHECKING:
    from tinytown.town import Town

MAX_PLAN_TASKS = 1000
"""The most tasks one plan may hold: it is stored in one write."""
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TASK_FIELDS = frozenset({"key", "description", "agent", "tags", "priority", "depends_on"})
BACKLOG_CHUNK = 500


class TaskSpec(BaseModel):
    """One ``[[tasks]]`` table of a plan."""

    key: str
    description: str
    agent: str | None = None
    tags: list[str] = Field(default_factory=list)
    priority: str = Priority.NORMAL.value
    depends_on: list[str] = Field(default_factory=list)
    """Keys of the same plan, or existing tasks written ``#N`` or as a full id."""


class PlannedTask(BaseModel):
    """A task of a plan: its key, its level (the order it can start in) and the task."""

    key: str
    level: int
    depends_on: list[str]
    """As written in the plan: keys, and references to existing tasks."""
    task: Task


class PlanResult(BaseModel):
    """What :meth:`Plans.create` made (or, with ``dry_run``, would make), in start order."""

    dry_run: bool
    tasks: list[PlannedTask]

    @property
    def levels(self) -> list[list[PlannedTask]]:
        out: list[list[PlannedTask]] = []
        for planned in self.tasks:
            while len(out) <= planned.level:
                out.append([])
            out[planned.level].append(planned)
        return out


def _external(ref: str) -> bool:
    """Whether a ``depends_on`` entry names an existing task rather than a key of the plan."""
    return ref.startswith("#") or bool(_UUID_RE.match(ref.lower()))


def parse_plan(text: str) -> list[TaskSpec]:
    """The tasks of a plan file's TOML text (only its shape is checked here).

    Raises:
        Invalid: not TOML, no ``[[tasks]]``, an unknown field or a value of the wrong type
            (naming the task's key, or its position when it has none).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Invalid(f"the plan is not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"tasks"})
    if extra:
        raise Invalid(f"a plan holds only [[tasks]] tables; unknown: {', '.join(extra)}")
    tables = data.get("tasks")
    if not isinstance(tables, list) or not tables:
        raise Invalid("the plan has no tasks: write one [[tasks]] table per task")
    specs: list[TaskSpec] = []
    for position, table in enumerate(tables, start=1):
        name = f"task {position}"
        if not isinstance(table, dict):
            raise Invalid(f"{name} is not a table")
        if isinstance(table.get("key"), str):
            name = f"task {table['key']!r}"
        unknown = sorted(set(table) - TASK_FIELDS)
        if unknown:
            raise Invalid(f"{name}: unknown field {', '.join(unknown)} "
                          f"(a task has {', '.join(sorted(TASK_FIELDS))})")
        for fld in ("key", "description"):
            if not isinstance(table.get(fld), str):
                raise Invalid(f"{name}: {fld} must be a string and is required")
        for fld in ("agent", "priority"):
            if fld in table and not isinstance(table[fld], str):
                raise Invalid(f"{name}: {fld} must be a string")
        values: dict[str, Any] = dict(table)
        for fld in ("tags", "depends_on"):
            value = values.get(fld, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise Invalid(f"{name}: {fld} must be a list of strings")
            values[fld] = value
        specs.append(TaskSpec.model_validate(values))
    return specs


def plan_levels(specs: Sequence[TaskSpec]) -> list[int]:
    """Each task's level (0: it waits for no task of the plan), checking the plan's shape:
    keys, priorities, tags, references between keys and cycles.

    Raises:
        Invalid: naming the key and the problem (a cycle is named in full: ``a -> b -> a``).
    """
    if not specs:
        raise Invalid("the plan has no tasks")
    if len(specs) > MAX_PLAN_TASKS:
        raise Invalid(f"the plan has {len(specs)} tasks; at most {MAX_PLAN_TASKS} fit one plan")
    index: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if not KEY_RE.match(spec.key):
            raise Invalid(f"task {spec.key!r}: a key is 1-64 letters, digits, '_', '.' or '-'")
        if spec.key in index:
            raise Invalid(f"task {spec.key!r}: the key is used twice (tasks {index[spec.key] + 1} "
                          f"and {i + 1} of the plan)")
        index[spec.key] = i
        if not spec.description.strip():
            raise Invalid(f"task {spec.key!r}: the description is empty; say what should be done")
        try:
            parse_enum(Priority, spec.priority, "priority")
        except Invalid as exc:
            raise Invalid(f"task {spec.key!r}: {exc.message}") from None
        if len(spec.tags) > MAX_TAGS or any(not t or len(t) > MAX_TAG_LEN for t in spec.tags):
            raise Invalid(f"task {spec.key!r}: tags: at most {MAX_TAGS}, each 1-{MAX_TAG_LEN} characters")
    deps: list[list[int]] = []
    for spec in specs:
        mine: list[int] = []
        for ref in spec.depends_on:
            if ref in index:
                if index[ref] not in mine:
                    mine.append(index[ref])
            elif not _external(ref):
                raise Invalid(f"task {spec.key!r}: depends_on names {ref!r}, which is no key of this "
                              "plan (existing tasks are written #N)")
        deps.append(mine)
    levels: list[int | None] = [None] * len(specs)
    remaining = set(range(len(specs)))
    while remaining:
        ready = [i for i in remaining if all(levels[d] is not None for d in deps[i])]
        if not ready:
            raise Invalid(f"the plan has a cycle: {_cycle(specs, deps, remaining)}; "
                          "a task cannot wait for itself")
        for i in ready:
            levels[i] = 1 + max((levels[d] or 0 for d in deps[i]), default=-1)
        remaining -= set(ready)
    return [level or 0 for level in levels]


def _cycle(specs: Sequence[TaskSpec], deps: list[list[int]], stuck: set[int]) -> str:
    """One cycle among the tasks that can never start, as ``a -> b -> a`` (a waits for b)."""
    node = min(stuck)
    path: list[int] = []
    while node not in path:
        path.append(node)
        node = next(d for d in deps[node] if d in stuck)
    loop = path[path.index(node):] + [node]
    return " -> ".join(specs[i].key for i in loop)


class Plans:
    """The planning service of a :class:`~tinytown.town.Town` (``town.plans``)."""

    def __init__(self, town: Town) -> None:
        self.town = town

    async def create(self, specs: Sequence[TaskSpec], *, by: str = CONDUCTOR,
                     dry_run: bool = False) -> PlanResult:
        """Create every task of a plan in one atomic write, or (``dry_run``) only check it
        and say in which order the tasks can start.

        Raises:
            Invalid: a problem of the plan (naming the task's key): a bad or duplicate key,
                an empty or oversized description, a bad priority or tags, a ``depends_on``
                entry that is no key, a cycle, a dependency that failed or was cancelled.
            NotFound: an unknown agent or existing task (naming the key).
        """
        town = self.town
        levels = plan_levels(specs)
        limit = town.config.limits.max_description_bytes
        for spec in specs:
            try:
                check_size(spec.description, limit, "the description")
            except Invalid as exc:
                raise Invalid(f"task {spec.key!r}: {exc.message}") from None
        creator = await town.get_agent(by)
        agents = await self._agents(specs)
        external = await self._external(specs)
        keys = {spec.key: i for i, spec in enumerate(specs)}
        if dry_run:
            seqs = [0] * len(specs)
        else:
            async with wrap_redis_errors():
                last = int(await town.redis.incrby(town.keys.seq, len(specs)))
            seqs = list(range(last - len(specs) + 1, last + 1))
        drafts = []
        for spec, seq in zip(specs, seqs, strict=True):
            task = Task(id=str(uuid.uuid4()), description=spec.description, created_by=creator.name,
                        tags=list(spec.tags), priority=Priority(spec.priority))
            internal = list(dict.fromkeys(keys[r] for r in spec.depends_on if r in keys))
            outside = list(dict.fromkeys(external[r][0] for r in spec.depends_on if r not in keys))
            drafts.append(Draft(task, seq, agents.get(spec.key), internal, outside))
        if dry_run:
            tasks = [self._preview(d, drafts, external) for d in drafts]
        else:
            tasks = await town.dependencies.create(drafts, creator.name)
        planned = [PlannedTask(key=s.key, level=lv, depends_on=list(s.depends_on), task=t)
                   for s, lv, t in zip(specs, levels, tasks, strict=True)]
        order = sorted(range(len(planned)), key=lambda i: (planned[i].level, i))
        return PlanResult(dry_run=dry_run, tasks=[planned[i] for i in order])

    async def _agents(self, specs: Sequence[TaskSpec]) -> dict[str, Agent]:
        """Key -> the agent its task is for (each distinct name read once)."""
        by_name: dict[str, Agent] = {}
        out: dict[str, Agent] = {}
        for spec in specs:
            if spec.agent is None:
                continue
            name = normalise_agent_name(spec.agent)
            if name == BROADCAST:
                raise Invalid(f"task {spec.key!r}: a task goes to one agent, not 'all'; leave the "
                              "agent out for the backlog")
            if name not in by_name:
                try:
                    by_name[name] = await self.town.get_agent(name)
                except (NotFound, Invalid) as exc:
                    raise type(exc)(f"task {spec.key!r}: {exc.message}") from None
            out[spec.key] = by_name[name]
        return out

    async def _external(self, specs: Sequence[TaskSpec]) -> dict[str, tuple[str, str]]:
        """Reference -> (id, state) of each existing task the plan depends on, checked: it
        exists, and did not fail and was not cancelled."""
        keys = {spec.key for spec in specs}
        found: dict[str, tuple[str, str]] = {}
        for spec in specs:
            for ref in spec.depends_on:
                if ref in keys or ref in found:
                    continue
                try:
                    task_id = await self.town.resolve_task(ref)
                    dep = (await self.town.dependencies._read_dependencies([task_id]))[task_id]
                except TinytownError as exc:
                    raise type(exc)(f"task {spec.key!r}: depends_on {ref!r}: {exc.message}") from None
                found[ref] = (task_id, dep.state)
        return found

    @staticmethod
    def _preview(draft: Draft, drafts: Sequence[Draft], external: dict[str, tuple[str, str]]) -> Task:
        """The task as the plan would store it (no number yet)."""
        states = dict(external.values())
        waiting = [drafts[i].task.id for i in draft.internal] + [
            t for t in draft.external if states[t] != TaskState.COMPLETED.value]
        if waiting:
            state = TaskState.WAITING
        else:
            state = TaskState.ASSIGNED if draft.agent is not None else TaskState.PENDING
        return draft.task.model_copy(update={
            "state": state, "depends_on": [drafts[i].task.id for i in draft.internal] + draft.external,
            "waiting_on": waiting, "assigned_to": draft.agent.id if draft.agent else None,
            "assignee": draft.agent.name if draft.agent else None,
        })

    # ----------------------------------------------------------------- the backlog

    async def hand_out(self, agent: str | None = None, *, count: int = 1, idle: bool = False,
                       by: str = CONDUCTOR) -> list[Task]:
        """Give backlog tasks out, highest priority first (oldest first within a priority):
        ``count`` of them to ``agent``, or with ``idle`` one to each idle agent (running, not
        paused, holding no assigned or running task), in the order the agents were created.
        Each becomes ``assigned`` and is delivered like a new assignment.  Returns the tasks
        given (fewer when the backlog runs out).

        Raises:
            Invalid: neither or both of ``agent`` and ``idle``; a bad ``count``.
            NotFound: no such agent.
        """
        town = self.town
        if (agent is None) == (not idle):
            raise Invalid("name an agent to give backlog tasks to, or ask for the idle agents")
        if not 1 <= count <= MAX_PAGE:
            raise Invalid(f"count must be between 1 and {MAX_PAGE}")
        sender = (await town.get_agent(by)).name
        targets = await self.idle_agents() if idle else [await town.get_agent(agent or "")] * count
        given: list[Task] = []
        tried: set[str] = set()
        while targets:
            candidates = [t for t in await self._backlog_by_priority(len(targets) + len(tried))
                          if t not in tried]
            if not candidates:
                break
            for task_id in candidates:
                if not targets:
                    break
                tried.add(task_id)
                task = await self._give(task_id, targets[0], sender)
                if task is not None:
                    given.append(task)
                    targets.pop(0)
        return given

    async def idle_agents(self) -> list[Agent]:
        """Agents that could take work now: not the conductor, not paused, stopped or in
        error, and holding no ``assigned`` or ``running`` task."""
        out = []
        for agent in await self.town.list_agents():
            if agent.name == CONDUCTOR or agent.state in (
                    AgentState.PAUSED, AgentState.STOPPED, AgentState.ERROR):
                continue
            if not await self.town.handback.orphans(agent.name):
                out.append(agent)
        return out

    async def _backlog_by_priority(self, limit: int) -> list[str]:
        """The ids of the ``limit`` backlog tasks to give first."""
        town = self.town
        best: list[tuple[int, int, str]] = []
        start = 0
        while True:
            async with wrap_redis_errors():
                rows = await town.redis.zrange(town.keys.backlog, start, start + BACKLOG_CHUNK - 1,
                                               withscores=True)
                async with town.redis.pipeline(transaction=False) as pipe:
                    for task_id, _seq in rows:
                        pipe.hget(town.keys.task(task_id), "priority")
                    priorities = await pipe.execute()
            for (task_id, seq), priority in zip(rows, priorities, strict=True):
                rank = Priority(priority).rank if priority in Priority._value2member_map_ else 2
                best.append((rank, int(seq), str(task_id)))
            best = sorted(best)[:limit]
            # the backlog is in creation order: once `limit` urgent ones are found, none later beats them
            if len(rows) < BACKLOG_CHUNK or (len(best) >= limit and best[-1][0] == 0):
                return [t for _, _, t in best]
            start += BACKLOG_CHUNK

    async def _give(self, task_id: str, agent: Agent, sender: str) -> Task | None:
        """Assign one backlog task to ``agent``; None when it left the backlog meanwhile."""
        town = self.town
        try:
            task, seq, _message = await town._read_task_message(task_id)
        except NotFound:
            return None
        if task.state != TaskState.PENDING:
            return None
        plan = Plan()
        key = town._k(town.keys.task(task.id))
        plan.guard(key, "state", [TaskState.PENDING.value], "conflict", "taken meanwhile")
        plan.zrem.append([town._k(town.keys.backlog), task.id])
        given = town._assign_into(plan, task, seq, agent, sender)
        try:
            await town.channel.apply(plan)
        except Conflict:
            return None
        return given
