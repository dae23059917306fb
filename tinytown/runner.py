"""The runner: the process that drives one spawned agent (SPEC 5).

``tt agent run NAME`` (started detached by :meth:`Town.spawn_agent`) holds the agent's
lock, takes over its mailbox and loops:

1. blocking receive (in slices, so heartbeats, pauses and stops are noticed);
2. a batch with actionable messages (``task``, ``query``, ``custom``) is one *round*: the
   preset's CLI runs once with a prompt listing the messages, in the town directory, with
   ``TINYTOWN_TOWN``, ``TINYTOWN_AGENT``, ``TINYTOWN_TASK_ID`` (one task) and
   ``TINYTOWN_MCP_CONFIG``; its output goes to ``.tt/logs/<name>.round-<n>.log``;
   heartbeats continue meanwhile.  The runner log records the argv (prompt elided) and the
   names of the environment variables the round set;
3. after the CLI exits, a task of the round still ``running`` (same attempt) was not
   reported (a CLI that reported through MCP or ``tt`` already finished it).  After exit 0
   the CLI gets one *follow-up round* whose prompt asks it to report those tasks now; a task
   still unreported then fails, "the agent did not report", with the output tail.  A
   non-zero exit fails it at once.  Either way ``decided_by = runner``.  A preset that cannot
   report (``reports = false``) has its tasks decided by the exit code instead (0 completed,
   else failed; ``decided_by = exit_code``).  Then the round's messages are acknowledged;
4. a batch of only ``info``/``ack``/notices is acknowledged without a run.

Orders (:mod:`tinytown.orders`, what ``tt kill``/``restart``/``stop`` send from any machine):
the runner wakes on an ``agent.order`` event while it waits for mail or runs a round, and
reads its order key between rounds.  A stop ends the loop after the current round; ``now``
also kills the round's CLI; a restart starts the successor (``--after-pid``) before leaving.
Signals: SIGTERM or SIGINT stop the runner after the current round; a second one kills the
round's CLI (Ctrl-C twice on a runner started by hand).  A round cut off while a stop is
pending is given back by the runner itself: its tasks to the backlog, its messages to the
inbox (logged, and recorded in the order's outcome).  ``max_rounds`` and ``idle_timeout_s``
end the loop.  On every way out the agent is left ``stopped`` (``error`` after a crash,
logged with the traceback).

Sessions: the runner owns the agent's mailbox session.  Each round gets a credential
(:meth:`Town.begin_round`) that the generated MCP config passes to ``tinytown-mcp`` as
``TINYTOWN_ROUND``: the round's MCP session joins the runner's session instead of taking the
mailbox over, so the round's messages stay in flight with the runner (the agent is never
shown its own task as pending, nor handed it again) and ``receive`` in the round gets only
new mail.  The credential is revoked when the round ends.  After the round, whatever the
round's session received and did not acknowledge comes back to the inbox.  A session from
outside under the agent's name is refused while the runner lives (``--take-over`` overrides:
the runner then stops and leaves the agent to that session).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import Process

from tinytown.config import TownPaths
from tinytown.errors import Conflict, Invalid, NotFound, TinytownError, Unavailable
from tinytown.masking import MaskingFormatter
from tinytown.models import (
    Agent,
    AgentState,
    Message,
    MessageKind,
    Task,
    TaskDecider,
    TaskState,
    normalise_agent_name,
)
from tinytown.presets import Preset, RoundInputs, resolve_preset, round_env
from tinytown.private import open_private, user_umask, write_private
from tinytown.processes import (
    RunnerLock,
    agent_file_stem,
    lock_path,
    next_round_number,
    round_log_path,
    round_prompt_path,
    this_host,
    wait_exit,
)
from tinytown.prompting import render_followup_prompt, render_round_prompt

if TYPE_CHECKING:
    from tinytown.orders import Order
    from tinytown.town import Town

log = logging.getLogger("tinytown.runner")

RECEIVE_SLICE_S = 10.0
HEARTBEAT_EVERY_S = 5.0
BATCH = 10
TAIL_BYTES = 2048
HANDLED_MEMORY = 1000


@dataclass
class RoundResult:
    number: int
    exit_code: int
    interrupted: bool
    log: Path
    log_offset: int  # where this round's output starts in the log


class Runner:
    """The loop of one agent's runner.  :meth:`run` returns when the runner should exit."""

    def __init__(
        self,
        town: Town,
        name: str,
        *,
        max_rounds: int | None = None,
        idle_timeout_s: float | None = None,
        receive_slice_s: float = RECEIVE_SLICE_S,
        heartbeat_every_s: float = HEARTBEAT_EVERY_S,
    ) -> None:
        if town.paths is None:
            raise Invalid("a runner needs a town directory (for its logs and MCP config)")
        self.town = town
        self.paths: TownPaths = town.paths
        self.name = name
        self.max_rounds = max_rounds
        self.idle_timeout_s = idle_timeout_s if idle_timeout_s is not None else town.config.idle_timeout_s
        # an idle runner's heartbeat is its receive: often enough that other machines never
        # see it stale (``stale_after_s``) while it waits for mail
        self.receive_slice_s = min(receive_slice_s, town.config.stale_after_s / 3)
        self.heartbeat_every_s = min(heartbeat_every_s, town.config.stale_after_s / 3)
        self.rounds = 0
        self.stop_requested = False
        self.stop_reason = ""
        self._pause_requested = False
        self._idle_scope: anyio.CancelScope | None = None
        self._changed: anyio.Event | None = None
        self._session = ""
        self._handled: OrderedDict[str, None] = OrderedDict()
        self._preset: Preset | None = None
        self._last_ok = time.monotonic()
        self._events_after = ""
        self._looped = False
        self._process: Process | None = None
        self._round_number: int | None = None
        self._order: Order | None = None
        self._order_round: int | None = None
        self._cut_off = False
        self._returned: list[int] = []
        self._requeued = 0
        self._workdir: Path | None = None  # the agent's git worktree, when it has one
        self._round_tasks: list[str] = []
        self._branch: str | None = None

    # ----------------------------------------------------------------- outer shell

    async def run(self) -> AgentState:
        """Run until stopped; leave the agent ``stopped`` (or ``error``) and return that state."""
        final = AgentState.STOPPED
        try:
            agent = await self.town.get_agent(self.name)
            if agent.cli is None:
                raise Invalid(f"agent {self.name} was attached, not spawned: it has no CLI preset to run")
            self._preset = resolve_preset(self.town.config, agent.cli)
            self._preset.locate()
            if self.max_rounds is None:
                self.max_rounds = agent.max_rounds
            after = await self.town.last_event_id()
            await self.town.update_agent(self.name, pid=os.getpid(), host=this_host())
            agent, self._session, requeued = await self.town.open_session(
                self.name, attach=False, runner=True
            )
            log.info("runner of %s started (pid %d, preset %s, %d message(s) requeued)",
                     self.name, os.getpid(), agent.cli, requeued)
            if agent.worktree:  # what a round that died left in the worktree is kept
                self._workdir = await self.town.worktrees.prepare(self.name)
                await self.town.worktrees.commit_leftovers(self.name)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_signals)
                tg.start_soon(self._outlast, self._watch_events, after)
                try:
                    await self._outlast(self._loop)
                finally:
                    tg.cancel_scope.cancel()
        except TinytownError as error:
            log.error("runner of %s stops: %s", self.name, error)
            final = AgentState.ERROR
            raise
        except BaseExceptionGroup as group:
            leaf = _sole_error(group)
            if isinstance(leaf, NotFound):  # removed (a reset, a prune): nothing to leave
                log.info("runner of %s stops: %s", self.name, leaf)
                self.stop_reason = "the agent was removed"
            elif isinstance(leaf, TinytownError):
                log.error("runner of %s stops: %s", self.name, leaf)
                final = AgentState.ERROR
                raise leaf from None
            else:
                log.exception("runner of %s crashed", self.name)
                final = AgentState.ERROR
                raise
        except Exception:
            log.exception("runner of %s crashed", self.name)
            final = AgentState.ERROR
            raise
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                final = await self._end(final)
        log.info("runner of %s %s after %d round(s)%s", self.name,
                 "restarts" if final == AgentState.STARTING else "stopped", self.rounds,
                 f": {self.stop_reason}" if self.stop_reason else "")
        return final

    async def _end(self, final: AgentState) -> AgentState:
        """Carry out the order (if one stopped this runner) and leave the agent.  A restart
        starts the successor first and leaves the agent ``starting`` for it (returned)."""
        order = self._order
        if order is None or final == AgentState.ERROR:
            await self._leave(final)
            return final
        try:
            agent = await self.town.get_agent(self.name)
        except TinytownError as error:
            log.warning("could not carry out the order for %s: %s", self.name, error)
            return final
        outcome = "cut_off" if self._cut_off else "after_round" if self._order_round else "idle"
        if order.action == "restart":
            self.town.start_successor(self.name, os.getpid())
            await self._leave(AgentState.STARTING)
            final = AgentState.STARTING
        try:
            await self.town.orders.finish(agent, order, outcome, self._returned, self._requeued,
                                          self._order_round)
        except TinytownError as error:
            log.warning("could not record the outcome of the order for %s: %s", self.name, error)
        if final != AgentState.STARTING:
            await self._leave(final)
        return final

    async def _leave(self, final: AgentState) -> None:
        """The agent no longer claims this process: ``stopped``/``error``, no pid, no session."""
        try:
            agent = await self.town.get_agent(self.name)
            fields: dict[str, Any] = {"pid": None}
            if agent.session == self._session:
                fields.update(state=final, session=None, session_pid=None)
            # else a session from outside took the agent over on purpose: it is that one's now
            await self.town.update_agent(self.name, **fields)
        except TinytownError as error:
            log.warning("could not mark %s %s: %s", self.name, final.value, error)

    def request_stop(self, reason: str) -> None:
        self.stop_requested = True
        self.stop_reason = self.stop_reason or reason
        self._wake()

    def _wake(self) -> None:
        if self._idle_scope is not None:
            self._idle_scope.cancel()
        if self._changed is not None:
            self._changed.set()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stop_requested and self._process is not None and self._process.returncode is None:
                    log.info("runner of %s got %s again: killing the round's CLI", self.name, name)
                    self._process.kill()
                    continue
                log.info("runner of %s got %s: stopping after this round", self.name, name)
                self.request_stop(f"signal {name}")

    async def _outlast(self, step: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``step`` again while Redis is unavailable, for at most ``stale_after_s`` without
        any success (a restarted Redis should not kill every runner; one gone for longer has
        had this runner counted dead by every other machine, which may reclaim its work)."""
        delay = 0.5
        while True:
            try:
                return await step(*args)
            except Unavailable as error:
                outage_s = self.town.config.stale_after_s
                if time.monotonic() - self._last_ok > outage_s:
                    log.error("%s: giving up: Redis has been unreachable for %g s (%s)",
                              self.name, outage_s, error)
                    raise
                log.warning("%s: %s; retrying in %.1f s", self.name, error, delay)
                await anyio.sleep(delay)
                # at most 2 s apart: a failover of the town's primary takes a few seconds, and
                # a longer wait would be idle time after the new primary serves the town
                delay = min(delay * 2, 2.0)

    async def _watch_events(self, after: str) -> None:
        """Wake the idle loop when this agent is paused, resumed or removed."""
        self._events_after = self._events_after or after
        async for event in self.town.follow(after=self._events_after, block_s=self.receive_slice_s):
            self._events_after = event.id
            if event.data.get("agent") != self.name:
                continue
            if event.type == "agent.paused":
                self._pause_requested = True
                self._wake()
            elif event.type == "agent.idle" and event.data.get("previous") == "paused":
                self._pause_requested = False  # resumed
                self._wake()
            elif event.type in ("agent.stopped", "agent.error", "agent.pruned"):
                self.request_stop(f"the agent was marked {event.type.removeprefix('agent.')}")
            elif event.type == "agent.order":
                await self._take_order()

    async def _take_order(self, agent: Agent | None = None) -> None:
        """Act on a lifecycle order for this agent (:mod:`tinytown.orders`): stop after the
        round, or with ``now`` cut the round's CLI off too."""
        agent = agent or await self.town.get_agent(self.name)
        order = await self.town.orders.current(agent)
        if order is None or order.done is not None:
            return
        known = self._order
        if known is not None and known.id == order.id and (known.now or not order.now):
            return
        self._order = order
        if known is None or known.id != order.id:
            self._order_round = self._round_number
            await self.town.orders.note_seen(agent, order, self._round_number)
            log.info("%s: %s ordered by %s (from %s)%s", self.name,
                     "restart" if order.action == "restart" else "stop", order.by,
                     order.host or "?", ", now" if order.now else ", after the round")
            self.request_stop(f"{order.action} ordered by {order.by}")
        process = self._process
        if order.now and process is not None and process.returncode is None:
            log.info("%s: cutting round %s off (ordered now)", self.name, self._round_number)
            self._cut_off = True
            process.kill()

    # ----------------------------------------------------------------- the loop

    async def _loop(self) -> None:
        if self._looped:  # again, after Redis was away: redo what was in flight
            await self.town.requeue_in_flight(self.name)
        self._looped = True
        idle_since = time.monotonic()
        while not self.stop_requested:
            if self.max_rounds is not None and self.rounds >= self.max_rounds:
                self.stop_reason = f"max_rounds ({self.max_rounds}) reached"
                return
            agent = await self.town.get_agent(self.name)
            self._last_ok = time.monotonic()
            await self._take_order(agent)
            if self.stop_requested:
                return
            if agent.state in (AgentState.STOPPED, AgentState.ERROR):
                self.stop_reason = f"the agent was marked {agent.state.value}"
                return
            self._pause_requested = False
            if agent.state == AgentState.PAUSED:
                await self._wait_while_paused()
                idle_since = time.monotonic()
                continue
            timeout = self.receive_slice_s
            if self.idle_timeout_s is not None:
                left = self.idle_timeout_s - (time.monotonic() - idle_since)
                if left <= 0:
                    self.stop_reason = f"idle for {self.idle_timeout_s:g} s"
                    return
                timeout = min(timeout, left)
            messages = await self._receive(timeout)
            if not messages:
                continue
            if self._pause_requested or (await self.town.get_agent(self.name)).state == AgentState.PAUSED:
                # a pause raced the receive: the batch goes back to wait for the resume.  (A stop
                # that raced it does not: what was received is this runner's last round.)
                await self.town.requeue_in_flight(self.name)
                continue
            if await self._handle(messages):
                idle_since = time.monotonic()

    async def _receive(self, timeout_s: float) -> list[Message]:
        """One receive slice; a pause or stop interrupts it (anything popped is requeued)."""
        with anyio.CancelScope() as scope:
            self._idle_scope = scope
            if self.stop_requested or self._pause_requested:
                scope.cancel()
            try:
                got = await self.town.receive(
                    self.name, timeout_s=timeout_s, max_messages=BATCH, session=self._session,
                    ack_previous=False,
                )
                return got.messages
            except Conflict as error:
                self.request_stop(f"another session took over the mailbox ({error.message})")
                return []
            finally:
                self._idle_scope = None
        await self.town.requeue_in_flight(self.name)
        return []

    async def _wait_while_paused(self) -> None:
        log.info("%s is paused; waiting for resume", self.name)
        while not self.stop_requested:
            self._changed = anyio.Event()
            agent = await self.town.get_agent(self.name)
            if agent.state != AgentState.PAUSED:
                log.info("%s resumed", self.name)
                return
            with anyio.move_on_after(self.receive_slice_s):
                await self._changed.wait()
            await self.town.heartbeat(self.name)

    # ----------------------------------------------------------------- a batch

    async def _handle(self, messages: Sequence[Message]) -> bool:
        """Run a round for the batch if it is actionable, else acknowledge it.  True: ran."""
        agent = await self.town.get_agent(self.name)
        shown: list[Message] = []
        tasks: dict[str, Task] = {}
        actionable = False
        for message in messages:
            if message.id in self._handled:
                continue  # came back after the round's CLI session took the mailbox over
            if message.kind == MessageKind.TASK and message.task_id:
                task = await self._live_task(message.task_id, agent.id)
                if task is None:
                    log.info("%s: task %s of message %s is no longer this agent's; acknowledged",
                             self.name, message.task_id, message.id)
                    continue
                tasks[task.id] = task
            actionable = actionable or message.kind.actionable
            shown.append(message)
        ids = [m.id for m in messages]
        if not actionable:
            await self.town.ack(self.name, ids)
            self._remember(ids)
            return False
        result = await self._round(shown, tasks)
        if result.interrupted:
            self.stop_reason = f"round {result.number} interrupted"
            await self._give_back_round(result.number)
            return True
        if await self._taken_over():
            return True
        followup: RoundResult | None = None
        unreported = await self._unreported(tasks)
        assert self._preset is not None
        if result.exit_code == 0 and unreported and self._preset.reports:
            followup = await self._followup(result, unreported)
            if followup.interrupted:
                self.stop_reason = f"round {result.number} interrupted (in its follow-up)"
                await self._give_back_round(result.number)
                return True
            if await self._taken_over():
                return True
        await self._keep_work(tasks)  # committed before the runner decides what it did
        await self._settle_tasks(tasks, result, followup)
        await self.town.ack(self.name, ids)
        self._remember(ids)
        await self._after_round(result)
        return True

    async def _give_back_round(self, number: int) -> None:
        """A round cut off by a stop: its tasks go back to the backlog and its messages back
        to the inbox, by this runner itself (no one outside touches a live runner's work)."""
        self._cut_off = True
        if await self._taken_over():
            return
        await self._keep_work(self._round_tasks)  # its partial work stays on its branch
        moved = await self.town.reclaim_tasks(self.name)
        self._requeued = await self.town.requeue_in_flight(self.name)
        self._returned = [t.number for t in moved if t.number]
        log.info("%s: round %d was cut off; %s back to the backlog, %d message(s) back in the "
                 "inbox", self.name, number, ", ".join(f"task #{n}" for n in self._returned) or
                 "no task", self._requeued)

    async def _keep_work(self, task_ids: Iterable[str]) -> None:
        """In a worktree: commit what the round left on its task's branch, record the change."""
        if self._workdir is not None and task_ids:
            for task in await self.town.worktrees.finish_round(self.name, list(task_ids)):
                log.info("%s: task #%s is on %s at %s (%s)", self.name, task.number, task.branch,
                         (task.head or "")[:10], task.diffstat)

    async def _taken_over(self) -> bool:
        """Taken over on purpose during the round: the round's messages and tasks went to the
        new session; settling them here would finish its work behind its back."""
        if (await self.town.get_agent(self.name)).session == self._session:
            return False
        self.request_stop("a session from outside took the agent over")
        return True

    async def _live_task(self, task_id: str, agent_id: str) -> Task | None:
        try:
            task = await self.town.get_task(task_id)
        except NotFound:
            return None
        if task.assigned_to != agent_id or task.state not in (TaskState.ASSIGNED, TaskState.RUNNING):
            return None
        return task

    def _remember(self, ids: Sequence[str]) -> None:
        for mid in ids:
            self._handled[mid] = None
        while len(self._handled) > HANDLED_MEMORY:
            self._handled.popitem(last=False)

    async def _unreported(self, tasks: Mapping[str, Task]) -> list[Task]:
        """The round's tasks still ``running`` on the same attempt: nobody reported them (not
        the CLI, not the conductor; not cancelled or reassigned meanwhile)."""
        left = []
        for task_id, started in tasks.items():
            task = await self.town.get_task(task_id)
            if task.state == TaskState.RUNNING and task.attempt == started.attempt:
                left.append(task)
        return left

    async def _settle_tasks(
        self, tasks: Mapping[str, Task], result: RoundResult, followup: RoundResult | None
    ) -> None:
        """Conclude a task the CLI left ``running`` (with the output tail), and record that the
        runner decided it, never the agent:

        * a preset that cannot report: its exit code decides (``decided_by = exit_code``);
        * a non-zero exit: failed (``runner``);
        * exit 0 and no report even after the follow-up round: failed, "the agent did not
          report" (``runner``) — a CLI that could not reach its tools is no success.
        """
        assert self._preset is not None
        preset = self._preset
        tail = read_tail(result.log, start=result.log_offset)
        for task in await self._unreported(tasks):
            decider = TaskDecider.RUNNER if preset.reports else TaskDecider.EXIT_CODE
            if not preset.reports and result.exit_code == 0:
                text = tail or f"{preset.name} exited 0 without output"
            elif result.exit_code != 0:
                text = f"{preset.name} exited with code {result.exit_code}"
            elif followup is not None and followup.exit_code != 0:
                text = (f"the agent did not report: {preset.name} exited 0 without reporting, "
                        f"and in the follow-up round it exited with code {followup.exit_code}")
            else:
                text = (f"the agent did not report: {preset.name} exited 0 without reporting, "
                        "also after a follow-up round that asked it to")
            completed = not preset.reports and result.exit_code == 0
            if not completed and tail:
                text = f"{text}:\n{tail}"
            log.info("%s: task %s %s (decided by %s)", self.name, task.id,
                     "completed" if completed else "failed", decider.value)
            try:
                if completed:
                    await self.town.complete_task(task.id, text, by=self.name,
                                                  attempt=task.attempt, decided_by=decider)
                else:
                    await self.town.fail_task(task.id, text, by=self.name,
                                              attempt=task.attempt, decided_by=decider)
            except Conflict:
                pass  # reported meanwhile: the CLI's own report stands

    async def _after_round(self, result: RoundResult) -> None:
        self.rounds += 1
        self._round_number = None
        try:
            await self.town.update_agent(
                self.name, expect_state=[AgentState.WORKING, AgentState.IDLE], state=AgentState.IDLE
            )
        except Conflict:
            pass  # paused (or stopped) during the round: keep that
        # what the round's session received beyond the round (all of the runner's own batch
        # is acknowledged by now) and did not acknowledge comes back: the session has ended
        requeued = await self.town.requeue_in_flight(self.name)
        if requeued:
            log.info("%s: %d message(s) the round's session left unacknowledged are back",
                     self.name, requeued)
        # a task the round claimed and left unfinished comes back as a message: next round
        for task in await self.town.handback.give_back(self.name):
            log.info("%s: task %s the round left running comes back", self.name, task.id)
        await self.town.count_round(self.name, number=result.number, exit_code=result.exit_code)

    # ----------------------------------------------------------------- a round

    async def _round(self, messages: Sequence[Message], tasks: Mapping[str, Task]) -> RoundResult:
        assert self._preset is not None
        agent = await self.town.get_agent(self.name)
        number = next_round_number(self.paths, self.name, agent.rounds_completed)
        task_ids = list(tasks)
        fields: dict[str, Any] = {"state": AgentState.WORKING}
        if task_ids:
            fields["current_task"] = task_ids[0]
        agent = await self.town.update_agent(self.name, **fields)
        self._round_number = number
        if self._order is not None and self._order_round is None:
            self._order_round = number  # what it received before the order is its last round
        self._round_tasks = task_ids
        self._branch = None
        if self._workdir is not None and task_ids:
            started = await self.town.worktrees.start_task(self.name, tasks[task_ids[0]])
            self._branch = started.branch
        prompt = render_round_prompt(agent, self.town.name, self.paths.root, messages, tasks,
                                     reports=self._preset.reports, workdir=self._workdir,
                                     branch=self._branch)
        log.info("%s round %d: %d message(s), task(s) %s", self.name, number, len(messages),
                 ", ".join(task_ids) or "none")
        return await self._launch(number, prompt, task_ids, "")

    async def _followup(self, result: RoundResult, unreported: Sequence[Task]) -> RoundResult:
        """The one follow-up of a round that exited 0 without reporting: the CLI runs again,
        asked to report those tasks now (its output goes on in the round's log)."""
        agent = await self.town.get_agent(self.name)
        prompt = render_followup_prompt(agent, self.town.name, self.paths.root, unreported)
        ids = [t.id for t in unreported]
        log.info("%s round %d: exited 0 without reporting task(s) %s; a follow-up round asks "
                 "it to report", self.name, result.number, ", ".join(ids))
        with open_private(result.log) as out:
            out.write(f"\n--- tinytown: follow-up round: task(s) {', '.join(ids)} were not "
                      "reported ---\n".encode())
        return await self._launch(result.number, prompt, ids, ".followup")

    async def _launch(self, number: int, prompt: str, task_ids: Sequence[str], label: str) -> RoundResult:
        """Run the preset's CLI once with ``prompt``, output appended to the round's log."""
        from tinytown.mcp_config import write_agent_mcp_config

        assert self._preset is not None
        preset = self._preset
        prompt_file = round_prompt_path(self.paths, self.name, number, label)
        write_private(prompt_file, prompt)
        # the round's MCP session joins this runner's session with this credential
        credential = await self.town.begin_round(self.name)
        mcp_config = write_agent_mcp_config(self.paths, self.name, round_credential=credential)
        inputs = RoundInputs(prompt=prompt, prompt_file=prompt_file, mcp_config=mcp_config,
                             agent=self.name, town=self.paths.root)
        server = _tinytown_server(mcp_config)
        argv = preset.argv(inputs, server)
        extra = {
            **preset.server_env(server),
            "TINYTOWN_TOWN": str(self.paths.root),
            "TINYTOWN_AGENT": self.name,
            "TINYTOWN_TASK_ID": task_ids[0] if len(task_ids) == 1 else None,
            "TINYTOWN_MCP_CONFIG": str(mcp_config),
            "TINYTOWN_WORKTREE": str(self._workdir) if self._workdir is not None else None,
            "TINYTOWN_BRANCH": self._branch,
        }
        env = round_env(os.environ, preset, extra, inputs)
        log_path = round_log_path(self.paths, self.name, number)
        what = f"round {number}{' follow-up' if label else ''}"
        log.info("%s %s: %s runs %s (log %s)", self.name, what, preset.name,
                 describe_argv(argv, prompt, preset.stdin(prompt) is not None,
                               hide=_env_of(server)), log_path)
        changed, removed = env_changes(os.environ, env, [*preset.env, *extra])
        log.info("%s %s: environment set %s%s", self.name, what, ", ".join(changed) or "nothing",
                 f"; unset {', '.join(removed)}" if removed else "")
        offset = log_path.stat().st_size if log_path.exists() else 0
        try:
            exit_code = await self._run_cli(argv, preset.stdin(prompt), env, log_path)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self.town.end_round(self.name)
        interrupted = self.stop_requested and exit_code < 0
        log.info("%s %s: %s exited with %d%s", self.name, what, preset.name, exit_code,
                 " (interrupted by a stop)" if interrupted else "")
        return RoundResult(number, exit_code, interrupted, log_path, offset)

    async def _run_cli(
        self, argv: list[str], stdin: bytes | None, env: dict[str, str], log_path: Path
    ) -> int:
        with open_private(log_path) as out:
            process = await anyio.open_process(
                argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, cwd=self._workdir or self.paths.root, env=env,
                umask=user_umask(),  # the CLI writes the user's files: the user's umask
            )
            self._process = process
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._heartbeats)
                    if stdin is not None:
                        tg.start_soon(_feed, process, stdin)
                    code = await process.wait()
                    tg.cancel_scope.cancel()
            finally:
                self._process = None
                if process.returncode is None:  # the runner itself is going down
                    process.kill()
                    with anyio.CancelScope(shield=True):
                        await process.wait()
        return code

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat_every_s)
            try:
                await self.town.heartbeat(self.name)
                self._last_ok = time.monotonic()
            except TinytownError as error:
                log.warning("heartbeat of %s failed: %s", self.name, error)


