"""Retention: what a town keeps, for how long, and what it costs (``tt stats``).

A town that runs for weeks must not grow without bound.  ``[retention]`` in
``tinytown.toml`` says how long finished things stay (``0`` keeps them forever):

* ``tasks`` (default 14 days): a completed, failed or cancelled task — its record, its
  entries in every task index, its number and its thread.  The plan that finishes a task
  records it in ``retention:finished`` by Redis's clock; a bounded sweep (:data:`SWEEP_BATCH`
  tasks) runs inside every such plan and every heartbeat, so expiry keeps pace with any
  rate of finishing at a fixed cost per step, and nothing scans the whole town.  A task
  that an unfinished task depends on (``depends_on``, :mod:`tinytown.dependencies`) is kept
  until that task finished too.
* ``messages`` (default 1 day): an acknowledged message (an EXPIRE when it is acknowledged).
* ``events`` (default 14 days): entries of the event stream (XTRIM MINID in the same sweep;
  the stream also never holds more than ~10,000 entries).

Task notices (``task_done``/``task_failed``/``task_cancelled`` to the creator, and to the
assignee of a cancelled task) never make a transition fail: when the recipient's inbox is
full, the oldest notice still queued there is dropped to make room (and if none is queued,
the new notice is not sent; the task keeps its result and the event stream records it).

:class:`Retention` is a service the :class:`~tinytown.town.Town` owns (``town.retention``):
:meth:`Retention.sweep` runs the sweep on demand, :meth:`Retention.stats` measures keys,
memory and growth per kind of key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel
from redis.exceptions import RedisError

from tinytown.channel import SWEEP_BATCH
from tinytown.config import RetentionSettings
from tinytown.errors import Invalid, wrap_redis_errors
from tinytown.topology import scan_town, town_node_call

if TYPE_CHECKING:
    from tinytown.town import Town

KINDS = ("tasks", "messages", "events", "agents", "indexes", "other")
"""How ``stats`` groups a town's keys (see :func:`kind_of`)."""
DEFAULT_SAMPLE = 200
MAX_SAMPLE = 100_000
SNAPSHOT_EVERY_MS = 3600_000
"""Growth is measured against a snapshot of the sizes; one older than this is replaced."""
DAY_MS = 86_400_000
SCAN_COUNT = 1000

_BY_HEAD = {
    "task": "tasks",
    "msg": "messages", "inbox": "messages", "inflight": "messages",
    "events": "events",
    "agent": "agents", "bell": "agents", "round": "agents", "receiver": "agents", "order": "agents",
    "tokens": "agents", "tokens_used": "agents",
    "tasks": "indexes", "task_numbers": "indexes", "task_msgs": "indexes", "agents": "indexes",
    "agent_names": "indexes", "inflight_due": "indexes", "retention": "indexes",
}


def kind_of(key_without_prefix: str) -> str:
    """The kind a key counts under: task records are ``tasks``; message records, inboxes and
    in-flight sets ``messages``; the stream ``events``; agent records and their bells and
    round credentials ``agents``; every index (task lists by state and agent, task numbers,
    threads, the agent list, the retention index) ``indexes``; anything else ``other``."""
    head = key_without_prefix.split(":", 1)[0]
    return _BY_HEAD.get(head, "other")


class KindStats(BaseModel):
    """Keys and memory of one kind of key."""

    keys: int = 0
    bytes: int | None = None
    """MEMORY USAGE summed over the keys, estimated from ``sampled`` of them (exact when
    ``sampled == keys``); None where the server does not answer MEMORY USAGE."""
    sampled: int = 0
    keys_per_day: float | None = None
    """Growth since ``growth_since`` (negative: shrinking); None without an earlier snapshot."""
    bytes_per_day: float | None = None


class TownStats(BaseModel):
    town: str
    now: int
    """Redis's clock (ms) when measured."""
    kinds: dict[str, KindStats]
    total: KindStats
    records: dict[str, int]
    """Counts from the indexes: ``tasks`` (every stored task), ``finished_tasks`` (waiting for
    expiry), ``events`` (stream length), ``agents``."""
    used_memory: int | None = None
    """The whole server's ``INFO memory`` used_memory (shared with anything else on it)."""
    retention: RetentionSettings
    """``[retention]`` in seconds (0: kept forever)."""
    growth_since: int | None = None
    """When the snapshot growth is measured against was taken (Redis ms)."""


