"""Pure data: the records Tinytown stores and returns.  No I/O here.

Records are stored in Redis hashes (one field per attribute, ``None`` as an absent
field); :meth:`to_redis` / :meth:`from_redis` are the only place that knows that shape.
"""

from __future__ import annotations

import json
import os
import re
import time
from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)

AGENT_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
TOWN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
PRESET_NAME_RE = AGENT_NAME_RE
# Ids of agents, tasks, messages and sessions (uuids, hex): they become parts of Redis keys.
# A broadcast copy's id is "<uuid>.<agent name>".
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
AGENT_NAME_RULE = "1-32 characters a-z, 0-9, '_' or '-', starting with a letter"

CONDUCTOR = "conductor"
BROADCAST = "all"
RESERVED_NAMES = frozenset({CONDUCTOR, "supervisor", BROADCAST})
NAME_ALIASES = {"supervisor": CONDUCTOR}
MAX_RECEIVE_TIMEOUT_S = 300.0
"""The longest a receive may wait; MCP client configs set their tool timeouts above it."""
MAX_AGENT_PAGE = 500
DEFAULT_AGENT_PAGE = 100
"""Agents per page of ``list_agents`` / ``town_status`` (:mod:`tinytown.roster`)."""


_TEST_CLOCK_SKEW_MS = int(float(os.environ.get("TINYTOWN_TEST_CLOCK_SKEW_S") or 0) * 1000)
"""Set only by the fault tests, to run a process whose clock is off: nothing that decides
liveness, staleness or redelivery may depend on this machine's clock (Redis's is used)."""


def now_ms() -> int:
    """This machine's clock (ms): for display and record timestamps only."""
    return int(time.time() * 1000) + _TEST_CLOCK_SKEW_MS


class AgentState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    WORKING = "working"
    PAUSED = "paused"
    STOPPED = "stopped"
    ERROR = "error"


class TaskState(StrEnum):
    WAITING = "waiting"  # on its dependencies (``depends_on``): not delivered, not claimable
    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_TASK_STATES


class TaskDecider(StrEnum):
    """Who decided how a task ended (``Task.decided_by``): the record says whether the agent
    reported or something else concluded for it."""

    AGENT = "agent"  # the assignee reported (task_done / task_failed, MCP or `tt`)
    RUNNER = "runner"  # the runner concluded: the CLI exited non-zero, or never reported
    EXIT_CODE = "exit_code"  # a preset that cannot report (`reports = false`): exit 0 or not
    CONDUCTOR = "conductor"  # the conductor finished or cancelled it
    CREATOR = "creator"  # its creator cancelled it
    DEPENDENCY = "dependency"  # a task it depended on failed or was cancelled


FINAL_TASK_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})

