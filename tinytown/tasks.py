"""Tasks: creation, assignment, the backlog, and the state machine of SPEC 4.

:class:`TaskOps` is part of :class:`tinytown.town.Town` (a mixin, so there is one service
object).  Every change reads the task, validates in Python (legal move, caller, attempt,
sizes), then writes with a guarded :class:`~tinytown.channel.Plan`: if the task changed
between the read and the write, the guard fails and the whole step is read and checked
again.  A late report from a previous assignee is a ``conflict``; a stranger's is
``forbidden``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from tinytown.channel import Plan
from tinytown.errors import Conflict, Forbidden, Invalid, NotFound, wrap_redis_errors
from tinytown.keys import former_field
from tinytown.models import (
    BROADCAST,
    CONDUCTOR,
    TASK_MOVES,
    Agent,
    AgentState,
    Message,
    MessageKind,
    Priority,
    Task,
    TaskDecider,
    TaskPage,
    TaskState,
    normalise_agent_name,
    now_ms,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tinytown.channel import Channel
    from tinytown.config import TownConfig
    from tinytown.dependencies import Dependencies
    from tinytown.handback import Handback
    from tinytown.keys import Keys

E = TypeVar("E", bound=Enum)
T = TypeVar("T")

MAX_TAGS = 20
MAX_TAG_LEN = 64
MAX_PAGE = 500
OPEN_SLICE = 1000
MIN_PREFIX = 4
MAX_CANDIDATES = 5
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PREFIX_RE = re.compile(r"^[0-9a-f][0-9a-f-]*$")
REFERENCE_FORMS = "#N, N, the task id, or at least 4 first characters of the id"

NOTICE_KIND = {
    TaskState.COMPLETED: MessageKind.TASK_DONE,
    TaskState.FAILED: MessageKind.TASK_FAILED,
    TaskState.CANCELLED: MessageKind.TASK_CANCELLED,
}


def parse_enum(enum: type[E], value: Any, what: str) -> E:
    """``enum(value)``, or :class:`Invalid` listing the allowed values."""
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum)
        raise Invalid(f"{what} must be one of {choices}, not {value!r}") from None


def _decider(task: Task, caller: Agent) -> TaskDecider:
    """Who decided a task's end when the caller does not say: its assignee reporting, the
    conductor, or (cancelling) its creator."""
    if task.assigned_to == caller.id:
        return TaskDecider.AGENT
    if caller.name == CONDUCTOR:
        return TaskDecider.CONDUCTOR
    return TaskDecider.CREATOR


def check_size(text: str, limit: int, what: str) -> None:
    size = len(text.encode("utf-8"))
    if size > limit:
        raise Invalid(f"{what} is {size} bytes; the limit is {limit} bytes. Shorten it.")


class TaskOps:
    """The task half of :class:`~tinytown.town.Town`."""

    if TYPE_CHECKING:
        redis: Redis
        keys: Keys
        channel: Channel
        config: TownConfig

        @property
        def handback(self) -> Handback: ...
        @property
        def dependencies(self) -> Dependencies: ...
        async def get_agent(self, name: str) -> Agent: ...
        async def _agent_by_id(self, agent_id: str) -> Agent: ...
        def _k(self, key: str) -> str: ...
        async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T: ...

    # ----------------------------------------------------------------- reading

    async def resolve_task(self, ref: str) -> str:
        """The id of the task ``ref`` names: ``#N`` or ``N`` (its per-town number, one hash
        lookup), its id, or a unique prefix of the id (at least 4 characters).  Bare 4+ digits
        are also tried as an id prefix (ambiguous when they are both).  Every face passes what
        the user typed through here (the Town methods that take a task call it), so each
        accepts every form.  A full id is returned as is, without a round trip.

        Raises:
            NotFound: no task has that number or id prefix.
            Invalid: the prefix fits several tasks (they are named).
        """
        text = ref.strip().lower()
        if _UUID_RE.match(text):
            return text
        digits = text.removeprefix("#")
        numbered: str | None = None
        if digits.isascii() and digits.isdigit():
            async with wrap_redis_errors():
                found = await self.redis.hget(self.keys.task_numbers, str(int(digits)))
            numbered = None if found is None else str(found)
            if text.startswith("#") or len(digits) < MIN_PREFIX:
                if numbered is not None:
                    return numbered
                raise NotFound(f"no task #{int(digits)}; `list_tasks` / `tt tasks` show the tasks")
        if len(text) < MIN_PREFIX or not _PREFIX_RE.match(text):
            raise NotFound(
                f"no task {ref!r}; name a task by {REFERENCE_FORMS} (`tt tasks` lists them)"
            )
        matches: list[str] = []
        async with wrap_redis_errors():
            async for member, _score in self.redis.zscan_iter(self.keys.tasks, match=text + "*",
                                                               count=1000):
                matches.append(str(member))
        if numbered is not None:
            # 4+ bare digits are both a number and an id prefix (ids are hex): ambiguous only
            # when some other task's id starts with them
            if not [m for m in matches if m != numbered]:
                return numbered
            matches = [numbered, *(m for m in matches if m != numbered)]
        if not matches:
            raise NotFound(f"no task id starts with {text!r}; `list_tasks` / `tt tasks` show the tasks")
        if len(matches) > 1:
            async with wrap_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
                for task_id in matches[:MAX_CANDIDATES]:
                    pipe.hget(self.keys.task(task_id), "number")
                numbers = await pipe.execute()
            named = ", ".join(
                f"#{n} ({t})" if n else t for t, n in zip(matches[:MAX_CANDIDATES], numbers, strict=True)
            )
            more = f" and {len(matches) - MAX_CANDIDATES} more" if len(matches) > MAX_CANDIDATES else ""
            raise Invalid(f"{ref!r} fits {len(matches)} tasks: {named}{more}; give more of the id or #N")
        return matches[0]

    async def task_numbers(self, task_ids: Sequence[str]) -> dict[str, int]:
        """Task id -> number for the given ids (one pipelined read): how a view shows ``#N``
        for a task it knows by id (an agent's current task, an event, a message)."""
        wanted = list(dict.fromkeys(t for t in task_ids if t))
        if not wanted:
            return {}
        async with wrap_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            for task_id in wanted:
                pipe.hget(self.keys.task(task_id), "number")
            numbers = await pipe.execute()
        return {t: int(n) for t, n in zip(wanted, numbers, strict=True) if n}

    async def _read_task(self, task_id: str) -> tuple[Task, int]:
        task, seq, _message = await self._read_task_message(task_id)
        return task, seq

    async def _read_task_message(self, task_id: str) -> tuple[Task, int, str | None]:
        """The task, its creation seq, and the id of the ``task`` message that carries its
        current attempt (internal field ``msg_id``; None when it has none, e.g. claimed)."""
        async with wrap_redis_errors():
            data = await self.redis.hgetall(self.keys.task(task_id))
        if not data:
            raise NotFound(f"no task {task_id!r}; `list_tasks` / `tt tasks` show the task ids")
        task = (await self._name_assignees([Task.from_redis(data)]))[0]
        return task, int(data.get("seq", 0)), data.get("msg_id") or None

    async def _name_assignees(self, tasks: list[Task]) -> list[Task]:
        """Fill ``assignee`` (the name) where a record has only the id (written by a path
        that does not store the name)."""
        missing = [t for t in tasks if t.assigned_to and not t.assignee]
        if not missing:
            return tasks
        async with wrap_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            for task in missing:
                pipe.hget(self.keys.agent(task.assigned_to or ""), "name")
            names = await pipe.execute()
        found = {t.id: n for t, n in zip(missing, names, strict=True) if n}
        return [t.model_copy(update={"assignee": found[t.id]}) if t.id in found else t for t in tasks]

    async def get_task(self, task_id: str) -> Task:
        """One task by any reference (see :meth:`resolve_task`).

        Raises:
            NotFound: no such task.
            Invalid: an ambiguous id prefix.
        """
        return (await self._read_task(await self.resolve_task(task_id)))[0]

    async def list_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        agent: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        oldest_first: bool = False,
    ) -> TaskPage:
        """A page of tasks, newest first (``oldest_first`` for backlog order), served by an
        index: by agent, else by state, else all.  Pass ``next_cursor`` back for the next page.

        Raises:
            Invalid: a bad state, limit or cursor.
        """
        wanted = parse_enum(TaskState, state, "state") if state is not None else None
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
        agent_id: str | None = None
        if agent is not None:
            agent_id = (await self.get_agent(agent)).id
            if wanted is not None and wanted.is_final:
                key = self.keys.ended_tasks(agent_id, wanted)
            elif wanted is not None:
                key = self.keys.open_tasks(agent_id)
            else:
                key = self.keys.tasks_of_agent(agent_id)
        elif wanted is not None:
            key = self.keys.tasks_in_state(wanted)
        else:
            key = self.keys.tasks
        try:
            bound = int(cursor) if cursor else None
        except ValueError:
            raise Invalid(f"cursor {cursor!r} is not one this listing returned") from None
        # Collect one match beyond the page: a cursor is returned only when more follow
        # (a last page that happens to be full must not point at an empty one).
        found: list[tuple[Task, int]] = []
        exhausted = False
        while not exhausted and len(found) <= limit:
            async with wrap_redis_errors():
                if oldest_first:
                    lo = f"({bound}" if bound is not None else "-inf"
                    rows = await self.redis.zrange(key, lo, "+inf", byscore=True, offset=0,
                                                   num=limit + 1, withscores=True)
                else:
                    hi = f"({bound}" if bound is not None else "+inf"
                    rows = await self.redis.zrange(key, hi, "-inf", byscore=True, desc=True,
                                                   offset=0, num=limit + 1, withscores=True)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for task_id, _score in rows:
                        pipe.hgetall(self.keys.task(task_id))
                    datas = await pipe.execute()
            exhausted = len(rows) <= limit
            gone = [str(task_id) for (task_id, _score), data in zip(rows, datas, strict=True)
                    if not data]
            if gone:  # ids are never reused: an id whose task is gone is dropped for good
                await self._drop_from_index(key, gone)
            for (_task_id, score), data in zip(rows, datas, strict=True):
                bound = int(score)
                if not data:
                    continue
                task = Task.from_redis(data)
                if agent_id is not None and task.assigned_to != agent_id:
                    continue
                if wanted is not None and task.state != wanted:
                    continue
                found.append((task, bound))
                if len(found) > limit:
                    break
        page = found[:limit]
        more = len(found) > limit
        listed = await self._name_assignees([t for t, _ in page])
        return TaskPage(tasks=listed, next_cursor=str(page[-1][1]) if more else None)

    async def _drop_from_index(self, key: str, task_ids: Sequence[str]) -> None:
        """Take ids whose task no longer exists out of an index (one left by a town written
        before reassignment cleaned its former agent's indexes, whose task then expired)."""
        plan = Plan()
        plan.zrem += [[self._k(key), task_id] for task_id in task_ids]
        await self.channel.apply(plan)

    # ----------------------------------------------------------------- creating

    async def assign(
        self,
        description: str,
        *,
        agent: str | None = None,
        by: str = CONDUCTOR,
        tags: Sequence[str] | None = None,
        priority: Priority | str = Priority.NORMAL,
        parent_id: str | None = None,
        depends_on: Sequence[str] | None = None,
    ) -> Task:
        """Create a task.  With ``agent`` it is ``assigned`` and the agent gets a ``task``
        message (at the task's priority) carrying the task id; without, it waits in the
        backlog (``pending``) for :meth:`claim`.  With ``depends_on`` (task references) it is
        ``waiting`` until those tasks completed, then moves on as described
        (:mod:`tinytown.dependencies`).

        Raises:
            Invalid: empty or oversized description, bad tags or priority, a full inbox, a
                dependency that failed or was cancelled.
            NotFound: unknown agent, creator, parent task or dependency.
        """
        priority = parse_enum(Priority, priority, "priority")
        if not description.strip():
            raise Invalid("the task description is empty; say what should be done")
        check_size(description, self.config.limits.max_description_bytes, "the task description")
        tag_list = [str(t) for t in (tags or [])]
        if len(tag_list) > MAX_TAGS or any(not t or len(t) > MAX_TAG_LEN for t in tag_list):
            raise Invalid(f"tags: at most {MAX_TAGS}, each 1-{MAX_TAG_LEN} characters")
        creator = await self.get_agent(by)
        assignee = None
        if agent is not None:
            if normalise_agent_name(agent) == BROADCAST:
                raise Invalid("a task goes to one agent, not 'all'; leave the agent out for the backlog")
            assignee = await self.get_agent(agent)
        if parent_id is not None:
            parent_id = (await self.get_task(parent_id)).id
        waits_for = await self.dependencies.resolve(depends_on) if depends_on else []
        async with wrap_redis_errors():
            seq = int(await self.redis.incr(self.keys.seq))
        task = Task(
            id=str(uuid.uuid4()), description=description, created_by=creator.name,
            tags=tag_list, parent_id=parent_id, priority=priority,
        )
        if waits_for:
            from tinytown.dependencies import Draft

            draft = Draft(task, seq, assignee, external=waits_for)
            return (await self.dependencies.create([draft], creator.name))[0]
        plan = Plan()
        task_key = self._k(self.keys.task(task.id))
        plan.hset.append([task_key, {**task.to_redis(), "seq": str(seq)}])
        plan.number.append([self._k(self.keys.task_number), self._k(self.keys.task_numbers), task_key,
                            task.id])
        plan.zadd.append([self._k(self.keys.tasks), seq, task.id])
        plan.event("task.created", task_id=task.id, by=creator.name, priority=priority.value)
        if assignee is None:
            plan.zadd.append([self._k(self.keys.backlog), seq, task.id])
        else:
            task = self._assign_into(plan, task, seq, assignee, creator.name)
        numbers = await self.channel.apply(plan)
        return task.model_copy(update={"number": numbers[0]})

    def _assign_into(self, plan: Plan, task: Task, seq: int, agent: Agent, sender: str, *,
                     gone_code: str = "not_found") -> Task:
        """Add to ``plan`` the writes that give ``task`` to ``agent`` (a new attempt);
        the plan fails with ``gone_code`` if the agent was removed meanwhile."""
        now = now_ms()
        if task.assigned_to and task.assigned_to != agent.id:
            self._unassign(plan, task, task.assigned_to)
        task = task.model_copy(update={
            "state": TaskState.ASSIGNED, "assigned_to": agent.id, "assignee": agent.name,
            "attempt": task.attempt + 1, "updated_at": now, "started_at": None,
        })
        task_key = self._k(self.keys.task(task.id))
        plan.guard(self._k(self.keys.agent(agent.id)), "name", [agent.name], gone_code,
                   f"agent {agent.name} was removed")
        message_id = str(uuid.uuid4())
        plan.hset.append([task_key, {"state": task.state.value, "assigned_to": agent.id,
                                     "assignee": agent.name, "attempt": str(task.attempt),
                                     "updated_at": str(now), "msg_id": message_id}])
        plan.hdel.append([task_key, ["started_at", "held_by"]])
        plan.zadd.append([self._k(self.keys.tasks_in_state(TaskState.ASSIGNED)), seq, task.id])
        plan.zadd.append([self._k(self.keys.tasks_of_agent(agent.id)), seq, task.id])
        plan.zadd.append([self._k(self.keys.open_tasks(agent.id)), seq, task.id])
        message = Message(
            id=message_id, sender=sender, to=agent.name, kind=MessageKind.TASK,
            body=task.description, priority=task.priority, task_id=task.id,
        )
        plan.send.append([agent.id, {**message.to_redis(), "attempt": str(task.attempt)}, agent.name])
        plan.event("task.assigned", task_id=task.id, agent=agent.name, attempt=task.attempt)
        plan.event("message.sent", id=message.id, to=agent.name, kind="task", task_id=task.id,
                   **{"from": sender})
        return task

    def _unassign(self, plan: Plan, task: Task, agent_id: str) -> None:
        """Add to ``plan`` the writes that take ``task`` out of ``agent_id``'s indexes (it is
        given to another agent or back to the backlog): an agent's indexes name only the tasks
        that are its now, so retention, which cleans the last assignee's, leaves none behind.
        The task remembers the agent (field ``former:<agent id>`` = the attempt it lost), so
        the agent's late report stays a ``conflict``."""
        plan.zrem.append([self._k(self.keys.tasks_of_agent(agent_id)), task.id])
        plan.zrem.append([self._k(self.keys.open_tasks(agent_id)), task.id])
        plan.hset.append([self._k(self.keys.task(task.id)),
                          {former_field(agent_id): str(task.attempt)}])

    async def claim(self, agent: str, task_id: str | None = None, *, session: str | None = None) -> Task:
        """Take a backlog task (``task_id``, or the oldest) for ``agent``; it is ``running``.

        Atomic: with many claimers at once each task goes to exactly one of them.  ``session``
        (an MCP session claiming for itself) holds the task; if that session dies, the task
        comes back to the agent's next session.  A claim from outside any session (``tt
        backlog claim --agent NAME``) for a spawned agent also sends the agent a ``task``
        message: its runner works only on what it receives.

        Raises:
            NotFound: the backlog is empty, or no such task.
            Conflict: the task is not in the backlog (anymore), or ``session`` was taken over.
        """
        claimer = await self.get_agent(agent)
        if task_id is not None:
            task_id = await self.resolve_task(task_id)
        claimed = await self.channel.claim(claimer.id, task_id, session)
        if session is None and claimer.cli is not None:
            await self.handback.give_back(claimer.name, [claimed])
        return await self.get_task(claimed)

    # ----------------------------------------------------------------- finishing

    async def complete_task(
        self, task_id: str, result: str, *, by: str, attempt: int | None = None,
        decided_by: TaskDecider | None = None,
    ) -> Task:
        """Mark a task ``completed`` with ``result``; the creator gets a ``task_done`` message.

        ``decided_by`` is recorded with the task; by default it follows from ``by`` (the
        assignee: ``agent``; the conductor: ``conductor``).  The runner passes ``runner`` or
        ``exit_code`` when it concludes for a CLI that did not report.

        Raises:
            Forbidden: ``by`` is neither the assignee nor the conductor.
            Conflict: the task is not assigned/running, or ``attempt`` is not the current one
                (a late report from a previous assignee).
            Invalid: result over the limit.
        """
        check_size(result, self.config.limits.max_result_bytes, "the result")
        return await self._finish(task_id, TaskState.COMPLETED, result, by, attempt, decided_by)

    async def fail_task(
        self, task_id: str, error: str, *, by: str, attempt: int | None = None,
        decided_by: TaskDecider | None = None,
    ) -> Task:
        """Mark a task ``failed`` with ``error``; the creator gets a ``task_failed`` message.
        ``decided_by`` as for :meth:`complete_task`."""
        check_size(error, self.config.limits.max_result_bytes, "the error")
        return await self._finish(task_id, TaskState.FAILED, error, by, attempt, decided_by)

    async def cancel_task(self, task_id: str, reason: str | None = None, *, by: str) -> Task:
        """Cancel a task that is not finished; its creator and assignee are told.

        The conductor, the creator and the assignee may cancel.
        """
        check_size(reason or "", self.config.limits.max_result_bytes, "the reason")
        return await self._finish(task_id, TaskState.CANCELLED, reason, by, None)

    async def _finish(
        self, task_id: str, target: TaskState, text: str | None, by: str, attempt: int | None,
        decided_by: TaskDecider | None = None,
    ) -> Task:
        caller = await self.get_agent(by)
        task_id = await self.resolve_task(task_id)

        async def once() -> Task:
            task, seq, message_id = await self._read_task_message(task_id)
            await self._authorise(task, caller, target)
            if target not in TASK_MOVES[task.state]:
                raise Conflict(
                    f"task {task.ref} is {task.state.value}; it cannot become {target.value}"
                )
            if attempt is not None and attempt != task.attempt:
                raise Conflict(
                    f"task {task.ref} is on attempt {task.attempt}; this report is for attempt "
                    f"{attempt} and was not recorded"
                )
            now = now_ms()
            plan = Plan()
            task_key = self._k(self.keys.task(task.id))
            plan.guard(task_key, "state", [task.state.value], "retry", "task changed")
            plan.guard(task_key, "attempt", [str(task.attempt)], "retry", "task changed")
            decider = decided_by or _decider(task, caller)
            fields: dict[str, Any] = {"state": target.value, "updated_at": now, "completed_at": now,
                                      "decided_by": decider.value}
            if text is not None:
                fields["error" if target != TaskState.COMPLETED else "result"] = text
            if task.state == TaskState.WAITING:  # cancelled while waiting: it waits no more
                fields["waiting_on"] = "[]"
            plan.hset.append([task_key, {k: str(v) for k, v in fields.items()}])
            plan.zrem.append([self._k(self.keys.tasks_in_state(task.state)), task.id])
            plan.zrem.append([self._k(self.keys.backlog), task.id])
            plan.zadd.append([self._k(self.keys.tasks_in_state(target)), seq, task.id])
            if task.assigned_to:
                plan.zrem.append([self._k(self.keys.open_tasks(task.assigned_to)), task.id])
                plan.zadd.append([self._k(self.keys.ended_tasks(task.assigned_to, target)), seq, task.id])
            if task.assigned_to and message_id:
                # wherever its message is (in flight, or queued for a later session), it is
                # acknowledged: a finished or cancelled task is never delivered again
                plan.acknowledge(task.assigned_to, message_id, task.priority.value)
            plan.hdel.append([task_key, ["held_by"]])
            updated = Task.from_redis({**task.to_redis(), **{k: str(v) for k, v in fields.items()}})
            notify: dict[str, Agent] = {}
            creator = await self._maybe_agent(task.created_by)
            if creator is not None:
                notify[creator.id] = creator
            if task.assigned_to and task.state != TaskState.WAITING:  # (a waiting one was never sent)
                assignee = await self._maybe_agent_id(task.assigned_to)
                if assignee is not None:
                    notify[assignee.id] = assignee
                    self._release(plan, assignee, task, completed=target == TaskState.COMPLETED)
            notify.pop(caller.id, None)
            kind = NOTICE_KIND[target]
            body = text or f"task {task.id} was {target.value} by {caller.name}"
            for agent in notify.values():
                msg = Message(id=str(uuid.uuid4()), sender=caller.name, to=agent.name, kind=kind,
                              body=body, priority=task.priority, task_id=task.id)
                plan.notice(agent.id, msg.to_redis(), agent.name)
            plan.finish.append(task.id)
            plan.event(f"task.{target.value}", task_id=task.id, by=caller.name, attempt=task.attempt,
                       decided_by=decider.value)
            await self.dependencies.on_finish(plan, task, target, caller.name)
            await self.channel.apply(plan)
            return updated

        finished = await self._retrying(once)
        if finished.assigned_to:
            await self._ack_assignment(finished.assigned_to, finished.id)
        return finished

    async def _ack_assignment(self, agent_id: str, task_id: str) -> None:
        """Acknowledge the assignee's in-flight ``task`` message for a finished task (SPEC 3:
        task_done/task_failed acknowledge the task they carry; a cancelled task needs no
        delivery either), so a session that dies after reporting does not get the finished
        task delivered again."""
        carried = [
            m.id for m in await self.channel.in_flight(agent_id)
            if m.kind == MessageKind.TASK and m.task_id == task_id
        ]
        await self.channel.ack(agent_id, carried)

    def _release(self, plan: Plan, agent: Agent, task: Task, *, completed: bool) -> None:
        """The agent is no longer on ``task``: clear ``current_task``, count a completion."""
        agent_key = self._k(self.keys.agent(agent.id))
        if completed:
            plan.hincr.append([agent_key, "tasks_completed", 1])
        if agent.current_task == task.id:
            plan.guard(agent_key, "current_task", [task.id], "retry", "agent changed")
            plan.hdel.append([agent_key, ["current_task"]])
            if agent.state == AgentState.WORKING:
                plan.hset.append([agent_key, {"state": AgentState.IDLE.value}])

    async def _authorise(self, task: Task, caller: Agent, target: TaskState) -> None:
        if caller.name == CONDUCTOR or task.assigned_to == caller.id:
            return
        if target == TaskState.CANCELLED and task.created_by == caller.name:
            return
        async with wrap_redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.task(task.id), former_field(caller.id))
            # (an index written before reassignment took the task out of it)
            pipe.zscore(self.keys.tasks_of_agent(caller.id), task.id)
            former, indexed = await pipe.execute()
        if former is not None or indexed is not None:
            raise Conflict(
                f"task {task.ref} was reassigned (attempt {task.attempt}); your report is late "
                "and was not recorded"
            )
        owner = "nobody (it is in the backlog; claim it first)"
        if task.assigned_to:
            holder = await self._maybe_agent_id(task.assigned_to)
            owner = holder.name if holder else "an agent that is gone"
        raise Forbidden(
            f"task {task.ref} is assigned to {owner}, not to {caller.name}; only its assignee "
            "or the conductor can finish it"
        )

    async def _maybe_agent(self, name: str) -> Agent | None:
        try:
            return await self.get_agent(name)
        except NotFound:
            return None

    async def _maybe_agent_id(self, agent_id: str) -> Agent | None:
        try:
            return await self._agent_by_id(agent_id)
        except NotFound:
            return None

    # ----------------------------------------------------------------- reclaiming

    async def open_task_ids(self, agent_id: str) -> list[str]:
        """Ids of every unfinished task of the agent (its ``tasks:open`` index, oldest
        first), read in slices: however old a task, reclaim and hand-back see it."""
        ids: list[str] = []
        key = self.keys.open_tasks(agent_id)
        async with wrap_redis_errors():
            while True:
                chunk = await self.redis.zrange(key, len(ids), len(ids) + OPEN_SLICE - 1)
                ids += [str(i) for i in chunk]
                if len(chunk) < OPEN_SLICE:
                    return list(dict.fromkeys(ids))

    async def reclaim_tasks(self, agent: str, to: str | None = None) -> list[Task]:
        """Take an agent's unfinished tasks back: to the backlog, or to agent ``to``.

        Used by ``recover`` for dead agents.  Each reassignment is a new attempt, so a late
        report from the dead agent is refused.
        """
        holder = await self.get_agent(agent)
        target = await self.get_agent(to) if to is not None else None
        moved: list[Task] = []
        for task_id in await self.open_task_ids(holder.id):

            async def once(task_id: str = task_id) -> Task | None:
                plan = Plan()
                plan.zrem.append([self._k(self.keys.open_tasks(holder.id)), task_id])
                task_key = self._k(self.keys.task(task_id))
                try:
                    task, seq, message_id = await self._read_task_message(task_id)
                except NotFound:  # expired meanwhile: only its index entry is left
                    await self.channel.apply(plan)
                    return None
                if task.state == TaskState.WAITING and task.assigned_to == holder.id:
                    return None  # not started: it stays the agent's (tinytown.dependencies)
                if task.state not in (TaskState.ASSIGNED, TaskState.RUNNING) or (
                    task.assigned_to != holder.id
                ):
                    # a stale entry (written by a migration while the task moved): drop it
                    plan.guard(task_key, "state", [task.state.value], "retry", "task changed")
                    plan.guard(task_key, "assigned_to", [task.assigned_to or ""], "retry",
                               "task changed")
                    await self.channel.apply(plan)
                    return None
                plan.guard(task_key, "state", [task.state.value], "retry", "task changed")
                plan.guard(task_key, "attempt", [str(task.attempt)], "retry", "task changed")
                plan.zrem.append([self._k(self.keys.tasks_in_state(task.state)), task.id])
                current = await self._agent_by_id(holder.id)
                self._release(plan, current, task, completed=False)
                if message_id:
                    plan.acknowledge(holder.id, message_id, task.priority.value)
                if target is None:
                    self._unassign(plan, task, holder.id)
                    now = now_ms()
                    plan.hset.append([task_key, {"state": TaskState.PENDING.value, "updated_at": str(now)}])
                    plan.hdel.append([task_key, ["assigned_to", "assignee", "started_at", "held_by",
                                                 "msg_id"]])
                    plan.zadd.append([self._k(self.keys.backlog), seq, task.id])
                    plan.event("task.reclaimed", task_id=task.id, agent=holder.name)
                    result = task.model_copy(update={"state": TaskState.PENDING, "assigned_to": None,
                                                     "assignee": None, "started_at": None,
                                                     "updated_at": now})
                else:
                    result = self._assign_into(plan, task, seq, target, CONDUCTOR)
                await self.channel.apply(plan)
                return result

            done = await self._retrying(once)
            if done is not None:
                moved.append(done)
        return moved
