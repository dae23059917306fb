"""The Town: the one service layer.  The CLI and the MCP server are thin faces over it.

A :class:`Town` owns a Redis connection (injected, so tests pass fakeredis or a real
server) and knows how every operation works: agents (this module), messages (this module,
over the :class:`~tinytown.channel.Channel`) and tasks (:mod:`tinytown.tasks`).

Callers identify themselves by agent *name* (``by=`` / ``agent=``); authorisation is
enforced here, so every face gets the same rules.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
from pydantic import BaseModel
from redis.asyncio import Redis

from tinytown.channel import (
    PROGRESS_EVERY_S,
    Channel,
    Plan,
    ProgressCallback,
    Received,
    RetentionTimes,
    stop_if_cancelled,
)
from tinytown.config import TownConfig, TownPaths, find_town_root, load_config
from tinytown.errors import Conflict, Invalid, NotFound, StaleRead, wrap_redis_errors
from tinytown.keys import Keys
from tinytown.masking import mask_url
from tinytown.models import (
    AGENT_NAME_RE,
    AGENT_NAME_RULE,
    BROADCAST,
    CONDUCTOR,
    DEFAULT_AGENT_PAGE,
    MAX_RECEIVE_TIMEOUT_S,
    RESERVED_NAMES,
    Agent,
    AgentState,
    Event,
    InboxCounts,
    Message,
    MessageKind,
    Priority,
    normalise_agent_name,
    now_ms,
)
from tinytown.private import secure_runtime
from tinytown.processes import this_host
from tinytown.schema import upgrade
from tinytown.supervisor import LifecycleOps
from tinytown.tasks import TaskOps, check_size, parse_enum

# The services a Town holds are imported when first used, not with the Town: most commands
# (``tt send``, ``tt inbox``, a hook's every turn) need none of them, and importing them all
# cost every ``tt`` start ~20 ms of CPU (bench/cli_startup.py).
if TYPE_CHECKING:
    from tinytown.bulk import BulkProgress, BulkResult, TaskSpec
    from tinytown.conversation import Conversation
    from tinytown.dependencies import Dependencies
    from tinytown.handback import Handback
    from tinytown.orders import Orders
    from tinytown.plans import Plans
    from tinytown.retention import Retention
    from tinytown.roster import AgentPage, TownStatus
    from tinytown.tokens import Tokens
    from tinytown.worktrees import Worktrees

T = TypeVar("T")

MAX_BATCH = 100
RETRIES = 8


__all__ = ["SendReceipt", "Town"]


class SendReceipt(BaseModel):
    """What ``send`` stored: the message and the id of each copy (one per recipient)."""

    message: Message
    copies: list[str]


class Town(TaskOps, LifecycleOps):
    """One town: its config, its Redis, and every operation on its agents, messages, tasks."""

    def __init__(
        self,
        redis: Redis,
        config: TownConfig,
        paths: TownPaths | None = None,
        *,
        redis_display: str | None = None,
    ) -> None:
        self.redis = redis
        self.config = config
        self.paths = paths
        self.keys = Keys(config.name)
        self.channel = Channel(redis, self.keys, max_inbox=config.limits.max_inbox,
                               max_receive_bytes=config.limits.max_receive_bytes,
                               retention=RetentionTimes(tasks_s=config.retention.tasks,
                                                        messages_s=config.retention.messages,
                                                        events_s=config.retention.events))
        self.redis_display = redis_display or mask_url(config.redis.url) or "(injected client)"
        self._owns_redis = False
        self._ids: dict[str, str] = {}

    # ----------------------------------------------------------------- services (made on first use)

    @cached_property
    def handback(self) -> Handback:
        """Work a session held goes back to its agent when the session is gone."""
        from tinytown.handback import Handback

        return Handback(self)

    @cached_property
    def orders(self) -> Orders:
        """Lifecycle orders to runners, here or on other machines (stop, restart)."""
        from tinytown.orders import Orders

        return Orders(self)

    @cached_property
    def conversation(self) -> Conversation:
        """What agents said: the history with message bodies, each task's thread."""
        from tinytown.conversation import Conversation

        return Conversation(self)

    @cached_property
    def tokens(self) -> Tokens:
        """The bearer tokens of ``tt serve`` (one names one agent)."""
        from tinytown.tokens import Tokens

        return Tokens(self)

    @cached_property
    def retention(self) -> Retention:
        """What expires when, and ``stats``: keys, memory and growth per kind."""
        from tinytown.retention import Retention

        return Retention(self)

    @cached_property
    def dependencies(self) -> Dependencies:
        """Tasks that wait for other tasks (``depends_on``, the ``waiting`` state)."""
        from tinytown.dependencies import Dependencies

        return Dependencies(self)

    @cached_property
    def plans(self) -> Plans:
        """Whole plans of tasks created at once (``tt plan``), handing out the backlog."""
        from tinytown.plans import Plans

        return Plans(self)

    @cached_property
    def worktrees(self) -> Worktrees:
        """A git worktree per agent, a branch per task: review, merge, discard."""
        from tinytown.worktrees import Worktrees

        return Worktrees(self)

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    async def open(cls, town: str | Path | None = None, *, start_redis: bool = True) -> Town:
        """Find the town, load its config, start its managed Redis if needed, connect.

        Raises:
            NotFound: no town there.
            Invalid: a bad ``tinytown.toml``.
            Unavailable: Redis cannot be reached or started.
        """
        from tinytown.connect import connect_redis

        paths = TownPaths(find_town_root(town))
        config = load_config(paths)
        secure_runtime(paths.runtime)
        redis, display = await connect_redis(config, paths, start=start_redis)
        self = cls(redis, config, paths, redis_display=display)
        self._owns_redis = True
        try:
            await self.ensure_conductor()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        if self._owns_redis:
            await self.redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def root(self) -> Path | None:
        return self.paths.root if self.paths else None

    async def ensure_conductor(self) -> Agent:
        """The human's mailbox always exists (and an older town's data is brought up to
        date, :mod:`tinytown.schema`)."""
        await upgrade(self)
        return await self.register_agent(CONDUCTOR, state=AgentState.IDLE, exist_ok=True)

    # ----------------------------------------------------------------- agents

    async def _agent_id(self, name: str, *, cached: bool = False) -> str:
        """Resolve a name to the agent's id.  ``cached`` serves the hot receive path from
        memory: a name keeps its id until the agent is pruned, and a stale entry is caught
        by the Lua ("no longer registered") and dropped by :meth:`_with_agent_id`."""
        key = normalise_agent_name(name)
        if cached and key in self._ids:
            return self._ids[key]
        if not AGENT_NAME_RE.match(key):
            raise Invalid(f"{name!r} is not an agent name ({AGENT_NAME_RULE})")
        async with wrap_redis_errors():
            agent_id = await self.redis.hget(self.keys.agent_names, key)
        if agent_id is None:
            raise NotFound(f"no agent named {name!r} in town {self.name}; `tt list` shows the agents")
        self._ids[key] = str(agent_id)
        return str(agent_id)

    async def _with_agent_id(self, name: str, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(agent_id)`` with the cached id, once more with a fresh one if it was stale."""
        try:
            return await call(await self._agent_id(name, cached=True))
        except NotFound:
            self._ids.pop(normalise_agent_name(name), None)
            return await call(await self._agent_id(name))

    async def _agent_by_id(self, agent_id: str) -> Agent:
        async with wrap_redis_errors():
            data = await self.redis.hgetall(self.keys.agent(agent_id))
        if not data:
            raise NotFound(f"agent {agent_id} is no longer registered")
        return Agent.from_redis(data)

    async def get_agent(self, name: str) -> Agent:
        """The agent record by name (``supervisor`` means ``conductor``).

        Raises:
            NotFound: no such agent.
        """
        return await self._agent_by_id(await self._agent_id(name))

    async def list_agents(self, state: AgentState | str | None = None) -> list[Agent]:
        """Every agent in creation order (the conductor first), optionally of one state."""
        wanted = parse_enum(AgentState, state, "state") if state is not None else None
        async with wrap_redis_errors():
            ids = await self.redis.zrange(self.keys.agents, 0, -1)
            async with self.redis.pipeline(transaction=False) as pipe:
                for agent_id in ids:
                    pipe.hgetall(self.keys.agent(agent_id))
                rows = await pipe.execute()
        agents = [Agent.from_redis(row) for row in rows if row]
        return [a for a in agents if wanted is None or a.state == wanted]

    async def agents_page(
        self, state: AgentState | str | None = None, *, limit: int = DEFAULT_AGENT_PAGE,
        cursor: str | None = None,
    ) -> AgentPage:
        """A page of agents in creation order (the conductor first), optionally of one state;
        pass ``next_cursor`` back for the next page.

        Raises:
            Invalid: a bad state, limit or cursor.
        """
        from tinytown import roster

        return await roster.agents_page(self, state, limit=limit, cursor=cursor)

    def validate_agent_name(self, name: str) -> str:
        """Return the normalised name, or raise :class:`Invalid` saying what is allowed."""
        lowered = name.strip().lower()
        if not AGENT_NAME_RE.match(lowered):
            raise Invalid(f"agent name {name!r} is not allowed: use {AGENT_NAME_RULE}")
        if lowered in RESERVED_NAMES:
            raise Invalid(f"{lowered!r} is a reserved name; pick another")
        return lowered

    async def register_agent(
        self,
        name: str,
        *,
        cli: str | None = None,
        role: str | None = None,
        nickname: str | None = None,
        state: AgentState = AgentState.IDLE,
        max_rounds: int | None = None,
        spawned_by: str | None = None,
        worktree: bool | None = None,
        exist_ok: bool = False,
    ) -> Agent:
        """Register an agent without starting any process (attach, or before a spawn).

        Raises:
            Invalid: a bad or reserved name, or the town is at ``max_agents``.
            Conflict: the name is taken (unless ``exist_ok``, which returns the existing one).
        """
        key = CONDUCTOR if name == CONDUCTOR else self.validate_agent_name(name)
        if exist_ok:
            try:
                return await self.get_agent(key)
            except NotFound:
                pass
        full = (f"town {self.name} has {self.config.max_agents} agents, its max_agents; "
                "prune stopped agents or raise max_agents in tinytown.toml")
        async with wrap_redis_errors():
            count = await self.redis.zcard(self.keys.agents)
            if key != CONDUCTOR and count >= self.config.max_agents + 1:
                raise Invalid(full)
            seq = await self.redis.incr(self.keys.seq)
        agent = Agent(
            id=str(uuid.uuid4()), name=key, cli=cli, role=role, nickname=nickname, state=state,
            max_rounds=max_rounds, spawned_by=spawned_by, worktree=worktree,
        )
        plan = Plan()
        plan.guard(self._k(self.keys.agent_names), key, [""], "conflict",
                   f"an agent named {key!r} exists already")
        if key != CONDUCTOR:
            # checked again inside the write: concurrent registrations cannot all pass (+1: the
            # conductor counts among the agents)
            plan.limit(self._k(self.keys.agents), self.config.max_agents + 1, "invalid", full)
        plan.hset.append([self._k(self.keys.agent(agent.id)), agent.to_redis()])
        plan.stamp.append([self._k(self.keys.agent(agent.id)), "last_seen"])
        plan.hset.append([self._k(self.keys.agent_names), {key: agent.id}])
        plan.zadd.append([self._k(self.keys.agents), seq, agent.id])
        plan.event("agent.registered", agent=key, cli=cli, role=role)
        try:
            await self.channel.apply(plan)
        except Conflict:
            if exist_ok:
                return await self.get_agent(key)
            raise
        return agent

    async def update_agent(
        self, name: str, *, expect_state: Sequence[AgentState] | None = None, touch: bool = False,
        **fields: Any,
    ) -> Agent:
        """Set fields of an agent record (``None`` deletes a field); emits a state event.
        ``touch`` also sets ``last_seen`` to now on Redis's clock.

        Only the given fields are written, so concurrent writers of other fields (a runner
        and ``tt pause``, a spawner recording the pid) never undo each other.  With
        ``expect_state`` the write happens only while the agent is in one of those states.

        Raises:
            NotFound: no such agent.
            Conflict: the agent is not in an ``expect_state`` state.
        """
        agent = await self.get_agent(name)
        try:
            updated = Agent.model_validate({**agent.model_dump(), **fields})
        except ValueError as exc:
            raise Invalid(f"bad agent fields: {exc}") from None
        plan = Plan()
        key = self._k(self.keys.agent(agent.id))
        plan.guard(key, "name", [agent.name], "not_found", f"agent {name} was removed")
        if expect_state is not None:
            allowed = [AgentState(s).value for s in expect_state]
            if agent.state.value not in allowed:
                raise Conflict(f"agent {agent.name} is {agent.state.value}, not {' or '.join(allowed)}")
            plan.guard(key, "state", allowed, "conflict",
                       f"agent {agent.name} changed state meanwhile; not {' or '.join(allowed)}")
        plan.hset.append([key, {k: v for k, v in updated.to_redis().items() if k in fields}])
        plan.hdel.append([key, [f for f, v in fields.items() if v is None]])
        if touch:
            plan.stamp.append([key, "last_seen"])
        if "state" in fields and updated.state != agent.state:
            plan.event(f"agent.{updated.state.value}", agent=agent.name, previous=agent.state.value)
            if agent.state == AgentState.PAUSED:
                plan.ring.append(agent.id)
        await self.channel.apply(plan)
        return updated

    async def heartbeat(self, name: str) -> None:
        """``last_seen`` = now, on Redis's clock."""
        await self._with_agent_id(name, self.channel.touch)

    async def now_ms(self) -> int:
        """Redis's clock (ms): what ``last_seen`` and redelivery times are stamped with, so
        staleness is judged the same from every machine whatever its own clock says."""
        return await self.channel.now_ms()

    async def open_session(
        self,
        name: str,
        *,
        attach: bool = True,
        session: str | None = None,
        take_over: bool = False,
        round_credential: str | None = None,
        runner: bool = False,
    ) -> tuple[Agent, str, int]:
        """Start a session for an agent (the one session model, see the README).

        * ``round_credential`` (what a runner hands the MCP server of its round): the session
          joins the runner's session.  Nothing changes hands: the round's messages stay in
          flight with the runner, which acknowledges them after the round.
        * ``runner``: the agent's runner itself; it takes over the mailbox.
        * otherwise a session from outside.  It takes over the mailbox, registering a missing
          agent when ``attach`` (``cli = None``: a window a human opened), unless a runner of
          the agent is alive: then it is refused, or with ``take_over`` the runner is told to
          stop and the mailbox is taken anyway.

        Taking over records the new session id, puts every message the previous session
        received but never acknowledged back at the front of the inbox, and gives back every
        task the previous session held (a ``task`` message for each that has none queued).

        Returns:
            ``(agent, session_id, requeued_count)``.

        Raises:
            Conflict: a live runner owns the agent (and no ``take_over``), or the round the
                credential was made for is over.
            NotFound: no such agent (and no ``attach``).
        """
        key = normalise_agent_name(name)
        if round_credential is not None:
            return await self._join_round(key, round_credential)
        try:
            agent = await self.get_agent(key)
        except NotFound:
            if not attach:
                raise
            agent = await self.register_agent(key, state=AgentState.IDLE, exist_ok=True)
            await self._event("agent.attached", agent=agent.name)
        runner_pid = None if runner else self.runner_pid(agent)
        if runner_pid is not None and not take_over:
            held = f" (pid {runner_pid})" if runner_pid else ""
            raise Conflict(
                f"agent {agent.name} is run by its runner{held}; a session from outside would take "
                f"its mailbox away. To take over on purpose, stop the runner first (`tt kill "
                f"{agent.name}`), or start the server with `tinytown-mcp --agent {agent.name} "
                "--take-over`"
            )
        session = session or uuid.uuid4().hex
        fields: dict[str, Any] = {"session": session, "host": this_host(), "session_pid": os.getpid()}
        if agent.state in (AgentState.STOPPED, AgentState.ERROR, AgentState.STARTING):
            fields["state"] = AgentState.IDLE
        agent = await self.update_agent(agent.name, touch=True, **fields)
        async with wrap_redis_errors():
            await self.redis.delete(self.keys.round(agent.id))
        requeued = await self.channel.requeue(agent.id)
        # the previous session is gone: what it held comes back to this one
        await self.handback.give_back(agent.name)
        if runner_pid:
            self.stop_runner(runner_pid)
        if runner_pid is not None:
            await self._event("agent.taken_over", agent=agent.name, runner_pid=runner_pid)
        return agent, session, requeued

    async def begin_round(self, name: str) -> str:
        """A runner starts a round: a new credential for the round's MCP session
        (``NAME:TOKEN``, see :meth:`open_session`), valid until :meth:`end_round`."""
        agent = await self.get_agent(name)
        token = secrets.token_hex(16)
        async with wrap_redis_errors():
            await self.redis.set(self.keys.round(agent.id), token)
        return f"{agent.name}:{token}"

    async def end_round(self, name: str) -> None:
        """The round is over: its credential no longer joins the runner's session."""
        agent = await self.get_agent(name)
        async with wrap_redis_errors():
            await self.redis.delete(self.keys.round(agent.id))

    async def _join_round(self, key: str, credential: str) -> tuple[Agent, str, int]:
        owner, _, token = credential.partition(":")
        agent = await self.get_agent(key)
        async with wrap_redis_errors():
            current = await self.redis.get(self.keys.round(agent.id))
        if owner != agent.name or not token or current != token or not agent.session:
            raise Conflict(
                f"the runner round this session was started for is over (agent {agent.name}); "
                "a round's MCP session lives only as long as its round"
            )
        return agent, agent.session, 0

    async def delete_agent(self, name: str) -> None:
        """Remove a stopped agent and every key it owns (``prune``), its undelivered and
        unacknowledged messages included.  Its unfinished tasks go back to the backlog first,
        so no task is left assigned to an agent that no longer exists.

        Raises:
            Conflict: the agent is not stopped (or is the conductor).
        """
        agent = await self.get_agent(name)
        if agent.name == CONDUCTOR:
            raise Conflict("the conductor is always present and cannot be removed")
        if agent.state not in (AgentState.STOPPED, AgentState.ERROR):
            raise Conflict(f"agent {agent.name} is {agent.state.value}; kill it before pruning")
        async with wrap_redis_errors():
            in_flight = await self.redis.zrange(self.keys.inflight(agent.id), 0, -1)
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in self.keys.inboxes(agent.id):
                    pipe.lrange(key, 0, -1)
                pending = [mid for ids in await pipe.execute() for mid in ids]
        # (read first: reclaiming acknowledges the tasks' messages, which go too)
        await self.reclaim_tasks(agent.name)
        plan = Plan()
        plan.delete += [self._k(self.keys.message(mid)) for mid in (*in_flight, *pending)]
        plan.guard(self._k(self.keys.agent(agent.id)), "state", [agent.state.value], "retry",
                   "agent changed")
        plan.delete += [self._k(k) for k in (
            self.keys.agent(agent.id), self.keys.bell(agent.id), self.keys.inflight(agent.id),
            *self.keys.agent_task_keys(agent.id), self.keys.notices(agent.id),
            *self.keys.inboxes(agent.id),
        )]
        plan.hdel.append([self._k(self.keys.agent_names), [agent.name]])
        plan.zrem.append([self._k(self.keys.agents), agent.id])
        plan.zrem += [[self._k(self.keys.inflight_due), f"{agent.id}|{mid}"] for mid in in_flight]
        plan.event("agent.pruned", agent=agent.name)
        await self.channel.apply(plan)
        self._ids.pop(agent.name, None)

    async def add_tasks(
        self, specs: Sequence[TaskSpec], *, by: str = CONDUCTOR, progress: BulkProgress | None = None
    ) -> BulkResult:
        """Add many tasks to the backlog, a few hundred per round trip, after checking them
        all (:mod:`tinytown.bulk`; ``tt backlog add --file``).

        Raises:
            Invalid: a task is not valid (named by its line); nothing was added.
        """
        from tinytown.bulk import add_tasks

        return await add_tasks(self, specs, by=by, progress=progress)

    # ----------------------------------------------------------------- messages

    async def send(
        self,
        sender: str,
        to: str,
        body: str,
        *,
        kind: MessageKind | str = MessageKind.INFO,
        priority: Priority | str = Priority.NORMAL,
        task_id: str | None = None,
        reply_to: str | None = None,
    ) -> SendReceipt:
        """Send a message; ``to="all"`` stores a copy for every agent that is not stopped.

        Raises:
            Invalid: bad kind/priority, body over the limit, empty body, a full inbox, an
                ambiguous task reference (``task_id`` takes any form :meth:`resolve_task` does).
            NotFound: unknown sender, recipient, task or ``reply_to`` message.
        """
        kind = parse_enum(MessageKind, kind, "kind")
        priority = parse_enum(Priority, priority, "priority")
        if not body.strip():
            raise Invalid("the message body is empty; say something")
        check_size(body, self.config.limits.max_body_bytes, "the message body")
        if task_id is not None:
            task_id = await self.resolve_task(task_id)
        sender_name = normalise_agent_name(sender)
        to_name = normalise_agent_name(to)
        for who in (sender_name, to_name):
            if not AGENT_NAME_RE.match(who):
                raise Invalid(f"{who!r} is not an agent name ({AGENT_NAME_RULE})")
        # every field is validated above, so skip a second validation pass on the hot path
        message = Message.model_construct(
            id=str(uuid.uuid4()), sender=sender_name, to=to_name, kind=kind, body=body,
            priority=priority, task_id=task_id, reply_to=reply_to, created_at=now_ms(),
            delivery_count=0,
        )
        copies = await self.channel.send(sender_name, "*" if to_name == BROADCAST else to_name, message)
        return SendReceipt(message=message, copies=copies)

    async def receive(
        self,
        agent: str,
        *,
        timeout_s: float = 30.0,
        max_messages: int = 10,
        session: str | None = None,
        ack_previous: bool = True,
        batch: str | None = None,
        progress: ProgressCallback | None = None,
        progress_every_s: float = PROGRESS_EVERY_S,
    ) -> Received:
        """Block until messages for ``agent`` arrive (highest priority first) or time out.

        With ``ack_previous`` (the MCP ``receive``), the batch this Town last returned to
        the same ``agent`` and ``session`` is acknowledged — the caller saw it — unless
        :meth:`unseen` took it back; any other batch of that session still in flight goes
        back to the inbox.  Without, messages stay in flight until :meth:`ack` (the runner,
        ``tt receive``).  ``batch`` names this receive's batch (``Received.batch``), so a
        face can call :meth:`unseen` for it when its client gives up.  A newer receive of the
        same agent replaces this one if it still waits.  One batch holds message bodies up
        to ``[limits] max_receive_bytes`` in total (at least one message); what does not fit
        stays queued for the next receive.  A timeout is a normal result with
        ``timed_out`` set.  While waiting, ``progress(elapsed_s, timeout_s)`` is awaited
        every ``progress_every_s``.

        Raises:
            Invalid: timeout outside 0..300 s or batch outside 1..100.
            Conflict: ``session`` is no longer the agent's live session, or a newer receive
                of the agent replaced this one.
        """
        if not 0 <= timeout_s <= MAX_RECEIVE_TIMEOUT_S:
            raise Invalid(f"timeout_s must be between 0 and {MAX_RECEIVE_TIMEOUT_S:g} seconds")
        if not 1 <= max_messages <= MAX_BATCH:
            raise Invalid(f"max_messages must be between 1 and {MAX_BATCH}")
        return await self._with_agent_id(agent, lambda agent_id: self.channel.receive(
            agent_id, timeout_s=timeout_s, max_messages=max_messages,
            redelivery_after_s=self.config.redelivery_after_s, session=session,
            ack_previous=ack_previous, batch=batch, progress=progress,
            progress_every_s=progress_every_s,
        ))

    def forget_batch(self, agent: str, session: str | None, batch: str) -> None:
        """The client of ``session`` never saw ``batch`` (it gave up on that receive): the
        session's next receive does not acknowledge it but puts it back.  Synchronous, so a
        face can apply it before it reads the client's next request; :meth:`unseen` also puts
        the batch back at once."""
        agent_id = self._ids.get(normalise_agent_name(agent))
        if agent_id is not None:  # else no receive resolved it here: this Town returned no batch
            self.channel.unseen(agent_id, session, batch)

    async def unseen(self, agent: str, session: str | None, batch: str) -> int:
        """:meth:`forget_batch`, and the batch's messages still in flight go back to the
        front of the inbox now.  Returns how many went back."""
        agent_id = await self._agent_id(agent, cached=True)
        return await self.channel.requeue_batch(agent_id, self.channel.unseen(agent_id, session, batch))

    async def ack(self, agent: str, message_ids: Sequence[str]) -> int:
        """Acknowledge messages ``agent`` received; returns how many were still in flight."""
        ids = list(message_ids)
        return await self._with_agent_id(agent, lambda agent_id: self.channel.ack(agent_id, ids))

    async def inbox(self, agent: str, limit: int = 50) -> list[Message]:
        """Pending messages in receive order, without consuming them."""
        return await self.channel.peek(await self._agent_id(agent), limit)

    async def in_flight(self, agent: str) -> list[Message]:
        """Messages the agent received and has not acknowledged."""
        return await self.channel.in_flight(await self._agent_id(agent))

    async def inbox_counts(self, agent: str, *, cached: bool = False) -> InboxCounts:
        """Pending (and urgent) and in-flight counts.  ``cached`` resolves the name from the
        per-Town id cache: the MCP server adds these counts to every result of a session."""
        return await self.channel.counts(await self._agent_id(agent, cached=cached))

    async def requeue_in_flight(self, agent: str) -> int:
        """Put the agent's unacknowledged messages back at the front of its inbox."""
        return await self.channel.requeue(await self._agent_id(agent))

    # ----------------------------------------------------------------- town

    async def status(self, *, limit: int = DEFAULT_AGENT_PAGE, cursor: str | None = None) -> TownStatus:
        """A page of agents with their inbox counts and staleness, task counts by state, in
        a constant number of round trips (:mod:`tinytown.roster`).

        Raises:
            Invalid: a bad limit or cursor.
        """
        from tinytown import roster

        return await roster.status(self, limit=limit, cursor=cursor)

    async def history(self, count: int = 20) -> list[Event]:
        return await self.channel.events(count)

    async def last_event_id(self) -> str:
        """The id of the newest event (``"0-0"`` for none): where a watcher starts."""
        return await self.channel.last_event_id()

    async def wait_events(self, after: str, block_s: float) -> list[Event]:
        """Events after id ``after``, waiting up to ``block_s`` for one (XREAD BLOCK): what
        live views and runners wake on instead of polling the town."""
        return await self.channel.wait_events(after, block_s)

    async def follow(self, after: str = "$", block_s: float = 5.0) -> AsyncIterator[Event]:
        """Yield events as they are appended (after id ``after``), forever."""
        last = await self.last_event_id() if after == "$" else after
        while True:
            stop_if_cancelled()
            for event in await self.wait_events(last, block_s):
                last = event.id
                yield event

    async def reset(self) -> int:
        """Delete every key of this town (SCAN, never KEYS); the conductor is recreated."""
        from tinytown.topology import scan_town

        deleted = 0
        async with wrap_redis_errors():
            found = await scan_town(self.redis, self.keys.seq, self.keys.match_all)
            for start in range(0, len(found), 500):
                deleted += await self.redis.unlink(*found[start:start + 500])
        await self.ensure_conductor()
        return deleted

    # ----------------------------------------------------------------- internals

    def _k(self, key: str) -> str:
        return key.removeprefix(self.keys.prefix)

    async def _event(self, event_type: str, /, **data: Any) -> None:
        plan = Plan()
        plan.event(event_type, **data)
        await self.channel.apply(plan)

    async def _retrying(self, attempt: Any) -> Any:
        """Run ``attempt()`` (read, validate, apply) again when a guard saw a stale read."""
        for _ in range(RETRIES):
            try:
                return await attempt()
            except StaleRead:
                await anyio.lowlevel.checkpoint()
        raise Conflict("the record kept changing while this was being written; try again")
