"""Spawned agents' lifecycle: spawn, kill, restart, pause/resume, wait, prune, recover.

:class:`LifecycleOps` is part of :class:`tinytown.town.Town` (a mixin, like the tasks), so the
CLI and the MCP tools ``spawn_agent``/``kill_agent`` share these methods.

A spawned agent is driven by a detached runner process (``tt agent run NAME``, see
:mod:`tinytown.runner`) in its own session and process group, started here with its output in
``.tt/logs/<name>.runner.log``.  Whether a runner lives is decided by its lock file
(:mod:`tinytown.processes`), never by a bare pid, so "agent state never claims a process
that is gone" can be checked and repaired: :meth:`recover` does it for the whole town,
:meth:`kill_agent` and :meth:`wait_agent` for the agent at hand.

Who may do what: the conductor may spawn, kill, restart, pause and resume any agent; any other
agent may spawn agents, and act on itself or on agents it spawned (``spawned_by``).

Stopping (``kill``, ``restart``, ``stop_all``) goes through :mod:`tinytown.orders`: the runner,
on this machine or another, gets an order through Redis and carries it out itself (finishes
its round, or with ``now`` cuts it off and gives the round's work back).  Nothing here acts
on a live runner's process or work from outside; only a runner that is demonstrably dead (its
lock free here, or no heartbeat for ``stale_after_s``) is recovered, and a runner on this
machine that ignores a ``now`` order past its grace gets SIGKILL and is recovered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from pydantic import BaseModel

from tinytown.channel import Plan
from tinytown.errors import Conflict, Forbidden, Invalid, NotFound, wrap_redis_errors
from tinytown.models import CONDUCTOR, Agent, AgentState, InboxCounts, Task, normalise_agent_name
from tinytown.private import open_private, private_dir
from tinytown.processes import lock_holder, lock_path, runner_log_path, signal_process, this_host, wait_exit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis

    from tinytown.channel import Channel
    from tinytown.config import TownConfig, TownPaths
    from tinytown.handback import Handback
    from tinytown.keys import Keys
    from tinytown.models import Message
    from tinytown.orders import Orders, StopOutcome
    from tinytown.presets import Preset
    from tinytown.worktrees import Worktrees

T = TypeVar("T")

START_TIMEOUT_S = 30.0
GONE_STATES = (AgentState.STOPPED, AgentState.ERROR)

# Runner processes this process started (a demo cleaning up after Ctrl-C kills them even
# before they hold their lock).
_started: list[subprocess.Popen[bytes]] = []


def runners_started_here() -> list[int]:
    """Pids of the runners this process started that have not exited."""
    return [p.pid for p in _started if p.poll() is None]


class RecoverReport(BaseModel):
    """What :meth:`LifecycleOps.recover` changed."""

    stopped: list[str] = []
    requeued: dict[str, int] = {}
    reclaimed: list[dict[str, str | None]] = []
    given_back: list[dict[str, str]] = []
    """Tasks of live agents held by a session that is gone, sent to the agent again."""


class Primer(BaseModel):
    """What ``tt prime`` tells an agent about itself."""

    agent: Agent
    town: str
    root: str | None
    current_task: Task | None
    inbox: InboxCounts


class LifecycleOps:
    """The process half of :class:`~tinytown.town.Town`."""

    if TYPE_CHECKING:
        config: TownConfig
        paths: TownPaths | None
        channel: Channel
        keys: Keys
        redis: Redis

        def _k(self, key: str) -> str: ...

        @property
        def handback(self) -> Handback: ...
        @property
        def orders(self) -> Orders: ...
        @property
        def worktrees(self) -> Worktrees: ...

        @property
        def name(self) -> str: ...
        async def get_agent(self, name: str) -> Agent: ...
        async def list_agents(self, state: AgentState | str | None = None) -> list[Agent]: ...
        def validate_agent_name(self, name: str) -> str: ...
        async def register_agent(
            self, name: str, *, cli: str | None = None, role: str | None = None,
            nickname: str | None = None, state: AgentState = AgentState.IDLE,
            max_rounds: int | None = None, spawned_by: str | None = None,
            worktree: bool | None = None, exist_ok: bool = False,
        ) -> Agent: ...
        async def update_agent(
            self, name: str, *, expect_state: Sequence[AgentState] | None = None, touch: bool = False,
            **fields: Any,
        ) -> Agent: ...
        async def delete_agent(self, name: str) -> None: ...
        async def requeue_in_flight(self, agent: str) -> int: ...
        async def now_ms(self) -> int: ...
        async def in_flight(self, agent: str) -> list[Message]: ...
        async def inbox_counts(self, agent: str) -> InboxCounts: ...
        async def reclaim_tasks(self, agent: str, to: str | None = None) -> list[Task]: ...
        async def get_task(self, task_id: str) -> Task: ...
        async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T: ...

    # ----------------------------------------------------------------- helpers

    def _town_paths(self) -> TownPaths:
        if self.paths is None:
            raise Invalid("spawned agents need a town directory (for their logs, locks and MCP config)")
        return self.paths

    def runner_pid(self, agent: Agent) -> int | None:
        """The pid of the live runner of ``agent`` (None: none runs; 0: starting up)."""
        if agent.cli is None or self.paths is None:
            return None
        return lock_holder(lock_path(self.paths, agent.name))

    def stop_runner(self, pid: int) -> None:
        """Ask a runner to stop after its current round (SIGTERM to the runner alone)."""
        with contextlib.suppress(OSError):
            signal_process(pid, signal.SIGTERM, group=False)

    def runner_known_gone(self, agent: Agent) -> bool:
        """A spawned agent whose runner, started from this town directory, has ended without
        a word: its record still names the runner's pid (a runner that stopped, or that left
        the agent to a session which took it over on purpose, cleared it)."""
        if agent.cli is None or self.paths is None or agent.state == AgentState.STARTING:
            return False
        if agent.pid is None:
            return False
        lock = lock_path(self.paths, agent.name)
        return lock.exists() and lock_holder(lock) is None

    async def _caller_may(self, by: str, agent: Agent, action: str) -> Agent:
        caller = await self.get_agent(by)
        if caller.name in (CONDUCTOR, agent.name) or agent.spawned_by == caller.name:
            return caller
        raise Forbidden(
            f"{caller.name} may not {action} {agent.name}: only the conductor, {agent.name} itself"
            f"{f' or {agent.spawned_by}, which spawned it' if agent.spawned_by else ''} can"
        )

    async def _lifecycle_target(self, name: str, by: str, action: str) -> Agent:
        agent = await self.get_agent(name)
        if agent.name == CONDUCTOR:
            raise Invalid("the conductor is the human's mailbox; it has no runner to " + action)
        await self._caller_may(by, agent, action)
        return agent

    # ----------------------------------------------------------------- spawn

    async def spawn_agent(
        self,
        name: str,
        *,
        cli: str | None = None,
        role: str | None = None,
        nickname: str | None = None,
        max_rounds: int | None = None,
        worktree: bool | None = None,
        by: str = CONDUCTOR,
    ) -> Agent:
        """Register an agent and start its runner for CLI preset ``cli`` (default: the town's
        ``default_cli``).  Returns once the runner is up (``idle``), or ``error`` if it died.
        ``worktree`` (default: the town's ``worktrees``): its rounds run in its own git
        worktree, a branch per task (:mod:`tinytown.worktrees`).

        Everything is checked before anything is written, so a refused spawn leaves nothing.

        Raises:
            Invalid: a bad or reserved name, an unknown preset (the message lists them), a
                preset whose program is not on PATH, ``max_rounds`` < 1.
            Conflict: the name is taken.
            NotFound: ``by`` is not an agent.
        """
        from tinytown.presets import resolve_preset

        caller = await self.get_agent(by)
        key = self.validate_agent_name(name)
        preset = resolve_preset(self.config, cli)
        preset.locate()
        self._town_paths()
        if max_rounds is not None and max_rounds < 1:
            raise Invalid("max_rounds must be at least 1 (leave it out for no limit)")
        isolated = self.config.worktrees if worktree is None else worktree
        if isolated:
            self.worktrees.repository()  # not a git repository: refused before anything is written
        await self.register_agent(
            key, cli=preset.name, role=role, nickname=nickname, state=AgentState.STARTING,
            max_rounds=max_rounds, spawned_by=caller.name, worktree=isolated or None,
        )
        if isolated:
            await self.worktrees.prepare(key)
        return await self._start_runner(key, preset)

    async def _start_runner(self, name: str, preset: Preset) -> Agent:
        async with wrap_redis_errors():  # an order to a runner before this one is history
            await self.redis.delete(self.keys.order((await self.get_agent(name)).id))
        after = await self.channel.last_event_id()
        proc = self._popen_runner(name)
        _started.append(proc)
        # Reap it when it ends, so a long-lived spawner (MCP server, demo) leaves no zombie.
        threading.Thread(target=proc.wait, name=f"reap-runner-{name}", daemon=True).start()
        with contextlib.suppress(Conflict):
            await self.update_agent(name, expect_state=[AgentState.STARTING], pid=proc.pid,
                                    host=this_host())
        return await self._wait_started(name, proc, after)

    def start_successor(self, name: str, pid: int) -> None:
        """A runner ordered to restart starts its successor on its own machine; the successor
        waits for ``pid`` (the runner) to exit and release the agent's lock."""
        self._popen_runner(name, "--after-pid", str(pid))

    def _popen_runner(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        paths = self._town_paths()
        private_dir(paths.logs)
        argv = [sys.executable, "-m", "tinytown.cli.main", "--town", str(paths.root), "agent", "run",
                name, *extra]
        env = dict(os.environ)
        env["TINYTOWN_TOWN"] = str(paths.root)
        for var in ("TINYTOWN_AGENT", "TINYTOWN_TASK_ID", "TINYTOWN_MCP_CONFIG"):
            env.pop(var, None)
        if self.config.redis.url:
            env["REDIS_URL"] = self.config.redis.url  # the runner uses the Redis we use
        else:
            env.pop("REDIS_URL", None)
        with open_private(runner_log_path(paths, name)) as out:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=paths.root, env=env, start_new_session=True,
            )

    async def _wait_started(
        self, name: str, proc: subprocess.Popen[bytes], after: str, timeout_s: float = START_TIMEOUT_S
    ) -> Agent:
        """Until the runner has taken the agent out of ``starting`` (its ``agent.idle`` event),
        or died first (then the agent is ``error``)."""
        deadline = time.monotonic() + timeout_s
        last = after
        while True:
            agent = await self.get_agent(name)
            if agent.state != AgentState.STARTING:
                return agent
            if proc.poll() is not None:
                with contextlib.suppress(Conflict):
                    await self.update_agent(name, expect_state=[AgentState.STARTING],
                                            state=AgentState.ERROR, pid=None)
                return await self.get_agent(name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return agent
            events = await self.channel.wait_events(last, min(remaining, 0.2))
            if events:
                last = events[-1].id

    # ----------------------------------------------------------------- kill, restart

    async def stop_agent(
        self,
        name: str,
        *,
        by: str = CONDUCTOR,
        now: bool = False,
        timeout_s: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> StopOutcome:
        """Stop an agent's runner, wherever it runs, and say how (``tt kill``).

        The runner gets an order through Redis (:mod:`tinytown.orders`) and carries it out
        itself: it finishes its round, or with ``now`` cuts it off and gives the round's tasks
        back to the backlog.  This waits for that (``on_wait`` gets a progress line while a
        round runs); after ``timeout_s`` the order becomes ``now``.  A runner that is dead (its
        lock here free, or no heartbeat for ``stale_after_s``) is recovered instead.  An agent
        stopping itself is not waited for.

        Raises:
            Forbidden: ``by`` is neither the conductor, the agent, nor its spawner.
            NotFound: no such agent.
        """
        agent = await self._lifecycle_target(name, by, "kill")
        return await self.orders.stop(agent, by=normalise_agent_name(by), now=now, timeout_s=timeout_s,
                                      on_wait=on_wait)

    async def kill_agent(
        self, name: str, *, by: str = CONDUCTOR, now: bool = False, timeout_s: float | None = 10.0
    ) -> Agent:
        """:meth:`stop_agent`, returning the agent (the MCP ``kill_agent`` tool)."""
        return (await self.stop_agent(name, by=by, now=now, timeout_s=timeout_s)).agent

    async def stop_all(
        self, *, now: bool = False, timeout_s: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> list[StopOutcome]:
        """Stop every live runner (``tt stop``, ``tt down --all``, ``tt reset``): all are
        ordered at once, then each is waited for as :meth:`stop_agent` does."""
        agents = await self.orders.live_runners()
        orders = [(a, await self.orders.post(a, "stop", now=now, by=CONDUCTOR)) for a in agents]
        return [await self.orders.wait(a, o, timeout_s=timeout_s, on_wait=on_wait) for a, o in orders]

    async def live_runners(self) -> list[Agent]:
        """Spawned agents whose runner lives, on this machine or another."""
        return await self.orders.live_runners()

    async def restart_agent(
        self, name: str, *, by: str = CONDUCTOR, timeout_s: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> Agent:
        """Restart the agent's runner after its round: a live runner is ordered to restart
        and starts its successor on its own machine; a dead or stopped one is started here.

        Raises:
            Invalid: the agent was attached (it has no preset), or its preset cannot run.
            Forbidden, NotFound: as :meth:`kill_agent`.
        """
        from tinytown.presets import resolve_preset

        agent = await self._lifecycle_target(name, by, "restart")
        if agent.cli is None:
            raise Invalid(f"agent {agent.name} was attached, not spawned: there is no runner to restart")
        preset = resolve_preset(self.config, agent.cli)
        preset.locate()
        if await self.orders.runner_alive(agent):
            outcome = await self.orders.stop(agent, by=normalise_agent_name(by), restart=True,
                                             timeout_s=timeout_s, on_wait=on_wait)
            if outcome.agent.state not in GONE_STATES:
                return outcome.agent
        else:
            await self.orders.stop(agent, by=normalise_agent_name(by))  # recovers a dead one
        await self.update_agent(agent.name, state=AgentState.STARTING)
        return await self._start_runner(agent.name, preset)

    # ----------------------------------------------------------------- pause, resume, wait

    async def pause_agent(self, name: str, *, by: str = CONDUCTOR) -> Agent:
        """The runner starts no new round until :meth:`resume_agent`; messages wait in the inbox.

        Raises:
            Invalid: an attached agent (nothing runs it that could pause).
            Conflict: the agent is stopped.
        """
        agent = await self._lifecycle_target(name, by, "pause")
        if agent.cli is None:
            raise Invalid(f"agent {agent.name} was attached, not spawned: nothing runs it that could pause")
        if agent.state == AgentState.PAUSED:
            return agent
        if agent.state in GONE_STATES:
            raise Conflict(f"agent {agent.name} is {agent.state.value}; there is nothing to pause")
        return await self.update_agent(
            agent.name, expect_state=[AgentState.STARTING, AgentState.IDLE, AgentState.WORKING],
            state=AgentState.PAUSED,
        )

    async def resume_agent(self, name: str, *, by: str = CONDUCTOR) -> Agent:
        """Let a paused agent's runner take messages again.

        Raises:
            Conflict: the agent is not paused.
        """
        agent = await self._lifecycle_target(name, by, "resume")
        if agent.state != AgentState.PAUSED:
            raise Conflict(f"agent {agent.name} is {agent.state.value}, not paused")
        return await self.update_agent(agent.name, expect_state=[AgentState.PAUSED], state=AgentState.IDLE)

    async def wait_agent(self, name: str, timeout_s: float = 60.0) -> Agent:
        """Wait until the agent is ``stopped`` or ``error`` (woken by the town's event stream)
        and its runner process has ended, at most ``timeout_s``; returns the agent as it is
        then (check its state).

        A spawned agent whose runner is found gone meanwhile is recovered and returned
        ``stopped``: its state never claims a process that is gone.

        Raises:
            NotFound: no such agent (or it was pruned while waiting).
        """
        deadline = time.monotonic() + max(timeout_s, 0.0)
        last = await self.channel.last_event_id()
        while True:
            agent = await self.get_agent(name)
            if agent.state in GONE_STATES:
                pid = self.runner_pid(agent)  # stopped, and its process about to end
                if pid:
                    await anyio.to_thread.run_sync(wait_exit, pid, max(deadline - time.monotonic(), 0))
                return agent
            if self.runner_known_gone(agent):
                await self._recover_agent(agent, None)
                return await self.get_agent(agent.name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return agent
            # the runner's own ``agent.stopped`` event wakes this; the slice bounds the
            # liveness check for a runner that died without a word
            events = await self.channel.wait_events(last, min(remaining, 1.0))
            if events:
                last = events[-1].id

    # ----------------------------------------------------------------- prune, recover

    async def prune(self) -> list[str]:
        """Delete every stopped (or errored) agent and its keys; returns their names.  A
        worktree agent's worktree goes too, once what it held is committed on its branch (the
        branches stay for ``tt review``/``merge``/``discard``).

        An agent whose runner is still finishing is left for the next prune.
        """
        pruned = []
        for agent in await self.list_agents():
            if agent.name == CONDUCTOR or agent.state not in GONE_STATES or self.runner_pid(agent):
                continue
            if agent.worktree:  # its work stays on its branches; the worktree itself goes
                await self.worktrees.commit_leftovers(agent.name, release=True)
                await self.worktrees.remove(agent.name)
            try:
                await self.delete_agent(agent.name)
            except (Conflict, NotFound):
                continue  # it changed meanwhile (restarted, or pruned by someone else)
            pruned.append(agent.name)
        return pruned

    def _is_gone(self, agent: Agent, now_ms: int) -> bool:
        """``now_ms``: Redis's clock (a machine whose own clock is ahead must not see live
        agents as stale and stop them)."""
        if agent.name == CONDUCTOR:
            return False
        if agent.state in GONE_STATES or agent.is_stale(self.config.stale_after_s, at_ms=now_ms):
            return True
        return self.runner_known_gone(agent)

    async def recover(self, to: str | None = None) -> RecoverReport:
        """Repair the town after crashes: every gone agent (stale, ``error``, ``stopped``, or a
        spawned agent whose runner has ended) is marked ``stopped`` (``error`` stays), its
        in-flight messages go back to its inbox, its unfinished tasks back to the backlog — or
        to agent ``to``.  A live agent gets back, as ``task`` messages, its tasks held by a
        session of it that is gone (``given_back``).

        Raises:
            NotFound: no agent ``to``.
            Invalid: ``to`` is itself gone.
        """
        target = None
        if to is not None:
            target = await self.get_agent(to)
            if self._is_gone(target, await self.now_ms()):
                raise Invalid(
                    f"agent {target.name} is {target.state.value} or stale; recover to a live agent"
                )
        report = RecoverReport()
        agents = await self.list_agents()
        now = await self.now_ms()
        for agent in agents:
            if target is not None and agent.id == target.id:
                continue
            if not self._is_gone(agent, now):
                given = await self.handback.give_back(agent.name, held_elsewhere_only=True)
                report.given_back += [{"task_id": t.id, "task": t.ref, "agent": agent.name} for t in given]
                continue
            await self._recover_agent(agent, target.name if target else None, report)
        return report

    async def _recover_agent(self, agent: Agent, to: str | None, report: RecoverReport | None = None) -> None:
        if agent.state not in GONE_STATES:
            await self.update_agent(agent.name, state=AgentState.STOPPED, pid=None)
            if report is not None:
                report.stopped.append(agent.name)
        elif agent.pid is not None and self.runner_pid(agent) is None:
            await self.update_agent(agent.name, pid=None)
        requeued = await self.requeue_in_flight(agent.name)
        if agent.worktree:  # a killed round's edits: committed on its branch before it moves on
            await self.worktrees.commit_leftovers(agent.name, release=True)
        moved = await self.reclaim_tasks(agent.name, to)
        async with wrap_redis_errors():  # an order its dead runner never carried out is void
            await self.redis.delete(self.keys.order(agent.id))
        if report is not None:
            if requeued:
                report.requeued[agent.name] = requeued
            report.reclaimed += [{"task_id": t.id, "task": t.ref, "from": agent.name, "to": to}
                                 for t in moved]

    async def count_round(self, name: str, *, number: int, exit_code: int) -> None:
        """A runner finished a round: ``rounds_completed`` + 1 and an ``agent.round`` event
        (``tt history`` shows it; tests and the demo wait on it)."""
        agent = await self.get_agent(name)
        plan = Plan()
        key = self._k(self.keys.agent(agent.id))
        plan.guard(key, "name", [agent.name], "not_found", f"agent {name} was removed")
        plan.hincr.append([key, "rounds_completed", 1])
        plan.event("agent.round", agent=agent.name, round=number, exit_code=exit_code)
        await self.channel.apply(plan)

    # ----------------------------------------------------------------- prime

    async def prime(self, name: str) -> Primer:
        """What an agent session should know when it starts: itself, its task, its mail.

        Raises:
            NotFound: no such agent.
        """
        agent = await self.get_agent(name)
        task = None
        if agent.current_task:
            with contextlib.suppress(NotFound):
                task = await self.get_task(agent.current_task)
        return Primer(
            agent=agent, town=self.name, root=str(self.paths.root) if self.paths else None,
            current_task=task, inbox=await self.inbox_counts(agent.name),
        )
