"""Who is in the town, a page at a time: ``list_agents`` and ``town_status``.

Both read one page of the ``agents`` index (creation order, the conductor first) and then
everything the page shows in one pipelined round trip — records, inbox counts, task counts
and the server's version — so their cost follows the page, not the number of agents.  A
page's ``next_cursor`` is the creation seq of its last agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tinytown.errors import Invalid, wrap_redis_errors
from tinytown.models import (
    DEFAULT_AGENT_PAGE,
    MAX_AGENT_PAGE,
    Agent,
    AgentState,
    InboxCounts,
    ServerInfo,
    TaskState,
)
from tinytown.topology import cluster_server_info, is_cluster

if TYPE_CHECKING:
    from tinytown.town import Town


class AgentView(BaseModel):
    """An agent as status shows it: the record plus its mailbox and staleness."""

    agent: Agent
    inbox: InboxCounts
    stale: bool
    runner_gone: bool = False
    """A spawned agent whose runner process has ended although its state says otherwise
    (it crashed or was SIGKILLed); ``tt recover`` repairs the record."""


class AgentPage(BaseModel):
    agents: list[Agent]
    next_cursor: str | None = None
    """Pass back as ``cursor`` for the next page; None on the last page."""


class TownStatus(BaseModel):
    now: int
    """Redis's clock (ms) when the status was taken: what staleness and ages are measured against."""
    town: str
    root: str | None
    redis: str
    server: ServerInfo | None = None
    """The server's name and version (None where ``INFO`` is not allowed)."""
    agents: list[AgentView]
    agent_count: int = 0
    """How many agents the town has (the page may show fewer)."""
    next_cursor: str | None = None
    """The next page of agents (``cursor``); None when this page shows the last one."""
    tasks: dict[str, int]


def _bound(cursor: str | None) -> str:
    if not cursor:
        return "-inf"
    try:
        return f"({int(cursor)}"
    except ValueError:
        raise Invalid(f"cursor {cursor!r} is not one this listing returned") from None


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_AGENT_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_AGENT_PAGE}")


async def _page(
    town: Town, state: AgentState | None, limit: int, cursor: str | None, extra: int = 0,
    more: Any = None,
) -> tuple[list[tuple[Agent, list[Any]]], str | None, list[Any]]:
    """One page of agents (of ``state``) with, per agent, ``extra`` pipelined replies added by
    ``more(pipe, agent_id)``, and the replies of ``more(pipe, None)`` once per call.  A state
    filter reads further slices only while the page is not full."""
    keys = town.keys
    lo = _bound(cursor)
    found: list[tuple[Agent, list[Any]]] = []
    tail: list[Any] = []
    first = True
    next_cursor: str | None = None
    while True:
        async with wrap_redis_errors():
            rows = await town.redis.zrange(keys.agents, lo, "+inf", byscore=True, offset=0,
                                           num=limit + 1, withscores=True)
            async with town.redis.pipeline(transaction=False) as pipe:
                for agent_id, _score in rows:
                    pipe.hgetall(keys.agent(agent_id))
                    if more is not None:
                        more(pipe, str(agent_id))
                if first and more is not None:
                    more(pipe, None)
                replies = await pipe.execute(raise_on_error=False)
        step = 1 + extra
        if first and more is not None:
            tail = replies[len(rows) * step:]
        first = False
        for i, (_agent_id, score) in enumerate(rows):
            data = replies[i * step]
            if isinstance(data, Exception):
                raise data
            lo = f"({int(score)}"
            if not data:
                continue
            agent = Agent.from_redis(data)
            if state is not None and agent.state != state:
                continue
            if len(found) == limit:
                next_cursor = str(int(found[-1][1][-1]))
                return found, next_cursor, tail
            found.append((agent, [*replies[i * step + 1:(i + 1) * step], score]))
        if len(rows) <= limit:
            return found, None, tail


async def agents_page(
    town: Town, state: AgentState | str | None = None, *, limit: int = DEFAULT_AGENT_PAGE,
    cursor: str | None = None,
) -> AgentPage:
    from tinytown.tasks import parse_enum

    wanted = parse_enum(AgentState, state, "state") if state is not None else None
    _check_limit(limit)
    found, next_cursor, _ = await _page(town, wanted, limit, cursor)
    return AgentPage(agents=[a for a, _ in found], next_cursor=next_cursor)


async def status(town: Town, *, limit: int = DEFAULT_AGENT_PAGE, cursor: str | None = None) -> TownStatus:
    _check_limit(limit)
    keys = town.keys

    def more(pipe: Any, agent_id: str | None) -> None:
        if agent_id is None:
            for state in TaskState:
                pipe.zcard(keys.tasks_in_state(state))
            pipe.zcard(keys.agents)
            if not cluster:
                pipe.info("server")  # refused by an ACL without INFO: no server line
            return
        for key in keys.inboxes(agent_id):
            pipe.llen(key)
        pipe.zcard(keys.inflight(agent_id))

    cluster = is_cluster(town.redis)
    now = await town.now_ms()
    found, next_cursor, tail = await _page(town, None, limit, cursor, extra=5, more=more)
    *counts, agent_count, info = [*tail, None][:len(TaskState) + 2]
    if cluster:  # the node that serves the town's slot
        info = await cluster_server_info(town.redis, keys.seq)
    for count in (*counts, agent_count):
        if isinstance(count, Exception):
            raise count
    views = []
    for agent, (*lengths, _score) in found:
        if any(isinstance(n, Exception) for n in lengths):
            raise next(n for n in lengths if isinstance(n, Exception))
        views.append(AgentView(
            agent=agent,
            inbox=InboxCounts(pending=sum(lengths[:4]), urgent=lengths[0], in_flight=lengths[4]),
            stale=agent.is_stale(town.config.stale_after_s, at_ms=now),
            runner_gone=agent.state not in (AgentState.STOPPED, AgentState.ERROR)
            and town.runner_known_gone(agent),
        ))
    server = ServerInfo.from_info(info) if isinstance(info, dict) else None
    return TownStatus(
        now=now, town=town.name, root=str(town.root) if town.root else None,
        redis=town.redis_display, server=server, agents=views, agent_count=int(agent_count),
        next_cursor=next_cursor,
        tasks={s.value: int(n) for s, n in zip(TaskState, counts, strict=True)},
    )
