"""Soak tier (issue 9): a busy town run through many retention windows stays the same size.

Four agents take tasks, complete them and talk to each other; the conductor assigns work and
never reads its inbox.  Retention is one second, a window three: each window does the same
fixed amount of work, then the agents keep heart-beating (which sweeps) until the window
ends.  The town's size — the exact sum of MEMORY USAGE over its keys, per kind — is taken
right after each window's work, so it holds that window's finished tasks and messages:
after the first window (which starts from an empty town: no mail in flight, a conductor
inbox still filling) it stays flat, where without retention it would grow by a window's
worth each time.  No ``task_done`` ever fails, although the conductor's inbox is full from
the first window on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
import pytest
from conftest import make_config
from redis.asyncio import Redis

from tinytown.errors import TinytownError
from tinytown.models import MessageKind
from tinytown.town import Town

pytestmark = [pytest.mark.anyio, pytest.mark.soak]

AGENTS = ("ada", "bo", "cy", "di")
WINDOWS = 8
WINDOW_S = 3.0
RETENTION_S = 1
TASKS_PER_AGENT = 4
MESSAGES_PER_AGENT = 3
MAX_INBOX = 12
"""Small, so the never-read conductor inbox (16 notices a window) is full in the first window."""
TOLERANCE = 0.2


@dataclass
class Tally:
    completed: int = 0
    failures: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)


async def agent_round(town: Town, name: str, tally: Tally) -> None:
    """One agent's share of a window: take its mail, finish its tasks, talk to a neighbour."""
    got = await town.receive(name, timeout_s=0, max_messages=100, session=name)
    for message in got.messages:
        if message.kind == MessageKind.TASK and message.task_id:
            try:
                await town.complete_task(message.task_id, f"done by {name}", by=name)
                tally.completed += 1
            except TinytownError as error:
                tally.failures.append(f"{name}: {error}")
    neighbour = AGENTS[(AGENTS.index(name) + 1) % len(AGENTS)]
    for n in range(MESSAGES_PER_AGENT):
        await town.send(name, neighbour, f"note {n} from {name}: " + "x" * 100)


async def window(town: Town, tally: Tally, ends_at: float) -> None:
    for name in AGENTS:
        for n in range(TASKS_PER_AGENT):
            await town.assign(f"job {n} for {name}: " + "y" * 100, agent=name)
    async with anyio.create_task_group() as tg:
        for name in AGENTS:
            tg.start_soon(agent_round, town, name, tally)
    stats = await town.retention.stats(sample=0)
    assert stats.total.bytes is not None
    tally.sizes.append(stats.total.bytes)
    tally.keys.append(stats.total.keys)
    print(f"window {len(tally.sizes)}: {stats.total.keys} keys, {stats.total.bytes} B: "
          + ", ".join(f"{k} {v.keys}/{v.bytes}" for k, v in stats.kinds.items()))
    # the rest of the window: the agents are alive (heartbeats sweep what has expired)
    while time.monotonic() < ends_at:
        for name in AGENTS:
            await town.heartbeat(name)
        await anyio.sleep(0.1)


async def test_a_busy_town_stays_the_same_size_through_many_retention_windows(
    real_redis: Redis, town_name: str
) -> None:
    town = Town(real_redis, make_config(
        town_name, limits={"max_inbox": MAX_INBOX},
        retention={"tasks": RETENTION_S, "messages": RETENTION_S, "events": RETENTION_S},
    ))
    await town.ensure_conductor()
    for name in AGENTS:
        await town.register_agent(name)
    tally = Tally()
    started = time.monotonic()
    for n in range(WINDOWS):
        await window(town, tally, started + (n + 1) * WINDOW_S)

    assert tally.failures == []
    assert tally.completed == WINDOWS * len(AGENTS) * TASKS_PER_AGENT
    conductor = await town.inbox_counts("conductor")
    assert conductor.pending == MAX_INBOX and conductor.in_flight == 0  # full, never read
    # the first window after the cold start is the reference; the last three stay near it
    first, last = tally.sizes[1], tally.sizes[-3:]
    grown = [size / first for size in last]
    print(f"sizes {tally.sizes}; last three / second: {[round(g, 3) for g in grown]}")
    assert all(1 - TOLERANCE <= ratio <= 1 + TOLERANCE for ratio in grown), (tally.sizes, grown)
    assert max(tally.keys[-3:]) <= tally.keys[1] * (1 + TOLERANCE), tally.keys
    # a window's worth of tasks is alive at each measure, never more: the older ones expired
    # (without expiry the town would hold all WINDOWS windows' tasks by now)
    assert (await town.retention.stats()).records["tasks"] <= len(AGENTS) * TASKS_PER_AGENT
