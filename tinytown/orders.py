"""Lifecycle orders to runners, through Redis: stop (after the round, or ``now``) and restart.

Whoever stops an agent — ``tt kill``/``restart``/``stop``, ``tt down --all``, ``tt reset``, the
MCP ``kill_agent`` tool, the dashboard — never acts on the runner's process or its work from
the outside.  It writes an *order* into ``tt:{town}:order:<agent id>`` (a hash: ``id``,
``action`` = ``stop`` | ``restart``, ``now``, ``by``, ``host``, ``at``) and appends an
``agent.order`` event.  The runner, wherever it runs, wakes on that event (it follows the
town's stream while it waits for mail and while a round runs) and also reads the key between
rounds, so an order is never lost to a trimmed stream.  The runner carries it out as it would
a local signal: it notes that it saw the order (``seen``, the ``round`` it is in), finishes
its round — or with ``now`` cuts the round's CLI off and gives the round's tasks back to the
backlog and its messages back to the inbox itself — then records the outcome (``done``,
``outcome`` = ``after_round`` | ``cut_off`` | ``idle``, ``returned`` task numbers) and stops;
a ``restart`` starts its successor on its own machine first.

The one who ordered waits on the event stream for that outcome.  Only a runner that is
demonstrably dead may be reclaimed from outside: its lock on this machine is free, or it has
not been seen (heartbeat, on Redis's clock) for ``stale_after_s``.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
from pydantic import BaseModel

from tinytown.channel import Plan
from tinytown.errors import Conflict, NotFound, wrap_redis_errors
from tinytown.models import Agent, AgentState, Record
from tinytown.processes import lock_holder, lock_path, signal_process, this_host, wait_exit

if TYPE_CHECKING:
    from tinytown.town import Town

GONE = (AgentState.STOPPED, AgentState.ERROR)
ESCALATE_GRACE_S = 10.0
"""After a ``timeout_s`` the order becomes ``now``; a runner on this machine that is still
there this much later is hung: it gets SIGKILL (its whole group) and is recovered."""
RESTART_TIMEOUT_S = 30.0

Outcome = Literal["after_round", "cut_off", "idle", "reclaimed", "not_running", "ordered", "pending"]


class Order(Record):
    """One lifecycle order to an agent's runner, with its progress (see the module doc)."""

    json_fields: ClassVar[frozenset[str]] = frozenset({"returned"})

    id: str
    action: Literal["stop", "restart"] = "stop"
    now: bool = False
    by: str
    host: str | None = None
    at: int = 0
    seen: int | None = None
    round: int | None = None
    done: int | None = None
    outcome: str | None = None
    returned: list[int] = []
    """Numbers (#N) of the tasks a cut-off round gave back to the backlog."""
    requeued: int = 0


class StopOutcome(BaseModel):
    """What became of a stop (or restart) order: how the agent's runner ended."""

    agent: Agent
    outcome: Outcome
    """``after_round`` (it finished its round first), ``cut_off`` (``now``: the round was
    interrupted, its tasks went back), ``idle`` (no round was running), ``reclaimed`` (the
    runner was dead: its work was taken back from outside), ``not_running`` (nothing to stop),
    ``ordered`` (an agent stopping itself: not waited for), ``pending`` (the timeout passed
    while a runner elsewhere still works; the order stands)."""
    round: int | None = None
    returned: list[int] = []
    requeued: int = 0
    host: str | None = None

    def outcome_json(self) -> dict[str, Any]:
        """The agent's JSON with what happened: ``outcome``, ``round``, ``returned`` (#N)."""
        return {**self.agent.model_dump(mode="json", by_alias=True), "outcome": self.outcome,
                "round": self.round, "returned": self.returned, "requeued": self.requeued}

    def sentence(self) -> str:
        """One line for a human: what happened to the agent and its work."""
        name = self.agent.name
        back = ""
        if self.returned:
            tasks = ", ".join(f"#{n}" for n in self.returned)
            noun = "task" if len(self.returned) == 1 else "tasks"
            back = f", {noun} {tasks} went back to the backlog"
        where = f" on {self.host}" if self.host else ""
        restarted = self.agent.state not in GONE
        done = "restarted" if restarted else "stopped"
        if self.outcome == "after_round":
            return f"{done} {name} after its round{f' {self.round}' if self.round else ''}"
        if self.outcome == "cut_off":
            which = f"round {self.round}" if self.round else "round"
            return f"{done} {name}; its {which} was cut off{back or ', nothing was lost'}"
        if self.outcome == "idle":
            return f"{done} {name} (it was idle)"
        if self.outcome == "reclaimed":
            return f"{name}'s runner{where} was gone; marked {self.agent.state.value}{back}"
        if self.outcome == "ordered":
            return f"{name} will stop after its round (ordered)"
        if self.outcome == "pending":
            return (f"{name}'s runner{where} has not stopped yet; the order stands and it stops "
                    "after its round")
        return f"{name} is {self.agent.state.value}; no runner was running"