# The legal moves of a task (SPEC 4).  Reclaiming from a dead agent is the only way back.
TASK_MOVES: dict[TaskState, frozenset[TaskState]] = {
    # a waiting task moves on when its last dependency completes (tinytown.dependencies)
    TaskState.WAITING: frozenset({TaskState.ASSIGNED, TaskState.PENDING, TaskState.CANCELLED}),
    TaskState.PENDING: frozenset({TaskState.ASSIGNED, TaskState.CANCELLED}),
    TaskState.ASSIGNED: frozenset(
        {TaskState.RUNNING, TaskState.PENDING, TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED}
    ),
    TaskState.RUNNING: frozenset(
        {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.PENDING}
    ),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


class MessageKind(StrEnum):
    TASK = "task"
    QUERY = "query"
    INFO = "info"
    ACK = "ack"
    TASK_DONE = "task_done"
    TASK_FAILED = "task_failed"
    TASK_CANCELLED = "task_cancelled"
    CUSTOM = "custom"

    @property
    def actionable(self) -> bool:
        """Whether a runner starts its CLI for this kind (SPEC 5)."""
        return self in (MessageKind.TASK, MessageKind.QUERY, MessageKind.CUSTOM)


class Priority(StrEnum):
    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 is received first."""
        return PRIORITY_ORDER.index(self)


PRIORITY_ORDER: list[Priority] = [Priority.URGENT, Priority.HIGH, Priority.NORMAL, Priority.LOW]


class Record(BaseModel):
    """A record stored as a Redis hash of strings."""

    model_config = ConfigDict(use_enum_values=False, populate_by_name=True)

    json_fields: ClassVar[frozenset[str]] = frozenset()

    def to_redis(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json", by_alias=False).items():
            if value is None:
                continue
            if name in self.json_fields:
                out[name] = json.dumps(value)
            elif isinstance(value, bool):
                out[name] = "1" if value else "0"
            else:
                out[name] = str(value)
        return out

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> Self:
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if name not in cls.model_fields:
                continue  # internal bookkeeping fields (e.g. a message's attempt)
            values[name] = json.loads(raw) if name in cls.json_fields else raw
        return cls.model_validate(values)


class Agent(Record):
    id: str
    name: str
    nickname: str | None = None
    role: str | None = None
    cli: str | None = None
    state: AgentState = AgentState.STARTING
    current_task: str | None = None
    created_at: int = Field(default_factory=now_ms)
    last_seen: int = Field(default_factory=now_ms)
    tasks_completed: int = 0
    rounds_completed: int = 0
    pid: int | None = None
    session: str | None = None
    host: str | None = None
    """The machine of the runner or session that holds the agent's mailbox (``TINYTOWN_HOST``
    or the host name)."""
    session_pid: int | None = None
    """The pid of that runner or session process on ``host``."""
    max_rounds: int | None = None
    spawned_by: str | None = None
    worktree: bool | None = None
    """Its rounds run in its own git worktree, ``.tt/worktrees/NAME`` (tinytown/worktrees.py)."""

    def is_stale(self, stale_after_s: float, *, at_ms: int) -> bool:
        """Not seen for ``stale_after_s`` at ``at_ms`` (Redis's clock, which stamps
        ``last_seen``) while claiming to be alive."""
        if self.state in (AgentState.STOPPED, AgentState.ERROR) or self.name == CONDUCTOR:
            return False
        return (at_ms - self.last_seen) > stale_after_s * 1000


class Task(Record):
    """A task.  Stored, ``assigned_to`` is the assignee's agent id (what the Lua compares)
    and ``assignee`` its name.  The public JSON (``model_dump(by_alias=True)``, what every
    face prints) names agents by name: ``assigned_to`` is the name and ``assigned_to_id``
    the id.

    ``depends_on`` holds the ids of the tasks this one waits for (``waiting_on``: those not
    completed yet, while it is ``waiting``); ``depends_on_refs`` their ``#N`` in the same
    order.  The public JSON shows the references as ``depends_on`` / ``waiting_on`` and the
    ids as ``depends_on_ids`` / ``waiting_on_ids``."""

    json_fields: ClassVar[frozenset[str]] = frozenset(
        {"tags", "depends_on", "depends_on_refs", "waiting_on", "diffstat"})

    id: str
    number: int | None = None  # the per-town short reference #N, given when the task is created
    description: str
    state: TaskState = TaskState.PENDING
    assigned_to: str | None = None
    assignee: str | None = None
    created_by: str
    tags: list[str] = Field(default_factory=list)
    parent_id: str | None = None
    priority: Priority = Priority.NORMAL
    attempt: int = 0
    result: str | None = None
    error: str | None = None
    decided_by: TaskDecider | None = None  # set when the task ends: how its end was decided
    created_at: int = Field(default_factory=now_ms)
    updated_at: int = Field(default_factory=now_ms)
    started_at: int | None = None
    completed_at: int | None = None
    depends_on: list[str] = Field(default_factory=list)
    depends_on_refs: list[str] = Field(default_factory=list)
    waiting_on: list[str] = Field(default_factory=list)
    # the task's change, when its agent works in a git worktree (tinytown/worktrees.py)
    branch: str | None = None  # tt/AGENT/N
    base: str | None = None  # the commit the branch started from
    head: str | None = None  # its newest commit
    diffstat: dict[str, int] | None = None  # files, insertions, deletions of base...head
    merged_by: str | None = None
    merged_into: str | None = None
    merge_commit: str | None = None
    discarded: bool | None = None

    def dependency_ref(self, task_id: str) -> str:
        """``#N`` of one of the tasks this one depends on (its id when it has no number)."""
        refs = dict(zip(self.depends_on, self.depends_on_refs, strict=False))
        return refs.get(task_id) or task_id

    @model_serializer(mode="wrap")
    def _public_names(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if not info.by_alias or not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("assignee", "depends_on_refs"):
                continue
            if key == "assigned_to":
                out["assigned_to"] = data.get("assignee")
                out["assigned_to_id"] = value
            elif key in ("depends_on", "waiting_on"):
                out[key] = [self.dependency_ref(t) for t in value]
                out[f"{key}_ids"] = value
            else:
                out[key] = value
        return out

    @property
    def ref(self) -> str:
        """``#N`` (or the id of a task created before numbering)."""
        return f"#{self.number}" if self.number is not None else self.id


class Message(Record):
    id: str
    sender: str = Field(alias="from")
    to: str
    kind: MessageKind = MessageKind.INFO
    body: str
    priority: Priority = Priority.NORMAL
    task_id: str | None = None
    reply_to: str | None = None
    created_at: int = Field(default_factory=now_ms)
    delivery_count: int = 0

    def to_redis(self) -> dict[str, str]:
        # Built by hand: this is on every send's path, and model_dump costs more than the hop.
        data = {
            "id": self.id, "from": self.sender, "to": self.to, "kind": self.kind.value,
            "body": self.body, "priority": self.priority.value,
            "created_at": str(self.created_at), "delivery_count": str(self.delivery_count),
        }
        if self.task_id is not None:
            data["task_id"] = self.task_id
        if self.reply_to is not None:
            data["reply_to"] = self.reply_to
        return data

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> Self:
        data = dict(data)
        if "from" in data:
            data["sender"] = data.pop("from")
        return super().from_redis(data)

    def public(self) -> dict[str, Any]:
        """The JSON shape shown to agents and scripts (``from``, not ``sender``)."""
        return self.model_dump(mode="json", by_alias=True)


class InboxCounts(BaseModel):
    pending: int = 0
    urgent: int = 0
    in_flight: int = 0


class ServerInfo(BaseModel):
    """The Redis-compatible server a town runs on, as it describes itself (``INFO server``)."""

    name: str  # "valkey" or "redis"
    version: str

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> ServerInfo:
        name = str(info.get("server_name") or "redis")
        return cls(name=name, version=str(info.get(f"{name}_version") or info.get("redis_version") or "?"))

    def __str__(self) -> str:
        return f"{self.name.capitalize()} {self.version}"


class Event(BaseModel):
    id: str
    type: str
    at: int
    data: dict[str, Any] = Field(default_factory=dict)


class TaskPage(BaseModel):
    tasks: list[Task]
    next_cursor: str | None = None


def normalise_agent_name(name: str) -> str:
    """Lower-case a name and resolve the ``supervisor`` alias."""
    lowered = name.strip().lower()
    return NAME_ALIASES.get(lowered, lowered)


def valid_agent_name(name: str) -> bool:
    """Whether ``name`` (normalised) may name an agent's files and keys (the conductor may)."""
    return bool(AGENT_NAME_RE.match(name))


def valid_id(value: str) -> bool:
    """Whether ``value`` has the shape of an id (letters, digits, '_', '-', '.'; no path or
    key syntax such as '/', '..', ':', '{', '*', whitespace)."""
    return isinstance(value, str) and bool(ID_RE.match(value)) and ".." not in value


def public_json(value: Any) -> Any:
    """Models (nested in lists and dicts) as their public JSON: agents by name, a message's
    sender as ``from``.  What every face prints or sends."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list | tuple):
        return [public_json(v) for v in value]
    if isinstance(value, dict):
        return {k: public_json(v) for k, v in value.items()}
    return value
