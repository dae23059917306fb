"""Every Redis key of a town, in one place.

All keys start with ``tt:{<town>}:``.  The braces are a Redis Cluster hash tag: one town's
keys share one slot, so the multi-key Lua scripts work on Cluster as on a single server,
and several towns can share one Redis without seeing each other.

Every name or id is checked before it becomes part of a key (:func:`checked_id`): a task id
such as ``x}:agent:*`` is refused with ``invalid`` instead of reaching Redis.

    tt:{town}:seq                     counter: creation order of agents, tasks, messages
    tt:{town}:agents                  zset   agent id -> seq          (every agent)
    tt:{town}:agent_names             hash   lower-case name -> agent id
    tt:{town}:agent:<id>              hash   Agent record
    tt:{town}:inbox:<id>:<priority>   list   message ids, FIFO (RPUSH / LPOP; LPUSH = front)
    tt:{town}:bell:<id>               list   at most one token: "mail arrived" for BLPOP
    tt:{town}:round:<id>              string the credential of the agent's current runner round
    tt:{town}:inflight:<id>           zset   message id -> delivered-at ms (received, not acked)
    tt:{town}:inflight_due            zset   "<agent id>|<msg id>" -> redeliver-at ms (town-wide)
    tt:{town}:msg:<id>                string Message record, one JSON object without its id
                                             (+ internal "attempt", "batch", "thread"); a
                                             town written before schema 2 may hold hashes
    tt:{town}:task:<id>               hash   Task record (+ internal "msg_id": the task message of
                                             this attempt, "held_by": the session that took it)
                                             Dependencies (tinytown.dependencies), JSON lists
                                             in the task hash: "depends_on" (ids), "depends_on_refs"
                                             (their #N), "waiting_on" (ids not completed yet) and
                                             "dependents" (ids of the tasks waiting on this one)
                                             Former assignees (tinytown.tasks): "former:<agent id>"
                                             = the attempt the agent lost when the task was
                                             reassigned or reclaimed (its late report is a conflict)
    tt:{town}:task_number             counter: the last task number (#N) given
    tt:{town}:task_numbers            hash   task number -> task id (resolves #N in O(1))
    tt:{town}:task_msgs:<id>          zset   message id -> position (the task's thread, in order)
    tt:{town}:tasks                   zset   task id -> seq             (every task)
    tt:{town}:tasks:state:<state>     zset   task id -> seq             (pending = the backlog;
                                             waiting = tasks whose dependencies are not done)
    tt:{town}:tasks:agent:<id>        zset   task id -> seq  every task that is the agent's now
                                             (open or ended; a reassigned or reclaimed task
                                             leaves its former agent's indexes)
    tt:{town}:tasks:open:<id>         zset   task id -> seq  the agent's unfinished tasks: this
                                             attempt is its (assigned/running; reclaim reads it),
                                             and the waiting tasks meant for it
    tt:{town}:tasks:agent:<id>:<end>  zset   task id -> seq  the agent's tasks that ended in
                                             <end> (completed/failed/cancelled) while its own
    tt:{town}:schema                  string layout version of the town's data (migrations)
    tt:{town}:events                  stream town events (XADD MAXLEN ~ 10000; XTRIM MINID by age)
    tt:{town}:retention:finished      zset   task id -> finished-at ms (Redis clock): what expires
                                             when (retention.py; SCRIPT ``sweep`` trims it)
    tt:{town}:retention:notices:<id>  list   ids of task notices sent to the agent, oldest first:
                                             the ones dropped first when its inbox is full
    tt:{town}:retention:stats         hash   the snapshot ``tt stats`` measures growth against
    tt:{town}:order:<id>              hash   the lifecycle order to the agent's runner (stop,
                                             restart; ``now``), its progress and outcome
    tt:{town}:tokens                  hash   sha256(token) hex -> {"agent", "created"} JSON
                                             (`tt serve` bearer tokens; the token itself is never stored)
    tt:{town}:tokens_used             hash   sha256(token) hex -> last used, ms on Redis's clock
"""

from __future__ import annotations

from dataclasses import dataclass

from tinytown.errors import Invalid
from tinytown.models import PRIORITY_ORDER, TOWN_NAME_RE, Priority, TaskState, valid_id


def town_prefix(town: str) -> str:
    if not TOWN_NAME_RE.match(town):
        raise Invalid(f"town name {town!r} is not allowed")
    return f"tt:{{{town}}}:"


def checked_id(value: str, what: str = "id") -> str:
    """``value`` if it has the shape of an id, else :class:`Invalid` (no key syntax in keys)."""
    if not valid_id(value):
        raise Invalid(f"{what} {value!r} is not a valid id (letters, digits, '_', '-' and '.' only)")
    return value


def former_field(agent_id: str) -> str:
    """The task-hash field that records an agent the task was taken from."""
    return f"former:{checked_id(agent_id, 'agent id')}"