async def _feed(process: Process, data: bytes) -> None:
    """Write the prompt to the CLI's stdin and close it (a CLI may exit without reading)."""
    assert process.stdin is not None
    try:
        await process.stdin.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        try:
            await process.stdin.aclose()
        except (anyio.BrokenResourceError, OSError):
            pass


def _env_of(server: Mapping[str, Any]) -> dict[str, str]:
    env = server.get("env")
    return {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}


def _tinytown_server(mcp_config: Path) -> dict[str, Any]:
    try:
        data = json.loads(mcp_config.read_text(encoding="utf-8"))
        server = data["mcpServers"]["tinytown"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return server if isinstance(server, dict) else {}


def describe_argv(
    argv: Sequence[str], prompt: str, on_stdin: bool, hide: Mapping[str, str] | None = None
) -> str:
    """A round's command line for the runner log: shell-quoted, the prompt elided, and the
    values of ``hide`` (the MCP server's environment, which Codex gets as ``-c`` overrides:
    a Redis password, the round's credential) shown as ``<NAME>``."""
    marker = f"<prompt {len(prompt)} chars>"
    shown = [a.replace(prompt, marker) if prompt and prompt in a else a for a in argv]
    for name, value in (hide or {}).items():
        if value:
            shown = [a.replace(value, f"<{name}>") for a in shown]
    text = shlex.join(shown)
    return f"{text} ({marker} on stdin)" if on_stdin else text


def env_changes(
    base: Mapping[str, str], env: Mapping[str, str], given: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The keys a round's environment sets (``given`` explicitly, or differing from ``base``)
    and the keys it removes: names only, for the log (values may be secrets)."""
    changed = {k for k in env if base.get(k) != env[k]} | {k for k in given if k in env}
    removed = [k for k in base if k not in env]
    return sorted(changed), sorted(removed)


def read_tail(path: Path, limit: int = TAIL_BYTES, start: int = 0) -> str:
    """The last ``limit`` bytes of a log after offset ``start``, as text, trimmed."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(start, size - limit))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace").strip()


def configure_runner_logging(level: int = logging.INFO) -> None:
    """Timestamped lines on stderr (``spawn`` sends them to ``.tt/logs/<name>.runner.log``)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING)
    for handler in root.handlers:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("tinytown").setLevel(level)


def _sole_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first leaf of an exception group (a task group re-raises one error that way)."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup) and first.exceptions:
        first = first.exceptions[0]
    return first


async def run_agent(
    town_path: Path | str | None,
    name: str,
    *,
    max_rounds: int | None = None,
    idle_timeout_s: float | None = None,
    after_pid: int | None = None,
) -> AgentState:
    """The body of ``tt agent run NAME``: lock, open the town, run.

    Raises:
        Conflict: another runner holds this agent's lock (nothing is changed).
        NotFound, Invalid, Unavailable: no such agent or town, a preset that cannot run,
            Redis down.
    """
    from tinytown.config import find_town_root
    from tinytown.town import Town

    name = agent_file_stem(normalise_agent_name(name))
    paths = TownPaths(find_town_root(town_path))
    lock = RunnerLock(lock_path(paths, name))
    if after_pid:  # a restart's successor: its predecessor holds the lock until it exits
        await anyio.to_thread.run_sync(wait_exit, after_pid, 30.0)
    # Held until this process exits (the kernel drops it then): "the lock is held" and "the
    # runner process lives" stay the same fact, which kill, wait and recover rely on.
    lock.acquire(name)
    town = await Town.open(paths.root)
    try:
        runner = Runner(town, name, max_rounds=max_rounds, idle_timeout_s=idle_timeout_s)
        return await runner.run()
    finally:
        await town.close()