class Retention:
    """Expiry on demand and the town's size (see the module docstring)."""

    def __init__(self, town: Town) -> None:
        self.town = town

    async def sweep(self, batch: int = SWEEP_BATCH) -> int:
        """Expire up to ``batch`` finished tasks older than the retention (and old events)
        now, instead of at the next finish or heartbeat; returns how many tasks went."""
        return await self.town.channel.sweep(batch)

    async def stats(self, *, sample: int = DEFAULT_SAMPLE) -> TownStats:
        """Keys, memory and growth per kind of key, plus the retention settings.

        One SCAN over the town's keys (never KEYS) counts them; MEMORY USAGE runs on at most
        ``sample`` keys per kind (0: on every key, exact) and the rest is extrapolated.
        Growth is the change since a stored snapshot, per day; the snapshot is replaced once
        it is an hour old.

        Raises:
            Invalid: ``sample`` outside 0..100000.
            Unavailable: Redis does not answer.
        """
        if not 0 <= sample <= MAX_SAMPLE:
            raise Invalid(f"sample must be between 0 and {MAX_SAMPLE}")
        town = self.town
        prefix = town.keys.prefix
        counts = dict.fromkeys(KINDS, 0)
        picked: dict[str, list[str]] = {k: [] for k in KINDS}
        async with wrap_redis_errors():
            # on a cluster: the node serving the town's slot
            for key in await scan_town(town.redis, town.keys.seq, town.keys.match_all, SCAN_COUNT):
                name = str(key)
                if name == town.keys.stats_snapshot:
                    continue  # the measurement's own record
                kind = kind_of(name.removeprefix(prefix))
                counts[kind] += 1
                if sample == 0 or len(picked[kind]) < sample:
                    picked[kind].append(name)
            sizes = await self._memory(picked)
            async with town.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(town.keys.tasks)
                pipe.zcard(town.keys.finished)
                pipe.xlen(town.keys.events)
                pipe.zcard(town.keys.agents)
                pipe.hgetall(town.keys.stats_snapshot)
                *records, snapshot = await pipe.execute()
            used = await self._used_memory()
        now = await town.now_ms()
        kinds: dict[str, KindStats] = {}
        for kind in KINDS:
            measured = sizes.get(kind)
            estimate = None
            if measured is not None:
                estimate = measured if not picked[kind] else round(
                    measured / len(picked[kind]) * counts[kind])
            kinds[kind] = KindStats(keys=counts[kind], bytes=estimate, sampled=len(picked[kind]))
        total_bytes = [k.bytes for k in kinds.values()]
        total = KindStats(
            keys=sum(counts.values()), sampled=sum(len(p) for p in picked.values()),
            bytes=None if any(b is None for b in total_bytes) else sum(b or 0 for b in total_bytes),
        )
        since = await self._growth(kinds, total, snapshot, now)
        return TownStats(
            town=town.name, now=now, kinds=kinds, total=total,
            records=dict(zip(("tasks", "finished_tasks", "events", "agents"),
                             (int(n) for n in records), strict=True)),
            used_memory=used, growth_since=since,
            retention=town.config.retention,
        )

    async def _memory(self, picked: dict[str, list[str]]) -> dict[str, int | None]:
        """MEMORY USAGE summed per kind over the picked keys (None: the server refuses it)."""
        flat = [(kind, key) for kind, keys in picked.items() for key in keys]
        out: dict[str, int | None] = dict.fromkeys(KINDS, 0)
        for start in range(0, len(flat), SCAN_COUNT):
            chunk = flat[start:start + SCAN_COUNT]
            async with self.town.redis.pipeline(transaction=False) as pipe:
                for _kind, key in chunk:
                    pipe.memory_usage(key)
                got = await pipe.execute(raise_on_error=False)
            for (kind, _key), size in zip(chunk, got, strict=True):
                if isinstance(size, Exception) or out[kind] is None:
                    if isinstance(size, Exception) and not _gone(size):
                        out[kind] = None
                    continue
                out[kind] = (out[kind] or 0) + int(size or 0)  # None: expired since the SCAN
        return out

    async def _used_memory(self) -> int | None:
        try:
            info = await town_node_call(self.town.redis, self.town.keys.seq, "INFO", "memory")
        except RedisError:
            return None  # INFO not allowed (an ACL user), or not answered by this server
        value = info.get("used_memory") if isinstance(info, dict) else None
        return int(value) if value is not None else None

    async def _growth(
        self, kinds: dict[str, KindStats], total: KindStats, snapshot: dict[str, str], now: int
    ) -> int | None:
        """Fill the per-day growth from the stored snapshot; store a new one when it is
        missing or an hour old.  Returns when the snapshot used was taken."""
        town = self.town
        rows = {**kinds, "total": total}
        taken = int(snapshot.get("at", 0) or 0)
        elapsed = now - taken
        if taken and elapsed >= 1000:
            for name, row in rows.items():
                keys = snapshot.get(f"{name}:keys")
                if keys is not None:
                    row.keys_per_day = (row.keys - int(keys)) * DAY_MS / elapsed
                size = snapshot.get(f"{name}:bytes")
                if size and row.bytes is not None:
                    row.bytes_per_day = (row.bytes - int(size)) * DAY_MS / elapsed
        if not taken or elapsed >= SNAPSHOT_EVERY_MS:
            fields: dict[str, str] = {"at": str(now)}
            for name, row in rows.items():
                fields[f"{name}:keys"] = str(row.keys)
                if row.bytes is not None:
                    fields[f"{name}:bytes"] = str(row.bytes)
            async with wrap_redis_errors():
                await town.redis.delete(town.keys.stats_snapshot)
                await town.redis.hset(town.keys.stats_snapshot, mapping=fields)
            return taken or None
        return taken


def _gone(error: Exception) -> bool:
    """MEMORY USAGE of a key that expired between the SCAN and the call is no error."""
    return "no such key" in str(error).lower()
