"""Tasks that wait for other tasks: ``depends_on`` and the ``waiting`` state.

A task created with dependencies that are not all ``completed`` is ``waiting``: not
delivered, not in the backlog, not claimable.  When its last dependency completes it moves
on in the same atomic write as that completion — ``assigned`` and delivered to its agent
exactly as :meth:`~tinytown.tasks.TaskOps.assign` does, or ``pending`` in the backlog when it
has no agent (or its agent was pruned meanwhile).  When a dependency fails or is cancelled,
every task waiting on it is ``cancelled`` in that same write, with a reason naming the
dependency, and so on transitively.

Record fields, on the task hash (``tt:{town}:task:<id>``, see :mod:`tinytown.keys`):

    depends_on       JSON list of the ids of the tasks it waits for (public)
    depends_on_refs  JSON list of their ``#N`` (written by the Lua, after numbering)
    waiting_on       JSON list of the ids not completed yet (public; [] once it moved on)
    dependents       JSON list of the ids of the tasks that depend on it (internal)

A waiting task meant for an agent records it in ``assigned_to`` / ``assignee`` and is in the
agent's task indexes (``tasks:agent:<id>``, ``tasks:open:<id>``: it is not finished) but has
no ``msg_id``: nothing was sent yet.  Reclaim and hand-back act on ``assigned``/``running``
tasks only, so they leave it alone.

Atomicity: every step reads, decides in Python and writes one guarded
:class:`~tinytown.channel.Plan`.  A completion guards the finished task's ``dependents`` and
each dependent's ``waiting_on``; a creation guards each existing dependency's ``state`` and
``dependents``.  So two dependencies completing at once, or a task created on a dependency
while it completes, cannot both act on a stale read: one plan's guard fails and it is read
and decided again (``retry``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tinytown.channel import Plan
from tinytown.errors import Invalid, NotFound, wrap_redis_errors
from tinytown.models import (
    Agent,
    Message,
    MessageKind,
    Task,
    TaskDecider,
    TaskState,
    now_ms,
)

if TYPE_CHECKING:
    from tinytown.town import Town

DEPENDENTS = "dependents"
"""The internal task-hash field listing the tasks that wait for this one."""


@dataclass
class Draft:
    """A task about to be created: its record, its seq, its agent, and what it waits for:
    ``internal`` (indexes of drafts of the same write) and ``external`` (ids of stored tasks)."""

    task: Task
    seq: int
    agent: Agent | None
    internal: list[int] = field(default_factory=list)
    external: list[str] = field(default_factory=list)


@dataclass
class _Dependency:
    """An existing task a new one depends on, as read (raw fields, for the guards)."""

    id: str
    state: str
    number: str | None
    dependents: str


def _ids(raw: str | None) -> list[str]:
    return [str(t) for t in json.loads(raw)] if raw else []


class Dependencies:
    """The dependency service of a :class:`~tinytown.town.Town` (``town.dependencies``)."""

    def __init__(self, town: Town) -> None:
        self.town = town

    # ----------------------------------------------------------------- creating

    async def resolve(self, refs: Sequence[str]) -> list[str]:
        """The ids of the tasks ``refs`` name (any form :meth:`resolve_task` takes), without
        repeats, in order.

        Raises:
            NotFound: no such task.
            Invalid: an ambiguous prefix.
        """
        ids: list[str] = []
        for ref in refs:
            task_id = await self.town.resolve_task(ref)
            if task_id not in ids:
                ids.append(task_id)
        return ids

    async def _read_dependencies(self, ids: Sequence[str]) -> dict[str, _Dependency]:
        town = self.town
        if not ids:
            return {}
        async with wrap_redis_errors(), town.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(town.keys.task(task_id), ["state", "number", DEPENDENTS])
            rows = await pipe.execute()
        found: dict[str, _Dependency] = {}
        for task_id, (state, number, dependents) in zip(ids, rows, strict=True):
            if state is None:
                raise NotFound(f"no task {task_id}; `tt tasks` shows the tasks")
            if state in (TaskState.FAILED.value, TaskState.CANCELLED.value):
                ref = f"#{number}" if number else task_id
                raise Invalid(
                    f"task {ref} is {state}: a task depending on it could never start; "
                    "depend on tasks that are not finished, or completed ones"
                )
            found[task_id] = _Dependency(task_id, str(state), number, dependents or "")
        return found

    async def create(self, drafts: Sequence[Draft], creator: str) -> list[Task]:
        """Store ``drafts`` in one atomic write (retried as a whole on a stale read): those
        with nothing left to wait for start at once (assigned and delivered, or in the
        backlog), the others are ``waiting``.  Returns the tasks as stored, with numbers.

        Raises:
            NotFound: a dependency is gone.
            Invalid: a dependency failed or was cancelled; a full inbox.
        """
        external = list(dict.fromkeys(t for d in drafts for t in d.external))

        async def once() -> list[Task]:
            found = await self._read_dependencies(external)
            plan, tasks = self._creation_plan(drafts, found, creator)
            numbers = await self.town.channel.apply(plan)
            return [self._numbered(t, n, drafts, found, numbers)
                    for t, n in zip(tasks, numbers, strict=True)]

        created: list[Task] = await self.town._retrying(once)
        return created

    @staticmethod
    def _numbered(task: Task, number: int, drafts: Sequence[Draft], found: dict[str, _Dependency],
                  numbers: list[int]) -> Task:
        index = {d.task.id: i for i, d in enumerate(drafts)}
        refs = [f"#{numbers[index[t]]}" if t in index else
                (f"#{found[t].number}" if found[t].number else t) for t in task.depends_on]
        return task.model_copy(update={"number": number, "depends_on_refs": refs})

    def _creation_plan(self, drafts: Sequence[Draft], found: dict[str, _Dependency],
                       creator: str) -> tuple[Plan, list[Task]]:
        town = self.town
        plan = Plan()
        dependents: dict[str, list[str]] = {}
        for draft in drafts:
            for i in draft.internal:
                dependents.setdefault(drafts[i].task.id, []).append(draft.task.id)
            for t in draft.external:
                dependents.setdefault(t, []).append(draft.task.id)
        for dep in found.values():
            key = town._k(town.keys.task(dep.id))
            plan.guard(key, "state", [dep.state], "retry", "a dependency changed")
            plan.guard(key, DEPENDENTS, [dep.dependents], "retry", "a dependency changed")
            plan.hset.append([key, {DEPENDENTS: json.dumps(_ids(dep.dependents) + dependents[dep.id])}])
        tasks: list[Task] = []
        for draft in drafts:
            task = draft.task
            key = town._k(town.keys.task(task.id))
            waiting = [drafts[i].task.id for i in draft.internal] + [
                t for t in draft.external if found[t].state != TaskState.COMPLETED.value]
            depends = [drafts[i].task.id for i in draft.internal] + draft.external
            task = task.model_copy(update={"depends_on": depends, "waiting_on": waiting})
            if waiting:
                task = task.model_copy(update={"state": TaskState.WAITING})
                if draft.agent is not None:
                    task = task.model_copy(update={"assigned_to": draft.agent.id,
                                                   "assignee": draft.agent.name})
            record = {**task.to_redis(), "seq": str(draft.seq)}
            if task.id in dependents:
                record[DEPENDENTS] = json.dumps(dependents[task.id])
            plan.hset.append([key, record])
            plan.number.append([town._k(town.keys.task_number), town._k(town.keys.task_numbers), key,
                                task.id])
            items: list[Any] = [i + 1 for i in draft.internal] + [
                f"#{found[t].number}" if found[t].number else t for t in draft.external]
            if items:
                plan.refs.append([key, "depends_on_refs", items])
            plan.zadd.append([town._k(town.keys.tasks), draft.seq, task.id])
            plan.event("task.created", task_id=task.id, by=creator, priority=task.priority.value,
                       depends_on=depends)
            if waiting:
                plan.zadd.append([town._k(town.keys.tasks_in_state(TaskState.WAITING)), draft.seq,
                                  task.id])
                if draft.agent is not None:
                    for index in (town.keys.tasks_of_agent(draft.agent.id),
                                  town.keys.open_tasks(draft.agent.id)):
                        plan.zadd.append([town._k(index), draft.seq, task.id])
                plan.event("task.waiting", task_id=task.id, waiting_on=waiting)
            elif draft.agent is None:
                plan.zadd.append([town._k(town.keys.backlog), draft.seq, task.id])
            else:
                task = town._assign_into(plan, task, draft.seq, draft.agent, creator)
            tasks.append(task)
        return plan, tasks

    # ----------------------------------------------------------------- finishing

    async def on_finish(self, plan: Plan, task: Task, target: TaskState, by: str) -> None:
        """Add to ``plan`` (the one that finishes ``task``) what follows for the tasks that
        depend on it: completed, each moves on when it waited for nothing else; failed or
        cancelled, each waiting one is cancelled, and the tasks waiting on those in turn."""
        town = self.town
        key = town._k(town.keys.task(task.id))
        async with wrap_redis_errors():
            raw = await town.redis.hget(town.keys.task(task.id), DEPENDENTS)
        plan.guard(key, DEPENDENTS, [raw or ""], "retry", "task changed")
        if not raw:
            return
        if target == TaskState.COMPLETED:
            await self._release(plan, task, _ids(raw))
        else:
            await self._cascade(plan, task, _ids(raw), target, by)

    async def _read_waiting(self, ids: Sequence[str]) -> list[tuple[Task, dict[str, str]]]:
        """The tasks among ``ids`` that are still ``waiting``, with their raw hashes."""
        town = self.town
        async with wrap_redis_errors(), town.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(town.keys.task(task_id))
            rows = await pipe.execute()
        return [(Task.from_redis(row), row) for row in rows
                if row and row.get("state") == TaskState.WAITING.value]

    async def _release(self, plan: Plan, finished: Task, ids: Sequence[str]) -> None:
        town = self.town
        for task, raw in await self._read_waiting(ids):
            key = town._k(town.keys.task(task.id))
            plan.guard(key, "state", [TaskState.WAITING.value], "retry", "a dependent changed")
            plan.guard(key, "waiting_on", [raw.get("waiting_on", "")], "retry", "a dependent changed")
            remaining = [t for t in task.waiting_on if t != finished.id]
            if remaining:
                plan.hset.append([key, {"waiting_on": json.dumps(remaining)}])
                continue
            seq = int(raw.get("seq", 0))
            plan.hset.append([key, {"waiting_on": "[]"}])
            plan.zrem.append([town._k(town.keys.tasks_in_state(TaskState.WAITING)), task.id])
            plan.event("task.ready", task_id=task.id, after=finished.id)
            agent = await town._maybe_agent_id(task.assigned_to) if task.assigned_to else None
            if agent is not None:
                town._assign_into(plan, task, seq, agent, task.created_by, gone_code="retry")
                continue
            plan.hset.append([key, {"state": TaskState.PENDING.value, "updated_at": str(now_ms())}])
            plan.hdel.append([key, ["assigned_to", "assignee"]])
            if task.assigned_to:  # its agent was pruned meanwhile
                town._unassign(plan, task, task.assigned_to)
            plan.zadd.append([town._k(town.keys.backlog), seq, task.id])

    async def _cascade(self, plan: Plan, root: Task, ids: Sequence[str], target: TaskState,
                       by: str) -> None:
        town = self.town
        caller = await town._maybe_agent(by)
        how = "failed" if target == TaskState.FAILED else "was cancelled"
        frontier: list[tuple[str, str, str]] = [(t, root.ref, how) for t in ids]
        done: set[str] = set()
        creators: dict[str, Agent | None] = {}
        while frontier:
            causes = {t: (ref, verb) for t, ref, verb in frontier}
            frontier = []
            waiting = await self._read_waiting([t for t in causes if t not in done])
            for task, raw in waiting:
                done.add(task.id)
                cause_ref, verb = causes[task.id]
                reason = f"task {task.ref} was cancelled because its dependency {cause_ref} {verb}"
                if task.created_by not in creators:
                    creators[task.created_by] = await town._maybe_agent(task.created_by)
                self._cancel(plan, task, raw, reason, caller, creators[task.created_by])
                frontier += [(t, task.ref, "was cancelled") for t in _ids(raw.get(DEPENDENTS))]

    def _cancel(self, plan: Plan, task: Task, raw: dict[str, str], reason: str,
                caller: Agent | None, creator: Agent | None) -> None:
        town = self.town
        key = town._k(town.keys.task(task.id))
        now = now_ms()
        plan.guard(key, "state", [TaskState.WAITING.value], "retry", "a dependent changed")
        plan.guard(key, DEPENDENTS, [raw.get(DEPENDENTS, "")], "retry", "a dependent changed")
        plan.hset.append([key, {
            "state": TaskState.CANCELLED.value, "error": reason, "updated_at": str(now),
            "completed_at": str(now), "decided_by": TaskDecider.DEPENDENCY.value, "waiting_on": "[]",
        }])
        seq = raw.get("seq", "0")
        plan.zrem.append([town._k(town.keys.tasks_in_state(TaskState.WAITING)), task.id])
        plan.zadd.append([town._k(town.keys.tasks_in_state(TaskState.CANCELLED)), seq, task.id])
        if task.assigned_to:
            plan.zrem.append([town._k(town.keys.open_tasks(task.assigned_to)), task.id])
            plan.zadd.append([town._k(town.keys.ended_tasks(task.assigned_to, TaskState.CANCELLED)), seq,
                              task.id])
        plan.finish.append(task.id)  # (the retention sweep expires it in time)
        plan.event("task.cancelled", task_id=task.id, by=caller.name if caller else None,
                   attempt=task.attempt, decided_by=TaskDecider.DEPENDENCY.value, reason=reason)
        if creator is not None and (caller is None or creator.id != caller.id):
            msg = Message(id=str(uuid.uuid4()), sender=caller.name if caller else creator.name,
                          to=creator.name, kind=MessageKind.TASK_CANCELLED, body=reason,
                          priority=task.priority, task_id=task.id)
            plan.notice(creator.id, msg.to_redis(), creator.name)