@dataclass(frozen=True)
class Keys:
    town: str

    def __post_init__(self) -> None:
        town_prefix(self.town)

    @property
    def prefix(self) -> str:
        return town_prefix(self.town)

    @property
    def match_all(self) -> str:
        """SCAN pattern for every key of this town (used by ``reset`` only)."""
        return self.prefix.replace("{", "\\{").replace("}", "\\}") + "*"

    @property
    def seq(self) -> str:
        return self.prefix + "seq"

    @property
    def agents(self) -> str:
        return self.prefix + "agents"

    @property
    def agent_names(self) -> str:
        return self.prefix + "agent_names"

    def agent(self, agent_id: str) -> str:
        return f"{self.prefix}agent:{checked_id(agent_id, 'agent id')}"

    def inbox(self, agent_id: str, priority: Priority | str) -> str:
        return f"{self.prefix}inbox:{checked_id(agent_id, 'agent id')}:{Priority(priority).value}"

    def inboxes(self, agent_id: str) -> list[str]:
        """The four inbox lists of an agent, highest priority first."""
        return [self.inbox(agent_id, p) for p in PRIORITY_ORDER]

    def bell(self, agent_id: str) -> str:
        return f"{self.prefix}bell:{checked_id(agent_id, 'agent id')}"

    def round(self, agent_id: str) -> str:
        """The credential an MCP session started inside the runner's current round presents
        to join the runner's session (set while the round runs, deleted after it)."""
        return f"{self.prefix}round:{agent_id}"

    def inflight(self, agent_id: str) -> str:
        return f"{self.prefix}inflight:{checked_id(agent_id, 'agent id')}"

    @property
    def inflight_due(self) -> str:
        return self.prefix + "inflight_due"

    def message(self, message_id: str) -> str:
        return f"{self.prefix}msg:{checked_id(message_id, 'message id')}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}task:{checked_id(task_id, 'task id')}"

    @property
    def task_number(self) -> str:
        return self.prefix + "task_number"

    @property
    def task_numbers(self) -> str:
        return self.prefix + "task_numbers"

    def task_messages(self, task_id: str) -> str:
        """The task's thread: messages carrying its id, and replies to those (SCRIPT ``send``
        and ``apply`` write it; the prefix ``task_msgs:`` is spelled there too)."""
        return f"{self.prefix}task_msgs:{task_id}"

    @property
    def tasks(self) -> str:
        return self.prefix + "tasks"

    def tasks_in_state(self, state: TaskState | str) -> str:
        return f"{self.prefix}tasks:state:{TaskState(state).value}"

    @property
    def backlog(self) -> str:
        return self.tasks_in_state(TaskState.PENDING)

    def tasks_of_agent(self, agent_id: str) -> str:
        return f"{self.prefix}tasks:agent:{checked_id(agent_id, 'agent id')}"

    def open_tasks(self, agent_id: str) -> str:
        """The agent's unfinished tasks (the Lua ``claim`` spells ``tasks:open:`` too)."""
        return f"{self.prefix}tasks:open:{checked_id(agent_id, 'agent id')}"

    def ended_tasks(self, agent_id: str, state: TaskState | str) -> str:
        """The agent's tasks that ended in ``state`` while they were its."""
        return f"{self.prefix}tasks:agent:{checked_id(agent_id, 'agent id')}:{TaskState(state).value}"

    def agent_task_keys(self, agent_id: str) -> list[str]:
        """Every task index of one agent (deleted with the agent)."""
        return [self.tasks_of_agent(agent_id), self.open_tasks(agent_id),
                *(self.ended_tasks(agent_id, s) for s in TaskState if s.is_final)]

    @property
    def schema(self) -> str:
        return self.prefix + "schema"

    @property
    def events(self) -> str:
        return self.prefix + "events"

    def order(self, agent_id: str) -> str:
        """The lifecycle order to the agent's runner (:mod:`tinytown.orders`): who ordered
        what, when the runner saw it, and how it was carried out."""
        return f"{self.prefix}order:{checked_id(agent_id, 'agent id')}"

    @property
    def tokens(self) -> str:
        """The bearer tokens of ``tt serve``, by the sha256 of the token (:mod:`tinytown.tokens`)."""
        return self.prefix + "tokens"

    @property
    def tokens_used(self) -> str:
        return self.prefix + "tokens_used"

    # ----------------------------------------------------------------- retention

    @property
    def finished(self) -> str:
        """Finished tasks by the time they finished (the retention sweep's index; SCRIPT spells
        it too: ``retention:finished``)."""
        return self.prefix + "retention:finished"

    def notices(self, agent_id: str) -> str:
        """The task notices sent to an agent, oldest first (SCRIPT ``apply`` spells it too)."""
        return f"{self.prefix}retention:notices:{checked_id(agent_id, 'agent id')}"

    @property
    def stats_snapshot(self) -> str:
        return self.prefix + "retention:stats"
