"""The layout version of a town's data, and the one-time upgrade of an older town.

``tt:{town}:schema`` holds the version.  Version 2 added the per-agent task indexes
(``tasks:open:<agent>``, ``tasks:agent:<agent>:<end state>``) and the compact message record
(one JSON string instead of a hash; the Lua reads both forms, so old messages need no
rewrite).  A town written before has no version: :func:`upgrade` fills the indexes from the
per-state indexes, once, when the town is opened.  Every step is idempotent, so two
processes opening the same old town at once do no harm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinytown.errors import wrap_redis_errors
from tinytown.models import TaskState

if TYPE_CHECKING:
    from tinytown.town import Town

SCHEMA = 2
SLICE = 1000
UNFINISHED = (TaskState.WAITING, TaskState.ASSIGNED, TaskState.RUNNING)


async def upgrade(town: Town) -> bool:
    """Bring the town's data to :data:`SCHEMA`; returns whether anything was rewritten."""
    keys = town.keys
    redis = town.redis
    async with wrap_redis_errors():
        version = await redis.get(keys.schema)
        if version is not None and int(version) >= SCHEMA:
            return False
        wrote = False
        if await redis.zcard(keys.tasks):
            for state in TaskState:
                if state in UNFINISHED or state.is_final:
                    wrote = await _index_state(town, state) or wrote
        await redis.set(keys.schema, SCHEMA)
    return wrote


async def _index_state(town: Town, state: TaskState) -> bool:
    """Add every task in ``state`` to its assignee's open or ended index."""
    keys = town.keys
    redis = town.redis
    start = 0
    wrote = False
    while True:
        rows = await redis.zrange(keys.tasks_in_state(state), start, start + SLICE - 1, withscores=True)
        if not rows:
            return wrote
        start += len(rows)
        async with redis.pipeline(transaction=False) as pipe:
            for task_id, _score in rows:
                pipe.hget(keys.task(task_id), "assigned_to")
            owners = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for (task_id, score), owner in zip(rows, owners, strict=True):
                if not owner:
                    continue
                index = keys.ended_tasks(owner, state) if state.is_final else keys.open_tasks(owner)
                pipe.zadd(index, {task_id: score})
                wrote = True
            await pipe.execute()