class Orders:
    """Orders to runners: written by whoever stops an agent, carried out by the runner."""

    def __init__(self, town: Town) -> None:
        self.town = town

    def _key(self, agent: Agent) -> str:
        return self.town.keys.order(agent.id)

    # ----------------------------------------------------------------- the order's record

    async def current(self, agent: Agent) -> Order | None:
        """The agent's latest order (carried out or not), or None."""
        async with wrap_redis_errors():
            raw = await self.town.redis.hgetall(self._key(agent))
        if not raw or "id" not in raw:
            return None
        return Order.from_redis(raw)

    async def post(self, agent: Agent, action: Literal["stop", "restart"], *, now: bool, by: str) -> Order:
        """Order the agent's runner to stop (or restart); an order it has not carried out yet
        is made stronger instead (``now`` once asked stays; a restart stays a restart)."""
        pending = await self.current(agent)
        if pending is not None and pending.done is None:
            order = pending.model_copy(update={
                "now": pending.now or now,
                "action": "restart" if "restart" in (pending.action, action) else "stop",
            })
        else:
            order = Order(id=uuid.uuid4().hex, action=action, now=now, by=by, host=this_host(),
                          at=await self.town.now_ms())
        plan = Plan()
        key = self.town._k(self._key(agent))
        plan.guard(self.town._k(self.town.keys.agent(agent.id)), "name", [agent.name], "not_found",
                   f"agent {agent.name} was removed")
        fields = order.to_redis()
        plan.hset.append([key, fields])
        plan.hdel.append([key, [f for f in Order.model_fields if f not in fields]])
        plan.event("agent.order", agent=agent.name, order=order.id, action=order.action,
                   now=order.now, by=by)
        await self.town.channel.apply(plan)
        return order

    async def note_seen(self, agent: Agent, order: Order, round_number: int | None) -> None:
        """The runner saw the order (in round ``round_number``, or idle)."""
        fields = {"seen": str(await self.town.now_ms())}
        if round_number is not None:
            fields["round"] = str(round_number)
        await self._update(agent, order, fields, "agent.order_seen", round=round_number)

    async def finish(
        self, agent: Agent, order: Order, outcome: str, returned: list[int], requeued: int,
        round_number: int | None,
    ) -> None:
        """The runner carried the order out (written before it leaves the agent stopped)."""
        fields = {"done": str(await self.town.now_ms()), "outcome": outcome,
                  "returned": Order.model_validate({"id": "x", "by": "x", "returned": returned})
                  .to_redis()["returned"], "requeued": str(requeued)}
        if round_number is not None:
            fields["round"] = str(round_number)
        await self._update(agent, order, fields, "agent.order_done", outcome=outcome)

    async def _update(self, agent: Agent, order: Order, fields: dict[str, str], event: str,
                      **data: object) -> None:
        plan = Plan()
        key = self.town._k(self._key(agent))
        plan.guard(key, "id", [order.id], "conflict", "the order was replaced")
        plan.hset.append([key, fields])
        plan.event(event, agent=agent.name, order=order.id, **data)
        with contextlib.suppress(Conflict):
            await self.town.channel.apply(plan)

    # ----------------------------------------------------------------- liveness

    def _local_lock(self, agent: Agent) -> tuple[bool, int | None]:
        """``(known, pid)``: whether this machine's town directory knows the runner's lock,
        and the pid holding it (None: free)."""
        paths = self.town.paths
        if paths is None or agent.cli is None or (agent.host not in (None, this_host())):
            return False, None
        lock = lock_path(paths, agent.name)
        if not lock.exists():
            return False, None
        return True, lock_holder(lock)

    async def runner_alive(self, agent: Agent) -> bool:
        """A runner drives the agent: its lock here is held, or (a runner elsewhere, or one
        whose lock this directory does not hold) it was seen within ``stale_after_s`` on
        Redis's clock."""
        if agent.cli is None or agent.state in GONE:
            return False
        known, pid = self._local_lock(agent)
        if known:
            return pid is not None
        return not agent.is_stale(self.town.config.stale_after_s, at_ms=await self.town.now_ms())

    async def live_runners(self) -> list[Agent]:
        """Spawned agents whose runner lives (here or on another machine)."""
        return [a for a in await self.town.list_agents() if await self.runner_alive(a)]

    # ----------------------------------------------------------------- stop and wait

    async def stop(
        self,
        agent: Agent,
        *,
        by: str,
        now: bool = False,
        timeout_s: float | None = None,
        restart: bool = False,
        on_wait: Callable[[str], None] | None = None,
    ) -> StopOutcome:
        """Order the runner to stop (or restart) and wait until it has (see :meth:`wait`).
        A runner found dead is recovered instead; an agent stopping itself is not waited for."""
        if not await self.runner_alive(agent):
            return await self._not_running(agent)
        order = await self.post(agent, "restart" if restart else "stop", now=now, by=by)
        if by == agent.name:
            return StopOutcome(agent=agent, outcome="ordered", host=agent.host)
        return await self.wait(agent, order, timeout_s=timeout_s, on_wait=on_wait)

    async def _not_running(self, agent: Agent) -> StopOutcome:
        if agent.cli is not None and agent.state not in GONE:
            from tinytown.supervisor import RecoverReport

            report = RecoverReport()
            await self.town._recover_agent(agent, None, report)
            numbers = [await self._number(r["task_id"]) for r in report.reclaimed]
            return StopOutcome(agent=await self.town.get_agent(agent.name), outcome="reclaimed",
                               returned=[n for n in numbers if n], host=agent.host,
                               requeued=report.requeued.get(agent.name, 0))
        if agent.state not in GONE:
            agent = await self.town.update_agent(agent.name, state=AgentState.STOPPED, pid=None)
        return StopOutcome(agent=agent, outcome="not_running", host=agent.host)

    async def _number(self, task_id: str | None) -> int | None:
        if not task_id:
            return None
        with contextlib.suppress(NotFound):
            return (await self.town.get_task(task_id)).number
        return None

    async def wait(
        self,
        agent: Agent,
        order: Order,
        *,
        timeout_s: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> StopOutcome:
        """Wait (on the event stream) until the runner carried ``order`` out.

        ``on_wait`` gets one line when the wait is visible: a round is running.  After
        ``timeout_s`` the order becomes ``now``; a runner on this machine still there
        :data:`ESCALATE_GRACE_S` later is killed and recovered, one elsewhere is left to carry
        the order out (``pending``).  A runner that dies meanwhile is recovered.
        """
        last = await self.town.last_event_id()
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        told = False
        while True:
            try:
                fresh = await self.town.get_agent(agent.name)
            except NotFound:
                return StopOutcome(agent=agent, outcome="not_running", host=agent.host)
            # read after the agent: a runner records ``done`` before it leaves the agent
            # stopped, so a stopped agent read here comes with its order's outcome
            current = await self.current(agent)
            if current is not None and current.id == order.id and current.done is not None:
                return await self._carried_out(fresh, current)
            if not await self.runner_alive(fresh):
                return await self._not_running(fresh)
            if current is None or current.id != order.id:  # cleared (a reset) or replaced
                return StopOutcome(agent=fresh, outcome="pending", host=fresh.host)
            if not told and on_wait is not None:
                line = self._progress(fresh, current, time.monotonic() - started)
                if line:
                    on_wait(line)
                    told = True
            if deadline is not None and time.monotonic() >= deadline:
                if not current.now:
                    order = await self.post(fresh, order.action, now=True, by=order.by)
                    deadline = time.monotonic() + ESCALATE_GRACE_S
                    continue
                return await self._hung(fresh)
            events = await self.town.wait_events(last, 1.0)
            if events:
                last = events[-1].id

    def _progress(self, agent: Agent, order: Order, waited_s: float) -> str | None:
        hint = "Ctrl-C to stop waiting" + ("" if order.now else ", --now to interrupt")
        where = f" on {agent.host}" if agent.host and agent.host != this_host() else ""
        if order.seen is not None and order.round is not None:
            return f"waiting for {agent.name}'s round {order.round}{where} to finish ({hint})"
        if order.seen is None and waited_s >= 2.0:
            return f"waiting for {agent.name}'s runner{where} to take the order ({hint})"
        return None

    async def _carried_out(self, agent: Agent, order: Order) -> StopOutcome:
        if order.action == "restart":
            # the runner left the agent ``starting`` before it wrote ``done``
            agent = await self._until(agent, lambda a: a.state != AgentState.STARTING, RESTART_TIMEOUT_S)
        else:
            agent = await self._until(agent, lambda a: a.state in GONE, ESCALATE_GRACE_S)
            known, pid = self._local_lock(agent)
            if known and pid:
                await anyio.to_thread.run_sync(wait_exit, pid, ESCALATE_GRACE_S)
        outcome: Outcome = order.outcome if order.outcome in ("after_round", "cut_off") else "idle"  # type: ignore[assignment]
        return StopOutcome(agent=agent, outcome=outcome, round=order.round, returned=order.returned,
                           requeued=order.requeued, host=agent.host)

    async def _until(self, agent: Agent, done: Callable[[Agent], bool], timeout_s: float) -> Agent:
        """The agent once ``done(agent)`` holds (woken by its events), or as it is at the
        timeout."""
        last = await self.town.last_event_id()
        deadline = time.monotonic() + timeout_s
        while True:
            agent = await self.town.get_agent(agent.name)
            if done(agent) or time.monotonic() >= deadline:
                return agent
            events = await self.town.wait_events(last, min(1.0, deadline - time.monotonic()))
            if events:
                last = events[-1].id

    async def _hung(self, agent: Agent) -> StopOutcome:
        """The runner ignored a ``now`` order past its grace: one on this machine is killed
        (its group) and recovered; one elsewhere is left with the order (never reclaimed
        while it lives)."""
        known, pid = self._local_lock(agent)
        if known and pid:
            signal_process(pid, signal.SIGKILL, group=True)
            await anyio.to_thread.run_sync(wait_exit, pid, 5.0)
            return await self._not_running(await self.town.get_agent(agent.name))
        return StopOutcome(agent=agent, outcome="pending", host=agent.host)
