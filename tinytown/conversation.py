"""The town's conversation: what agents said to each other, and each task's thread.

:class:`Conversation` is a service the :class:`~tinytown.town.Town` owns
(``town.conversation``), the one place that knows how to read the conversation back:

* ``history``: the event stream, newest events last, each with the message a
  ``message.sent`` event is about (its body, while the message is stored: acknowledged
  messages expire after a day) and the task an event is about; filtered by agent, task
  and kind with :class:`HistoryFilter`, the same filter ``follow`` applies to new events.
* ``thread``: a task and every message tied to it, by its ``task_id`` or as a reply
  (``reply_to``) to such a message — the Lua records both in the task's thread index
  when the message is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel
from redis.exceptions import RedisError

from tinytown.errors import Invalid, translate_redis_error, wrap_redis_errors
from tinytown.models import BROADCAST, Event, Message, MessageKind, Task, normalise_agent_name

if TYPE_CHECKING:
    from tinytown.town import Town

SCAN_PAGE = 500
MAX_HISTORY = 10_000
#: The families of event types (``task.completed``, ``agent.idle``, ``message.sent``, …).
EVENT_FAMILIES = ("agent", "message", "task", "token")


class HistoryEntry(Event):
    """An event with what it is about: ``message`` for ``message.sent`` (``None`` once the
    message expired), ``task`` (as it is now) for an event naming a task."""

    message: Message | None = None
    task: Task | None = None


class TaskThread(BaseModel):
    """A task and its conversation, oldest message first."""

    task: Task
    messages: list[Message]


@dataclass(frozen=True)
class HistoryFilter:
    """Which events a history or a follow shows.

    ``agent``: the agent acted, sent, received (a broadcast reaches everyone) or was named.
    ``task_id``: the event is about that task.  ``kind``: a message kind (``query``), an
    event type (``task.completed``) or a family of types (``task``, ``agent``).
    """

    agent: str | None = None
    task_id: str | None = None
    kind: str | None = None

    def matches(self, event: Event) -> bool:
        data = event.data
        if self.agent is not None:
            named = {str(data[k]) for k in ("agent", "by", "from", "to") if data.get(k)}
            if self.agent not in named and not (event.type == "message.sent" and BROADCAST in named):
                return False
        if self.task_id is not None and data.get("task_id") != self.task_id:
            return False
        if self.kind is not None:
            kind = self.kind
            if not (data.get("kind") == kind or event.type == kind or event.type.startswith(kind + ".")):
                return False
        return True


def known_kind(kind: str) -> bool:
    """Whether a history filter's ``kind`` can match anything: a message kind, an event
    family, or a type of a family (``task.failed``)."""
    family, dot, rest = kind.partition(".")
    if not dot:
        return kind in EVENT_FAMILIES or kind in set(MessageKind)
    return family in EVENT_FAMILIES and rest.replace("_", "").isalpha()


class Conversation:
    """Reading the conversation of one town (see the module docstring)."""

    def __init__(self, town: Town) -> None:
        self.town = town

    async def filter(
        self, *, agent: str | None = None, task: str | None = None, kind: str | None = None
    ) -> HistoryFilter:
        """A filter from what a user typed: an agent name, any task reference, a kind.

        Raises:
            NotFound / Invalid: the task reference names no task, or several.
            Invalid: the kind is neither a message kind, an event family nor an event
                type of one (a typo would otherwise match nothing, silently).
        """
        kind = kind.strip().lower() if kind else None
        if kind is not None and not known_kind(kind):
            raise Invalid(f"kind {kind!r} is neither a message kind ({', '.join(MessageKind)}), an "
                          f"event family ({', '.join(EVENT_FAMILIES)}) nor an event type (task.failed)")
        task_id = await self.town.resolve_task(task) if task is not None else None
        return HistoryFilter(
            agent=normalise_agent_name(agent) if agent is not None else None,
            task_id=task_id,
            kind=kind,
        )

    async def history(self, count: int = 20, flt: HistoryFilter | None = None) -> list[HistoryEntry]:
        """The newest ``count`` events that pass ``flt``, oldest first, with their messages
        and tasks.  Scans back through the stream (at most its ~10 000 events)."""
        flt = flt or HistoryFilter()
        found: list[Event] = []
        before: str | None = None
        scanned = 0
        while len(found) < count and scanned < MAX_HISTORY:
            page = await self.town.channel.events_before(before, SCAN_PAGE if flt != HistoryFilter()
                                                         else count - len(found))
            if not page:
                break
            scanned += len(page)
            before = page[-1].id
            found += [e for e in page if flt.matches(e)][: count - len(found)]
        return await self.enrich(list(reversed(found)))

    async def follow(
        self, after: str, flt: HistoryFilter | None = None, block_s: float = 5.0
    ) -> AsyncIterator[HistoryEntry]:
        """New events after id ``after`` that pass ``flt``, as they are appended, forever."""
        flt = flt or HistoryFilter()
        async for event in self.town.follow(after=after, block_s=block_s):
            if flt.matches(event):
                yield (await self.enrich([event]))[0]

    async def enrich(self, events: Sequence[Event]) -> list[HistoryEntry]:
        """The events with the messages and tasks they are about (two pipelined reads)."""
        message_ids = {
            e.id: str(e.data.get("copy") or e.data.get("id"))
            for e in events if e.type == "message.sent" and e.data.get("id")
        }
        task_ids = list(dict.fromkeys(str(e.data["task_id"]) for e in events if e.data.get("task_id")))
        keys = self.town.keys
        async with wrap_redis_errors(), self.town.redis.pipeline(transaction=False) as pipe:
            for mid in message_ids.values():
                pipe.get(keys.message(mid))
            for tid in task_ids:
                pipe.hgetall(keys.task(tid))
            rows = await pipe.execute(raise_on_error=False)
        for row in rows[len(message_ids):]:
            if isinstance(row, Exception):
                raise translate_redis_error(row) if isinstance(row, RedisError) else row
        messages: dict[str, Message] = {}
        for mid, raw in zip(message_ids.values(), rows[: len(message_ids)], strict=True):
            message = await self.town.channel.decode(mid, raw)
            if message is not None:
                messages[mid] = message
        loaded = [Task.from_redis(row) for row in rows[len(message_ids):] if row]
        tasks = {t.id: t for t in await self.town._name_assignees(loaded)}
        return [
            HistoryEntry(
                **e.model_dump(),
                message=messages.get(message_ids.get(e.id, "")),
                task=tasks.get(str(e.data.get("task_id") or "")),
            )
            for e in events
        ]

    async def thread(self, task: str) -> TaskThread:
        """A task (any reference) with every message of its thread, oldest first.

        Raises:
            NotFound: no such task.
            Invalid: an ambiguous reference.
        """
        found = await self.town.get_task(task)
        async with wrap_redis_errors():
            ids = await self.town.redis.zrange(self.town.keys.task_messages(found.id), 0, -1)
        return TaskThread(task=found, messages=await self.town.channel.load(ids))
