"""Giving an agent back the tasks a session of it held and lost (issue 8, item 4).

A task an agent took (an assignment it received, or a backlog task it claimed) is *held* by
the session that took it: the task records that session in the internal field ``held_by``
(set by the receive and claim scripts) and the id of the ``task`` message carrying its
current attempt in ``msg_id``.  When that session dies, nobody works on the task although it
stays ``running``.  :class:`Handback` makes sure such a task reaches the agent again: when
no live ``task`` message carries it (none queued, none in flight), a new one is sent, so the
agent's next ``receive`` (or its runner's next round) gets it.

It runs when a session takes the mailbox over (the previous session is gone, so every task
of the agent without a live message), after each runner round (a task the round's CLI
claimed and left unfinished), and in ``tt recover`` for live agents (only tasks held by a
session other than the agent's current one).  Tasks of an agent that is gone go back to the
backlog instead (:meth:`~tinytown.tasks.TaskOps.reclaim_tasks`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tinytown.channel import Plan
from tinytown.errors import Conflict, NotFound, wrap_redis_errors
from tinytown.models import Message, MessageKind, Task, TaskState

if TYPE_CHECKING:
    from tinytown.town import Town

LIVE = (TaskState.ASSIGNED.value, TaskState.RUNNING.value)


class Handback:
    """The tasks-back-to-their-agent service of a :class:`~tinytown.town.Town`."""

    def __init__(self, town: Town) -> None:
        self.town = town

    async def orphans(self, agent: str, *, held_elsewhere_only: bool = False) -> list[str]:
        """Ids of the agent's ``assigned``/``running`` tasks (this attempt is the agent's), all
        of them or only those held by a session other than its current one."""
        town = self.town
        holder = await town.get_agent(agent)
        async with wrap_redis_errors():
            ids = await town.open_task_ids(holder.id)
            async with town.redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hmget(town.keys.task(task_id), ["state", "assigned_to", "held_by"])
                rows = await pipe.execute()
        found = []
        for task_id, (state, assigned_to, held_by) in zip(ids, rows, strict=True):
            if state not in LIVE or assigned_to != holder.id:
                continue
            if held_elsewhere_only and held_by == holder.session:
                continue
            found.append(str(task_id))
        return found

    async def give_back(self, agent: str, task_ids: Sequence[str] | None = None, *,
                        held_elsewhere_only: bool = False) -> list[Task]:
        """Send the agent a ``task`` message for each of its live tasks (``task_ids``, or
        :meth:`orphans`) that no live message carries.  Returns the tasks given back."""
        if task_ids is None:
            task_ids = await self.orphans(agent, held_elsewhere_only=held_elsewhere_only)
        given = []
        for task_id in task_ids:
            task = await self.town._retrying(lambda t=task_id: self._give_back_one(agent, t))
            if task is not None:
                given.append(task)
        return given

    async def _message_live(self, agent_id: str, message_id: str, priority: str) -> bool:
        town = self.town
        async with wrap_redis_errors():
            async with town.redis.pipeline(transaction=False) as pipe:
                pipe.zscore(town.keys.inflight(agent_id), message_id)
                pipe.lpos(town.keys.inbox(agent_id, priority), message_id)
                in_flight, queued = await pipe.execute()
        return in_flight is not None or queued is not None

    async def _give_back_one(self, agent: str, task_id: str) -> Task | None:
        town = self.town
        holder = await town.get_agent(agent)
        try:
            task, _seq, message_id = await town._read_task_message(task_id)
        except NotFound:
            return None
        if task.state.value not in LIVE or task.assigned_to != holder.id:
            return None
        priority = task.priority.value
        if message_id and await self._message_live(holder.id, message_id, priority):
            return None
        message = Message(
            id=str(uuid.uuid4()), sender=task.created_by, to=holder.name, kind=MessageKind.TASK,
            body=task.description, priority=task.priority, task_id=task.id,
        )
        plan = Plan()
        task_key = town._k(town.keys.task(task.id))
        plan.guard(task_key, "state", [task.state.value], "retry", "task changed")
        plan.guard(task_key, "attempt", [str(task.attempt)], "retry", "task changed")
        plan.guard(task_key, "msg_id", [message_id or ""], "retry", "task changed")
        plan.guard(town._k(town.keys.agent(holder.id)), "session", [holder.session or ""], "retry",
                   "agent changed")
        plan.hset.append([task_key, {"msg_id": message.id}])
        plan.send.append([holder.id, {**message.to_redis(), "attempt": str(task.attempt)},
                          holder.name])
        plan.event("task.given_back", task_id=task.id, agent=holder.name, attempt=task.attempt)
        try:
            await town.channel.apply(plan)
        except Conflict:
            return None
        return task
